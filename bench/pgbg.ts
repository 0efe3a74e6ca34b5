/**
 * pgbg under the bench: enqueue through the library, drain and latency
 * through `pgbg serve` as users run it (the built package on Node, real
 * supervisor and worker subprocesses), and the drain again through
 * `createWorker` hosts (one app process per worker, bench/in-process-host.js).
 */
import { fileURLToPath } from "node:url";
import process from "node:process";
import { enqueue, enqueueBatch, enqueueFlow, enqueueMany, flowTask, migrate, setGroupConcurrency, setGroupRateLimit, setQueueConcurrency, setQueueRateLimit, VERSION } from "../mod.ts";
import { batchDone, latency as latencyTask, latencyGrouped, noop, noopGrouped, noopResult } from "./tasks.js";
import { type Child, CpuMeter, type Database, inFlight, type Server, since, start, stop, treeCpu, waitFor } from "./harness.ts";
import type { DrainResult, Subject } from "./subject.ts";

const cli = fileURLToPath(new URL("../dist/cli/main.js", import.meta.url));
const tasksModule = fileURLToPath(new URL("./tasks.js", import.meta.url));
const inProcessHost = fileURLToPath(new URL("./in-process-host.js", import.meta.url));

/** Workers × tasks per worker for one `pgbg serve`. */
export interface ServeSetting {
  workers: number;
  concurrency: number;
}

/**
 * What a drain keeps: nothing (`noop` tasks), results (`noop-result`
 * tasks, kept an hour), or the completed history of `noop` tasks
 * (`--completed-retention 1h`).
 */
export type Keeping = "nothing" | "results" | "retention" | "batch";

/** Starts `pgbg serve` on `db` and waits until its workers are idle. */
export async function serve(db: Database, setting: ServeSetting, extra: string[] = []): Promise<Child> {
  const service = start(
    [process.execPath, cli, "serve", "--tasks", tasksModule, "--workers", String(setting.workers), "--concurrency", String(setting.concurrency),
      "--log-format", "json", "--log-level", "warn", "--no-migrate", ...extra],
    { ...process.env, DATABASE_URL: db.url },
  );
  await workersIdle(db, setting.workers, [service], "pgbg serve");
  return service;
}

/** Waits until `workers` worker rows are idle, failing as soon as one of `processes` exits. */
function workersIdle(db: Database, workers: number, processes: Child[], what: string): Promise<true> {
  return waitFor("the workers to be ready", async () => {
    const exited = processes.find((p) => p.child.exitCode !== null);
    if (exited) throw new Error(`${what} exited: ${exited.output()}`);
    const [{ n }] = await db.sql`SELECT count(*)::int AS n FROM pgbg.worker WHERE idle`;
    return n === workers ? true : undefined;
  }, 60_000);
}

/**
 * Starts `setting.workers` app processes on `db`, each hosting one
 * `createWorker` with `setting.concurrency`, and waits until all are idle.
 * One process per worker, not one process with several hosts, because a
 * serve worker is a process of its own: so the two drains have the same
 * number of event loops, cores they can use and connections per worker,
 * and differ only in what hosts the engine.
 */
export async function hostInProcess(db: Database, setting: ServeSetting): Promise<Child[]> {
  const hosts: Child[] = [];
  try {
    for (let i = 0; i < setting.workers; i++) {
      hosts.push(start([process.execPath, inProcessHost, String(setting.concurrency)], { ...process.env, DATABASE_URL: db.url }));
    }
    await workersIdle(db, setting.workers, hosts, "an in-process host");
    return hosts;
  } catch (error) {
    await Promise.all(hosts.map((h) => stop(h)));
    throw error;
  }
}

/**
 * Queues `n` no-op tasks (with a result, when `keeping` them) in one
 * transaction, so that they appear at once; with `groups`, no-op tasks of
 * those many groups (task i in group "g" + i mod groups); `batch`: as
 * one batch with a completion task (which the drain waits for too).
 */
