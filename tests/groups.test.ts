/**
 * Groups within a queue (defineTask's `group`): a group limit holds for
 * each group across every supervisor, and is reached; a limit of 1 runs a
 * group's tasks one at a time in enqueue order while other groups run
 * beside it; claims take from the groups in turn, so a small group's tasks
 * start ahead of a large group's backlog; bad groups and limits are
 * refused, writing nothing.
 */
// Connections at its peak: 70 (four supervisors with their workers, as limits.test.ts, which peaked at 67 alone: tests/run.ts).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import {
  createWorker, defineTask, drain, enqueue, enqueueMany, getTask, InvalidOptionsError, InvalidTaskError, migrate, queueSettings, setGroupConcurrency, status,
} from "../mod.ts";
import { type ClaimedTask, claimTasks } from "../lib/claim.ts";
import { compareIntegerText } from "../lib/integer-text.ts";
import { GroupRotation } from "../lib/groups.ts";
import { LimitedQueues } from "../lib/limits.ts";
import { run } from "../lib/statements.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until, untilWaitingForLock } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, (sql) => migrate(sql));
const { sql } = testbed.db;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** The fixture's tenant-work task (tests/fixtures/tasks.ts): its group is its input's tenant. */
const tenantWork = defineTask({
  name: "tenant-work",
  schema: v.object({ tenant: v.string(), ms: v.optional(v.number(), 0), gather: v.optional(v.number(), 0) }),
  group: (input) => input.tenant,
  run() {},
});

const mostAtOnce = testbed.mostExecutionsAtOnce;

/** Thrown to roll a test's transaction back. */
class Rollback extends Error {}

/** Enqueues `each` tasks for every tenant, interleaved (a1, b1, c1, a2...); returns the ids by tenant. */
async function enqueueTenants(queue: string, tenants: string[], each: number, ms: number, gather = 0): Promise<Map<string, string[]>> {
  // The first `gather` tasks of each tenant wait until that many of its tasks run at once.
  const inputs = Array.from({ length: each }, (_, i) => tenants.map((tenant) => ({ tenant, ms, gather: i < gather ? gather : 0 }))).flat();
  const ids = await enqueueMany(sql, tenantWork, inputs, { queue });
  const byTenant = new Map<string, string[]>(tenants.map((t) => [t, []]));
  inputs.forEach((input, i) => byTenant.get(input.tenant)!.push(ids[i]));
  return byTenant;
}

