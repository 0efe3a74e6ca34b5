/**
 * A queue's concurrency limit: never more than N of its tasks at once,
 * however many supervisors or in-process hosts claim from it, with the
 * execution record showing N at once (so the limit was reached); N = 1
 * runs them one at a time in enqueue order; a task waiting for its retry
 * holds no slot; bad limits are refused.
 */
// Connections at its peak: 70 (four supervisors with their workers, and this file's clients; 67 measured alone: tests/run.ts).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, drain, enqueue, enqueueMany, InvalidOptionsError, migrate, queueSettings, setQueueConcurrency, setQueueRateLimit, status } from "../mod.ts";
import { type ClaimedTask, claimTasks } from "../lib/claim.ts";
import { GroupRotation } from "../lib/groups.ts";
import { LimitedQueues } from "../lib/limits.ts";
import { run } from "../lib/statements.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until, untilWaitingForLock } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, (sql) => migrate(sql));
const { sql } = testbed.db;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const mostAtOnce = testbed.mostExecutionsAtOnce;

const work = defineTask({ name: "work", schema: v.object({ ms: v.optional(v.number(), 0), failUntil: v.optional(v.number(), 0), gather: v.optional(v.number(), 0) }), run() {} });
const backoff = defineTask({ name: "backoff", schema: v.object({ message: v.string() }), run() {} });

