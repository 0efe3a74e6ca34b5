/**
 * One attempt of one task: validates the stored input, runs the handler with
 * its context, and enforces the time limit through `ctx.signal`.
 *
 * @module
 */
import type { TransactionSql } from "postgres";
import { type AnyTask, type BatchOutcome, checkTask, MAX_DURATION, type ParentResult, type TaskContext, type TaskResult } from "./define.ts";
import type { DatabaseClient } from "./client.ts";
import { InputVersionError, InvalidInputError, InvalidOptionsError, InvalidResultError, isPermanentError, LeaseLostError } from "./errors.ts";
import { encodeResult } from "./result.ts";
import { formatValue } from "./options.ts";
import { isThenable, validateInput } from "./input.ts";
import type { ClaimedTask } from "./claim.ts";
import { run } from "./statements.ts";
import { startAttemptSpan, type TracedOutcome } from "./tracing.ts";

/** How an attempt ended. */
export type Outcome =
  | { kind: "success"; result?: string }
  | { kind: "failure"; error: unknown; permanent: boolean; timedOut: boolean }
  | { kind: "snooze"; delay: number };

/** What ctx.retryAfter throws: ends the attempt as a snooze of `delay` ms. Not an Error: nothing but the attempt should catch it. */
class SnoozeSignal {
  constructor(readonly delay: number) {}
}

/** The abort reason of an attempt that reached its time limit. */
export class TaskTimeoutError extends Error {
  constructor(timeout: number) {
    super(`the task did not finish within its timeout of ${timeout} ms`);
    this.name = "TaskTimeoutError";
  }
}

/**
 * An abort controller made only when a handler reads `ctx.signal`. Many
 * handlers of short tasks never do, and making the signal was about 3 % of
 * a draining worker's CPU in profiles (bench/RESULTS.md).
 */
export class LazyAbort {
  #controller: AbortController | undefined;
  #aborted = false;
  #reason: unknown;

  /** The signal, made on first use (already aborted if abort() came first). */
  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.#aborted) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  /** The reason given to abort(), if it was called. */
  get reason(): unknown {
    return this.#reason;
  }

