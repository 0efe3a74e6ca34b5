/**
 * One pg-boss process for the bench, started by ./pg-boss.ts as
 * `node --import tsx pg-boss-run.ts` with DATABASE_URL and
 * BENCH_PEER_SETTINGS (JSON, see `PgBossRunSettings`) in its environment.
 *
 * It works the queue named in the settings. With `gate`, it starts pg-boss,
 * opens its connections, prints "READY" and calls `work()` only when a "GO"
 * line arrives on stdin: the drain's jobs are already queued, and a process
 * that booted first must not work (or even fetch) any before the clock,
 * which starts when all processes are ready. Without `gate`, it calls
 * `work()` at once and then prints "READY". With `announce`, each job prints
 * `BENCH_START <i> <epoch ms>` for the latency measurement. With `pressure`
 * (the pressure bench, bench/pressure.ts), each job of a batch reports its
 * start and finish to the bench process and sleeps 1 ms, the batch's jobs
 * side by side. The end of stdin, the parent gone, stops it as SIGTERM does.
 */
import process from "node:process";
import { PgBoss } from "pg-boss";
import { passGate } from "./gate.ts";
import { reportFinish, reportStart } from "../pressure/reporter.js";

/** What the parent chooses for this process. */
export interface PgBossRunSettings {
  /** The queue to work. */
  queue: string;
  /** `localConcurrency`: independent fetch loops in this process. */
  localConcurrency: number;
  /** `batchSize`: jobs per fetch, handed to the handler together and completed in one statement. */
  batchSize: number;
  /** `pollingIntervalSeconds`: the wait after a fetch that did not come back full. */
  pollingIntervalSeconds: number;
  /** Connections in this process's pool. */
  poolSize: number;
  /** Call `work()` only on "GO" from stdin. */
  gate: boolean;
  /** Print BENCH_START for every job. */
  announce: boolean;
  /** Run each job as the pressure bench's task. */
  pressure?: boolean;
}

const settings = JSON.parse(process.env.BENCH_PEER_SETTINGS ?? "{}") as PgBossRunSettings;

const boss = new PgBoss({ connectionString: process.env.DATABASE_URL, max: settings.poolSize });
boss.on("error", (error) => process.stderr.write(`pg-boss error: ${error}\n`));
await boss.start();
// Queries issued together each take a connection of their own, so this
// opens one per fetch loop and two more (completion, maintenance) before
// "GO": the clock should time the worker, not TCP and authentication.
const warm = Math.min(settings.poolSize, settings.localConcurrency + 2);
await Promise.all(Array.from({ length: warm }, () => boss.getDb().executeSql("SELECT 1")));

// pg-boss installs no signal handler; harness stop() sends SIGTERM and waits
// for the exit, so let the batches in hand finish and close the pool first.
let stopping = false;
process.on("SIGTERM", () => {
  if (stopping) return;
  stopping = true;
  boss.stop({ graceful: true, timeout: 10_000 }).then(() => process.exit(0), () => process.exit(1));
});

await passGate(settings.gate);

await boss.work<{ i: number; t?: number }>(settings.queue, {
  batchSize: settings.batchSize,
  localConcurrency: settings.localConcurrency,
  pollingIntervalSeconds: settings.pollingIntervalSeconds,
  // Without this a loop waits out the polling interval after every batch,
  // even a full one, which caps a loop at batchSize jobs per interval.
  burstWhenBatchFull: true,
}, async (jobs) => {
  if (settings.announce) {
    for (const job of jobs) process.stdout.write(`BENCH_START ${job.data.i} ${performance.timeOrigin + performance.now()}\n`);
  }
  if (settings.pressure) {
    await Promise.all(jobs.map(async (job) => {
      reportStart(job.data.t ?? Number.NaN);
      await new Promise((resolve) => setTimeout(resolve, 1));
      reportFinish();
    }));
  }
});
if (!settings.gate) process.stdout.write("READY\n");
