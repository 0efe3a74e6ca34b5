/**
 * `defineTask`: a task's name, the schema of its input, its handler, and its
 * retry and time-limit policy.
 *
 * @module
 */
import type { TransactionSql } from "postgres";
import { InvalidTaskError } from "./errors.ts";
import { HOOK_SUFFIX } from "./hook-name.ts";
import { type Retention, retentionProblem } from "./retention.ts";
import { isStandardSchema, type StandardInput, type StandardOutput, type StandardSchemaV1 } from "./standard-schema.ts";

/**
 * The schema of a task's input: any Standard Schema v1, sync or async, such
 * as one of valibot (the documented default), zod 3.24 or later, or arktype.
 */
export type InputSchema = StandardSchemaV1;

/** What a task's `run` receives besides its input. */
export interface TaskContext {
  /** The task's id, as returned by `enqueue`. */
  readonly id: string;
  /** The task's name. */
  readonly name: string;
  /** The queue the task was claimed from. */
  readonly queue: string;
  /** The task's group in its queue (from the task's `group`), or null. */
  readonly group: string | null;
  /** This attempt's number, starting at 1. A snooze does not count as one. */
  readonly attempt: number;
  /** Times the task was snoozed so far (see {@link retryAfter}). */
  readonly snoozes: number;
  /**
   * Ends this attempt by putting the task back for `ms` milliseconds (a
   * snooze): it does not count as an attempt and keeps the task's last
   * error. It throws, so nothing after it runs; do not catch what it
   * throws. Past the task's `maxSnoozes`, a snooze counts as a failed
   * attempt (retried after `ms`, or failed for good when it was the last).
   */
  retryAfter(ms: number): never;
  /**
   * Aborts when the attempt's time limit is reached or the service is
   * stopping past its shutdown timeout. Pass it to fetch and friends, and
   * stop work when it fires: the attempt then counts as failed.
   */
  readonly signal: AbortSignal;
  /**
   * Completes the task inside the caller's own transaction: the task's row is
   * deleted in `tx`, fenced by this attempt's lease, so the handler's writes
   * and the completion commit or roll back together. If `tx` commits, the
   * task never runs again. Throws `LeaseLostError` (and so aborts `tx`) when
   * the lease was lost to another worker. A task with a result schema
   * passes its result here (validated as `run`'s would be), stored in the
   * same commit; what `run` returns afterwards is not stored again.
   */
  // deno-lint-ignore no-explicit-any
  complete(tx: TransactionSql<any>, result?: unknown): Promise<void>;
  /**
   * The results of this task's parents in its flow (enqueueFlow's
   * `dependsOn`) that succeeded and are kept (a task with a result schema
   * keeps its result for its retention, an hour by default), in id order.
   * Given a task definition, only its parents of that definition, with
   * their results typed by its result schema.
   */
  parentResults<T extends AnyTask>(task: T): Promise<ParentResult<TaskResult<T>>[]>;
  parentResults(): Promise<ParentResult<unknown>[]>;
  /**
   * In a batch's completion task (enqueueBatch's `then`): how the members
   * ended. Null in any other task.
   */
  batch(): Promise<BatchOutcome | null>;
}

/** A parent's result, as `ctx.parentResults()` gives it. */
export interface ParentResult<R> {
  /** The parent's id. */
  id: string;
  /** The parent's task name. */
  name: string;
  result: R;
}

/** How a batch's members ended, as its completion task's `ctx.batch()` tells it. */
export interface BatchOutcome {
  /** The batch's id. */
  id: string;
  /** Members in all. */
  size: number;
  /** Members that succeeded. */
  succeeded: number;
  /** Members that failed for good or were cancelled. */
  failed: number;
  /** Their ids, in id order. */
  failedIds: string[];
}

/**
 * How the wait before a retry grows with the attempts: `fixed`,
 * `exponential`, or a function of the attempt that failed (from 1) and its
 * error, returning the wait in ms (a whole number from 0 to 7 days).
 */
export type RetryBackoff = "fixed" | "exponential" | ((attempt: number, error: unknown) => number);

