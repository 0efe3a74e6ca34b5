/**
 * pgbg's errors. Every error pgbg throws is a {@link PgbgError} with a stable
 * `code` from {@link ErrorCode}, so callers branch on the code, never on the
 * message. The underlying error, when there is one, is kept as `cause`.
 *
 * @module
 */

/** The stable codes of pgbg's errors. */
export type ErrorCode =
  | "PGBG_INVALID_INPUT"
  | "PGBG_INVALID_PAYLOAD"
  | "PGBG_PAYLOAD_TOO_LARGE"
  | "PGBG_INVALID_OPTIONS"
  | "PGBG_INVALID_TASK"
  | "PGBG_INVALID_SCHEMA_NAME"
  | "PGBG_SCHEMA_MISSING"
  | "PGBG_SCHEMA_TOO_NEW"
  | "PGBG_LEASE_LOST"
  | "PGBG_KEY_CONTENDED"
  | "PGBG_INVALID_CONFIG"
  | "PGBG_PERMANENT"
  | "PGBG_INPUT_VERSION"
  | "PGBG_INVALID_RESULT"
  | "PGBG_TASK_FAILED"
  | "PGBG_TASK_CANCELLED"
  | "PGBG_TASK_UNKNOWN"
  | "PGBG_WAIT_TIMEOUT"
  | "PGBG_INVALID_SCHEDULE"
  | "PGBG_UNKNOWN_SCHEDULE"
  | "PGBG_UNSUPPORTED_CLIENT"
  | "PGBG_INVALID_FLOW"
  | "PGBG_UNKNOWN_PARENT"
  | "PGBG_PARENT_FAILED";

/** The base class of every error pgbg throws. */
export class PgbgError extends Error {
  /** A stable code identifying the kind of error. */
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** One problem found by a task's valibot schema: where, and what. */
export interface InputIssue {
  /** Dotted path into the input, such as `to` or `items.2.sku`; empty for the root. */
  path: string;
  /** The schema's message for this problem. */
  message: string;
}

/**
 * The input of a task does not match its valibot schema. Thrown by `enqueue`
 * and `enqueueMany` before anything is written. `index` is set by
 * `enqueueMany`: the position of the first invalid input in the batch.
 */
export class InvalidInputError extends PgbgError {
  /** The schema's issues, each with its path and message. */
  readonly issues: readonly InputIssue[];
  /** The task whose schema refused the input. */
  readonly task: string;
  /** In `enqueueMany`, the index of the invalid input. */
  readonly index: number | undefined;

  constructor(task: string, issues: readonly InputIssue[], index?: number) {
    const where = index === undefined ? "" : ` at index ${index}`;
    const list = issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join("; ");
    super("PGBG_INVALID_INPUT", `invalid input for task "${task}"${where}: ${list}`);
    this.issues = issues;
    this.task = task;
    this.index = index;
  }
}

/**
 * A payload cannot be stored as JSON without changing it: it holds a BigInt,
 * a function, a symbol, a cycle, a non-finite number, a `\u0000` character
 * (which PostgreSQL's jsonb cannot hold) or an object that is not plain.
 */
export class InvalidPayloadError extends PgbgError {
  /** Dotted path of the offending value; empty for the root. */
  readonly path: string;

  constructor(task: string, path: string, problem: string, index?: number) {
    const where = index === undefined ? "" : ` at index ${index}`;
    super(
      "PGBG_INVALID_PAYLOAD",
      `payload for task "${task}"${where} is not JSON: ${path ? `${path}: ` : ""}${problem}`,
    );
    this.path = path;
  }
}

/** A payload's JSON is larger than the task's `maxPayloadBytes`. */
export class PayloadTooLargeError extends PgbgError {
  /** Size of the payload's JSON, in UTF-8 bytes. */
  readonly bytes: number;
  /** The limit it exceeded. */
  readonly limit: number;

