/**
 * `waitForResult`: waits, from any process, for a task to end and gives its
 * result. Woken by a notification from the statement that ends the task
 * (only sent for a task someone waits for, so a drain nobody waits on pays
 * nothing), and reading the task again every poll interval besides, so
 * that it also works where no notification arrives (PgBouncer in
 * transaction mode, a dropped connection, a task ended by a rescue).
 *
 * @module
 */
import type { Sql } from "postgres";
import { isTaskId, readTask } from "./admin.ts";
import { defaults } from "./config.ts";
import { MAX_DURATION } from "./define.ts";
import { InvalidOptionsError, WaitError } from "./errors.ts";
import { checkedLater, checkOptions, formatValue, integer, ofType } from "./options.ts";
import { checkSchemaName, run } from "./statements.ts";

/** The channel waiters listen on; the payload is the task's id. */
const CHANNEL = "pgbg_result";

/** Options of {@link waitForResult}. */
export interface WaitOptions {
  /** Give up after this many ms, rejecting with code PGBG_WAIT_TIMEOUT (the task goes on). @default no limit */
  timeout?: number;
  /** Aborting it ends the wait, rejecting with the signal's reason. */
  signal?: AbortSignal;
  /** How often the task is read again when no notification came, in ms. @default 1 s */
  pollInterval?: number;
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
  /**
   * `sql` reaches a pooler in transaction mode (PgBouncer's `pool_mode =
   * transaction`): no LISTEN, which would stay on a server session the
   * pooler lends to others; the wait polls, every `pollInterval`.
   * @default false
   */
  transactionPooling?: boolean;
}

const checks = {
  timeout: integer(0, MAX_DURATION),
  signal: (v: unknown) => (v instanceof AbortSignal ? undefined : `must be an AbortSignal, got ${formatValue(v)}`),
  pollInterval: integer(10, 600_000),
  schema: checkedLater,
  transactionPooling: ofType("boolean"),
};

/**
 * Waits until task `id` ends. Resolves with its result (its result schema's
 * output; null for a task without one that keeps its history). Rejects with
 * a {@link WaitError}: `PGBG_TASK_FAILED` when it failed for good (with its
 * last error), `PGBG_TASK_CANCELLED`, `PGBG_TASK_UNKNOWN` when no such task
 * is queued or kept (never enqueued, past its retention, or completed
 * without a result schema or a retention), `PGBG_WAIT_TIMEOUT`. `sql` must
 * be a client, not a transaction: the wait listens on a connection of its
 * own and must see other transactions' commits.
 *
 * @example
 * ```ts
 * const id = await enqueue(sql, resizeImage, { url });
 * const { width, height } = await waitForResult<{ width: number; height: number }>(sql, id, { timeout: 30_000 });
 * ```
 */
// deno-lint-ignore no-explicit-any
export async function waitForResult<T = unknown>(sql: Sql<any>, id: string, options?: WaitOptions): Promise<T> {
  const o = checkOptions<WaitOptions>("waitForResult()", options, checks);
  const schema = checkSchemaName(o.schema ?? defaults.schema);
  if (!isTaskId(id)) {
    throw new InvalidOptionsError(`waitForResult(): ${formatValue(id)} is not a task id (the decimal string enqueue() returned)`);
  }
  o.signal?.throwIfAborted();
  const deadline = o.timeout === undefined ? Number.POSITIVE_INFINITY : Date.now() + o.timeout;
  const waker = new Waker();
  const listening = o.transactionPooling ? undefined : await listen(sql, id, waker);
  const registered = await run(sql, schema, "AddResultWaiter", [id, CHANNEL]).then(() => true, () => false);
  try {
    for (;;) {
      waker.reset();
      const task = await readTask(sql, schema, id);
      if (!task) throw new WaitError("PGBG_TASK_UNKNOWN", id, `task ${id} is not known: never enqueued, past its retention, or completed without keeping its history (give the task a result schema or a retention)`);
      if (task.state === "completed") return task.result as T;
      if (task.state === "cancelled") throw new WaitError("PGBG_TASK_CANCELLED", id, `task ${id} was cancelled`, task.lastError);
      if (task.state === "failed") {
        const why = task.lastError?.message ? `: ${task.lastError.message}` : "";
        throw new WaitError("PGBG_TASK_FAILED", id, `task ${id} failed for good after ${task.attempts} attempt(s)${why}`, task.lastError);
      }
      if (Date.now() >= deadline) throw new WaitError("PGBG_WAIT_TIMEOUT", id, `task ${id} did not end within ${o.timeout} ms; it is ${task.state}`, task.lastError);
      await waker.sleep(Math.min(o.pollInterval ?? 1_000, deadline - Date.now()), o.signal);
    }
  } finally {
    await listening?.unlisten().catch(() => {});
    if (registered) await run(sql, schema, "RemoveResultWaiter", [id, CHANNEL]).catch(() => {});
  }
}

/** Listens for the end of task `id`; undefined where LISTEN is not available (the wait then polls). */
// deno-lint-ignore no-explicit-any
async function listen(sql: Sql<any>, id: string, waker: Waker): Promise<{ unlisten(): Promise<void> } | undefined> {
  try {
    return await sql.listen(CHANNEL, (payload) => {
      if (payload === id) waker.wake();
    });
  } catch {
    return undefined;
  }
}

/** A sleep that a notification ends early, even one that came before it began. */
class Waker {
  #woken = false;
  #wake: (() => void) | undefined;

  reset(): void {
    this.#woken = false;
  }

  wake(): void {
    this.#woken = true;
    this.#wake?.();
  }

  /** Resolves after `ms`, at a wake-up, or rejects when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#woken) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const end = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", abort);
        this.#wake = undefined;
      };
      const abort = () => {
        end();
        reject(signal!.reason);
      };
      const timer = setTimeout(() => {
        end();
        resolve();
      }, Math.max(0, ms));
      this.#wake = () => {
        end();
        resolve();
      };
      signal?.addEventListener("abort", abort, { once: true });
    });
  }
}
