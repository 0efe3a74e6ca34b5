/**
 * Results and history: a task's result schema, the value stored with its
 * completion and kept for its retention, getTask and listTasks over the
 * history, waitForResult (woken by a notification, or by its polling), and
 * the fence: only the attempt holding the lease stores a result, under
 * pgbg serve with a worker killed mid-task as in-process.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import { type ClaimedTask, claimTasks } from "../lib/claim.ts";
import { leaseFor, liveness } from "../lib/liveness.ts";
import { silentLogger } from "../lib/log.ts";
import { releaseWorkerTasks } from "../lib/maintenance/dead-worker-releaser.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { cancel, createWorker, defineTask, enqueue, getTask, listTasks, migrate, waitForResult, WaitError, type WorkerHost } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql } = testbed;
process.env.DATABASE_URL = testbed.db.url;
const { measured } = await import("./fixtures/tasks.ts");
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const area = defineTask({
  name: "area",
  schema: v.object({ w: v.number(), h: v.number() }),
  result: v.object({ area: v.number() }),
  run: (input) => ({ area: input.w * input.h }),
});
const liar = defineTask({
  name: "liar",
  schema: v.object({}),
  result: v.object({ area: v.number() }),
  maxAttempts: 1,
  // deno-lint-ignore no-explicit-any
  run: () => ({ area: "large" }) as any,
});
const plain = defineTask({ name: "plain", schema: v.object({}), run() {} });
const logged = defineTask({ name: "logged", schema: v.object({}), retention: { completed: 60_000 }, run() {} });
const checked = defineTask({
  name: "checked",
  schema: v.object({ n: v.number() }),
  result: v.pipeAsync(v.number(), v.checkAsync(async (n) => n > 0, "must be positive")),
  maxAttempts: 1,
  run: (input) => input.n,
});
const later = defineTask({ name: "later", schema: v.object({}), result: v.number(), run: () => 1 });

/** Runs an in-process worker of `tasks` around `body`. */
async function withWorker<T>(tasks: Parameters<typeof createWorker>[1]["tasks"], body: (worker: WorkerHost) => Promise<T>): Promise<T> {
  const worker = createWorker(sql, { tasks, concurrency: 4, checkInterval: 200, retryDelay: 0, logger: quiet });
  await worker.start();
  try {
    return await body(worker);
  } finally {
    await worker.stop();
  }
}

/** Rejects unless `promise` rejects with a WaitError of `code`; returns it. */
async function waitError(promise: Promise<unknown>, code: string): Promise<WaitError> {
  const error = await promise.then(() => assert.fail(`expected ${code}`), (e) => e);
  assert.ok(error instanceof WaitError, String(error));
  assert.equal(error.code, code, error.message);
  return error;
}