  constructor(task: string, bytes: number, limit: number, index?: number) {
    const where = index === undefined ? "" : ` at index ${index}`;
    super(
      "PGBG_PAYLOAD_TOO_LARGE",
      `payload for task "${task}"${where} is ${bytes} bytes of JSON, over the limit of ${limit} (maxPayloadBytes)`,
    );
    this.bytes = bytes;
    this.limit = limit;
  }
}

/** The options passed to a pgbg function are malformed. The message names the option. */
export class InvalidOptionsError extends PgbgError {
  constructor(message: string) {
    super("PGBG_INVALID_OPTIONS", message);
  }
}

/** A task definition given to `defineTask` or to a worker is malformed. */
export class InvalidTaskError extends PgbgError {
  constructor(message: string) {
    super("PGBG_INVALID_TASK", message);
  }
}

/**
 * The database's pgbg schema cannot be used: the name is not a valid
 * identifier (`PGBG_INVALID_SCHEMA_NAME`), it has not been migrated
 * (`PGBG_SCHEMA_MISSING`), or it was migrated by a newer pgbg
 * (`PGBG_SCHEMA_TOO_NEW`).
 */
export class SchemaError extends PgbgError {
  constructor(
    code: "PGBG_INVALID_SCHEMA_NAME" | "PGBG_SCHEMA_MISSING" | "PGBG_SCHEMA_TOO_NEW",
    message: string,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

/**
 * The task's lease was lost (it expired, or the task was released to another
 * worker) before `ctx.complete(tx)` ran, so the completion was refused. The
 * transaction that carried it must roll back.
 */
export class LeaseLostError extends PgbgError {
  constructor(id: string) {
    super("PGBG_LEASE_LOST", `task ${id}: the lease was lost before completion; it will run again`);
  }
}

/** A service setting (flag, environment variable or option) is invalid. The message names it. */
export class InvalidConfigError extends PgbgError {
  constructor(message: string) {
    super("PGBG_INVALID_CONFIG", message);
  }
}

/**
 * Thrown by a task's `run` to fail the task for good at once: no retry,
 * whatever attempts it has left. The task is kept as failed with this error
 * as its last error. Any error whose `code` is `PGBG_PERMANENT` counts, so
 * that a second copy of pgbg in the app's dependencies cannot break it.
 *
 * @example
 * ```ts
 * if (response.status === 404) throw new PermanentError(`no such account: ${input.account}`);
 * ```
 */
export class PermanentError extends PgbgError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("PGBG_PERMANENT", message, options);
  }
}

/** True when `error` is a {@link PermanentError}, from this copy of pgbg or another. */
export function isPermanentError(error: unknown): boolean {
  return error instanceof PermanentError ||
    (typeof error === "object" && error !== null && (error as { code?: unknown }).code === "PGBG_PERMANENT");
}

/**
 * A task's input was enqueued for a newer version of its definition than
 * the running worker has (a rolling deploy: enqueuers upgraded first). The
 * attempt fails and is retried, so that a worker of the newer release can
 * run it; deploy workers before enqueuers to avoid it.
 */
export class InputVersionError extends PgbgError {
  constructor(task: string, from: number, current: number) {
    super(
      "PGBG_INPUT_VERSION",
      `task "${task}": its input was enqueued for version ${from} of the task, newer than this worker's (version ${current}); a worker with the newer definition will run it`,
    );
  }
}

/**
 * The value a task's `run` resolved to (or gave `ctx.complete(tx, result)`)
 * does not match the task's `result` schema, or cannot be stored as JSON
 * within its `maxPayloadBytes`. The attempt fails and is retried: nothing
 * is stored.
 */
export class InvalidResultError extends PgbgError {
  /** The schema's issues, each with its path and message; empty when the value is not storable JSON. */
  readonly issues: readonly InputIssue[];

  constructor(task: string, problem: string | readonly InputIssue[], options?: { cause?: unknown }) {
    const issues = typeof problem === "string" ? [] : problem;
    const list = typeof problem === "string" ? problem : problem.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join("; ");
    super("PGBG_INVALID_RESULT", `invalid result of task "${task}": ${list}`, options);
    this.issues = issues;
  }
}

/** How a task ended when it has no result to give: why `waitForResult` rejected. */
export type WaitErrorCode = "PGBG_TASK_FAILED" | "PGBG_TASK_CANCELLED" | "PGBG_TASK_UNKNOWN" | "PGBG_WAIT_TIMEOUT";

/**
 * `waitForResult` gives no result: the task failed for good
 * (`PGBG_TASK_FAILED`, with its last error), was cancelled
 * (`PGBG_TASK_CANCELLED`), is not known (`PGBG_TASK_UNKNOWN`: never
 * enqueued, past its retention, or finished without keeping its history),
 * or the wait timed out (`PGBG_WAIT_TIMEOUT`; the task goes on).
 */
export class WaitError extends PgbgError {
  declare readonly code: WaitErrorCode;
  /** The task waited for. */
  readonly taskId: string;
  /** The task's last error as stored (name, message, attempt, at, ...), when it failed for good or an attempt had failed. */
  readonly lastError: Record<string, unknown> | null;

  constructor(code: WaitErrorCode, taskId: string, message: string, lastError: Record<string, unknown> | null = null) {
    super(code, message);
    this.taskId = taskId;
    this.lastError = lastError;
  }
}

/** A schedule given to `defineSchedule` or to a worker is malformed (its cron, time zone, input or catch-up). The message names the field. */
export class InvalidScheduleError extends PgbgError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("PGBG_INVALID_SCHEDULE", message, options);
  }
}

/** `runSchedule` was given a name no host has declared (`PGBG_UNKNOWN_SCHEDULE`). */
export class UnknownScheduleError extends PgbgError {
  /** The name asked for. */
  readonly schedule: string;

  constructor(schedule: string) {
    super("PGBG_UNKNOWN_SCHEDULE", `no schedule named ${JSON.stringify(schedule)}: a schedule is known once a worker that defines it has started`);
    this.schedule = schedule;
  }
}

/**
 * A function was given a database handle pgbg cannot run statements on
 * (`PGBG_UNSUPPORTED_CLIENT`). The message names what was passed and what
 * is accepted.
 */
export class UnsupportedClientError extends PgbgError {
  constructor(message: string) {
    super("PGBG_UNSUPPORTED_CLIENT", message);
  }
}

/**
 * A flow or batch was refused and nothing of it written: a cycle, or a
 * `dependsOn` that names no task of the flow (`PGBG_INVALID_FLOW`), or an
 * existing task that is neither pending nor kept as succeeded
 * (`PGBG_UNKNOWN_PARENT`). The message names the task.
 */
export class FlowError extends PgbgError {
  declare readonly code: "PGBG_INVALID_FLOW" | "PGBG_UNKNOWN_PARENT";

  constructor(code: "PGBG_INVALID_FLOW" | "PGBG_UNKNOWN_PARENT", message: string) {
    super(code, message);
  }
}