  /** Aborts once; later calls change nothing. */
  abort(reason: unknown): void {
    if (this.#aborted) return;
    this.#aborted = true;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }
}

/**
 * Starts an attempt and calls `done` with its outcome once, when it ends. An
 * attempt whose handler returned without a promise (or threw, or whose input
 * was invalid) ends before this returns, and it returns undefined; otherwise
 * it returns a promise that settles after `done` was called.
 *
 * An attempt that reached its timeout is reported as failed whatever the
 * handler did afterwards. `onOverdue` fires if the handler is still running
 * `grace` ms after the timeout, that is, it ignored its abort signal.
 *
 * A draining worker starts thousands of attempts a second, so this is written
 * for few allocations: no promise and no timer for a handler that returns
 * synchronously, and one promise besides the handler's own otherwise (the
 * chain of async wrappers it replaced was a third of a worker's garbage).
 */
export function startAttempt(options: AttemptOptions, done: (outcome: Outcome) => void): Promise<void> | undefined {
  const span = startAttemptSpan(options.claimed);
  if (!span) return attempt(options, done);
  return span.run(() =>
    attempt(options, (outcome) => {
      span.end(tracedOutcome(outcome), outcome.kind === "failure" ? outcome.error : undefined);
      done(outcome);
    })
  );
}

/** How an outcome reads on its span. */
function tracedOutcome(outcome: Outcome): TracedOutcome {
  if (outcome.kind !== "failure") return outcome.kind;
  return outcome.timedOut ? "timeout" : outcome.permanent ? "permanent-failure" : "failure";
}

/** The attempt itself: see {@link startAttempt}. */
function attempt(options: AttemptOptions, done: (outcome: Outcome) => void): Promise<void> | undefined {
  const { task, claimed } = options;
  const startedAt = Date.now();
  const ctx = new AttemptContext(claimed, options);
  let input: unknown;
  try {
    // The input is validated again: the schema may have changed since the
    // task was enqueued, and then no retry can help (invalid input fails
    // the task for good), unless the definition upgrades older inputs.
    input = inputOf(task, claimed);
  } catch (error) {
    done(validationFailure(error));
    return undefined;
  }
  if (isThenable(input)) {
    return Promise.resolve(input).then(
      (output) => runHandler(output, ctx, options, startedAt, done),
      (error: unknown) => done(validationFailure(error)),
    );
  }
  return runHandler(input, ctx, options, startedAt, done);
}

/**
 * The claimed task's input, upgraded from the version it was enqueued for
 * when older and validated: at once, or as a promise when the upgrade or
 * the schema is async. An input newer than the definition throws
 * {@link InputVersionError} (a worker of the newer release will run it).
 */
function inputOf(task: AnyTask, claimed: ClaimedTask): unknown {
  const from = claimed.inputVersion;
  const current = task.version ?? 1;
  if (from === current || (from < current && !task.upgrade)) return validateInput(task, claimed.payload);
  if (from > current) throw new InputVersionError(task.name, from, current);
  const upgraded = task.upgrade!(claimed.payload, from);
  return isThenable(upgraded) ? Promise.resolve(upgraded).then((input) => validateInput(task, input)) : validateInput(task, upgraded);
}

/** Calls the handler on a validated input; as startAttempt, returns a promise only for a handler that returned one. */
function runHandler(input: unknown, ctx: AttemptContext, options: AttemptOptions, startedAt: number, done: (outcome: Outcome) => void): Promise<void> | undefined {
  let result: unknown;
  try {
    result = options.task.run(input, ctx);
  } catch (error) {
    done(failure(error));
    return undefined;
  }
  if (isThenable(result)) return watch(result, options, startedAt, done);
  // A result schema may validate asynchronously: then under the time limit
  // too, as the handler's own promise would be.
  if (options.task.result) return watch(Promise.resolve(result), options, startedAt, done);
  done(SUCCESS);
  return undefined;
}

/**
 * The success outcome carrying the result of `value`, or the failure of an
 * invalid one; a promise when the schema is async. After ctx.complete(tx,
 * result), the result given there (stored if `tx` committed; stored by the
 * worker's completion if it rolled back).
 */
function resultOutcome(options: AttemptOptions, value: unknown): Outcome | Promise<Outcome> {
  const { task, claimed } = options;
  if (claimed.completedInTransaction) return { kind: "success", result: claimed.completedResult };
  try {
    const result = encodeResult(task, value);
    if (!isThenable(result)) return { kind: "success", result };
    return Promise.resolve(result).then((r): Outcome => ({ kind: "success", result: r }), failure);
  } catch (error) {
    return failure(error);
  }
}

/** What an attempt needs besides its `done` callback. */
export interface AttemptOptions {
  task: AnyTask;
  claimed: ClaimedTask;
  /** The pgbg schema, for ctx.complete. */
  schema: string;
  /** The worker's database, for ctx.parentResults and ctx.batch. */
  sql: DatabaseClient;
  /** How long the task is kept once completed, in ms (0 or none: not), for ctx.complete. */
  keep?: number;
  /** The worker, for ctx.complete of a task a claim row holds (its fence). */
  workerId?: string;
  timeout: number;
  grace: number;
  controller: LazyAbort;
  onOverdue: () => void;
}

/** The outcome of every attempt that succeeded: one object, not one per task. */
const SUCCESS: Outcome = Object.freeze({ kind: "success" });

function failure(error: unknown): Outcome {
  if (error instanceof SnoozeSignal) return { kind: "snooze", delay: error.delay };
  return { kind: "failure", error, permanent: isPermanentError(error), timedOut: false };
}

/** An input the schema refused fails the task for good; a schema that threw fails only the attempt. */
function validationFailure(error: unknown): Outcome {
  return error instanceof InvalidInputError ? { kind: "failure", error, permanent: true, timedOut: false } : failure(error);
}

/**
 * Waits for a handler's promise under the attempt's time limit, counted from
 * `startedAt` (the handler's synchronous part already ran).
 */
function watch(result: unknown, options: AttemptOptions, startedAt: number, done: (outcome: Outcome) => void): Promise<void> | undefined {
  if (!isThenable(result)) {
    done(SUCCESS);
    return undefined;
  }
  const { timeout, grace, controller } = options;
  let timedOut = false;
  let overdue: ReturnType<typeof setTimeout> | undefined;
  const deadline = setTimeout(() => {
    timedOut = true;
    controller.abort(new TaskTimeoutError(timeout));
    overdue = setTimeout(options.onOverdue, grace);
  }, Math.max(0, timeout - (Date.now() - startedAt)));
  const end = (outcome: Outcome) => {
    clearTimeout(deadline);
    clearTimeout(overdue);
    done(timedOut ? { kind: "failure", error: controller.reason, permanent: false, timedOut: true } : outcome);
  };
  const settled = options.task.result
    ? (value: unknown) => {
      const outcome = resultOutcome(options, value);
      return isThenable(outcome) ? outcome.then(end) : end(outcome);
    }
    : () => end(SUCCESS);
  return Promise.resolve(result).then(settled, (error: unknown) => end(failure(error)));
}

/** The `ctx` of one attempt; a class, so that an attempt allocates one object and no closures for it. */
class AttemptContext implements TaskContext {
  readonly id: string;
  readonly name: string;
  readonly queue: string;
  readonly group: string | null;
  readonly attempt: number;
  readonly snoozes: number;
  readonly #leaseToken: number;
  readonly #claimed: ClaimedTask;
  readonly #options: AttemptOptions;

  constructor(claimed: ClaimedTask, options: AttemptOptions) {
    this.id = claimed.id;
    this.name = claimed.name;
    this.queue = claimed.queue;
    this.group = claimed.group;
    this.attempt = claimed.attempt;
    this.snoozes = claimed.snoozes;
    this.#claimed = claimed;
    this.#leaseToken = claimed.leaseToken;
    this.#options = options;
  }

  get signal(): AbortSignal {
    return this.#options.controller.signal;
  }

  retryAfter(ms: number): never {
    if (typeof ms !== "number" || !Number.isInteger(ms) || ms < 0 || ms > MAX_DURATION) {
      throw new InvalidOptionsError(`ctx.retryAfter(): ms must be a whole number of milliseconds from 0 to ${MAX_DURATION}, got ${formatValue(ms)}`);
    }
    throw new SnoozeSignal(ms);
  }

  // deno-lint-ignore no-explicit-any
  async complete(tx: TransactionSql<any>, result?: unknown): Promise<void> {
    const { task, schema, keep } = this.#options;
    if (result !== undefined && !task.result) {
      throw new InvalidResultError(task.name, "ctx.complete(tx, result) was given a result, but the task has no result schema (its `result` option)");
    }
    const encoded = task.result ? await encodeResult(task, result) : undefined;
    const token = await this.#leaseIn(tx);
    const rows = keep
      ? await run(tx, schema, "CompleteKeptTaskInTransaction", [this.id, token, encoded ?? null, keep, this.#claimed.claimedAtMs])
      : await run(tx, schema, this.#claimed.batchThen === null ? "CompleteTaskInTransaction" : "CompleteBatchTaskInTransaction", [this.id, token]);
    if (!rows.length) throw new LeaseLostError(this.id);
    this.#claimed.completedInTransaction = true;
    this.#claimed.completedResult = encoded;
  }

  /**
   * The lease token that fences this attempt's writes in `tx`: its own, or,
   * for a task a claim row holds, the one a lease of its own gives it in
   * `tx` (LeaseClaimedTask), so that the completion is the row leases' one
   * and commits or rolls back with it.
   */
  // deno-lint-ignore no-explicit-any
  async #leaseIn(tx: TransactionSql<any>): Promise<number> {
    if (this.#claimed.claimId === null) return this.#leaseToken;
    const rows = await run<{ lease_token: number }>(tx, this.#options.schema, "LeaseClaimedTask", [this.id, this.#claimed.claimId, this.#options.workerId]);
    if (!rows.length) throw new LeaseLostError(this.id);
    return rows[0].lease_token;
  }

  parentResults<T extends AnyTask>(task?: T): Promise<ParentResult<TaskResult<T>>[]>;
  async parentResults(task?: AnyTask): Promise<ParentResult<unknown>[]> {
    if (task !== undefined) checkTask(task);
    const rows = await run<{ id: unknown; name: string; result: unknown }>(this.#options.sql, this.#options.schema, "ParentResults", [this.id]);
    return rows.filter((r) => task === undefined || r.name === task.name).map((r) => ({ id: String(r.id), name: r.name, result: r.result }));
  }

  async batch(): Promise<BatchOutcome | null> {
    const rows = await run<{ id: unknown; size: number; failed_ids: unknown[] }>(this.#options.sql, this.#options.schema, "BatchOutcome", [this.id]);
    if (!rows.length) return null;
    const failedIds = rows[0].failed_ids.map(String);
    return { id: String(rows[0].id), size: rows[0].size, succeeded: rows[0].size - failedIds.length, failed: failedIds.length, failedIds };
  }
}