describe("a group limit", () => {
  for (const supervisors of [2, 4]) {
    test(`${supervisors} supervisors never run more than 3 tasks of a group at once, and do run 3, with groups side by side`, async () => {
      const queue = `tenants-${supervisors}`;
      await setGroupConcurrency(sql, queue, 3);
      // The first 3 of each tenant wait for each other: the limit must let 3
      // run at once, or they wait until the test gives up. (Left to timing,
      // 400 ms tasks once never had 3 of a group at once on a loaded CI machine.)
      const byTenant = await enqueueTenants(queue, ["a", "b", "c"], 12, 100, 3);
      for (let i = 0; i < supervisors; i++) testbed.serve(["--workers", "2", "--concurrency", "4", "--queues", queue]);
      const all = [...byTenant.values()].flat();
      await until(() => testbed.remaining(all), (n) => n === 0, patience, "the tasks to run");
      assert.equal((await testbed.executions(all)).length, 36, "each ran once");
      for (const [tenant, ids] of byTenant) assert.equal(await mostAtOnce(ids), 3, `tenant ${tenant}`);
      assert.ok(await mostAtOnce(all) > 3, "the limit is per group, not the queue's");
    });
  }

  test("a limit of 1 runs each group's tasks one at a time, in enqueue order, across two supervisors", async () => {
    await setGroupConcurrency(sql, "serial-groups", 1);
    const byTenant = await enqueueTenants("serial-groups", ["x", "y", "z"], 8, 20);
    testbed.serve(["--workers", "2", "--concurrency", "4", "--queues", "serial-groups"]);
    testbed.serve(["--workers", "2", "--concurrency", "4", "--queues", "serial-groups"]);
    const all = [...byTenant.values()].flat();
    await until(() => testbed.remaining(all), (n) => n === 0, patience, "the tasks to run");
    for (const [tenant, ids] of byTenant) {
      // First attempts: an attempt that failed (on a loaded machine, its
      // own write can) waits for its retry holding no slot, as documented,
      // and its retry may follow later tasks of its group.
      const first = (await testbed.executions(ids)).filter((r) => r.attempt === 1).map((r) => r.task_id);
      assert.ok(first.length >= ids.length / 2, `tenant ${tenant}: ${first.length} first attempts ran`);
      assert.deepEqual(first, ids.filter((id) => first.includes(id)), `tenant ${tenant} started in enqueue order`);
      assert.equal(await mostAtOnce(ids), 1, `tenant ${tenant}`);
    }
    assert.ok(await mostAtOnce(all) > 1, "groups ran side by side");
  });

  test("a task handed back or released keeps its place in its group: a limit of 1 still runs the group in enqueue order", async () => {
    await setGroupConcurrency(sql, "kept-place", 1);
    const order: number[] = [];
    const ordered = defineTask({ name: "ordered", schema: v.object({ n: v.number() }), group: () => "one", run: (input) => void order.push(input.n) });
    const ids = await enqueueMany(sql, ordered, [{ n: 1 }, { n: 2 }, { n: 3 }], { queue: "kept-place" });
    // Tasks 1 and 2 leased elsewhere: 1 is handed back by its stopping worker, 2 released from a dead one.
    await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = gen_random_uuid(),
      lease_expires_at = now() + interval '1 hour' WHERE id IN ${sql(ids.slice(0, 2))}`;
    await run(sql, "pgbg", "HandBackTasks", [[ids[0]], [1]]);
    const [{ worker_id }] = await sql`SELECT worker_id FROM pgbg.task WHERE id = ${ids[1]}`;
    await run(sql, "pgbg", "ReleaseWorkerTasks", [25, JSON.stringify({ message: "its worker died" }), [worker_id]]);
    await drain(sql, { tasks: [ordered], queues: ["kept-place"], logger: quiet });
    assert.deepEqual(order, [1, 2, 3]);
    // Within a group, priority comes before enqueue order.
    order.length = 0;
    await enqueueMany(sql, ordered, [{ n: 4 }], { queue: "kept-place", priority: 5 });
    await enqueueMany(sql, ordered, [{ n: 5 }], { queue: "kept-place", priority: 0 });
    await drain(sql, { tasks: [ordered], queues: ["kept-place"], logger: quiet });
    assert.deepEqual(order, [5, 4]);
  });

  test("drain() returns when a group's slots are all held elsewhere, leaving its tasks queued", async () => {
    await setGroupConcurrency(sql, "held-groups", 1);
    const [held, waiting, other] = await enqueueMany(sql, tenantWork, [{ tenant: "h" }, { tenant: "h" }, { tenant: "o" }], { queue: "held-groups" });
    // Running on a worker of another host, as far as the table says.
    await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, worker_id = gen_random_uuid(), lease_expires_at = now() + interval '1 hour' WHERE id = ${held}`;
    const result = await drain(sql, { tasks: [tenantWork], queues: ["held-groups"], logger: quiet });
    assert.equal(result.ran, 1, "the other group's task ran");
    assert.equal((await sql`SELECT state::text FROM pgbg.task WHERE id = ${waiting}`)[0].state, "queued");
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${other}`)[0].n, 0);
  });

  test("the claims of a queue limited per group alone run side by side: a group another claim holds is passed over, and a claim under the queue's lock is waited for", async () => {
    const queue = "side-by-side";
    await setGroupConcurrency(sql, queue, 2);
    await enqueueMany(sql, tenantWork, [{ tenant: "a" }, { tenant: "a" }, { tenant: "a" }, { tenant: "b" }, { tenant: "b" }], { queue });
    const claim = () => claimTasks(sql, "pgbg", {
      workerId: randomUUID(), queues: [queue], names: [tenantWork.name], leaseMs: [60_000], limits: new LimitedQueues(60_000), groups: new GroupRotation(),
    }, 10);
    const groupsOf = (claimed: ClaimedTask[]) => claimed.map((t) => t.group).sort();
    await sql.begin(async (tx) => {
      // A claim that holds group a, its transaction still open.
      const [first] = await run(tx, "pgbg", "ClaimPerGroupTasks", [randomUUID(), [queue], [tenantWork.name], [60_000], 1, null]);
      assert.equal(first.group_name, "a");
      assert.deepEqual(groupsOf(await claim()), ["b", "b"], "group a, held, passed over; group b claimed up to its limit");
    });
    assert.deepEqual(groupsOf(await claim()), ["a"], "once that claim committed, one more of group a: its limit less the one that claim took");
    await enqueue(sql, tenantWork, { tenant: "c" }, { queue });
    let waiting!: Promise<ClaimedTask[]>;
    await sql.begin(async (tx) => {
      // A claim under the queue's lock, as a worker that reads the queue as limited as a whole takes it.
      await run(tx, "pgbg", "LockLimitedQueue", [queue]);
      waiting = claim();
      await untilWaitingForLock(sql, "the claim to wait for the queue's lock");
    });
    assert.deepEqual(groupsOf(await waiting), ["c"]);
  });

  test("a claim of a queue limited per group alone walks, and locks, only as many groups as it takes tasks from (a plan that hashed the walk locked every group), under a custom or a generic plan", async () => {
    const queue = "walk-stops";
    await setGroupConcurrency(sql, queue, 5);
    // 1,000 groups of 2: a plan that hashes the walk visits all of them.
    await enqueueMany(sql, tenantWork, Array.from({ length: 2_000 }, (_, i) => ({ tenant: `t${String(i % 1_000).padStart(3, "0")}` })), { queue });
    await sql`ANALYZE pgbg.task`;
    for (const mode of ["force_custom_plan", "force_generic_plan"]) {
      await sql.begin(async (tx) => {
        await tx.unsafe(`SET LOCAL plan_cache_mode = ${mode}`);
        const claimed = await run(tx, "pgbg", "ClaimPerGroupTasks", [randomUUID(), [queue], [tenantWork.name], [60_000], 32, null]);
        assert.equal(claimed.length, 32);
        // Each group the walk reached is locked until this transaction ends.
        const [{ groups }] = await tx`SELECT count(*)::int AS groups FROM pg_locks
          WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND pid = pg_backend_pid()`;
        assert.equal(groups, 32, `${mode}: the groups the claim locked`);
        throw new Rollback();
      }).catch((e) => { if (!(e instanceof Rollback)) throw e; });
    }
    await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
  });

  test("under a default of REPEATABLE READ, a queue limited per group alone is claimed under the queue's lock, and its limit holds", async () => {
    const queue = "repeatable";
    await setGroupConcurrency(sql, queue, 1);
    await enqueueMany(sql, tenantWork, [{ tenant: "a" }, { tenant: "a" }, { tenant: "b" }], { queue });
    const rr = testbed.db.connect({ max: 2, connection: { default_transaction_isolation: "repeatable read" } });
    const params = [randomUUID(), [queue], [tenantWork.name], [60_000], 10, null];
    // Its counts would read the transaction's first snapshot: it claims nothing.
    assert.equal((await run(rr, "pgbg", "ClaimPerGroupTasks", params)).length, 0);
    const claimed = await claimTasks(rr, "pgbg", {
      workerId: randomUUID(), queues: [queue], names: [tenantWork.name], leaseMs: [60_000], limits: new LimitedQueues(60_000), groups: new GroupRotation(),
    }, 10);
    assert.deepEqual(claimed.map((t) => t.group).sort(), ["a", "b"], "one of each group, within their limit of 1");
  });

  test("group limits are listed, removed with null, and bad ones refused naming the value", async () => {
    await setGroupConcurrency(sql, "shown-groups", 4);
    assert.deepEqual((await queueSettings(sql)).find((q) => q.queue === "shown-groups"), {
      queue: "shown-groups", pausedAt: null, concurrency: null, groupConcurrency: 4, rate: null, groupRate: null,
    });
    assert.ok((await status(sql)).queues.some((q) => q.queue === "shown-groups" && q.groupConcurrency === 4));
    await setGroupConcurrency(sql, "shown-groups", null);
    assert.equal((await queueSettings(sql)).some((q) => q.queue === "shown-groups"), false);
    for (const bad of [0, -1, 1.5, "3", Number.NaN]) {
      await assert.rejects(setGroupConcurrency(sql, "shown-groups", bad as number), (e: unknown) => e instanceof InvalidOptionsError && /the limit must be/.test(e.message));
    }
  });
});

describe("claims take from groups in turn", () => {
  test("in process: a small group's tasks start ahead of a large group's backlog enqueued before them", async () => {
    const started: string[] = [];
    const fair = defineTask({
      name: "fair",
      schema: v.object({ tenant: v.string() }),
      group: (input) => input.tenant,
      run(input) {
        started.push(input.tenant);
      },
    });
    await enqueueMany(sql, fair, Array.from({ length: 3000 }, () => ({ tenant: "big" })), { queue: "fair" });
    await enqueueMany(sql, fair, Array.from({ length: 5 }, () => ({ tenant: "small" })), { queue: "fair" });
    const host = createWorker(testbed.db.connect({ max: 4 }), { tasks: [fair], queues: ["fair"], concurrency: 4, logger: quiet });
    await host.start();
    try {
      await until(async () => started.filter((t) => t === "small").length, (n) => n === 5, patience, "the small group's tasks to run");
    } finally {
      await host.stop();
    }
    const before = started.indexOf("small") === -1 ? Infinity : started.lastIndexOf("small");
    // Strict enqueue order would start all 3000 of "big" first.
    assert.ok(before < 100, `the small group's last task started ${before} tasks in`);
  });

  test("tasks without a group run beside grouped ones in the same queue, with a group limit or without", async () => {
    const plain = defineTask({ name: "plain", schema: v.object({}), run() {} });
    const mixed = defineTask({ name: "mixed", schema: v.object({ tenant: v.string() }), group: (input) => input.tenant, run() {} });
    // A group limit holds tasks with a group alone.
    await setGroupConcurrency(sql, "mixed-limited", 1);
    for (const queue of ["mixed", "mixed-limited"]) {
      await enqueueMany(sql, mixed, Array.from({ length: 20 }, (_, i) => ({ tenant: `t${i % 3}` })), { queue });
      await enqueueMany(sql, plain, Array.from({ length: 20 }, () => ({})), { queue });
      const result = await drain(sql, { tasks: [plain, mixed], queues: [queue], logger: quiet });
      assert.equal(result.ran, 40, queue);
    }
  });
  test("a claim that took tasks with a group hands them over as its statement returns, and ends with them when its claim of the tasks without one then fails", async () => {
    const queue = "kinds-partial";
    const plain = defineTask({ name: "kinds-plain", schema: v.object({}), run() {} });
    await enqueue(sql, tenantWork, { tenant: "a" }, { queue });
    await enqueue(sql, plain, {}, { queue });
    // The claim of the task without a group fails, as a statement may: a trigger refuses its claim row.
    await sql`CREATE FUNCTION refuse_plain_claims() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN RAISE EXCEPTION 'refused'; END $$`;
    await sql`CREATE TRIGGER refuse_plain_claims BEFORE INSERT ON pgbg.claim FOR EACH ROW
      WHEN (NEW.queue = 'kinds-partial') EXECUTE FUNCTION refuse_plain_claims()`;
    const scope = { workerId: randomUUID(), queues: [queue], names: [tenantWork.name, plain.name], leaseMs: [60_000, 60_000], groups: new GroupRotation() };
    try {
      const handed: string[] = [];
      // A fresh rotation claims tasks with a group first, then the others, whose claim fails.
      const claimed = await claimTasks(sql, "pgbg", scope, 10, undefined, 0, (tasks) => handed.push(...tasks.map((t) => t.name)));
      assert.deepEqual(claimed.map((t) => t.name), [tenantWork.name], "the grouped task, not an error");
      assert.deepEqual(handed, [tenantWork.name], "handed over as its statement returned");
      // The next turn is the others' first: nothing taken before it fails, so the claim fails.
      await assert.rejects(claimTasks(sql, "pgbg", scope, 10), /refused/);
    } finally {
      await sql`DROP TRIGGER refuse_plain_claims ON pgbg.claim`;
      await sql`DROP FUNCTION refuse_plain_claims()`;
      await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    }
  });
});

