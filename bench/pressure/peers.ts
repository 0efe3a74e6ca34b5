/**
 * graphile-worker and pg-boss under the pressure bench: installed as the
 * main bench installs them (bench/peers/*.ts), worked by the bench's own
 * worker scripts (bench/peers/*-run.ts) with `pressure` set, two processes
 * as in the main bench's drain, W tasks in flight in all.
 */
import process from "node:process";
import { fileURLToPath } from "node:url";
import { Logger, makeWorkerUtils } from "graphile-worker";
import { PgBoss } from "pg-boss";
import { type Database, waitFor } from "../harness.ts";
import { graphileWorker, ownPool } from "../peers/graphile-worker.ts";
import type { GraphileRunSettings } from "../peers/graphile-worker-run.ts";
import { pgBoss } from "../peers/pg-boss.ts";
import type { PgBossRunSettings } from "../peers/pg-boss-run.ts";
import { WorkerProcess } from "../peers/worker-process.ts";
import { childWorkers, type Enqueuer, type PressureSubject, type Workers } from "./subjects.ts";

const graphileScript = fileURLToPath(new URL("../peers/graphile-worker-run.ts", import.meta.url));
const pgBossScript = fileURLToPath(new URL("../peers/pg-boss-run.ts", import.meta.url));
/** Worker processes per peer: the main bench's default, one per core of the 2-core bench machine. */
const PROCESSES = 2;
const TASK = "pressure";

/** Starts `PROCESSES` worker scripts with `settings` and waits for their READY. */
async function startProcesses(label: string, script: string, settings: object, db: Database): Promise<Workers> {
  const processes = Array.from({ length: PROCESSES }, () => new WorkerProcess(label, script, settings, db.url));
  const workers = childWorkers(label, processes);
  try {
    await Promise.all(processes.map((p) => p.ready()));
    return workers;
  } catch (error) {
    await workers.stop();
    throw error;
  }
}

// Library logging would print into the bench's progress output; only trouble matters.
const quiet = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

/**
 * graphile-worker's settings at W in flight: W/2 concurrent jobs per
 * process, the local queue at the 500 its performance docs use (the main
 * bench's drain takes 5,000, tuned to empty a deep queue fast; here jobs
 * arrive a few at a time, and a fetch takes what is there), and completions
 * batched per tick as the docs advise.
 */
function graphileSettings(inFlight: number): GraphileRunSettings {
  const concurrency = Math.max(1, Math.ceil(inFlight / PROCESSES));
  return { concurrency, maxPoolSize: 10, localQueueSize: 500, batchDelay: 0, gate: false, announce: false, pressure: true };
}

/** graphile-worker under pressure. */
export const graphileWorkerPressure: PressureSubject = {
  name: "graphile-worker",
  version: graphileWorker.version,
  schema: "graphile_worker",
  taskTable: "graphile_worker._private_jobs",
  setup: (db) => graphileWorker.setup(db),
  describeWorkers(inFlight) {
    const s = graphileSettings(inFlight);
    return `${PROCESSES} processes × concurrency ${s.concurrency}, local queue ${s.localQueueSize}`;
  },
  startWorkers: (db, inFlight) => startProcesses("graphile-worker", graphileScript, graphileSettings(inFlight), db),
  async openEnqueuer(db, connections): Promise<Enqueuer> {
    // A connection the DROP DATABASE at the end terminates must not crash the bench.
    const { pool, close } = ownPool(db, connections);
    const utils = await makeWorkerUtils({ pgPool: pool, logger: quiet });
    return {
      async enqueue(n, t) {
        await utils.addJobs(Array.from({ length: n }, () => ({ identifier: TASK, payload: { t } })));
      },
      async close() {
        await utils.release();
        await close();
      },
    };
  },
};

/**
 * pg-boss's settings at W in flight: as in the main bench's drain, two
 * fetch loops per process, each fetching a batch and completing it in one
 * statement, polling every 0.5 s (its smallest) and refetching at once after
 * a full batch; the batch is W/4, so that W jobs are in flight in all.
 */
function pgBossSettings(inFlight: number): PgBossRunSettings {
  const perProcess = Math.max(1, Math.ceil(inFlight / PROCESSES));
  const loops = perProcess % 2 === 0 ? 2 : 1;
  return {
    queue: TASK, localConcurrency: loops, batchSize: perProcess / loops, pollingIntervalSeconds: 0.5, poolSize: 10,
    gate: false, announce: false, pressure: true,
  };
}

/** The application_name of the producer's PgBoss connections, to tell when they are gone. */
const PRODUCER = "pgbg-bench pressure producer";

/** A PgBoss for the bench process: no maintenance or cron (they belong to the workers), no migration. */
async function producerBoss(db: Database, connections: number): Promise<PgBoss> {
  const boss = new PgBoss({ connectionString: db.url, application_name: PRODUCER, max: connections, supervise: false, schedule: false, migrate: false });
  boss.on("error", (error) => process.stderr.write(`pg-boss error: ${error}\n`));
  await boss.start();
  return boss;
}

/** Stops `boss` and waits until the server saw its connections close (stop() resolves before). */
async function stopBoss(db: Database, boss: PgBoss): Promise<void> {
  await boss.stop({ graceful: false });
  await waitFor("pg-boss to close its connections", async () => {
    const [{ n }] = await db.sql`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = ${PRODUCER}`;
    return n === 0 ? true : undefined;
  }, 10_000, 10);
}

/** pg-boss under pressure. */
export const pgBossPressure: PressureSubject = {
  name: "pg-boss",
  version: pgBoss.version,
  schema: "pgboss",
  // Partitioned by queue name: counting the parent counts every partition.
  taskTable: "pgboss.job",
  async setup(db) {
    await pgBoss.setup(db);
    const boss = await producerBoss(db, 2);
    try {
      await boss.createQueue(TASK);
    } finally {
      await stopBoss(db, boss);
    }
  },
  describeWorkers(inFlight) {
    const s = pgBossSettings(inFlight);
    return `${PROCESSES} processes × ${s.localConcurrency} loops × batch ${s.batchSize}, polling ${s.pollingIntervalSeconds} s`;
  },
  startWorkers: (db, inFlight) => startProcesses("pg-boss", pgBossScript, pgBossSettings(inFlight), db),
  async openEnqueuer(db, connections): Promise<Enqueuer> {
    const boss = await producerBoss(db, connections);
    return {
      async enqueue(n, t) {
        await boss.insert(TASK, Array.from({ length: n }, () => ({ data: { t } })));
      },
      close: () => stopBoss(db, boss),
    };
  },
};