async function queueAtOnce(db: Database, n: number, keeping: Keeping = "nothing", groups = 0): Promise<void> {
  if (keeping === "batch") {
    await enqueueBatch(db.sql, noop, Array.from({ length: n }, (_, i) => ({ i })), { then: flowTask(batchDone, {}) });
    return;
  }
  await db.sql.begin(async (tx) => {
    for (let done = 0; done < n; done += 10_000) {
      const indexes = Array.from({ length: Math.min(10_000, n - done) }, (_, i) => done + i);
      if (groups) await enqueueMany(tx, noopGrouped, indexes.map((i) => ({ i, g: `g${i % groups}` })));
      else await enqueueMany(tx, keeping === "results" ? noopResult : noop, indexes.map((i) => ({ i })));
    }
  });
}

/**
 * Waits until the task table holds no task. The probe reads the newest id
 * from the primary key, as graphile-worker's drain does: those tasks are
 * claimed last, so it finds one at once until the very end. A probe by
 * state would step over the entries the drain leaves (`state = 'queued'`
 * alone matches no partial index, so it scans the table), twenty times a
 * second on the server being measured (bench/RESULTS.md, 2026-12-05).
 * The drains fail no task, so an empty table is a drained queue.
 */
export function drained(db: Database): Promise<true> {
  return waitFor("the queue to drain", async () => {
    const left = (await db.sql`SELECT id FROM pgbg.task ORDER BY id DESC LIMIT 1`).length > 0;
    return left ? undefined : true;
  }, 1_800_000, 50);
}

/**
 * Drains `n` tasks through a `pgbg serve` with `setting`: the service starts
 * on an empty queue, the tasks are committed in one transaction, and the
 * clock runs from that commit until the table is empty. `groups`: the
 * tasks are spread over that many groups (see queueAtOnce).
 */
