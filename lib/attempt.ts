/**
 * One attempt of one task: validates the stored input, runs the handler with
 * its context, and enforces the time limit through `ctx.signal`.
 *
 * @module
 */
import * as v from "valibot";
import type { TransactionSql } from "postgres";
import type { AnyTask, TaskContext } from "./define.ts";
import { InvalidInputError, LeaseLostError } from "./errors.ts";
import { toInputIssues } from "./input.ts";
import type { ClaimedTask } from "./claim.ts";
import { run } from "./statements.ts";

/** How an attempt ended. */
export type Outcome =
  | { kind: "success" }
  | { kind: "failure"; error: unknown; permanent: boolean; timedOut: boolean };

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
 * Starts an attempt. The returned promise settles when the handler settles,
 * but an attempt that reached its timeout is reported as failed whatever the
 * handler did afterwards. `onOverdue` fires if the handler is still running
 * `grace` ms after the timeout, that is, it ignored its abort signal.
 */
export function startAttempt(options: {
  task: AnyTask;
  claimed: ClaimedTask;
  schema: string;
  timeout: number;
  grace: number;
  controller: LazyAbort;
  onOverdue: () => void;
}): Promise<Outcome> {
  const { task, claimed, schema, timeout, grace, controller } = options;
  let timedOut = false;
  let overdue: ReturnType<typeof setTimeout> | undefined;
  const deadline = setTimeout(() => {
    timedOut = true;
    controller.abort(new TaskTimeoutError(timeout));
    overdue = setTimeout(options.onOverdue, grace);
  }, timeout);

  const ctx: TaskContext = {
    id: claimed.id,
    name: claimed.name,
    queue: claimed.queue,
    attempt: claimed.attempt,
    get signal() {
      return controller.signal;
    },
    // deno-lint-ignore no-explicit-any
    async complete(tx: TransactionSql<any>) {
      const rows = await run(tx, schema, "CompleteTaskInTransaction", [claimed.id, claimed.leaseToken]);
      if (!rows.length) throw new LeaseLostError(claimed.id);
    },
  };

  const attempt = async (): Promise<Outcome> => {
    // The input is validated again: the schema may have changed since the
    // task was enqueued, and then no retry can help.
    const parsed = task.schema.async
      ? await v.safeParseAsync(task.schema, claimed.payload)
      : v.safeParse(task.schema as v.GenericSchema, claimed.payload);
    if (!parsed.success) {
      return { kind: "failure", error: new InvalidInputError(task.name, toInputIssues(parsed.issues)), permanent: true, timedOut: false };
    }
    await task.run(parsed.output, ctx);
    return { kind: "success" };
  };

  return attempt()
    .catch((error: unknown): Outcome => ({ kind: "failure", error, permanent: false, timedOut: false }))
    .then((outcome): Outcome => {
      clearTimeout(deadline);
      clearTimeout(overdue);
      if (timedOut) return { kind: "failure", error: controller.reason, permanent: false, timedOut: true };
      return outcome;
    });
}
