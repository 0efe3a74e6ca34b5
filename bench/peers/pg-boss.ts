/**
 * pg-boss under the bench: enqueue through a PgBoss instance in this
 * process, drain and latency through real worker subprocesses
 * (./pg-boss-run.ts) that batch their fetches and completions as
 * pg-boss's `work()` options allow.
 */
import { createRequire } from "node:module";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { PgBoss } from "pg-boss";
import { type Database, inFlight, type Server, since, stop, waitFor } from "../harness.ts";
import type { DrainResult, Subject } from "../subject.ts";
import type { PgBossRunSettings } from "./pg-boss-run.ts";
import { sampleLatencies, timedDrain, WorkerProcess } from "./worker-process.ts";

const version: string = createRequire(import.meta.url)("pg-boss/package.json").version;
const script = fileURLToPath(new URL("./pg-boss-run.ts", import.meta.url));
const QUEUE = "noop";

/**
 * The worker processes' settings. Each fetch claims `batchSize` jobs, the
 * handler gets them as one array, and pg-boss completes them in one
 * statement; `localConcurrency` runs that many fetch loops per process, and
 * `burstWhenBatchFull` (set in pg-boss-run.ts) refetches at once after a
 * full batch. On the 2-core bench machine batches of 1,000 to 5,000 drained
 * 100,000 jobs two to three times as fast as batches of 100, and 2 loops of
 * 2,000 were the fastest of those tried (1 or 2 loops, 1,000/2,000/5,000;
 * 4 or 8 loops of 100 were the slowest). New jobs are found by polling,
 * pg-boss's default (its LISTEN/NOTIFY wake-up is opt-in, per instance and
 * per queue), at 0.5 s, the smallest `pollingIntervalSeconds` its docs allow.
 */
const workerSettings = { queue: QUEUE, localConcurrency: 2, batchSize: 2_000, pollingIntervalSeconds: 0.5, poolSize: 10 };

/** Worker processes for the drain: BENCH_PEER_PROCESSES, else one per core of the 2-core bench machine. */
function processCount(): number {
  const p = Number(process.env.BENCH_PEER_PROCESSES ?? 2);
  if (!Number.isInteger(p) || p < 1) throw new Error(`BENCH_PEER_PROCESSES must be a positive integer, not ${process.env.BENCH_PEER_PROCESSES}`);
  return p;
}

/** The application_name of the bench process's own PgBoss connections, to tell when they are gone. */
const SENDER = "pgbg-bench pg-boss";

/**
 * A started PgBoss for the bench process; `connections` sizes its pool, and
 * `install` lets `start()` install the schema. Maintenance and cron are off:
 * they belong to the workers, and would only add their own queries to the
 * enqueue figures.
 */
async function senderFor(db: Database, connections = 10, install = false): Promise<PgBoss> {
  const boss = new PgBoss({
    connectionString: db.url,
    application_name: SENDER,
    max: connections,
    supervise: false,
    schedule: false,
    migrate: install,
  });
  boss.on("error", (error) => process.stderr.write(`pg-boss error: ${error}\n`));
  await boss.start();
  return boss;
}

/**
 * Stops a PgBoss from `senderFor` and waits until the server has seen its
 * connections close: `stop()` resolves before they are, and the bench's
 * DROP DATABASE … WITH (FORCE) right after would terminate them under a
 * live client.
 */
async function stopSender(db: Database, boss: PgBoss): Promise<void> {
  await boss.stop({ graceful: false });
  await waitFor("pg-boss to close its connections", async () => {
    const [{ n }] = await db.sql`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = ${SENDER}`;
    return n === 0 ? true : undefined;
  }, 10_000, 10);
}

