/**
 * `drain`: runs the tasks that are due now in this process, on the worker
 * engine, until none is left: for tests and scripts, as graphile-worker's
 * `runOnce` or Oban's `drain_queue`.
 *
 * @module
 */
import { hostname } from "node:os";
import process from "node:process";
import type { Sql } from "postgres";
import { InvalidOptionsError } from "./errors.ts";
import { cloneClient, fetchTypesOnce } from "./host.ts";
import { liveness } from "./liveness.ts";
import { checkOptions, integer } from "./options.ts";
import { runtimeName } from "./runtime.ts";
import { run } from "./statements.ts";
import type { SeriesCounts } from "./stats.ts";
import { resolveWorkerOptions, type WorkerHostOptions } from "./worker-options.ts";
import { Worker } from "./worker.ts";

/** Options of {@link drain}: those of `createWorker` but `signal` and `compactInterval`, and `maxWait`. */
export interface DrainOptions extends Omit<WorkerHostOptions, "signal" | "compactInterval" | "listenUrl"> {
  /** Also wait for tasks (such as retries) that fall due within this many ms of the start. @default 0 */
  maxWait?: number;
}

/** What {@link drain} did. */
export interface DrainResult {
  /** Attempts run. */
  ran: number;
  /** Attempts that succeeded (their tasks are done). */
  succeeded: number;
  /** Attempts that failed, whether the task was retried or kept as failed. */
  failed: number;
  /** Tasks of these names and queues still queued for a later time. */
  scheduled: number;
}

/**
 * Runs the due tasks of `tasks` (in `queues`, default every queue) until
 * none is due, then resolves with what ran. Retries that fall due within
 * `maxWait` ms of the start are waited for and run too. The attempts run
 * as under `pgbg serve`: leased, fenced, their outcomes written before this
 * resolves. Throws `InvalidOptionsError` for bad options and
 * `SchemaError` when the schema is not migrated.
 *
 * @example
 * ```ts
 * await enqueue(sql, sendEmail, { to: "a@b.c", subject: "hi" });
 * const result = await drain(sql, { tasks: [sendEmail] });
 * // result: { ran: 1, succeeded: 1, failed: 0, scheduled: 0 }
 * ```
 */
// deno-lint-ignore no-explicit-any
export async function drain(sql: Sql<any>, options: DrainOptions): Promise<DrainResult> {
  const { maxWait, ...rest } = (options ?? {}) as DrainOptions;
  checkOptions("drain()", { maxWait }, { maxWait: integer(0, 7 * 24 * 3_600_000) });
  if ((rest as WorkerHostOptions).listenUrl !== undefined) throw new InvalidOptionsError("drain(): option \"listenUrl\" is not one of drain's: a drain never LISTENs");
  const o = resolveWorkerOptions("drain()", rest);
  const pool = cloneClient(sql, o.poolSize, "pgbg drain", o.transactionPooling);
  const totals = { ran: 0, succeeded: 0, failed: 0 };
  try {
    await fetchTypesOnce(pool);
    const worker = new Worker({
      ...o, sql: pool, log: o.logger, overdue: "detach", untilIdle: { maxWait: maxWait ?? 0 }, timings: liveness(o.checkInterval),
      identity: { workerId: crypto.randomUUID(), hostId: crypto.randomUUID(), hostname: hostname(), runtime: runtimeName(), pid: process.pid },
      onReport: (report) => report.counts.forEach((c) => addCounts(totals, c)),
    });
    await worker.start();
    const [left] = await run<{ scheduled: number }>(pool, o.schema, "ScheduledTasks", [o.queues, o.tasks.map((t) => t.name)]);
    return { ...totals, scheduled: left.scheduled };
  } finally {
    await pool.end({ timeout: 2 });
  }
}

function addCounts(totals: Omit<DrainResult, "scheduled">, c: SeriesCounts): void {
  totals.ran += c.lag.counts.reduce((a, b) => a + b, 0);
  totals.succeeded += c.completed;
  totals.failed += c.failed + c.retried;
}