describe("a queue's concurrency limit", () => {
  for (const supervisors of [2, 4]) {
    test(`${supervisors} supervisors never run more than 3 of the queue's tasks at once, and do run 3`, async () => {
      await setQueueConcurrency(sql, "limited", 3);
      // The first 3 wait for each other: the limit must let 3 run at once (left to timing, a loaded machine may never overlap them).
      const ids = await enqueueMany(sql, work, Array.from({ length: 40 }, (_, i) => ({ ms: 50, gather: i < 3 ? 3 : 0 })), { queue: "limited" });
      for (let i = 0; i < supervisors; i++) testbed.serve(["--workers", "2", "--concurrency", "4"]);
      await until(() => testbed.remaining(ids), (n) => n === 0, patience, "the tasks to run");
      assert.equal((await testbed.executions(ids)).length, 40, "each ran once");
      assert.equal(await mostAtOnce(ids), 3);
    });
  }

  test("in process: a limit no worker can reach is not counted against, and holds once a second worker makes it reachable: at most 4 at once, and 4", async () => {
    await setQueueConcurrency(sql, "joined", 4);
    let running = 0;
    let most = 0;
    let released = false;
    let release: () => void = () => {};
    const releasing = new Promise<void>((resolve) => release = resolve);
    const held = defineTask({
      name: "held",
      schema: v.object({}),
      async run() {
        most = Math.max(most, ++running);
        if (!released) await releasing;
        running--;
      },
    });
    const hostOf = () => createWorker(testbed.db.connect({ max: 4 }), { tasks: [held], concurrency: 3, logger: quiet, checkInterval: 200 });
    // Alone, the first worker (3 at once) cannot reach the limit: its claims count nothing.
    const first = hostOf();
    await first.start();
    const second = hostOf();
    try {
      await enqueueMany(sql, held, Array.from({ length: 12 }, () => ({})), { queue: "joined" });
      await until(async () => running, (n) => n === 3, patience, "the first worker to run 3");
      // With the second, 6 could run: the limit binds, and the second takes the one slot left.
      await second.start();
      await until(async () => running, (n) => n >= 4, patience, "the second worker to take the slot left");
      released = true;
      release();
      await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'joined'`)[0].n, (n) => n === 0, patience, "the tasks to run");
    } finally {
      await Promise.all([first.stop(), second.stop()]);
    }
    assert.equal(most, 4);
  });

  test("in process: three hosts never run more than 2 at once, and do run 2; other queues are not held back", async () => {
    await setQueueConcurrency(sql, "pair", 2);
    let running = 0;
    let most = 0;
    let other = 0;
    // Until 2 have run at once, each waits for a second one: the limit must let 2 run together.
    let paired: () => void = () => {};
    const pairing = new Promise<void>((resolve) => paired = resolve);
    const counted = defineTask({
      name: "counted",
      schema: v.object({}),
      async run(_input, ctx) {
        if (ctx.queue !== "pair") return void other++;
        most = Math.max(most, ++running);
        if (running === 2) paired();
        await Promise.all([pairing, new Promise((r) => setTimeout(r, 30))]);
        running--;
      },
    });
    const hosts = [0, 1, 2].map(() => createWorker(testbed.db.connect({ max: 4 }), { tasks: [counted], concurrency: 5, logger: quiet, checkInterval: 200 }));
    await Promise.all(hosts.map((h) => h.start()));
    try {
      await enqueueMany(sql, counted, Array.from({ length: 30 }, () => ({})), { queue: "pair" });
      await enqueueMany(sql, counted, Array.from({ length: 10 }, () => ({})), { queue: "free" });
      await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, (n) => n === 0, patience, "the tasks to run");
    } finally {
      await Promise.all(hosts.map((h) => h.stop()));
    }
    assert.equal(most, 2);
    assert.equal(other, 10);
  });

  test("a limit of 1 runs the queue's tasks one at a time, in enqueue order, across two supervisors", async () => {
    await setQueueConcurrency(sql, "serial", 1);
    const ids = await enqueueMany(sql, work, Array.from({ length: 15 }, () => ({ ms: 20 })), { queue: "serial" });
    testbed.serve(["--workers", "2", "--concurrency", "4"]);
    testbed.serve(["--workers", "2", "--concurrency", "4"]);
    await until(() => testbed.remaining(ids), (n) => n === 0, patience, "the tasks to run");
    const order = (await testbed.executions(ids)).map((r) => r.task_id);
    assert.deepEqual(order, ids, "started in enqueue order");
    assert.equal(await mostAtOnce(ids), 1);
  });

  test("a limit of 1 runs the tasks of several names in the order they were enqueued, not name by name", async () => {
    await setQueueConcurrency(sql, "serial-names", 1);
    const strict = defineTask({ name: "strict", schema: v.object({ count: v.number() }), run() {} });
    // Each in a transaction of its own, the names alternating in runs of
    // one and two: a claim that took one name's lane before the other's
    // (by name, or by shares) starts them out of this order.
    const ids: string[] = [];
    for (let i = 0; i < 12; i++) {
      ids.push(i % 3 === 0 ? await enqueue(sql, strict, { count: i }, { queue: "serial-names" }) : await enqueue(sql, work, {}, { queue: "serial-names" }));
    }
    testbed.serve(["--workers", "2", "--concurrency", "4"]);
    await until(() => testbed.remaining(ids), (n) => n === 0, patience, "the tasks to run");
    const order = (await testbed.executions(ids)).map((r) => r.task_id);
    assert.deepEqual(order, ids, "started in enqueue order");
  });

  test("under a limit of 1, a due task no claim has staged yet (a retry) is staged by the next claim and runs before the tasks enqueued after it", async () => {
    const queue = "serial-staging";
    await setQueueConcurrency(sql, queue, 1);
    const worker = randomUUID();
    const claimOne = async () => (await run(sql, "pgbg", "ClaimSlotRowTasks", [worker, [queue], ["a", "b"], [60_000, 60_000], 1, 0])).map((r) => String(r.id));
    const enqueueB = async () => String((await sql`INSERT INTO pgbg.task (queue, name, payload, staged_xact) VALUES (${queue}, 'b', '{}', pg_current_xact_id()) RETURNING id`)[0].id);
    try {
      const early = [await enqueueB(), await enqueueB()];
      // Due an hour ago, staged by no transaction: as a retry is until a claim finds it due.
      const [{ id: retry }] = await sql`INSERT INTO pgbg.task (queue, name, payload, run_at) VALUES (${queue}, 'a', '{}', now() - interval '1 hour') RETURNING id::text`;
      const order = [...await claimOne()];
      const late = await enqueueB();
      for (let i = 0; i < 3; i++) order.push(...await claimOne());
      // Staged by the first claim, after the two enqueued before it and before the one after it; by
      // the heads alone, a lane with no staged task would be read last, and the retry never staged
      // while the other name had tasks.
      assert.deepEqual(order, [...early, retry, late]);
    } finally {
      await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
      await sql`DELETE FROM pgbg.claim WHERE queue = ${queue}`;
      await setQueueConcurrency(sql, queue, null);
    }
  });

  test("a task waiting for its retry holds no slot", async () => {
    await setQueueConcurrency(sql, "one", 1);
    // The fixture's backoff waits 2 hours after a first attempt that failed with "try later".
    const failing = await enqueue(sql, backoff, { message: "try later" }, { queue: "one" });
    testbed.serve(["--workers", "1"]);
    const failed = async () => (await sql`SELECT state::text, attempts FROM pgbg.task WHERE id = ${failing}`)[0];
    await until(failed, (t) => t.state === "queued" && t.attempts === 1, patience, "the first attempt to fail");
    const next = await enqueue(sql, work, {}, { queue: "one" });
    await until(() => testbed.remaining([next]), (n) => n === 0, patience, "the next task to run beside the waiting retry");
    assert.deepEqual({ ...(await failed()) }, { state: "queued", attempts: 1 });
  });

  test("a claim that found the limit out of reach and waited for a claim under the queue's lock judges again: a worker registered meanwhile makes it count", async () => {
    const queue = "reachable";
    await setQueueConcurrency(sql, queue, 1_000);
    await enqueueMany(sql, work, [{}, {}], { queue });
    const claim = () => claimTasks(sql, "pgbg", { workerId: randomUUID(), queues: [queue], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000) }, 10);
    const big = randomUUID();
    let waiting!: Promise<ClaimedTask[]>;
    await sql.begin(async (tx) => {
      await run(tx, "pgbg", "LockLimitedQueue", [queue]);
      waiting = claim();
      await untilWaitingForLock(sql, "the claim to wait for the queue's lock");
      // As the claim waits, a worker that can reach the limit registers (and may claim under the lock).
      await tx`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, queues)
        VALUES (${big}, ${randomUUID()}, 1, 2000, 'test', 'node', '{work}', ${[queue]})`;
    });
    assert.equal((await waiting).length, 0, "judged again after the lock: the limit is within reach, and that claim counted nothing");
    assert.equal((await claim()).length, 2, "the next claim counts, under the lock");
    await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    await sql`DELETE FROM pgbg.worker WHERE id = ${big}`;
  });

  test("under a default of REPEATABLE READ, a limited queue is claimed in a READ COMMITTED transaction of its own, and its limit holds", async () => {
    const queue = "repeatable";
    await setQueueConcurrency(sql, queue, 2);
    await enqueueMany(sql, work, [{}, {}, {}], { queue });
    const rr = testbed.db.connect({ max: 2, connection: { default_transaction_isolation: "repeatable read" } });
    // Its count would read the transaction's first snapshot: it claims nothing.
    assert.equal((await run(rr, "pgbg", "ClaimSlotRowTasks", [randomUUID(), [queue], [work.name], [60_000], 10, 0])).length, 0);
    const scope = { workerId: randomUUID(), queues: [queue], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000) };
    // Registered, with more slots than the limit: the limit is counted against.
    await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, queues)
      VALUES (${scope.workerId}, ${randomUUID()}, 1, 10, 'test', 'node', '{work}', ${[queue]})`;
    assert.equal((await claimTasks(rr, "pgbg", scope, 10)).length, 2, "2 of 3, within the limit");
    assert.equal((await claimTasks(rr, "pgbg", scope, 10)).length, 0, "none while 2 run");
    await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    await sql`DELETE FROM pgbg.worker WHERE id = ${scope.workerId}`;
  });

  test("a task without a group is taken by the claim right after one that found the queue empty, its tasks with a group resting", async () => {
    const queue = "next-claim";
    await setQueueConcurrency(sql, queue, 1_000);
    const scope = {
      workerId: randomUUID(), queues: [queue], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000), groups: new GroupRotation(),
    };
    assert.equal((await claimTasks(sql, "pgbg", scope, 10)).length, 0);
    await enqueue(sql, work, {}, { queue });
    assert.equal((await claimTasks(sql, "pgbg", scope, 10)).length, 1, "not put off by the empty claim before it");
  });

  test("a claim that waited for the queue's lock reads the queue again after it: a pause committed meanwhile holds", async () => {
    const queue = "paused-while-waiting";
    await setQueueConcurrency(sql, queue, 1_000);
    await enqueueMany(sql, work, [{}, {}], { queue });
    const scope = { workerId: randomUUID(), queues: [queue], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000) };
    // Registered with more slots than the limit: the limit can bind, and is counted under the lock.
    await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, queues)
      VALUES (${scope.workerId}, ${randomUUID()}, 1, 2000, 'test', 'node', '{work}', ${[queue]})`;
    let waiting!: Promise<ClaimedTask[]>;
    await sql.begin(async (tx) => {
      await run(tx, "pgbg", "LockLimitedQueue", [queue]);
      waiting = claimTasks(sql, "pgbg", scope, 10);
      await untilWaitingForLock(sql, "the claim to wait for the queue's lock");
      await tx`UPDATE pgbg.queue SET paused_at = now() WHERE name = ${queue}`;
    });
    assert.equal((await waiting).length, 0, "paused while it waited: nothing claimed");
    await sql`UPDATE pgbg.queue SET paused_at = NULL WHERE name = ${queue}`;
    assert.equal((await claimTasks(sql, "pgbg", scope, 10)).length, 2);
    await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    await sql`DELETE FROM pgbg.worker WHERE id = ${scope.workerId}`;
  });

  test("while the claim of the queues without a limit finds nothing, the limited claims go first, and it still runs when they leave room", async () => {
    const [limited, free] = ["turns-limited", "turns-free"];
    await setQueueConcurrency(sql, limited, 1_000);
    // Resting a minute, so that the test does not race the clock.
    const scope = { workerId: randomUUID(), queues: [limited, free], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000, 60_000) };
    await enqueueMany(sql, work, [{}, {}], { queue: limited });
    // Limited first (the first turn), then the others with room left: they find nothing.
    assert.equal((await claimTasks(sql, "pgbg", scope, 10)).length, 2);
    await enqueueMany(sql, work, Array.from({ length: 20 }, () => ({})), { queue: limited });
    await enqueue(sql, work, {}, { queue: free });
    // The others' turn by rote, but they found nothing just now: the limited claim first fills the batch.
    assert.deepEqual((await claimTasks(sql, "pgbg", scope, 5)).map((t) => t.queue), Array(5).fill(limited));
    const queues = (await claimTasks(sql, "pgbg", scope, 30)).map((t) => t.queue);
    assert.equal(queues.filter((q) => q === limited).length, 15);
    assert.equal(queues.filter((q) => q === free).length, 1, "the others claimed in the room the limited claim left");
    await sql`DELETE FROM pgbg.task WHERE queue IN (${limited}, ${free})`;
  });

  test("a claim whose limited part took tasks ends with them when its claim of the other queues then fails; with none taken, it fails", async () => {
    const [limited, free] = ["partial-limited", "partial-free"];
    await setQueueConcurrency(sql, limited, 1_000);
    await enqueue(sql, work, {}, { queue: limited });
    await enqueue(sql, work, {}, { queue: free });
    // The claim of the free queue fails, as a statement may: a trigger refuses its claim row.
    await sql`CREATE FUNCTION refuse_free_claims() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'refused'; END $$`;
    await sql`CREATE TRIGGER refuse_free_claims BEFORE INSERT ON pgbg.claim FOR EACH ROW
      WHEN (NEW.queue = 'partial-free') EXECUTE FUNCTION refuse_free_claims()`;
    const scope = { workerId: randomUUID(), queues: [limited, free], names: [work.name], leaseMs: [60_000], limits: new LimitedQueues(60_000, 0) };
    try {
      // The first turn is the limited queues', then the others' claim, which fails.
      const handed: string[] = [];
      const claimed = await claimTasks(sql, "pgbg", scope, 10, undefined, 0, (tasks) => handed.push(...tasks.map((t) => t.queue)));
      assert.deepEqual(claimed.map((t) => t.queue), [limited], "the limited part's task, not an error");
      assert.deepEqual(handed, [limited], "handed over as its statement returned");
      // The next turn is the others' first: nothing taken before it fails, so the claim fails.
      await assert.rejects(claimTasks(sql, "pgbg", scope, 10), /refused/);
    } finally {
      await sql`DROP TRIGGER refuse_free_claims ON pgbg.claim`;
      await sql`DROP FUNCTION refuse_free_claims()`;
      await sql`DELETE FROM pgbg.task WHERE queue = ANY(${[limited, free]})`;
      await setQueueConcurrency(sql, limited, null);
    }
  });

  test("a limited claim that counts nothing takes no more than the worker's free slots less its unwritten outcomes, whose tasks keep their leases; one that counts takes them all", async () => {
    // The claims' tasks queued again: their claim rows gone, a claim of a
    // lane without one reads the whole lane (a first pair).
    const requeue = (queue: string) => sql`DELETE FROM pgbg.claim WHERE queue = ${queue}`;
    const claimOf = async (queue: string, limits: LimitedQueues, unwritten: number) => {
      const scope = { workerId: randomUUID(), queues: [queue], names: [work.name], leaseMs: [60_000], limits };
      const claimed = await claimTasks(sql, "pgbg", scope, 3, undefined, unwritten);
      await requeue(queue);
      return [claimed.length, limits.takeHeldByWrites()];
    };
    // By its concurrency alone (ClaimSlotRowTasks), and with a rate too (the transaction).
    for (const [queue, rated] of [["unwritten", false], ["unwritten-rated", true]] as const) {
      await setQueueConcurrency(sql, queue, 1_000);
      if (rated) await setQueueRateLimit(sql, queue, { limit: 10_000, interval: 1_000 });
      await enqueueMany(sql, work, [{}, {}, {}], { queue });
      const limits = new LimitedQueues(60_000);
      // No worker registered: the limit cannot bind, and nothing is counted.
      assert.deepEqual(await claimOf(queue, limits, 3), [0, true], `${queue}: 3 free slots, 3 outcomes unwritten`);
      assert.deepEqual(await claimOf(queue, limits, 1), [2, true], `${queue}: 3 free slots, 1 outcome unwritten`);
      assert.deepEqual(await claimOf(queue, limits, 0), [3, false], `${queue}: none unwritten`);
      if (!rated) {
        // The claim from the cursor's lanes: its unwritten outcomes are its ninth parameter.
        const fromCursor = (unwritten: number) => run(sql, "pgbg", "ClaimSlotRowTasksFrom", [
          randomUUID(), [queue], [work.name], [60_000], 3, [queue], [work.name], [0], unwritten,
        ]);
        assert.equal((await fromCursor(2)).length, 1, "from the cursor: 3 free slots, 2 outcomes unwritten");
        await requeue(queue);
      }
      // A worker registered with more slots than the limit: it can bind, and the running tasks are counted.
      const other = randomUUID();
      await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, queues)
        VALUES (${other}, ${randomUUID()}, 1, 2000, 'test', 'node', '{work}', ${[queue]})`;
      assert.deepEqual(await claimOf(queue, limits, 3), [3, false], `${queue}: counted, so nothing taken off`);
      await sql`DELETE FROM pgbg.worker WHERE id = ${other}`;
      await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    }
  });

  test("drain() returns when a limited queue's slots are all held elsewhere, leaving its tasks queued", async () => {
    await setQueueConcurrency(sql, "held", 1);
    const [held, waiting] = await enqueueMany(sql, work, [{}, {}], { queue: "held" });
    // Running on a worker of another host, as far as the table says.
    await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, worker_id = gen_random_uuid(), lease_expires_at = now() + interval '1 hour' WHERE id = ${held}`;
    const result = await drain(sql, { tasks: [work], queues: ["held"], logger: quiet });
    assert.equal(result.ran, 0);
    assert.equal((await sql`SELECT state::text FROM pgbg.task WHERE id = ${waiting}`)[0].state, "queued");
  });

  test("limits are listed, removed with null, and bad ones refused naming the value", async () => {
    await setQueueConcurrency(sql, "shown", 7);
    assert.deepEqual((await queueSettings(sql)).find((q) => q.queue === "shown"), { queue: "shown", pausedAt: null, concurrency: 7, groupConcurrency: null, rate: null, groupRate: null });
    assert.ok((await status(sql)).queues.some((q) => q.queue === "shown" && q.concurrency === 7));
    assert.deepEqual(await setQueueConcurrency(sql, "shown", null), { queue: "shown", pausedAt: null, concurrency: null, groupConcurrency: null, rate: null, groupRate: null });
    assert.equal((await queueSettings(sql)).some((q) => q.queue === "shown"), false);
    for (const bad of [0, -1, 1.5, "3", Number.NaN]) {
      await assert.rejects(setQueueConcurrency(sql, "shown", bad as number), (e: unknown) => e instanceof InvalidOptionsError && /the limit must be/.test(e.message));
    }
    await assert.rejects(setQueueConcurrency(sql, "bad name", 1), InvalidOptionsError);
  });
});