describe("a group claim's tasks", () => {
  test("are handed over in claim order (priority, run_at, id), not by turns, run_at before 1970 included", async () => {
    const queue = "claim-order";
    // By turns the claim takes a's first, b's first, then a's second; in
    // claim order b's (the earliest run_at) comes first. The run_at values
    // are before 1970, so their epoch microseconds are negative: -12 s must
    // sort before -5 s, which a comparison of the digits alone gets wrong.
    const at = (seconds: number) => ({ queue, runAt: new Date(seconds * 1000) });
    const a1 = await enqueue(sql, tenantWork, { tenant: "a" }, at(-5));
    const a2 = await enqueue(sql, tenantWork, { tenant: "a" }, at(-1));
    const b1 = await enqueue(sql, tenantWork, { tenant: "b" }, at(-12));
    const scope = { workerId: randomUUID(), queues: [queue], names: [tenantWork.name], leaseMs: [60_000], groups: new GroupRotation() };
    try {
      const handed: string[] = [];
      const claimed = await claimTasks(sql, "pgbg", scope, 10, undefined, 0, (tasks) => handed.push(...tasks.map((t) => t.id)));
      assert.deepEqual(claimed.map((t) => t.id), [b1, a1, a2], "claim order");
      assert.deepEqual(handed, [b1, a1, a2], "started in claim order");
    } finally {
      await sql`DELETE FROM pgbg.task WHERE queue = ${queue}`;
    }
  });
});