/** Inserts jobs `from`..`from + count - 1` in one `insert` call. */
function insertBatch(boss: PgBoss, from: number, count: number) {
  return boss.insert(QUEUE, Array.from({ length: count }, (_, k) => ({ data: { i: from + k } })));
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** pg-boss as a bench subject. */
export const pgBoss: Subject = {
  name: "pg-boss",
  version,

  async setup(db) {
    // start() installs the schema; since 10.x a queue must exist before jobs are sent to it.
    const boss = await senderFor(db, 2, true);
    try {
      await boss.createQueue(QUEUE);
    } finally {
      await stopSender(db, boss);
    }
  },

  async enqueueSingle(db, n, parallel) {
    // A pool as large as the calls in flight, so that none waits for a connection.
    const boss = await senderFor(db, Math.max(10, parallel));
    try {
      const t0 = performance.now();
      await inFlight(n, parallel, (i) => boss.send(QUEUE, { i }));
      return since(t0);
    } finally {
      await stopSender(db, boss);
    }
  },

  async enqueueBatch(db, n, batch) {
    const boss = await senderFor(db);
    try {
      const t0 = performance.now();
      for (let done = 0; done < n; done += batch) await insertBatch(boss, done, Math.min(batch, n - done));
      return since(t0);
    } finally {
      await stopSender(db, boss);
    }
  },

  async drain(db: Database, server: Server, n: number): Promise<DrainResult> {
    const boss = await senderFor(db);
    try {
      for (let done = 0; done < n; done += 10_000) await insertBatch(boss, done, Math.min(10_000, n - done));
    } finally {
      await stopSender(db, boss);
    }
    const p = processCount();
    const workers = Array.from({ length: p }, () => new WorkerProcess("pg-boss", script, { ...workerSettings, gate: true, announce: false } satisfies PgBossRunSettings, db.url));
    // Completed jobs stay in the table (until deleteAfterSeconds), so the
    // probe looks for a job of the queue in a state before completion:
    // one waiting (created or retry) the way pg-boss's own fetch looks,
    // down its partial index of fetchable jobs, or one active, down its
    // partial index of live states. A plainer query is planned as a scan
    // that wades through every job the drain completed, twenty times a
    // second, on the server being measured. The states are literals, not
    // parameters, so that the planner can match those partial indexes.
    // (No job here is blocked: the bench uses no flows.)
    return timedDrain("pg-boss", workers, server, n, async () => {
      const [{ left }] = await db.sql`SELECT
        (SELECT 1 FROM pgboss.job WHERE name = ${QUEUE} AND state < 'active' AND NOT blocked ORDER BY priority DESC, created_on LIMIT 1) IS NOT NULL
        OR (SELECT 1 FROM pgboss.job WHERE name = ${QUEUE} AND state = 'active' ORDER BY state, blocked, start_after LIMIT 1) IS NOT NULL AS left`;
      return left as boolean;
    }, `${p} processes × ${workerSettings.localConcurrency} loops × batch ${workerSettings.batchSize}`);
  },

  async latency(db, samples) {
    // The same process settings as the drain; at 0.5 s polling a job waits
    // for the next fetch of either of the process's loops.
    const worker = new WorkerProcess("pg-boss", script, { ...workerSettings, gate: false, announce: true } satisfies PgBossRunSettings, db.url);
    let boss: PgBoss | undefined;
    try {
      boss = await senderFor(db);
      await worker.ready();
      // Let the loops' first, empty fetches pass before the first sample.
      await sleep(1_000);
      // A job is found only at a poll, and one just happened (the one that
      // found the last job): after a fixed pause every enqueue would land
      // just after a poll and wait out nearly the whole interval. A random
      // pause over one interval spreads the enqueues over the poll cycle,
      // as jobs arriving on their own would be.
      const pause = () => sleep(30 + Math.random() * workerSettings.pollingIntervalSeconds * 1000);
      return await sampleLatencies(worker, samples, (i) => boss!.send(QUEUE, { i }), pause);
    } finally {
      if (boss) await stopSender(db, boss);
      await stop(worker);
    }
  },
};