/** What `run` may return: for a task with a result schema, that schema's input (what is validated and stored). */
export type RunReturn<R> = R extends StandardSchemaV1 ? StandardInput<R> | Promise<StandardInput<R>> : unknown;

/** A task: what `defineTask` takes and returns. `R` is its result schema, if it has one. */
export interface Task<S extends InputSchema = InputSchema, R extends InputSchema | undefined = InputSchema | undefined> {
  /** Stored in each queued row; unique among the tasks of one deployment. */
  readonly name: string;
  /** Validates and types the input at enqueue and again before each run. */
  readonly schema: S;
  /**
   * Runs one attempt. A throw, a rejection or a timeout fails the attempt.
   * With a `result` schema, what it resolves to is validated and stored as
   * the task's result.
   */
  run(input: StandardOutput<S>, ctx: TaskContext): RunReturn<R>;
  /**
   * The schema of the task's result (any Standard Schema). The value `run`
   * resolves to is validated by it (a value it refuses fails the attempt),
   * stored as JSON with the completion, and kept for `retention.completed`
   * (1 hour unless set), for `getTask` and `waitForResult`. Without it,
   * nothing is stored.
   */
  readonly result?: R;
  /** How long finished tasks are kept: `{ completed, failed }`, in ms (see {@link Retention}). */
  readonly retention?: Retention;
  /** Time limit of one attempt, in ms. @default the service's --timeout (30 s) */
  readonly timeout?: number;
  /** Wait before a retry, in ms (the first wait, with exponential backoff). @default the service's --retry-delay (5 s) */
  readonly retryDelay?: number;
  /**
   * `exponential` doubles the wait after every failed attempt, up to
   * `retryDelayMax`; a function `(attempt, error) => ms` decides it itself (a
   * throw or a value that is not a whole number of ms from 0 to 7 days falls
   * back to `retryDelay`, and is logged). @default "fixed"
   */
  readonly retryBackoff?: RetryBackoff;
  /** Cap of the exponential wait, in ms. @default 1 hour */
  readonly retryDelayMax?: number;
  /**
   * Spreads retries that would fall together (many tasks failing on one
   * outage): each wait is shortened by a random fraction of up to this much
   * of itself, from 0 (none) to 1 (anywhere from 0 to the wait). @default 0
   */
  readonly retryJitter?: number;
  /** Attempts before the task is kept as failed. @default the service's --max-attempts (25) */
  readonly maxAttempts?: number;
  /** Snoozes (ctx.retryAfter) not counted as attempts; further ones count. @default 100 */
  readonly maxSnoozes?: number;
  /** Queue the task is enqueued into unless `enqueue` names one. @default "default" */
  readonly queue?: string;
  /**
   * The task's group within its queue, from its input (a tenant or account
   * id, say): a string of 1-256 characters, or null or undefined for none.
   * Called at enqueue. Claims take from a queue's groups in turn, so one
   * group's backlog does not hold up the others, and a queue's group
   * limit caps how many tasks of each group run at once
   * (`setGroupConcurrency`). Not the dedup `key`.
   */
  readonly group?: (input: StandardInput<S>) => string | null | undefined;
  /** Priority unless `enqueue` gives one; lower runs first. @default 0 */
  readonly priority?: number;
  /** Largest payload accepted, in bytes of JSON. @default 1 MiB */
  readonly maxPayloadBytes?: number;
  /**
   * The version of this definition's input, stored with each task enqueued
   * (a whole number from 1). Raise it when the schema changes in a way old
   * inputs would fail, and give `upgrade`. @default 1
   */
  readonly version?: number;
  /**
   * Turns an input enqueued for an older `version` (`from`) into one of this
   * version, before the schema validates it. May return a promise. A throw
   * fails the attempt (it is retried: a later deploy may fix the function).
   * Without it, an older input is validated as it is.
   */
  readonly upgrade?: (input: unknown, from: number) => unknown;
  /**
   * Runs once each time the task fails for good (its last attempt failed, or
   * a PermanentError), as a task of its own named "<name>:on-failed", in the
   * task's queue: enqueued with the failure in one commit, retried like any
   * task, so that it survives crashes. The task's name may then be at most
   * 118 characters.
   */
  readonly onFailed?: (failed: FailedTask, ctx: TaskContext) => unknown | Promise<unknown>;
}

