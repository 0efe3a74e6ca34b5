/**
 * pgbg under the bench: enqueue through the library, drain and latency
 * through `pgbg serve` as users run it (the built package on Node, real
 * supervisor and worker subprocesses).
 */
import { fileURLToPath } from "node:url";
import process from "node:process";
import { enqueue, enqueueMany, migrate, VERSION } from "../mod.ts";
import { latency as latencyTask, noop } from "./tasks.js";
import { type Child, CpuMeter, type Database, inFlight, type Server, since, start, stop, waitFor } from "./harness.ts";
import type { DrainResult, Subject } from "./subject.ts";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const tasksModule = fileURLToPath(new URL("./tasks.js", import.meta.url));

/** Workers × tasks per worker for one `pgbg serve`. */
export interface ServeSetting {
  workers: number;
  concurrency: number;
}

/** Starts `pgbg serve` on `db` and waits until its workers are idle. */
export async function serve(db: Database, setting: ServeSetting, extra: string[] = []): Promise<Child> {
  const service = start(
    [process.execPath, cli, "serve", "--tasks", tasksModule, "--workers", String(setting.workers), "--concurrency", String(setting.concurrency),
      "--log-format", "json", "--log-level", "warn", "--no-migrate", ...extra],
    { ...process.env, DATABASE_URL: db.url },
  );
  await waitFor("the workers to be ready", async () => {
    if (service.child.exitCode !== null) throw new Error(`pgbg serve exited: ${service.output()}`);
    const [{ n }] = await db.sql`SELECT count(*)::int AS n FROM pgbg.worker WHERE idle`;
    return n === setting.workers ? true : undefined;
  }, 60_000);
  return service;
}

/** Queues `n` no-op tasks in one transaction, so that they appear at once. */
async function queueAtOnce(db: Database, n: number): Promise<void> {
  await db.sql.begin(async (tx) => {
    for (let done = 0; done < n; done += 10_000) {
      const size = Math.min(10_000, n - done);
      await enqueueMany(tx, noop, Array.from({ length: size }, (_, i) => ({ i: done + i })));
    }
  });
}

/**
 * Waits until the task table holds no task. The probes go through the two
 * partial indexes: a sequential scan would wade through the dead rows the
 * drain leaves and cost the server more than the drain itself.
 */
export function drained(db: Database): Promise<true> {
  return waitFor("the queue to drain", async () => {
    const [{ left }] = await db.sql`SELECT EXISTS (SELECT 1 FROM pgbg.task WHERE state = 'queued')
      OR EXISTS (SELECT 1 FROM pgbg.task WHERE state = 'running') AS left`;
    return left ? undefined : true;
  }, 1_800_000, 50);
}

/**
 * Drains `n` tasks through a `pgbg serve` with `setting`: the service starts
 * on an empty queue, the tasks are committed in one transaction, and the
 * clock runs from that commit until the table is empty.
 */
export async function drainWith(db: Database, server: Server, n: number, setting: ServeSetting): Promise<DrainResult> {
  const service = await serve(db, setting);
  try {
    await queueAtOnce(db, n);
    // The clock and the meters start at the commit: from then on the workers drain.
    const t0 = performance.now();
    const meter = new CpuMeter(server, () => service.child.pid);
    await drained(db);
    const seconds = since(t0);
    const cpu = meter.read();
    return { jobs: n, seconds, workerCpu: cpu.tree, serverCpu: cpu.server, setting: `${setting.workers} workers × ${setting.concurrency}` };
  } finally {
    await stop(service);
  }
}

/**
 * pgbg as a bench subject; `drain` drains at `setting`. The bench's sweep of
 * settings calls drainWith itself, each drain on a fresh database.
 */
export function pgbgSubject(setting: ServeSetting): Subject {
  return {
    name: "pgbg",
    version: VERSION,
    async setup(db) {
      await migrate(db.sql);
    },
    async enqueueSingle(db, n, parallel) {
      const t0 = performance.now();
      await inFlight(n, parallel, (i) => enqueue(db.sql, noop, { i }));
      return since(t0);
    },
    async enqueueBatch(db, n, batch) {
      const t0 = performance.now();
      for (let done = 0; done < n; done += batch) {
        await enqueueMany(db.sql, noop, Array.from({ length: Math.min(batch, n - done) }, (_, i) => ({ i: done + i })));
      }
      return since(t0);
    },
    drain(db, server, n) {
      return drainWith(db, server, n, setting);
    },
    async latency(db, samples) {
      const service = await serve(db, { workers: 2, concurrency: 10 });
      try {
        return await measureLatency(service, samples, (i) => enqueue(db.sql, latencyTask, { i }));
      } finally {
        await stop(service);
      }
    },
  };
}

/**
 * Enqueues one task at a time on an idle service and reads, from the
 * `BENCH_START i time` lines its handler prints, when each started.
 */
export async function measureLatency(service: Child, samples: number, enqueueOne: (i: number) => Promise<unknown>): Promise<number[]> {
  const starts = new Map<number, number>();
  let buffer = "";
  const onData = (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      const match = /^BENCH_START (\d+) ([\d.]+)$/.exec(line);
      if (match) starts.set(Number(match[1]), Number(match[2]));
    }
  };
  service.child.stdout!.on("data", onData);
  // Let the workers finish going idle (they LISTEN once a claim finds nothing).
  await new Promise((r) => setTimeout(r, 1_500));
  const latencies: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = performance.timeOrigin + performance.now();
    await enqueueOne(i);
    const started = await waitFor(`task ${i} to start`, async () => starts.get(i), 30_000, 1);
    latencies.push(started - t0);
    await new Promise((r) => setTimeout(r, 30 + Math.random() * 20));
  }
  service.child.stdout!.off("data", onData);
  return latencies;
}