export async function drainWith(db: Database, server: Server, n: number, setting: ServeSetting, keeping: Keeping = "nothing", groups = 0): Promise<DrainResult> {
  const service = await serve(db, setting, keeping === "retention" ? ["--completed-retention", "1h"] : []);
  try {
    await queueAtOnce(db, n, keeping, groups);
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
 * drainWith, with a concurrency limit of `limit` on the tasks' queue set
 * first: above the setting's slots it never binds, and the drain measures
 * what the limited claim costs.
 */
export async function drainLimited(db: Database, server: Server, n: number, setting: ServeSetting, limit: number): Promise<DrainResult> {
  await setQueueConcurrency(db.sql, "default", limit);
  return await drainWith(db, server, n, setting);
}

/**
 * drainWith, with a rate limit of `perSecond` starts a second on the tasks'
 * queue set first: far below what the setting drains, so it binds.
 */
export async function drainRated(db: Database, server: Server, n: number, setting: ServeSetting, perSecond: number): Promise<DrainResult> {
  await setQueueRateLimit(db.sql, "default", { limit: perSecond, interval: 1000 });
  return await drainWith(db, server, n, setting);
}

/** drainWith, of `n` tasks spread over `groups` groups, each group rate-limited to `perSecond` starts a second. */
export async function drainGroupRated(db: Database, server: Server, n: number, setting: ServeSetting, groups: number, perSecond: number): Promise<DrainResult> {
  await setGroupRateLimit(db.sql, "default", { limit: perSecond, interval: 1000 });
  return await drainWith(db, server, n, setting, "nothing", groups);
}

/**
 * drainWith, of `n` tasks spread over `groups` groups (task i in group
 * i mod groups), with a limit of `perGroup` on each group when given: the
 * group claim's cost (groups 1: fair turns on one group), and with many
 * groups under a limit that rarely binds, the limited group claim's.
 */
export async function drainGrouped(db: Database, server: Server, n: number, setting: ServeSetting, groups: number, perGroup: number | null): Promise<DrainResult> {
  if (perGroup !== null) await setGroupConcurrency(db.sql, "default", perGroup);
  return await drainWith(db, server, n, setting, "nothing", groups);
}

/** What a small tenant's tasks waited behind a large tenant's backlog. */
export interface BehindBacklog {
  /** Start latencies (ms) of the small tenant's tasks, enqueued one at a time. */
  latencies: number[];
  /** The large tenant's tasks still queued when the last sample started (the backlog still stood). */
  backlogLeft: number;
}

/**
 * Queues `backlog` tasks of a big tenant in one commit on a running `pgbg
 * serve`, then enqueues `samples` tasks of tenant "small" one at a time
 * (each once the one before started) and measures when each started.
 * `grouped`: the tenants are groups; otherwise every task is ungrouped
 * and the claim is strict FIFO, so a sample waits for the backlog ahead of it.
 */
export async function startBehindBacklog(db: Database, backlog: number, samples: number, setting: ServeSetting, grouped: boolean): Promise<BehindBacklog> {
  const service = await serve(db, setting);
  const starts = new Map<number, number>();
  let buffer = "";
  service.child.stdout!.on("data", (chunk: Buffer) => {
    buffer += chunk.toString();
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      const match = /^BENCH_START (\d+) ([\d.]+)$/.exec(buffer.slice(0, nl));
      if (match) starts.set(Number(match[1]), Number(match[2]));
      buffer = buffer.slice(nl + 1);
    }
  });
  try {
    // Tenant "big" is group g0 when grouped.
    await queueAtOnce(db, backlog, "nothing", grouped ? 1 : 0);
    const latencies: number[] = [];
    for (let i = 0; i < samples; i++) {
      const t0 = performance.timeOrigin + performance.now();
      if (grouped) await enqueue(db.sql, latencyGrouped, { i, g: "small" });
      else await enqueue(db.sql, latencyTask, { i });
      latencies.push(await waitFor(`task ${i} to start`, async () => starts.get(i), 1_800_000, 1) - t0);
    }
    const [{ left }] = await db.sql`SELECT count(*)::int AS left FROM pgbg.task WHERE state = 'queued'`;
    return { latencies, backlogLeft: left };
  } finally {
    await stop(service);
  }
}

/**
 * Drains `n` tasks through `createWorker` hosts with `setting` (see
 * hostInProcess), timed and metered exactly as drainWith times `pgbg serve`.
 * Worker CPU is the sum over the host processes; there is no supervisor.
 */
export async function drainInProcess(db: Database, server: Server, n: number, setting: ServeSetting): Promise<DrainResult> {
  const hosts = await hostInProcess(db, setting);
  try {
    await queueAtOnce(db, n);
    const t0 = performance.now();
    // Metered as the peers' worker processes are: one server meter, and each host's tree before and after.
    const cpu0 = hosts.map((h) => treeCpu(h.child.pid));
    const meter = new CpuMeter(server);
    await drained(db);
    const seconds = since(t0);
    const cpu1 = hosts.map((h) => treeCpu(h.child.pid));
    const known = [...cpu0, ...cpu1].every((c) => c !== undefined);
    const workerCpu = known ? cpu1.reduce((sum: number, c, i) => sum + c! - cpu0[i]!, 0) : undefined;
    return { jobs: n, seconds, workerCpu, serverCpu: meter.read().server, setting: `${setting.workers} processes × createWorker ${setting.concurrency}` };
  } finally {
    await Promise.all(hosts.map((h) => stop(h)));
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

/**
 * The time (ms) to enqueue `n` no-op tasks in one call: enqueueMany, one
 * batch with a completion task, or one flow of a root and n - 1 children
 * waiting for it.
 */
export async function timeFlowEnqueue(db: Database, n: number, kind: "many" | "batch" | "flow"): Promise<number> {
  const inputs = Array.from({ length: n }, (_, i) => ({ i }));
  const flow = kind === "flow"
    ? Object.fromEntries(inputs.map((input, i) => [`t${i}`, flowTask(noop, input, i ? { dependsOn: ["t0"] } : {})]))
    : {};
  const t0 = performance.now();
  if (kind === "many") await enqueueMany(db.sql, noop, inputs);
  else if (kind === "batch") await enqueueBatch(db.sql, noop, inputs, { then: flowTask(batchDone, {}) });
  else await enqueueFlow(db.sql, flow);
  return performance.now() - t0;
}