/** What an onFailed handler is told of the task that failed for good. */
export interface FailedTask {
  id: string;
  name: string;
  queue: string;
  /** Its input, as stored. */
  input: unknown;
  /** Attempts it made. */
  attempts: number;
  /** Its last error: name, message, attempt, at, and more. */
  error: { name?: string; message?: string; [field: string]: unknown } | null;
}

/** A task of any input type, as a worker's registry holds them. */
// deno-lint-ignore no-explicit-any
export type AnyTask = Task<any, any>;

/** The input `enqueue` accepts for a task: its schema's input type. */
export type TaskInput<T extends AnyTask> = T extends Task<infer S, infer _R> ? StandardInput<S> : never;

/** What `waitForResult` and `getTask` give as a task's result: its result schema's output. */
export type TaskResult<T extends AnyTask> = T extends Task<infer _S, infer R> ? (R extends StandardSchemaV1 ? StandardOutput<R> : null) : never;

// Names appear in logs, metrics labels and CLI arguments: keep them to a
// character set that needs no quoting anywhere.
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:\/-]{0,127}$/;

/** True when `name` is a valid task or queue name. */
export function isValidName(name: unknown): name is string {
  return typeof name === "string" && NAME.test(name);
}

/** The rule a task or queue name must follow, for error messages. */
export const NAME_RULE = "1-128 characters of A-Z a-z 0-9 _ . : / -, starting with a letter or digit";

function isInteger(value: unknown, min: number, max: number): boolean {
  return typeof value === "number" && Number.isInteger(value) && value >= min && value <= max;
}

/** The longest group name: the rule taskGroup checks, as the column's constraint does. */
export const MAX_GROUP_LENGTH = 256;

/**
 * The group `task` puts `input` in (null: none), from its `group`
 * function; throws `InvalidTaskError` naming the task when the function
 * throws or returns something that is not a group name.
 */
