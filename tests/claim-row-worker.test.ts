/**
 * The engine claiming by claim rows (migrations 026-029):
 * an in-process worker runs each task once and writes nothing per task
 * for a success; its other outcomes count attempts as a claim row by row
 * does; a stop hands its tasks back uncounted; and a claim row whose
 * worker died or whose lease ran out is released through the release of
 * row leases, its late completion refused.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import {
  cancel, createWorker, defineTask, enqueue, enqueueBatch, enqueueFlow, enqueueMany, flowTask, getBatch, getTask, listTasks, migrate,
  setQueueConcurrency, setQueueRateLimit, status,
} from "../mod.ts";
import { run } from "../lib/statements.ts";
import { releaseWorkerTasks } from "../lib/maintenance/dead-worker-releaser.ts";
import { rescueExpiredLeases } from "../lib/maintenance/lease-rescuer.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { claimTasks } from "../lib/claim.ts";
import { LimitedQueues } from "../lib/limits.ts";
import { ClaimCursor, FAST_FULL_CLAIM_MS, SLOW_FULL_CLAIMS } from "../lib/claim-cursor.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
await sql`CREATE TABLE ran (task_id bigint, name text, attempt int, snoozes int)`;
await sql`CREATE TABLE effect (task_id bigint PRIMARY KEY)`;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** Records each attempt of a task in `ran`. */
const record = (id: string, name: string, ctx: { attempt: number; snoozes: number }) =>
  sql`INSERT INTO ran VALUES (${id}, ${name}, ${ctx.attempt}, ${ctx.snoozes})`;

const plain = defineTask({ name: "plain", schema: v.object({ n: v.number() }), run: (_i, ctx) => record(ctx.id, "plain", ctx).then(() => {}) });
const flaky = defineTask({
  name: "flaky", schema: v.object({}), retryDelay: 0,
  async run(_i, ctx) {
    await record(ctx.id, "flaky", ctx);
    if (ctx.attempt < 3) throw new Error(`attempt ${ctx.attempt} fails`);
  },
});
const doomed = defineTask({
  name: "doomed", schema: v.object({}), maxAttempts: 2, retryDelay: 0,
  async run(_i, ctx) {
    await record(ctx.id, "doomed", ctx);
    throw new Error("always fails");
  },
});
const sleepy = defineTask({
  name: "sleepy", schema: v.object({}),
  async run(_i, ctx) {
    await record(ctx.id, "sleepy", ctx);
    if (ctx.snoozes === 0) ctx.retryAfter(0);
  },
});
/**
 * The application's own client for ctx.complete(tx), one that does not
 * fetch the server's array types (as the chaos suite's handlers use):
 * pgbg's statements in its transaction must take no array parameter, which
 * it would send as a scalar ("malformed array literal").
 */
const unaware = db.connect({ max: 2, fetch_types: false });
const exact = defineTask({
  name: "exact", schema: v.object({}), result: v.number(),
  async run(_i, ctx) {
    await record(ctx.id, "exact", ctx);
    await unaware.begin(async (tx) => {
      await tx`INSERT INTO effect VALUES (${ctx.id})`;
      await ctx.complete(tx, 7);
    });
    return 7;
  },
});
let releaseHeld!: () => void;
let held = new Promise<void>((resolve) => (releaseHeld = resolve));
const holding = defineTask({
  name: "holding", schema: v.object({}),
  async run(_i, ctx) {
    await record(ctx.id, "holding", ctx);
    await Promise.race([held, new Promise((resolve) => ctx.signal.addEventListener("abort", resolve))]);
    ctx.signal.throwIfAborted();
  },
});
const measured = defineTask({ name: "measured", schema: v.object({}), result: v.number(), run: () => 42 });
const tasks = [plain, flaky, doomed, sleepy, exact, holding, measured];

