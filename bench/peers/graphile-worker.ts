/**
 * graphile-worker under the bench: enqueue through a WorkerUtils in this
 * process, drain and latency through real worker subprocesses
 * (./graphile-worker-run.ts), configured as graphile-worker's performance
 * docs advise (https://worker.graphile.org/docs/performance).
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Logger, makeWorkerUtils, runMigrations, type WorkerUtils } from "graphile-worker";
import pg from "pg";
import { type Database, inFlight, type Server, since, stop } from "../harness.ts";
import type { DrainResult, Subject } from "../subject.ts";
import type { GraphileRunSettings } from "./graphile-worker-run.ts";
import { sampleLatencies, timedDrain, WorkerProcess } from "./worker-process.ts";

// The package exports no "./package.json", so read it beside its entry point.
const version: string = JSON.parse(
  readFileSync(new URL("../package.json", pathToFileURL(createRequire(import.meta.url).resolve("graphile-worker"))), "utf8"),
).version;
const script = fileURLToPath(new URL("./graphile-worker-run.ts", import.meta.url));
const TASK = "noop";

/**
 * The worker processes' settings. The performance docs reach their figures
 * with concurrentJobs 24, maxPoolSize 25, localQueue.size 500 and
 * completeJobBatchDelay = failJobBatchDelay = 0: the local queue fetches and
 * locks many jobs per query, and the batch delays complete a tick's finished
 * jobs in one statement. The docs call a much larger local queue sensible
 * for very high throughput of very fast tasks, which a drain of no-ops is;
 * on the 2-core bench machine 5,000 drained 100,000 jobs 1.5 to 2 times as
 * fast as 500 (1,000 and 2,000 fell between; 10,000 gained nothing;
 * concurrency 50 was no faster than 24, nor 1 or 3 processes than 2). pollInterval stays at its default:
 * new jobs arrive by LISTEN/NOTIFY, polling only finds future and retried ones.
 */
const workerSettings = { concurrency: 24, maxPoolSize: 25, localQueueSize: 5_000, batchDelay: 0 };

/** Worker processes for the drain: BENCH_PEER_PROCESSES, else one per core of the 2-core bench machine. */
function processCount(): number {
  const p = Number(process.env.BENCH_PEER_PROCESSES ?? 2);
  if (!Number.isInteger(p) || p < 1) throw new Error(`BENCH_PEER_PROCESSES must be a positive integer, not ${process.env.BENCH_PEER_PROCESSES}`);
  return p;
}

// Library logging would print into the bench's progress output; only trouble matters.
const quiet = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

/**
 * A pg pool of `connections` for `db` whose `close()` returns only once
 * every connection is closed. graphile-worker gets this pool rather than
 * making its own because its release ends its pool without waiting: the
 * bench's DROP DATABASE … WITH (FORCE) right after would then terminate
 * connections still open, and pg's `end()` alone does not wait for them
 * either.
 */
export function ownPool(db: Database, connections: number): { pool: pg.Pool; close(): Promise<void> } {
  const pool = new pg.Pool({ connectionString: db.url, max: connections });
  const closed: Promise<void>[] = [];
  // graphile-worker asks for both handlers; a failed connection is dropped
  // by the pool, and the next query on it reports the error.
  pool.on("error", () => {});
  pool.on("connect", (client) => {
    client.on("error", () => {});
    closed.push(new Promise((resolve) => client.once("end", () => resolve())));
  });
  return {
    pool,
    async close() {
      await pool.end();
      await Promise.all(closed);
    },
  };
}

/** Runs `fn` with a WorkerUtils on a pool of `connections` for `db`. */
async function withUtils<T>(db: Database, connections: number, fn: (utils: WorkerUtils) => Promise<T>): Promise<T> {
  const { pool, close } = ownPool(db, connections);
  try {
    const utils = await makeWorkerUtils({ pgPool: pool, logger: quiet });
    try {
      return await fn(utils);
    } finally {
      await utils.release();
    }
  } finally {
    await close();
  }
}

/** Adds jobs `from`..`from + count - 1` in one `addJobs` call (one statement). */
function addBatch(utils: WorkerUtils, from: number, count: number) {
  return utils.addJobs(Array.from({ length: count }, (_, k) => ({ identifier: TASK, payload: { i: from + k } })));
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** graphile-worker as a bench subject. */
export const graphileWorker: Subject = {
  name: "graphile-worker",
  version,

  async setup(db) {
    const { pool, close } = ownPool(db, 2);
    try {
      await runMigrations({ pgPool: pool, logger: quiet });
    } finally {
      await close();
    }
  },

  enqueueSingle(db, n, parallel) {
    // A pool as large as the calls in flight, so that none waits for a connection.
    return withUtils(db, Math.max(10, parallel), async (utils) => {
      const t0 = performance.now();
      await inFlight(n, parallel, (i) => utils.addJob(TASK, { i }));
      return since(t0);
    });
  },

  enqueueBatch(db, n, batch) {
    return withUtils(db, 2, async (utils) => {
      const t0 = performance.now();
      for (let done = 0; done < n; done += batch) await addBatch(utils, done, Math.min(batch, n - done));
      return since(t0);
    });
  },

  async drain(db: Database, server: Server, n: number): Promise<DrainResult> {
    await withUtils(db, 2, async (utils) => {
      for (let done = 0; done < n; done += 10_000) await addBatch(utils, done, Math.min(10_000, n - done));
    });
    const p = processCount();
    const workers = Array.from({ length: p }, () => new WorkerProcess("graphile-worker", script, { ...workerSettings, gate: true, announce: false } satisfies GraphileRunSettings, db.url));
    // Completed jobs are deleted, so an empty table is a drained queue.
    // The probe reads the newest id from the primary key: those jobs run
    // last, so it finds one at once until the very end, where a
    // sequential scan would wade through every row the drain deleted,
    // twenty times a second, on the server being measured.
    return timedDrain("graphile-worker", workers, server, n, async () =>
      (await db.sql`SELECT id FROM graphile_worker._private_jobs ORDER BY id DESC LIMIT 1`).length > 0,
      `${p} processes × ${workerSettings.concurrency}, local queue ${workerSettings.localQueueSize}`);
  },

  async latency(db, samples) {
    // The same process settings as the drain: the docs measure their
    // latency figure with the local queue and batched completion on.
    const worker = new WorkerProcess("graphile-worker", script, { ...workerSettings, gate: false, announce: true } satisfies GraphileRunSettings, db.url);
    try {
      await worker.ready();
      // Let the pool settle into waiting on NOTIFY before the first sample.
      await sleep(1_000);
      return await withUtils(db, 2, (utils) => sampleLatencies(worker, samples, (i) => utils.addJob(TASK, { i }), () => sleep(30)));
    } finally {
      await stop(worker);
    }
  },
};
