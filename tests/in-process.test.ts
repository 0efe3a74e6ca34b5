/**
 * The in-process worker (`createWorker`) and the testing helper (`drain`),
 * used as an application would: real tasks, a real database, and for the
 * crash test a real application process killed with SIGKILL.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import * as v from "valibot";
import {
  createWorker, defineTask, drain, enqueue, enqueueMany, getTask, InvalidOptionsError, migrate, setQueueConcurrency, setQueueRateLimit,
} from "../mod.ts";
import { run } from "../lib/statements.ts";
import { createTestDatabase } from "./harness.ts";
import { createFixtureTables, patience, until, untilWaitingForLock, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
await createFixtureTables(sql);
// The fixture tasks record their executions in the database of DATABASE_URL,
// read when their module loads: this file's own, as for a served worker.
process.env.DATABASE_URL = db.url;
const { hang, work } = await import("./fixtures/tasks.ts");
const app = fileURLToPath(new URL("./fixtures/in-process-app.ts", import.meta.url));

const executions = (ids: string[]) =>
  sql`SELECT task_id::text, pid, attempt, ended_at IS NOT NULL AS ended FROM execution WHERE task_id IN ${sql(ids)} ORDER BY id`;
const remaining = async (ids: string[]) => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(ids)}`)[0].n as number;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

async function clean(): Promise<void> {
  await sql`DELETE FROM pgbg.task`;
  await sql`DELETE FROM pgbg.worker`;
}

describe("createWorker", () => {
  test("runs tasks in this process, exposes its metrics, and leaves no worker row after stop", async () => {
    await clean();
    const worker = createWorker(sql, { tasks: [work], concurrency: 4, checkInterval: 200, logger: quiet });
    await worker.start();
    const ids = await enqueueMany(sql, work, Array.from({ length: 20 }, () => ({ ms: 1 })));
    await until(() => remaining(ids), (n) => n === 0, patience, "the tasks to run");
    const runs = await executions(ids);
    assert.deepEqual([runs.length, new Set(runs.map((r) => r.pid))], [20, new Set([process.pid])]);
    // Counts reach the metrics at the next heartbeat.
    await until(() => worker.metrics(), (text) => text.includes('pgbg_tasks_completed_total{queue="default",task="work"} 20'), patience, "the metrics");
    assert.match(await worker.metrics(), /^# TYPE pgbg_queue_depth gauge$/m);
    await worker.stop();
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 0);
    await worker.stop(); // safe twice
  });

  test("opens the connections the README states: a pool of poolSize, one for the heartbeat, one for LISTEN", async () => {
    await clean();
    const worker = createWorker(sql, { tasks: [work], concurrency: 8, poolSize: 3, checkInterval: 200, logger: quiet });
    await worker.start();
    const ids = await enqueueMany(sql, work, Array.from({ length: 40 }, () => ({ ms: 20 })));
    await until(() => remaining(ids), (n) => n === 0, patience, "the tasks to run");
    const byName = await sql`SELECT application_name AS name, count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE 'pgbg worker%' GROUP BY 1 ORDER BY 1`;
    await worker.stop();
    // The pool's connections and LISTEN's share the pool's name: at most 3 + 1.
    const counts = Object.fromEntries(byName.map((r) => [r.name, r.n]));
    assert.equal(counts["pgbg worker heartbeat"], 1, JSON.stringify(counts));
    assert.ok(counts["pgbg worker"] >= 2 && counts["pgbg worker"] <= 4, JSON.stringify(counts));
  });

  test("stop({ timeout }) lets running tasks finish up to the timeout, then hands the rest back uncounted", async () => {
    await clean();
    const worker = createWorker(sql, { tasks: [work], concurrency: 2, checkInterval: 200, logger: quiet });
    await worker.start();
    const quick = await enqueue(sql, work, { ms: 300 });
    const slow = await enqueue(sql, work, { ms: 60_000 });
    await until(() => executions([quick, slow]), (r) => r.length === 2, patience, "both to start");
    await worker.stop({ timeout: 1_000 });
    assert.equal(await remaining([quick]), 0, "the quick task finished within the timeout");
    const [row] = await sql`SELECT state::text, attempts FROM pgbg.task WHERE id = ${slow}`;
    assert.deepEqual(row, { state: "queued", attempts: 0 }, "the slow one is handed back, its attempt not counted");
  });

  test("an aborted signal stops it as stop() does", async () => {
    await clean();
    const controller = new AbortController();
    const worker = createWorker(sql, { tasks: [work], checkInterval: 200, signal: controller.signal, logger: quiet });
    await worker.start();
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 1);
    controller.abort();
    await until(() => sql`SELECT count(*)::int AS n FROM pgbg.worker`, (r) => r[0].n === 0, patience, "the worker row to go");
    await worker.stop();
  });

  test("a task that ignores its abort signal gives up its slot in-process, and its lease is left to run out", async () => {
    await clean();
    const lines: string[] = [];
    const logger = { ...quiet, error: (m: string) => void lines.push(m) };
    const worker = createWorker(sql, { tasks: [hang, work], concurrency: 1, checkInterval: 200, logger });
    await worker.start();
    const stuck = await enqueue(sql, hang, {});
    await until(() => executions([stuck]), (r) => r.length === 1, patience, "the hung task to start");
    const next = await enqueue(sql, work, {});
    await until(() => remaining([next]), (n) => n === 0, patience, "the next task to run in the freed slot");
    assert.ok(lines.some((l) => l.startsWith(`task ${stuck} ignored its abort signal past its timeout; it keeps running in the background`)), lines.join("\n"));
    // Read as pgbg reads a task (a claim row's task is running though its row is not).
    assert.equal((await getTask(sql, stuck))?.state, "running", "still leased: no other worker runs it beside the hung attempt");
    // The worker's row counts it among its detached attempts, which keep their leases: so a queue limit of 1, which
    // its concurrency alone (1) could not pass, is counted against, and the hung attempt's lease fills it.
    assert.deepEqual((await sql`SELECT detached FROM pgbg.worker`).map((r) => r.detached), [1]);
    await setQueueConcurrency(sql, "default", 1);
    assert.equal((await run(sql, "pgbg", "QueueFreeSlots", ["default"]))[0].free, 0);
    await setQueueConcurrency(sql, "default", null);
    await worker.stop({ timeout: 0 });
    assert.equal((await getTask(sql, stuck))?.state, "running", "not handed back while it may still run");
  });

  test("refuses bad options with a coded error naming the option", () => {
    const bad: [unknown, RegExp][] = [
      [{ tasks: [] }, /option "tasks" must be a non-empty array of defineTask\(\) results/],
      [{ tasks: [work], concurrency: 0 }, /option "concurrency" must be a whole number from 1 to 10000, got 0/],
      [{ tasks: [work], checkInterval: 1 }, /option "checkInterval" must be a whole number from 10 to 600000, got 1/],
      [{ tasks: [work], queues: ["a b"] }, /option "queues" must be null or a non-empty array of queue names/],
      [{ tasks: [work], concurency: 2 }, /unknown option "concurency"/],
    ];
    for (const [options, message] of bad) {
      assert.throws(() => createWorker(sql, options as never), (e: unknown) => e instanceof InvalidOptionsError && e.code === "PGBG_INVALID_OPTIONS" && message.test(e.message));
    }
    assert.throws(() => createWorker({} as never, { tasks: [work] }), /sql must be a postgres.js client/);
  });

  test("start() rejects with SchemaError on a database that was never migrated, and leaves nothing running", async () => {
    const worker = createWorker(sql, { tasks: [work], schema: "never_migrated", logger: quiet });
    await assert.rejects(worker.start(), { code: "PGBG_SCHEMA_MISSING" });
  });
});

describe("an application process hosting a worker", () => {
  test("killed with SIGKILL mid-task, loses nothing: another host reaps it after its stale time and runs the task", async () => {
    await clean();
    const child = spawn(process.execPath, [...typeScript, app], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ["ignore", "pipe", "inherit"] });
    const exited = new Promise((r) => child.on("exit", r));
    try {
      await within(new Promise((r) => child.stdout!.on("data", (d) => String(d).includes("ready") && r(null))), patience, "the app to be ready");
      const id = await enqueue(sql, work, { ms: 60_000 });
      const [first] = await until(() => executions([id]), (r) => r.length === 1, patience, "the app to start the task");
      assert.equal(first.pid, child.pid);
      child.kill("SIGKILL");
      await exited;
      // This process hosts the rescuer: the killed app's row is stale after 20 s of silence.
      const rescuer = createWorker(sql, { tasks: [work], checkInterval: 200, logger: quiet });
      await rescuer.start();
      await sql`UPDATE pgbg.task SET payload = '{"ms": 1}' WHERE id = ${id}`;
      await until(() => remaining([id]), (n) => n === 0, patience, "another host to run the task");
      await rescuer.stop();
      const runs = await executions([id]);
      assert.deepEqual(runs.map((r) => [r.pid, r.attempt, r.ended]), [[child.pid, 1, false], [process.pid, 2, true]]);
    } finally {
      child.kill("SIGKILL");
    }
  });
});

describe("a claim that does not return", () => {
  test("stop() ends within its timeout while a claim statement waits (as on a stalled connection), and the task that claim was after runs elsewhere", async () => {
    const queue = "stalled-claim";
    // A rate: the claim takes the queue's lock in its transaction, so holding that lock holds the claim.
    await setQueueRateLimit(sql, queue, { limit: 1_000, interval: 1_000 });
    const id = await enqueue(sql, work, { ms: 1 }, { queue });
    const warnings: string[] = [];
    const worker = createWorker(sql, { tasks: [work], queues: [queue], checkInterval: 200, logger: { ...quiet, warn: (m: string) => void warnings.push(m) } });
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const lockTaken = new Promise<void>((r) => (locked = r));
    const holding = sql.begin(async (tx) => {
      await run(tx, "pgbg", "LockLimitedQueue", [queue]);
      locked();
      await released;
    });
    try {
      await lockTaken;
      await worker.start();
      await untilWaitingForLock(sql, "the worker's claim to wait for the queue's lock");
      await within(worker.stop({ timeout: 200 }), patience, "stop() to end while its claim waits");
      assert.ok(warnings.some((m) => /^a claim did not return within the shutdown timeout \(200 ms\)/.test(m)), JSON.stringify(warnings));
    } finally {
      release();
      await holding;
    }
    const other = createWorker(sql, { tasks: [work], queues: [queue], checkInterval: 200, logger: quiet });
    await other.start();
    try {
      await until(() => remaining([id]), (n) => n === 0, patience, "another worker to run the task");
      assert.equal((await executions([id])).length, 1, "it ran once, not in the stopped worker too");
    } finally {
      await other.stop();
      await setQueueRateLimit(sql, queue, null);
    }
  });
});

describe("drain", () => {
  const flaky = defineTask({ name: "flaky", schema: v.object({ failUntil: v.number() }), retryDelay: 50, maxAttempts: 2, run: (input, ctx) => {
    if (ctx.attempt <= input.failUntil) throw new Error(`attempt ${ctx.attempt} fails`);
  } });

  test("runs what is due, waits for retries due within maxWait, and counts what is scheduled for later", async () => {
    await clean();
    await enqueue(sql, flaky, { failUntil: 0 });
    await enqueue(sql, flaky, { failUntil: 1 }); // succeeds on its retry, 50 ms later
    await enqueue(sql, flaky, { failUntil: 5 }); // fails twice, then for good
    await enqueue(sql, flaky, { failUntil: 0 }, { delay: 60_000 });
    assert.deepEqual(await drain(sql, { tasks: [flaky], maxWait: 10_000, logger: quiet }), { ran: 5, succeeded: 2, failed: 3, scheduled: 1 });
    assert.deepEqual((await sql`SELECT state::text, count(*)::int AS n FROM pgbg.task GROUP BY 1 ORDER BY 1`).map((r) => [r.state, r.n]), [["failed", 1], ["queued", 1]]);
  });

  test("without maxWait leaves a retry for later", async () => {
    await clean();
    const patient = defineTask({ ...flaky, name: "patient", retryDelay: 60_000 });
    await enqueue(sql, patient, { failUntil: 1 });
    assert.deepEqual(await drain(sql, { tasks: [patient], logger: quiet }), { ran: 1, succeeded: 0, failed: 1, scheduled: 1 });
    assert.deepEqual(await drain(sql, { tasks: [patient], logger: quiet }), { ran: 0, succeeded: 0, failed: 0, scheduled: 1 });
  });

  test("refuses a bad maxWait", async () => {
    await assert.rejects(drain(sql, { tasks: [flaky], maxWait: -1 }), /drain\(\): option "maxWait" must be a whole number from 0/);
  });
});
