/**
 * A module of the matrix's application (tests/matrix.ts copies it there):
 * the in-process API as a user calls it, on the runtime that runs it.
 *
 *   - createWorker: started, five tasks enqueued and waited for (the tasks
 *     record that they ran, then the rows are polled until gone), its
 *     metrics read until they count them, then stopped;
 *   - drain: due tasks of which one fails for good, a delayed task, and a
 *     retry that falls due within `maxWait`.
 *
 * It judges nothing: it prints one JSON line of what it saw, which
 * tests/matrix.ts compares with exact expected values. `pgbg` is the module
 * under test (the installed package, or mod.ts from the sources on Deno),
 * `queue` keeps each run's rows apart from the others' in the same database.
 */
import process from "node:process";
import postgres from "postgres";
import * as v from "valibot";

const runtime = globalThis.Deno ? "deno" : globalThis.Bun ? "bun" : "node";
const WORKER_TASKS = 5;
const schema = v.object({ n: v.number() });

/** Reads until `done(value)` or for `timeoutMs`, every 50 ms; returns the last value read. */
async function poll(read, done, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (done(value) || Date.now() > deadline) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `promise`, or a rejection naming `what` after `ms`. */
async function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The value of pgbg_tasks_completed_total for one queue and task in Prometheus text, or null when the series is absent. */
function completedTotal(text, queue, task) {
  const prefix = `pgbg_tasks_completed_total{queue="${queue}",task="${task}"} `;
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  return line === undefined ? null : Number(line.slice(prefix.length));
}

async function count(sql, query) {
  const [row] = await query(sql);
  return row.n;
}

/** createWorker: start, run five tasks, metrics, stop. */
async function workerScenario(pgbg, sql, queue) {
  const ran = [];
  let allRan;
  const everyTaskRan = new Promise((resolve) => (allRan = resolve));
  const task = pgbg.defineTask({
    name: "matrix-worker",
    queue,
    schema,
    async run(input) {
      ran.push(input.n);
      if (ran.length === WORKER_TASKS) allRan();
    },
  });
  const host = pgbg.createWorker(sql, { tasks: [task], queues: [queue], concurrency: 5, checkInterval: 200 });
  const taskRows = () => count(sql, (s) => s`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = ${queue}`);
  const workerRows = () => count(sql, (s) => s`SELECT count(*)::int AS n FROM pgbg.worker WHERE supervisor_id = ${host.id}`);
  await within(host.start(), 30_000, "start()");
  const workerRowsWhileRunning = await workerRows();
  const ids = await pgbg.enqueueMany(sql, task, Array.from({ length: WORKER_TASKS }, (_, n) => ({ n })));
  await within(everyTaskRan, 30_000, `the run of ${WORKER_TASKS} tasks`);
  const taskRowsLeft = await poll(taskRows, (n) => n === 0, 30_000);
  // The counts reach the metrics with the worker's next heartbeat report.
  const text = await poll(() => host.metrics(), (t) => (completedTotal(t, queue, task.name) ?? 0) >= WORKER_TASKS, 10_000);
  const started = performance.now();
  await within(host.stop({ timeout: 5_000 }), 15_000, "stop({ timeout: 5000 })");
  const stopMs = Math.round(performance.now() - started);
  return {
    runtime,
    distinctIds: new Set(ids).size,
    ran: [...ran].sort((a, b) => a - b),
    taskRowsLeft,
    metricsHasFamily: text.includes("# TYPE pgbg_tasks_completed_total counter"),
    completedTotal: completedTotal(text, queue, task.name),
    workerRowsWhileRunning,
    stopResolved: true,
    workerRowsAfterStop: await workerRows(),
    runningAfterStop: host.running,
    stopMs,
  };
}

/** drain: due tasks (one fails for good), then a delayed one, then a retry within maxWait. */
async function drainScenario(pgbg, sql, queue) {
  const attempts = [];
  const ok = pgbg.defineTask({ name: "matrix-ok", queue, schema, run: async (input) => void attempts.push(`ok ${input.n}`) });
  const bad = pgbg.defineTask({
    name: "matrix-bad", queue, schema, maxAttempts: 1,
    async run(input) {
      attempts.push(`bad ${input.n}`);
      throw new Error("fails for good (expected by the matrix)");
    },
  });
  const flaky = pgbg.defineTask({
    name: "matrix-flaky", queue, schema, maxAttempts: 2, retryDelay: 200,
    async run(input, ctx) {
      attempts.push(`flaky ${input.n} attempt ${ctx.attempt}`);
      if (ctx.attempt === 1) throw new Error("fails once (expected by the matrix)");
    },
  });
  const tasks = [ok, bad, flaky];
  const quiet = { debug() {}, info() {}, warn() {}, error() {} };
  const drain = (maxWait) => within(pgbg.drain(sql, { tasks, queues: [queue], maxWait, checkInterval: 200, logger: quiet }), 60_000, "drain()");
  await pgbg.enqueue(sql, ok, { n: 1 });
  await pgbg.enqueue(sql, ok, { n: 2 });
  await pgbg.enqueue(sql, bad, { n: 3 });
  const threeDue = await drain(0);
  await pgbg.enqueue(sql, ok, { n: 4 }, { delay: 3_600_000 });
  const oneDelayed = await drain(0);
  await pgbg.enqueue(sql, flaky, { n: 5 });
  const started = performance.now();
  const retryWithinMaxWait = await drain(10_000);
  const retryMs = Math.round(performance.now() - started);
  const rows = await sql`SELECT name, state::text, attempts FROM pgbg.task WHERE queue = ${queue} ORDER BY id`;
  return {
    threeDue, oneDelayed, retryWithinMaxWait,
    attempts: attempts.sort(),
    rowsLeft: rows.map((r) => `${r.name} ${r.state} after ${r.attempts} attempt(s)`),
    // drain's worker registers as any worker does, and must be gone once it resolved.
    workerRowsLeft: await count(sql, (s) => s`SELECT count(*)::int AS n FROM pgbg.worker WHERE pid = ${process.pid} AND tasks && ${tasks.map((t) => t.name)}::text[]`),
    retryMs,
  };
}

/** Runs both scenarios, each reporting its own error, and prints what they saw. */
export async function workerChecks(pgbg, queue) {
  const sql = postgres(process.env.DATABASE_URL, { max: 2, onnotice: () => {} });
  await pgbg.migrate(sql);
  const attempt = (scenario) => scenario(pgbg, sql, queue).catch((error) => ({ error: String(error?.stack ?? error) }));
  const worker = await attempt(workerScenario);
  const drain = await attempt(drainScenario);
  await sql.end({ timeout: 5 });
  console.log(JSON.stringify({ worker, drain }));
}
