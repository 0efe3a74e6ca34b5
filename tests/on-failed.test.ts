/**
 * onFailed: a task that fails for good gets its hook as a durable task of
 * its own, enqueued with the failure, retried like any task, whether the
 * failure was its handler's (in-process and under pgbg serve) or its
 * worker's death (SIGKILL, released by the supervisor).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, enqueue, InvalidTaskError, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql } = testbed;
await sql`CREATE TABLE hook_run (task_id bigint NOT NULL, hook_attempt integer NOT NULL, attempts integer NOT NULL, error_name text, input jsonb)`;
process.env.DATABASE_URL = testbed.db.url;
const { doomed } = await import("./fixtures/tasks.ts");
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const hookRuns = (id: string) => sql`SELECT hook_attempt, attempts, error_name, input FROM hook_run WHERE task_id = ${id} ORDER BY hook_attempt`;

/** Waits for the hook of `id` to have run twice (its first attempt fails) and checks what it was told. */
async function hookRan(id: string, errorName: string, input: unknown): Promise<void> {
  const runs = await until(() => hookRuns(id), (rows) => rows.length === 2, patience, `the hook of ${id} to run and be retried`);
  assert.deepEqual(runs.map((r) => ({ ...r })), [1, 2].map((a) => ({ hook_attempt: a, attempts: 1, error_name: errorName, input })));
  assert.equal((await sql`SELECT state::text FROM pgbg.task WHERE id = ${id}`)[0].state, "failed", "the task stays failed");
  await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'doomed:on-failed'`)[0].n, (n) => n === 0, patience, "the hook task to be done");
}

describe("onFailed", () => {
  test("in-process: the hook runs once per failure for good, as a task with retries", async () => {
    const worker = createWorker(sql, { tasks: [doomed], retryDelay: 0, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      const id = await enqueue(sql, doomed, {});
      await hookRan(id, "Error", {});
    } finally {
      await worker.stop();
    }
  });

  test("under pgbg serve: a worker killed mid-task fails it for good (one attempt), and its hook runs on the restarted worker", async () => {
    const service = testbed.serve(["--workers", "1", "--concurrency", "4", "--retry-delay", "0"]);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    const id = await enqueue(sql, doomed, { hang: true });
    await until(async () => (await sql`SELECT count(*)::int AS n FROM execution WHERE task_id = ${id}`)[0].n, (n) => n === 1, patience, "the task to start");
    const [{ pid }] = await sql`SELECT pid FROM pgbg.worker`;
    process.kill(pid, "SIGKILL");
    await hookRan(id, "WorkerDied", { hang: true });
  });

  test("a task with onFailed keeps its name short enough for its hook's", () => {
    const base = { schema: v.object({}), run() {}, onFailed() {} };
    assert.doesNotThrow(() => defineTask({ ...base, name: "n".repeat(118) }));
    assert.throws(() => defineTask({ ...base, name: "n".repeat(119) }), (e) => e instanceof InvalidTaskError && /at most 118 characters/.test(e.message));
  });
});

describe("the statements that fail tasks", () => {
  test("wake idle workers only when they enqueue a hook (the enqueue trigger fires per INSERT statement)", async () => {
    const { rescueExpiredLeases } = await import("../lib/maintenance/lease-rescuer.ts");
    const { releaseWorkerTasks } = await import("../lib/maintenance/dead-worker-releaser.ts");
    const idle = "00000000-0000-0000-0000-0000000000ee";
    await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, idle)
      VALUES (${idle}, ${idle}, 1, 1, 'test', 'node', '{}', true)`;
    const heard: string[] = [];
    const listener = await sql.listen("pgbg:pgbg", (payload) => void heard.push(payload));
    /** The wake-ups heard before a sentinel sent now (notifications arrive in commit order). */
    const wakeUpsSoFar = async () => {
      const before = heard.length;
      await sql`SELECT pg_notify('pgbg:pgbg', 'sentinel')`;
      await until(async () => heard.slice(before).includes("sentinel"), Boolean, patience, "the sentinel");
      const got = heard.splice(0).filter((p) => p !== "sentinel").length;
      return got;
    };
    try {
      assert.equal(await wakeUpsSoFar(), 0);
      await rescueExpiredLeases(sql, "pgbg", 25);
      await releaseWorkerTasks(sql, "pgbg", [idle], 25, { name: "WorkerDied", message: "test" });
      assert.equal(await wakeUpsSoFar(), 0, "a rescue and a release that enqueue no hook wake nobody");
      // A running task on its last attempt, whose lease ran out: its rescue fails it and enqueues its hook.
      const id = await enqueue(sql, doomed, {});
      assert.equal(await wakeUpsSoFar(), 1, "the enqueue woke the idle worker");
      await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = ${idle}, lease_expires_at = now() - interval '1 second' WHERE id = ${id}`;
      assert.deepEqual((await rescueExpiredLeases(sql, "pgbg", 25)).map((t) => [t.id, t.state]), [[id, "failed"]]);
      assert.equal(await wakeUpsSoFar(), 1, "the hook's insert woke it");
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'doomed:on-failed'`)[0].n, 1);
      // Cancelled while running, then failed: no hook.
      const cancelled = await enqueue(sql, doomed, {});
      await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = ${idle}, lease_expires_at = now() - interval '1 second',
        cancel_requested_at = now() WHERE id = ${cancelled}`;
      await rescueExpiredLeases(sql, "pgbg", 25);
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'doomed:on-failed'`)[0].n, 1, "a cancelled task gets no hook");
    } finally {
      await listener.unlisten();
      await sql`DELETE FROM pgbg.worker WHERE id = ${idle}`;
      await sql`DELETE FROM pgbg.task`;
    }
  });
});