export function taskGroup(task: AnyTask, input: unknown, index?: number): string | null {
  if (!task.group) return null;
  const at = index === undefined ? "" : ` at index ${index}`;
  let group: unknown;
  try {
    group = (task.group as (input: unknown) => unknown)(input);
  } catch (error) {
    throw new InvalidTaskError(`task "${task.name}": group threw for the input${at}: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (group === undefined || group === null) return null;
  if (typeof group !== "string" || group.length < 1 || group.length > MAX_GROUP_LENGTH) {
    const shown = typeof group === "string" ? `a string of ${group.length} characters` : typeof group;
    throw new InvalidTaskError(`task "${task.name}": group returned ${shown} for the input${at}; it must return a string of 1-${MAX_GROUP_LENGTH} characters, or null for none`);
  }
  return group;
}

/** The longest name of a task with onFailed: its hook's name, the name and HOOK_SUFFIX, must fit a name's 128 characters. */
const MAX_HOOKED_NAME = 128 - HOOK_SUFFIX.length;

/**
 * Largest duration pgbg accepts, in ms: 7 days. A lease (timeout plus grace
 * periods) and a timer (limited to 2^31 - 1 ms, about 24 days) must still fit.
 */
export const MAX_DURATION = 7 * 24 * 3_600_000;

/**
 * Defines a task. Returns its argument unchanged, typed so that `enqueue`
 * accepts the schema's input type and `run` receives its output type.
 * Throws `InvalidTaskError` naming the field when the definition is malformed.
 *
 * @example
 * ```ts
 * const sendEmail = defineTask({
 *   name: "send-email",
 *   schema: v.object({ to: v.pipe(v.string(), v.email()) }),
 *   async run(input, ctx) { await mailer.send(input.to, { signal: ctx.signal }); },
 * });
 * ```
 */
export function defineTask<const S extends InputSchema, const R extends InputSchema | undefined = undefined>(task: Task<S, R>): Task<S, R> {
  checkTask(task);
  return task;
}

/** Checks a task definition field by field; throws `InvalidTaskError`. */
export function checkTask(task: unknown): asserts task is AnyTask {
  if (typeof task !== "object" || task === null) throw new InvalidTaskError("a task must be an object from defineTask()");
  const t = task as Record<string, unknown>;
  const label = typeof t.name === "string" ? `task "${t.name}"` : "task";
  if (!isValidName(t.name)) throw new InvalidTaskError(`${label}: name must be ${NAME_RULE}`);
  if (!isStandardSchema(t.schema)) {
    throw new InvalidTaskError(`${label}: schema must be a Standard Schema v1, such as one of valibot, zod (3.24 or later) or arktype`);
  }
  if (typeof t.run !== "function") throw new InvalidTaskError(`${label}: run must be a function`);
  if (t.result !== undefined && !isStandardSchema(t.result)) throw new InvalidTaskError(`${label}: result must be a Standard Schema v1, as schema is`);
  const retention = retentionProblem(t.retention);
  if (retention) throw new InvalidTaskError(`${label}: retention ${retention}`);
  if (t.onFailed !== undefined && typeof t.onFailed !== "function") throw new InvalidTaskError(`${label}: onFailed must be a function (failed, ctx) => …`);
  if (t.onFailed !== undefined && (t.name as string).length > MAX_HOOKED_NAME) {
    throw new InvalidTaskError(`${label}: a task with onFailed has a name of at most ${MAX_HOOKED_NAME} characters (its hook's is the name and "${HOOK_SUFFIX}")`);
  }
  const durations = ["timeout", "retryDelay", "retryDelayMax"] as const;
  for (const key of durations) {
    if (t[key] !== undefined && !isInteger(t[key], key === "timeout" ? 1 : 0, MAX_DURATION)) {
      throw new InvalidTaskError(`${label}: ${key} must be a whole number of milliseconds${key === "timeout" ? " above 0" : ""}, at most ${MAX_DURATION}`);
    }
  }
  if (t.retryBackoff !== undefined && t.retryBackoff !== "fixed" && t.retryBackoff !== "exponential" && typeof t.retryBackoff !== "function") {
    throw new InvalidTaskError(`${label}: retryBackoff must be "fixed", "exponential" or a function (attempt, error) => ms`);
  }
  if (t.retryJitter !== undefined && !(typeof t.retryJitter === "number" && t.retryJitter >= 0 && t.retryJitter <= 1)) {
    throw new InvalidTaskError(`${label}: retryJitter must be a number from 0 to 1`);
  }
  if (t.maxAttempts !== undefined && !isInteger(t.maxAttempts, 1, 2_147_483_647)) {
    throw new InvalidTaskError(`${label}: maxAttempts must be a whole number of at least 1`);
  }
  if (t.version !== undefined && !isInteger(t.version, 1, 2_147_483_647)) {
    throw new InvalidTaskError(`${label}: version must be a whole number of at least 1`);
  }
  if (t.upgrade !== undefined && typeof t.upgrade !== "function") throw new InvalidTaskError(`${label}: upgrade must be a function (input, from) => input`);
  if (t.maxSnoozes !== undefined && !isInteger(t.maxSnoozes, 0, 2_147_483_647)) {
    throw new InvalidTaskError(`${label}: maxSnoozes must be a whole number of at least 0`);
  }
  if (t.queue !== undefined && !isValidName(t.queue)) throw new InvalidTaskError(`${label}: queue must be ${NAME_RULE}`);
  if (t.group !== undefined && typeof t.group !== "function") throw new InvalidTaskError(`${label}: group must be a function (input) => string`);
  if (t.priority !== undefined && !isInteger(t.priority, -32768, 32767)) {
    throw new InvalidTaskError(`${label}: priority must be a whole number from -32768 to 32767`);
  }
  if (t.maxPayloadBytes !== undefined && !isInteger(t.maxPayloadBytes, 1, 1024 * 1024 * 1024 - 1)) {
    throw new InvalidTaskError(`${label}: maxPayloadBytes must be a whole number from 1 to 1073741823`);
  }
}