/** Waits until a waiter of task `id` registered (its first read of the task follows). */
async function waiterOf(id: string): Promise<void> {
  await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.result_waiter WHERE task_id = ${id}`)[0].n, (n) => n === 1, patience, "the waiter");
}

describe("results", () => {
  test("waitForResult resolves with what run returned, woken by the completion (no polling), and getTask and listTasks show it", async () => {
    // Due in an hour, so that the waiter's first read finds it queued; due
    // now, and a worker started, once the waiter is registered. A poll
    // interval of ten minutes: only the notification can end the wait.
    const id = await enqueue(sql, area, { w: 3, h: 4 }, { delay: 3_600_000 });
    const waiting = waitForResult(sql, id, { pollInterval: 600_000 });
    await waiterOf(id);
    await sql`UPDATE pgbg.task SET run_at = now() WHERE id = ${id}`;
    await withWorker([area], async () => {
      assert.deepEqual(await waiting, { area: 12 });
      const task = await getTask(sql, id);
      assert.equal(task?.state, "completed");
      assert.deepEqual(task?.result, { area: 12 });
      assert.deepEqual(task?.payload, { w: 3, h: 4 });
      assert.ok(task!.finishedAt instanceof Date && task!.expiresAt instanceof Date);
      const kept = task!.expiresAt!.getTime() - task!.finishedAt!.getTime();
      assert.equal(kept, 3_600_000, "kept an hour by default");
      const page = await listTasks(sql, { state: "completed", name: "area" });
      assert.deepEqual(page.tasks.map((t) => [t.id, t.result]), [[id, { area: 12 }]]);
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${id}`)[0].n, 0, "gone from the queue");
    });
  });

  test("a kept task's history has every attempt: the failed one's error and the one that completed it, by the worker, through ctx.complete(tx) too", async () => {
    const flaky = defineTask({
      name: "flaky-kept", schema: v.object({}), retention: { completed: 60_000 },
      run: (_input, ctx) => {
        if (ctx.attempt === 1) throw new Error("first attempt fails");
      },
    });
    const inTransaction = defineTask({
      name: "kept-in-tx", schema: v.object({}), result: v.number(),
      run: async (_input, ctx) => {
        await sql.begin((tx) => ctx.complete(tx, 7));
        return 7;
      },
    });
    const ids = [await enqueue(sql, flaky, {}), await enqueue(sql, inTransaction, {})];
    await withWorker([flaky, inTransaction], () => until(() => Promise.all(ids.map((id) => getTask(sql, id))), (t) => t.every((x) => x?.state === "completed"), patience, "both"));
    const [retried, completedInTx] = await Promise.all(ids.map((id) => getTask(sql, id)));
    const [workerRow] = await sql`SELECT DISTINCT worker FROM (SELECT jsonb_array_elements(errors)->>'worker' AS worker FROM pgbg.history WHERE id = ${ids[0]}) w`;
    assert.deepEqual(retried!.errors!.map((e) => [e.attempt, e.message]), [[1, "first attempt fails"]]);
    for (const [task, attempt] of [[retried!, 2], [completedInTx!, 1]] as const) {
      const done = task.completedAttempt!;
      assert.equal(done.attempt, attempt);
      assert.match(done.worker, /^[0-9a-f-]{36}$/);
      assert.ok(new Date(done.startedAt) <= new Date(done.at) && new Date(done.at) <= task.finishedAt!, `${done.startedAt} ≤ ${done.at} ≤ ${task.finishedAt}`);
    }
    assert.equal(retried!.completedAttempt!.worker, workerRow.worker, "the worker that ran it, as for its failed attempt");
    assert.ok(new Date(retried!.completedAttempt!.startedAt) >= new Date(retried!.errors![0].at as string), "claimed after the failed attempt ended");
  });

  test("an in-process worker's completed event carries the stored result", async () => {
    await withWorker([area], async (worker) => {
      const told = new Promise<unknown>((resolve) => worker.on("completed", (e) => resolve(e.result)));
      const id = await enqueue(sql, area, { w: 2, h: 5 });
      assert.deepEqual(await told, { area: 10 });
      assert.deepEqual((await getTask(sql, id))?.result, { area: 10 });
    });
  });

  test("a result its schema refuses fails the attempt, stores nothing, and waitForResult rejects with the last error", async () => {
    await withWorker([liar], async () => {
      const id = await enqueue(sql, liar, {});
      const error = await waitError(waitForResult(sql, id, { pollInterval: 600_000 }), "PGBG_TASK_FAILED");
      assert.equal(error.lastError?.code, "PGBG_INVALID_RESULT");
      assert.match(String(error.lastError?.message), /invalid result of task "liar": area: /);
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.history WHERE id = ${id}`)[0].n, 0);
    });
  });

  test("a result larger than the task's maxPayloadBytes fails the attempt, named, and stores nothing", async () => {
    const big = defineTask({ name: "big-result", schema: v.object({}), result: v.string(), maxPayloadBytes: 1_000, maxAttempts: 1, run: () => "x".repeat(2_000) });
    await withWorker([big], async () => {
      const id = await enqueue(sql, big, {});
      const error = await waitError(waitForResult(sql, id, { pollInterval: 100 }), "PGBG_TASK_FAILED");
      assert.equal(error.lastError?.code, "PGBG_INVALID_RESULT");
      assert.match(String(error.lastError?.message), /big-result.*1000/);
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.history WHERE id = ${id}`)[0].n, 0);
    });
  });

  test("an async result schema checks what a synchronous run returned, before it is stored", async () => {
    await withWorker([checked], async () => {
      const [good, bad] = [await enqueue(sql, checked, { n: 2 }), await enqueue(sql, checked, { n: -2 })];
      assert.equal(await waitForResult(sql, good), 2);
      const error = await waitError(waitForResult(sql, bad), "PGBG_TASK_FAILED");
      assert.match(String(error.lastError?.message), /invalid result of task "checked": must be positive/);
    });
  });

  test("a task without a result schema keeps nothing, unless it has a retention", async () => {
    await withWorker([plain, logged], async () => {
      const [gone, kept] = [await enqueue(sql, plain, {}), await enqueue(sql, logged, {})];
      assert.equal(await waitForResult(sql, kept), null);
      await until(() => getTask(sql, gone), (t) => t === null, patience, "the plain task to finish");
      await waitError(waitForResult(sql, gone), "PGBG_TASK_UNKNOWN");
      const task = await getTask(sql, kept);
      assert.equal(task?.state, "completed");
      assert.equal(task!.expiresAt!.getTime() - task!.finishedAt!.getTime(), 60_000);
    });
  });

  test("waitForResult rejects for a cancelled task, at the cancel, and for a wait that timed out", async () => {
    const id = await enqueue(sql, later, {}, { delay: 3_600_000 });
    await waitError(waitForResult(sql, id, { timeout: 50 }), "PGBG_WAIT_TIMEOUT");
    // Its rejection is checked from the start: it may come before cancel()
    // returns, and an unhandled one fails the test.
    const waiting = waitError(waitForResult(sql, id, { pollInterval: 600_000 }), "PGBG_TASK_CANCELLED");
    await waiterOf(id);
    assert.deepEqual((await cancel(sql, id)).deleted, [id]);
    await waiting;
    assert.equal((await getTask(sql, id))?.state, "cancelled");
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.result_waiter`)[0].n, 0, "the waiters removed their rows");
  });

  test("waitForResult polls: a task ended by a statement that notifies nobody is still seen", async () => {
    const id = await enqueue(sql, later, {});
    const waiting = waitError(waitForResult(sql, id, { pollInterval: 20 }), "PGBG_TASK_FAILED");
    await waiterOf(id);
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), last_error = '{"message":"by hand"}' WHERE id = ${id}`;
    const error = await waiting;
    assert.equal(error.lastError?.message, "by hand");
  });

  test("waitForResult names what is wrong with its arguments and honours its signal", async () => {
    await assert.rejects(waitForResult(sql, "x"), /waitForResult\(\): "x" is not a task id/);
    await assert.rejects(waitForResult(sql, "1", { pollInterval: 1 }), /pollInterval/);
    const id = await enqueue(sql, later, {}, { delay: 3_600_000 });
    const controller = new AbortController();
    const waiting = waitForResult(sql, id, { signal: controller.signal });
    controller.abort(new Error("no longer"));
    await assert.rejects(waiting, /no longer/);
  });
});