test("claim order compares a bigint's text as a number: signs, zero, lengths", () => {
  const numbers = [-9007199254740993n, -1000000n, -999999n, -12n, -5n, -1n, 0n, 1n, 5n, 12n, 999999n, 1000000n, 9007199254740993n];
  const shuffled = [...numbers].reverse().map(String);
  shuffled.splice(3, 0, ...shuffled.splice(8, 2));
  assert.deepEqual(shuffled.sort(compareIntegerText), numbers.map(String));
  for (const a of numbers) for (const b of numbers) {
    assert.equal(Math.sign(compareIntegerText(String(a), String(b))), a < b ? -1 : a > b ? 1 : 0, `${a} against ${b}`);
  }
});

describe("a task's group", () => {
  test("is what its function returns, stored with the task; null or undefined is none", async () => {
    const maybe = defineTask({ name: "maybe-group", schema: v.object({ g: v.optional(v.string()) }), group: (input) => input.g, run() {} });
    const [a, b] = await enqueueMany(sql, maybe, [{ g: "acme" }, {}], { queue: "groups-stored" });
    const c = await enqueue(sql, maybe, { g: "zeta" }, { queue: "groups-stored" });
    const rows = await sql`SELECT id::text, group_name FROM pgbg.task WHERE id IN ${sql([a, b, c])} ORDER BY id`;
    assert.deepEqual(rows.map((r) => r.group_name), ["acme", null, "zeta"]);
    assert.deepEqual([(await getTask(sql, a))?.group, (await getTask(sql, b))?.group], ["acme", null], "getTask shows it");
  });

  test("a function that returns no group name, or throws, fails the enqueue naming the task and index, and writes nothing", async () => {
    const bad = defineTask({
      name: "bad-group",
      schema: v.object({ g: v.unknown() }),
      group: (input) => {
        if (input.g === "throw") throw new Error("no tenant");
        return input.g as string;
      },
      run() {},
    });
    const before = (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'bad-group'`)[0].n;
    await assert.rejects(enqueue(sql, bad, { g: 7 }), (e: unknown) => e instanceof InvalidTaskError && /"bad-group": group returned number/.test(e.message));
    await assert.rejects(enqueue(sql, bad, { g: "" }), /group returned a string of 0 characters/);
    await assert.rejects(enqueue(sql, bad, { g: "x".repeat(257) }), /1-256 characters/);
    await assert.rejects(enqueueMany(sql, bad, [{ g: "ok" }, { g: "throw" }]), /group threw for the input at index 1: no tenant/);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'bad-group'`)[0].n, before);
    assert.throws(() => defineTask({ name: "x", schema: v.object({}), group: "tenant" as never, run() {} }), /group must be a function/);
  });
});
