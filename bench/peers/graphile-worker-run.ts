/**
 * One graphile-worker process for the bench, started by ./graphile-worker.ts
 * as `node --import tsx graphile-worker-run.ts` with DATABASE_URL and
 * BENCH_PEER_SETTINGS (JSON, see `GraphileRunSettings`) in its environment.
 *
 * It runs the task "noop". With `gate`, it loads everything, opens its
 * connections, prints "READY" and starts the worker only when a "GO" line
 * arrives on stdin: the drain's jobs are already queued, and a process that
 * booted first must not work (or even fetch) any before the clock, which
 * starts when all processes are ready. Without `gate`, it starts at once and
 * prints "READY" once its pool LISTENs. With `announce`, each job prints
 * `BENCH_START <i> <epoch ms>` for the latency measurement. With `pressure`,
 * it also runs the pressure bench's task "pressure" (bench/pressure.ts):
 * it reports each job's start and finish to the bench process and sleeps
 * 1 ms. The end of stdin, the parent gone, stops it as SIGTERM does.
 */
import { EventEmitter } from "node:events";
import process from "node:process";
import { Logger, run, type WorkerEvents } from "graphile-worker";
import pg from "pg";
import { passGate } from "./gate.ts";
import { reportFinish, reportStart } from "../pressure/reporter.js";

/** What the parent chooses for this process. */
export interface GraphileRunSettings {
  /** Jobs run at once in this process (`concurrency`). */
  concurrency: number;
  /** Connections in this process's pool. */
  maxPoolSize: number;
  /** `localQueue.size`: jobs fetched and locked per query; -1 turns batched fetching off. */
  localQueueSize: number;
  /** `completeJobBatchDelay` and `failJobBatchDelay` in ms; -1 turns batched completion off. */
  batchDelay: number;
  /** Start the worker only on "GO" from stdin. */
  gate: boolean;
  /** Print BENCH_START for every job. */
  announce: boolean;
  /** Also run the pressure bench's task. */
  pressure?: boolean;
}

const settings = JSON.parse(process.env.BENCH_PEER_SETTINGS ?? "{}") as GraphileRunSettings;

// The default logger prints a line per completed job, which would make the
// drain measure console output; warnings and errors still reach stderr.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

// The pool is ours so that some connections can be open before "GO": the
// clock should time the worker, not TCP and authentication. With the local
// queue the workers share a few (LISTEN, fetch, complete), so a few are
// opened; all of them would exhaust max_connections at higher settings.
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: settings.maxPoolSize });
pool.on("error", (error) => logger.error(`idle connection: ${error.message}`));
pool.on("connect", (client) => client.on("error", (error) => logger.error(`connection: ${error.message}`)));
const clients = await Promise.all(Array.from({ length: Math.min(4, settings.maxPoolSize) }, () => pool.connect()));
for (const client of clients) client.release();

await passGate(settings.gate);

// The pool only receives "new job" notifications once it LISTENs, so the
// latency figures mean nothing before that.
const events: WorkerEvents = new EventEmitter();
const listening = new Promise<void>((resolve) => events.once("pool:listen:success", () => resolve()));

/** The pressure bench's task: reports its start and finish around a 1 ms sleep. */
async function pressure(payload: unknown): Promise<void> {
  reportStart((payload as { t: number }).t);
  await new Promise((resolve) => setTimeout(resolve, 1));
  reportFinish();
}

const runner = await run({
  pgPool: pool,
  concurrency: settings.concurrency,
  // graphile-worker installs its own SIGTERM handler: it finishes or
  // releases the jobs it holds, then exits, which is what harness stop() expects.
  noHandleSignals: false,
  logger,
  events,
  preset: {
    worker: {
      localQueue: { size: settings.localQueueSize },
      completeJobBatchDelay: settings.batchDelay,
      failJobBatchDelay: settings.batchDelay,
    },
  },
  taskList: {
    noop(payload) {
      if (settings.announce) {
        process.stdout.write(`BENCH_START ${(payload as { i: number }).i} ${performance.timeOrigin + performance.now()}\n`);
      }
    },
    // Only in pressure runs, so that other runs fetch as before (the fetch
    // filters by the task names the worker knows).
    ...(settings.pressure ? { pressure } : {}),
  },
});
await listening;
if (!settings.gate) process.stdout.write("READY\n");
await runner.promise;
await pool.end();