describe("the fence on results", () => {
  const scope = (workerId: string) => ({ workerId, queues: null, names: ["area"], leaseMs: [leaseFor(1000, liveness(1000))] });

  test("an attempt that lost its lease stores no result; the one holding it does", async () => {
    const id = await enqueue(sql, area, { w: 1, h: 1 });
    // Each worker's writer, fenced by that worker's claim rows.
    const writerOf = (workerId: string, task: ClaimedTask) => {
      const writer = new OutcomeWriter(sql, "pgbg", 25, silentLogger, undefined, workerId);
      writer.claimed([task]);
      return writer;
    };
    const [first, second] = [randomUUID(), randomUUID()];
    const [stale] = await claimTasks(sql, "pgbg", scope(first), 10);
    await releaseWorkerTasks(sql, "pgbg", [first], 25, { message: "gone" });
    const [fresh] = await claimTasks(sql, "pgbg", scope(second), 10);
    assert.equal(fresh?.id, id, "claimed again once released");
    const late = writerOf(first, stale);
    late.complete({ id, leaseToken: stale.leaseToken, claimId: stale.claimId, keep: 60_000, result: JSON.stringify({ area: -1 }) });
    await late.flush();
    assert.equal(await getTask(sql, id).then((t) => t?.state), "running", "the stale completion changed nothing");
    const holder = writerOf(second, fresh);
    holder.complete({ id, leaseToken: fresh.leaseToken, claimId: fresh.claimId, keep: 60_000, result: JSON.stringify({ area: 1 }) });
    await holder.flush();
    // Bounded: a completion refused would otherwise leave the wait for ever.
    assert.deepEqual(await waitForResult(sql, id, { timeout: patience }), { area: 1 });
  });

  test("pgbg serve --completed-retention keeps tasks without a result schema, which waitForResult then sees end", async () => {
    const { work } = await import("./fixtures/tasks.ts");
    const service = testbed.serve(["--workers", "1", "--completed-retention", "10m"]);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    const id = await enqueue(sql, work, {});
    assert.equal(await waitForResult(sql, id), null);
    const task = await getTask(sql, id);
    assert.equal(task?.state, "completed");
    assert.equal(task!.expiresAt!.getTime() - task!.finishedAt!.getTime(), 600_000);
  });

  test("failed tasks past the failed retention are pruned, in-process (failedRetention) and under pgbg serve (--failed-retention)", async () => {
    const failedLongAgo = async () =>
      (await sql`INSERT INTO pgbg.task (queue, name, payload, state, failed_at) VALUES ('default', 'work', '{}', 'failed', now() - interval '1 hour')
        RETURNING id::text`)[0].id as string;
    const gone = (id: string, what: string) => until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${id}`)[0].n, (n) => n === 0, patience, what);
    const inProcess = await failedLongAgo();
    const worker = createWorker(sql, { tasks: [area], failedRetention: 60_000, logger: quiet });
    await worker.start();
    try {
      await gone(inProcess, "the in-process host to prune the failed task");
    } finally {
      await worker.stop();
    }
    const served = await failedLongAgo();
    const service = testbed.serve(["--workers", "1", "--failed-retention", "1m"]);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    await gone(served, "pgbg serve to prune the failed task");
  });

  test("under pgbg serve, after a crash makes a task run twice, waitForResult resolves with the value of the attempt that held the lease", async () => {
    const service = testbed.serve(["--workers", "1", "--concurrency", "2"]);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    const id = await enqueue(sql, measured, { hangFirst: true });
    const waiting = waitForResult(sql, id);
    await until(async () => (await sql`SELECT count(*)::int AS n FROM execution WHERE task_id = ${id}`)[0].n, (n) => n === 1, patience, "the first attempt");
    const [{ pid }] = await sql`SELECT pid FROM pgbg.worker`;
    process.kill(pid, "SIGKILL");
    const result = await waiting as { attempt: number; pid: number };
    assert.equal(result.attempt, 2);
    assert.notEqual(result.pid, pid, "run by the replacement worker");
    const runs = await sql`SELECT attempt, pid FROM execution WHERE task_id = ${id} ORDER BY id`;
    assert.deepEqual(runs.map((r) => r.attempt), [1, 2]);
    assert.equal(runs[1].pid, result.pid);
  });
});