/** The number of updates of task rows while `body` runs (a trigger counts them). */
async function countingTaskUpdates(body: () => Promise<unknown>): Promise<number> {
  await sql`CREATE TABLE task_update (id bigint)`;
  await sql`CREATE FUNCTION count_task_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN INSERT INTO task_update VALUES (NEW.id); RETURN NULL; END $$`;
  await sql`CREATE TRIGGER task_update AFTER UPDATE ON pgbg.task FOR EACH ROW EXECUTE FUNCTION count_task_update()`;
  try {
    await body();
    return (await sql`SELECT count(*)::int AS n FROM task_update`)[0].n;
  } finally {
    await sql`DROP TRIGGER task_update ON pgbg.task`;
    await sql`DROP TABLE task_update`;
    await sql`DROP FUNCTION count_task_update()`;
  }
}

const attempts = async (id: string) =>
  (await sql`SELECT attempt, snoozes FROM ran WHERE task_id = ${id} ORDER BY attempt, snoozes`).map((r) => [r.attempt, r.snoozes]);
const left = async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE state <> 'failed'`)[0].n as number;
const claimRows = async () => (await sql`SELECT count(*)::int AS n FROM pgbg.claim`)[0].n as number;
const heldClaims = async () => (await sql`SELECT count(*)::int AS n FROM pgbg.claim WHERE worker_id IS NOT NULL`)[0].n as number;

async function clean(): Promise<void> {
  await sql`TRUNCATE pgbg.task, pgbg.claim, pgbg.history, ran, effect`;
  await sql`DELETE FROM pgbg.worker`;
}

/** Runs `body` beside a started in-process worker, stopped after it. */
async function withWorker(body: () => Promise<unknown>, concurrency = 20): Promise<void> {
  const worker = createWorker(sql, { tasks, concurrency, checkInterval: 200, logger: quiet });
  await worker.start();
  try {
    await body();
  } finally {
    releaseHeld();
    await worker.stop();
  }
}

describe("the engine by claim rows", () => {
  test("runs each task once, writes no task row for a success, and ends its claims once their outcomes are written", async () => {
    await clean();
    const ids = await enqueueMany(sql, plain, Array.from({ length: 600 }, (_, n) => ({ n })));
    const updates = await countingTaskUpdates(() =>
      withWorker(async () => {
        await until(left, (n) => n === 0, patience, "every task to run");
        await until(heldClaims, (n) => n === 0, patience, "every claim to end");
        // A claim that ended while its lane's newer one was not yet committed
        // saw no newer row and was kept as well: the rescue's tick prunes it.
        await until(claimRows, (n) => n === 1, patience, "the lane's older claim rows to be pruned");
      })
    );
    const runs = await sql`SELECT task_id::text AS id, count(*)::int AS n, max(attempt) AS attempt FROM ran GROUP BY task_id`;
    assert.equal(runs.length, ids.length, "each task ran");
    assert.ok(runs.every((r) => r.n === 1 && r.attempt === 1), "once, as its first attempt");
    assert.equal(updates, 0, "no task row was updated: the claims wrote claim rows");
    const claims = await sql`SELECT count(*)::int AS n, max(id) AS newest FROM pgbg.claim`;
    assert.equal(claims[0].n, 1, "the lane's newest claim row is kept, held by nobody; the others are gone");
  });

  test("a success kept in the history is written by its claim row, with its result, attempt and worker", async () => {
    await clean();
    const ids = await enqueueMany(sql, measured, [{}, {}, {}]);
    let workerId = "";
    const updates = await countingTaskUpdates(() =>
      withWorker(async () => {
        [{ id: workerId }] = await sql`SELECT id FROM pgbg.worker`;
        await until(() => sql`SELECT count(*)::int AS n FROM pgbg.history`, (r) => r[0].n === 3, patience, "the three kept");
      })
    );
    const kept = await sql`SELECT id::text, result, attempts, completed_attempt->>'attempt' AS attempt, completed_attempt->>'worker' AS worker
      FROM pgbg.history ORDER BY id`;
    assert.deepEqual(kept.map((k) => [k.id, k.result, k.attempts, k.attempt, k.worker]), ids.map((id) => [id, 42, 1, "1", workerId]));
    assert.equal(updates, 0, "no task row was given a lease of its own");
  });

  test("a failure counts the attempt and retries, a snooze does not count it, and attempts run out as by row leases", async () => {
    await clean();
    const [f, d, s] = [await enqueue(sql, flaky, {}), await enqueue(sql, doomed, {}), await enqueue(sql, sleepy, {})];
    await withWorker(async () => {
      await until(left, (n) => n === 0, patience, "the three to end");
      await until(heldClaims, (n) => n === 0, patience, "every claim to end");
    });
    assert.deepEqual(await attempts(f), [[1, 0], [2, 0], [3, 0]]);
    assert.deepEqual(await attempts(d), [[1, 0], [2, 0]]);
    assert.deepEqual(await attempts(s), [[1, 0], [1, 1]], "the snoozed attempt is not counted");
    const [failed] = await sql`SELECT state::text, attempts, last_error->>'message' AS message FROM pgbg.task WHERE id = ${d}`;
    assert.deepEqual({ ...failed }, { state: "failed", attempts: 2, message: "always fails" });
  });

  test("ctx.complete(tx), from a client that knows no array types, commits the task's effects and its completion once, its result kept", async () => {
    await clean();
    const ids = [await enqueue(sql, exact, {}), await enqueue(sql, exact, {})];
    await withWorker(async () => {
      await until(() => sql`SELECT count(*)::int AS n FROM pgbg.history WHERE id IN ${sql(ids)}`, (r) => r[0].n === 2, patience, "both kept");
    });
    assert.deepEqual((await sql`SELECT task_id::text FROM effect ORDER BY 1`).map((r) => r.task_id), [...ids].sort());
    assert.deepEqual((await sql`SELECT result FROM pgbg.history WHERE id IN ${sql(ids)}`).map((r) => r.result), [7, 7]);
    assert.equal(await left(), 0);
  });

  test("a stop hands a claim row's running task back uncounted, and the next worker runs it as the same attempt", async () => {
    await clean();
    held = new Promise<void>((resolve) => (releaseHeld = resolve));
    const id = await enqueue(sql, holding, {});
    // One slot, which the task fills: no claim is in flight when the stop comes (a claim the stop gives up
    // keeps what it took until its lease ends, as a row claim does).
    const worker = createWorker(sql, { tasks, concurrency: 1, checkInterval: 200, logger: quiet });
    await worker.start();
    await until(() => attempts(id), (a) => a.length === 1, patience, "the task to start");
    await worker.stop({ timeout: 0 });
    const [row] = await sql`SELECT state::text, attempts, worker_id FROM pgbg.task WHERE id = ${id}`;
    assert.deepEqual({ ...row }, { state: "queued", attempts: 0, worker_id: null }, "handed back, its attempt not counted");
    assert.equal(await heldClaims(), 0, "its claim ended");
    releaseHeld();
    await withWorker(() => until(left, (n) => n === 0, patience, "the task to run again"));
    assert.deepEqual(await attempts(id), [[1, 0], [1, 0]]);
  });

  test("a dead worker's claim row is released with the attempt counted, and its late completion is refused", async () => {
    await clean();
    const dead = randomUUID();
    const ids = await enqueueMany(sql, plain, [{ n: 1 }, { n: 2 }]);
    const last = await enqueue(sql, plain, { n: 3 }, { maxAttempts: 1 });
    const claimed = await sql`SELECT id::text, claim_id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${dead}::uuid, interval '1 hour', 10)`;
    assert.equal(claimed.length, 3);
    const released = await releaseWorkerTasks(sql, "pgbg", [dead], 25, { name: "WorkerDied", message: "test" });
    assert.deepEqual(released.map((r) => [r.id, r.state]).sort(), [[ids[0], "queued"], [ids[1], "queued"], [last, "failed"]].sort());
    const rows = await sql`SELECT id::text, state::text, attempts, staged_xact IS NOT NULL AS staged FROM pgbg.task ORDER BY id`;
    assert.deepEqual(rows.map((r) => [r.state, r.attempts, r.state === "failed" || r.staged]), [["queued", 1, true], ["queued", 1, true], ["failed", 1, true]]);
    assert.equal(await heldClaims(), 0, "the claim row ended");
    const late = new OutcomeWriter(sql, "pgbg", 25, quiet, undefined, dead);
    late.claimed(claimed.map((c) => ({ claimId: c.claim_id })));
    late.complete({ id: ids[0], leaseToken: 0, claimId: claimed[0].claim_id });
    await late.flush();
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${ids[0]}`)[0].n, 1, "the late completion deleted nothing");
    await withWorker(() => until(left, (n) => n === 0, patience, "the released tasks to run"));
    assert.deepEqual([await attempts(ids[0]), await attempts(ids[1])], [[[2, 0]], [[2, 0]]], "their second attempt");
  });

  for (const lost of ["success", "failure"] as const) {
    test(`a claim with a ${lost} the fence refused is ended by reading its stretch: a task left in it is restaged, and a later claim takes it`, async () => {
      await clean();
      const worker = randomUUID();
      const [done, left] = await enqueueMany(sql, plain, [{ n: 1 }, { n: 2 }]);
      const claimed = await sql`SELECT id::text, claim_id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 10)`;
      assert.deepEqual(claimed.map((c) => c.id), [done, left]);
      const writer = new OutcomeWriter(sql, "pgbg", 25, quiet, undefined, worker);
      writer.claimed(claimed.map((c) => ({ claimId: c.claim_id })));
      writer.complete({ id: done, leaseToken: 0, claimId: claimed[0].claim_id });
      // The claim's other outcome names a task it does not hold (as one lost would): the fence refuses it (the
      // success's fenced delete, or the failure's lease of its own), and `left` stays in the stretch.
      const other = { id: String(BigInt(left) + 1000n), leaseToken: 0, claimId: claimed[1].claim_id };
      if (lost === "success") writer.complete(other);
      else writer.fail({ ...other, delay: 0, error: { message: "lost" }, permanent: false });
      await writer.flush();
      assert.equal(await heldClaims(), 0, "the claim ended");
      assert.deepEqual((await sql`SELECT id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 10)`)
        .map((r) => r.id), [left], "restaged by the claim's end, where a claim said settled would have left it behind every later pair");
    });
  }

  test("a claim row whose lease ran out is rescued as an expired lease", async () => {
    await clean();
    const id = await enqueue(sql, plain, { n: 1 });
    // A lease that ended before the claim did: expired without waiting.
    await sql`SELECT id FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${randomUUID()}::uuid, interval '-1 second', 10)`;
    assert.equal(await heldClaims(), 1);
    const rescued = await rescueExpiredLeases(sql, "pgbg", 25);
    assert.deepEqual(rescued.map((r) => [r.id, r.state]), [[id, "queued"]]);
    assert.equal(await heldClaims(), 0);
    await withWorker(() => until(left, (n) => n === 0, patience, "the rescued task to run"));
    assert.deepEqual(await attempts(id), [[2, 0]]);
  });

  test("a task a claim row holds that a flow then depends on: its success releases the dependant", async () => {
    await clean();
    const worker = randomUUID();
    const parent = await enqueue(sql, plain, { n: 1 });
    const [claimed] = await sql`SELECT claim_id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 10)`;
    const flow = await enqueueFlow(sql, { next: flowTask(plain, { n: 2 }, { dependsOn: [{ id: parent }] }) });
    assert.equal((await getTask(sql, flow.tasks.next))?.state, "waiting");
    const writer = new OutcomeWriter(sql, "pgbg", 25, quiet, undefined, worker);
    writer.claimed([{ claimId: claimed.claim_id }]);
    writer.complete({ id: parent, leaseToken: 0, claimId: claimed.claim_id });
    await writer.flush();
    assert.equal((await getTask(sql, parent))?.state, undefined, "the parent completed");
    assert.equal((await getTask(sql, flow.tasks.next))?.state, "queued", "released as after a success, not cancelled");
  });

  test("a flow's parent and a batch's members are claimed by claim rows like any task: the dependant and the batch's completion task run after them", async () => {
    await clean();
    const flow = await enqueueFlow(sql, { first: flowTask(plain, { n: 1 }), next: flowTask(plain, { n: 2 }, { dependsOn: ["first"] }) });
    const batch = await enqueueBatch(sql, plain, Array.from({ length: 20 }, (_, n) => ({ n: 10 + n })), { then: flowTask(measured, {}) });
    // A claim that passed over the parent or the members left them queued, and they never ran.
    await withWorker(() => until(left, (n) => n === 0, patience, "the flow and the batch to run"));
    const runs = await sql`SELECT task_id::text AS id, attempt FROM ran`;
    assert.deepEqual(runs.map((r) => r.id).sort(), [flow.tasks.first, flow.tasks.next, ...batch.members].sort(), "each ran once");
    assert.ok(runs.every((r) => r.attempt === 1));
    const completed = await sql`SELECT id::text FROM pgbg.history WHERE id = ${batch.then} AND state = 'completed'`;
    assert.deepEqual(completed.map((r) => r.id), [batch.then], "the completion task ran");
  });

  test("a batch member's success, from a claim row, counts its batch down as it is written", async () => {
    await clean();
    const worker = randomUUID();
    const batch = await enqueueBatch(sql, plain, [{ n: 1 }, { n: 2 }], { then: flowTask(measured, {}) });
    const claimed = await sql`SELECT id::text, claim_id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 10)`;
    assert.deepEqual(claimed.map((c) => c.id).sort(), [...batch.members].sort(), "the lane claim took both members");
    const writer = new OutcomeWriter(sql, "pgbg", 25, quiet, undefined, worker);
    writer.claimed([{ claimId: claimed[0].claim_id }]);
    for (const c of claimed) writer.complete({ id: c.id, leaseToken: 0, claimId: c.claim_id, batch: true });
    await writer.flush();
    // Deleted by their claim row's completion instead, they would be counted only by the flow keeper's next look.
    assert.deepEqual(await getBatch(sql, batch.id).then((b) => [b?.pending, b?.succeeded, b?.then.state]), [0, 2, "queued"], "both counted: the completion task is queued");
    assert.deepEqual(await Promise.all(claimed.map((c) => getTask(sql, c.id))), [null, null], "the members' rows are gone");
  });

  test("a concurrency limit set while a claim row holds a task of the queue counts the task", async () => {
    await clean();
    const worker = randomUUID();
    // Registered, so that the limit can bind (a limit the workers cannot reach counts nothing).
    await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, stale_after_ms)
      VALUES (${worker}, ${randomUUID()}, 1, 4, 'test', 'node', '{plain}', 20000)`;
    await enqueueMany(sql, plain, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    assert.equal((await sql`SELECT * FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 2)`).length, 2);
    try {
      await setQueueConcurrency(sql, "default", 3);
      assert.equal((await run(sql, "pgbg", "QueueFreeSlots", ["default"]))[0].free, 1, "the two held tasks count against it");
    } finally {
      await setQueueConcurrency(sql, "default", null);
    }
  });

  for (const limit of ["concurrency", "rate"] as const) {
    test(`a ${limit} limit set while a claim row holds a task of the queue: the limited claim is by claim rows too, passes over the held task and counts it`, async () => {
      await clean();
      const worker = randomUUID();
      // Registered, so that a concurrency limit of 3 can bind (its claim then counts, in ClaimSlotRowTasks).
      await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, stale_after_ms)
        VALUES (${worker}, ${randomUUID()}, 1, 4, 'test', 'node', '{plain}', 20000)`;
      const [first, ...others] = await enqueueMany(sql, plain, [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
      assert.deepEqual((await sql`SELECT id::text FROM pgbg.claim_lane('default', 'plain', 0::smallint, ${worker}::uuid, interval '1 hour', 1)`).map((r) => r.id), [first]);
      if (limit === "concurrency") await setQueueConcurrency(sql, "default", 3);
      else await setQueueRateLimit(sql, "default", { limit: 100, interval: "1s" });
      try {
        const scope = { workerId: worker, queues: null, names: ["plain"], leaseMs: [60_000], limits: new LimitedQueues(60_000, 0) };
        // A row-by-row limited claim reads the lane from its head, where the held task is still queued in its row.
        const claimed = await claimTasks(sql, "pgbg", scope, 10);
        // Under the concurrency limit of 3, the held task takes one slot (take_queue_slots counts it).
        const expected = limit === "concurrency" ? others.slice(0, 2) : others;
        assert.deepEqual(claimed.map((t) => t.id), expected, "the held task is not claimed again");
        assert.ok(claimed.every((t) => t.claimId), "by a claim row");
        assert.equal(await heldClaims(), 2);
      } finally {
        if (limit === "concurrency") await setQueueConcurrency(sql, "default", null);
        else await setQueueRateLimit(sql, "default", null);
      }
    });
  }

  test("a task a claim row holds reads as running, its worker's, and a cancel aborts its attempt rather than deleting it", async () => {
    await clean();
    held = new Promise<void>((resolve) => (releaseHeld = resolve));
    const id = await enqueue(sql, holding, {});
    const queued = await enqueue(sql, holding, {}, { delay: 3_600_000 });
    const worker = createWorker(sql, { tasks, concurrency: 2, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      await until(() => attempts(id), (a) => a.length === 1, patience, "the task to start");
      assert.equal((await sql`SELECT state::text FROM pgbg.task WHERE id = ${id}`)[0].state, "queued", "its row is left as it was");
      const [{ id: workerId }] = await sql`SELECT id FROM pgbg.worker`;
      const task = await getTask(sql, id);
      assert.deepEqual([task?.state, task?.workerId, task?.attempts], ["running", workerId, 1]);
      assert.deepEqual((await listTasks(sql, { state: "running" })).tasks.map((t) => t.id), [id]);
      assert.deepEqual((await listTasks(sql, { state: "queued" })).tasks.map((t) => t.id), []);
      assert.deepEqual((await listTasks(sql, { state: "scheduled" })).tasks.map((t) => t.id), [queued]);
      const { tasks: rows, workers } = await status(sql);
      assert.deepEqual(rows.filter((r) => r.name === "holding").map((r) => [r.queued, r.scheduled, r.running, r.oldestQueuedMs]), [[0, 1, 1, null]], "no oldest queued: none is");
      assert.deepEqual(workers.map((w) => [w.id, w.running]), [[workerId, 1]]);
      const result = await cancel(sql, id);
      assert.deepEqual([result.deleted, result.signalled], [[], [id]], "signalled, as a running task is");
      await until(() => getTask(sql, id), (t) => t === null, patience, "the aborted attempt to end and the task to go");
      assert.deepEqual(await attempts(id), [[1, 0]], "it ran once");
    } finally {
      releaseHeld();
      await worker.stop();
    }
  });

  test("while full claims are slow, a claim by claim rows takes from the lanes the cursor knows, and a full claim finds the others", async () => {
    await clean();
    const known = await enqueue(sql, plain, { n: 1 });
    const elsewhere = await enqueue(sql, plain, { n: 2 }, { queue: "elsewhere" });
    // Another name in the known lane's queue and priority: a lane of its own.
    const otherName = await enqueue(sql, measured, {});
    // Full claims judged slow (as while vacuum is held back), the last one having taken a task of (default, plain, 0).
    const cursor = new ClaimCursor();
    const now = Date.now();
    for (let i = 1; i < SLOW_FULL_CLAIMS; i++) cursor.record(true, FAST_FULL_CLAIM_MS * 5, [], now);
    cursor.record(true, FAST_FULL_CLAIM_MS * 5, [{ queue: "default", name: "plain", priority: 0 }], now);
    const scope = { workerId: randomUUID(), queues: null, names: ["plain", "measured"], leaseMs: [60_000, 60_000] };
    assert.deepEqual((await claimTasks(sql, "pgbg", scope, 10, cursor)).map((t) => t.id), [known], "the known lane's task alone");
    cursor.fullNext();
    assert.deepEqual((await claimTasks(sql, "pgbg", scope, 10, cursor)).map((t) => t.id).sort(), [elsewhere, otherName].sort(), "the full claim's");
  });
});
