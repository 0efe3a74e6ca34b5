/**
 * Flows and batches, in-process on a real database: a child never starts
 * before every parent succeeded, a fan-in reads every parent's result, a
 * batch's completion task runs exactly once with its counts (members
 * completed concurrently by two workers), a parent that fails for good
 * settles its dependants by the flow's policy, a cancel cascades, and
 * malformed flows are refused with nothing written.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import {
  cancelFlow,
  createWorker,
  defineTask,
  drain,
  enqueue,
  enqueueBatch,
  enqueueFlow,
  FlowError,
  flowTask,
  getBatch,
  getFlow,
  getTask,
  migrate,
  PermanentError,
  retry,
} from "../mod.ts";
import { run } from "../lib/statements.ts";
import { silentLogger } from "../lib/log.ts";
import { FlowKeeper } from "../lib/maintenance/flow-keeper.ts";
import { createTestDatabase } from "./harness.ts";
import { until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
await sql`CREATE TABLE flow_log (id bigserial PRIMARY KEY, task_id bigint NOT NULL, name text NOT NULL, note jsonb)`;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** How many of the tasks `ids` are still in the queue (not succeeded). */
async function pendingOf(ids: string[]): Promise<number> {
  if (!ids.length) return 0;
  const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(ids)} AND state <> 'failed'`;
  return n;
}

/** A step that logs its start with how many of its parents were still pending then, and returns its input's value. */
const step = defineTask({
  name: "step",
  schema: v.object({ value: v.number(), ms: v.optional(v.number(), 0), fail: v.optional(v.boolean(), false) }),
  result: v.number(),
  async run(input, ctx) {
    const [row] = await sql`SELECT coalesce(parent_ids, '{}')::text[] AS parents FROM pgbg.task WHERE id = ${ctx.id}`;
    const parents = row.parents as string[];
    const results = await ctx.parentResults(step);
    await sql`INSERT INTO flow_log (task_id, name, note) VALUES (${ctx.id}, 'step', ${
      sql.json({ pendingParents: await pendingOf(parents), parents, results: results.map((r) => [r.id, r.result]) })
    })`;
    if (input.ms) await new Promise((r) => setTimeout(r, input.ms));
    if (input.fail) throw new PermanentError("step failed on purpose");
    return input.value;
  },
});

/** A batch's completion task: logs what ctx.batch() told it. */
const report = defineTask({
  name: "report",
  schema: v.object({}),
  async run(_input, ctx) {
    await sql`INSERT INTO flow_log (task_id, name, note) VALUES (${ctx.id}, 'report', ${sql.json(JSON.parse(JSON.stringify(await ctx.batch())))})`;
  },
});

const logOf = async (id: string) => (await sql`SELECT note FROM flow_log WHERE task_id = ${id} ORDER BY id`).map((r) => r.note);

async function clean(): Promise<void> {
  await sql`DELETE FROM pgbg.task`;
  await sql`DELETE FROM flow_log`;
}

describe("flows", () => {
  test("a child starts only after every parent succeeded, and reads every parent's result", async () => {
    await clean();
    const flow = await enqueueFlow(sql, {
      a: flowTask(step, { value: 1, ms: 30 }),
      b: flowTask(step, { value: 2 }),
      c: flowTask(step, { value: 3 }, { dependsOn: ["a"] }),
      d: flowTask(step, { value: 4 }, { dependsOn: ["a", "b", "c"] }),
    });
    assert.equal((await getTask(sql, flow.tasks.d))?.state, "waiting");
    await drain(sql, { tasks: [step], concurrency: 8, logger: quiet });
    for (const name of ["a", "b", "c", "d"] as const) {
      const log = await logOf(flow.tasks[name]);
      assert.equal(log.length, 1, `${name} ran once`);
      assert.equal(log[0].pendingParents, 0, `${name} started after its parents succeeded`);
    }
    const d = (await logOf(flow.tasks.d))[0];
    assert.deepEqual(d.parents, [flow.tasks.a, flow.tasks.b, flow.tasks.c]);
    assert.deepEqual(d.results, [[flow.tasks.a, 1], [flow.tasks.b, 2], [flow.tasks.c, 3]]);
    const info = await getFlow(sql, flow.id);
    assert.deepEqual(info?.tasks.map((t) => [t.id, t.state, t.parents]), [
      [flow.tasks.a, "completed", []],
      [flow.tasks.b, "completed", []],
      [flow.tasks.c, "completed", [flow.tasks.a]],
      [flow.tasks.d, "completed", [flow.tasks.a, flow.tasks.b, flow.tasks.c]],
    ]);
  });

  test("a flow that cannot be is refused, named, and nothing of it is written", async () => {
    await clean();
    const before = (await sql`SELECT count(*)::int AS n FROM pgbg.flow`)[0].n;
    await assert.rejects(
      enqueueFlow(sql, {
        a: flowTask(step, { value: 1 }, { dependsOn: ["c"] }),
        b: flowTask(step, { value: 2 }, { dependsOn: ["a"] }),
        c: flowTask(step, { value: 3 }, { dependsOn: ["b"] }),
      }),
      (e) => e instanceof FlowError && e.code === "PGBG_INVALID_FLOW" && /cycle: a -> c -> b -> a|cycle: (a|b|c) -> .* -> \1/.test(e.message),
    );
    await assert.rejects(enqueueFlow(sql, { a: flowTask(step, { value: 1 }, { dependsOn: ["nope"] }) }), /depends on "nope", which is not a task of the flow/);
    await assert.rejects(
      enqueueFlow(sql, { a: flowTask(step, { value: 1 }), b: flowTask(step, { value: 2 }, { dependsOn: ["a", { id: "999999999" }] }) }),
      (e) => e instanceof FlowError && e.code === "PGBG_UNKNOWN_PARENT" && /999999999/.test(e.message),
    );
    await assert.rejects(enqueueFlow(sql, { a: flowTask(step, { value: -1 }, { dependsOn: [{ id: "x1" } as never] }) }), /has an? object in dependsOn/);
    assert.throws(() => flowTask(step, { value: 1 }, { schema: "other" } as never), /unknown option "schema"/);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, 0);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.flow`)[0].n, before);
  });

  test("a dependency on an existing task: waits while it is pending, is met once it succeeded and is kept", async () => {
    await clean();
    const first = await enqueue(sql, step, { value: 10 });
    const flow = await enqueueFlow(sql, { next: flowTask(step, { value: 11 }, { dependsOn: [{ id: first }] }) });
    assert.equal((await getTask(sql, flow.tasks.next))?.state, "waiting");
    await drain(sql, { tasks: [step], logger: quiet });
    assert.deepEqual((await logOf(flow.tasks.next))[0].results, [[first, 10]]);
    // `first` succeeded and is kept (step has a result schema): met at once.
    const again = await enqueueFlow(sql, { more: flowTask(step, { value: 12 }, { dependsOn: [{ id: first }] }) });
    assert.equal((await getTask(sql, again.tasks.more))?.state, "queued");
  });

  test("a parent that fails for good settles its dependants by the flow's policy, down the graph", async () => {
    await clean();
    const graph = (policy: "fail" | "cancel" | "run") =>
      enqueueFlow(sql, {
        ok: flowTask(step, { value: 1 }),
        bad: flowTask(step, { value: 2, fail: true }),
        child: flowTask(step, { value: 3 }, { dependsOn: ["ok", "bad"] }),
        grandchild: flowTask(step, { value: 4 }, { dependsOn: ["child"] }),
      }, { onParentFailure: policy });
    const failing = await graph("fail");
    const cancelling = await graph("cancel");
    const running = await graph("run");
    await drain(sql, { tasks: [step], logger: quiet });
    for (const name of ["child", "grandchild"] as const) {
      const t = await getTask(sql, failing.tasks[name]);
      assert.deepEqual([t?.state, t?.lastError?.code], ["failed", "PGBG_PARENT_FAILED"], `fail: ${name}`);
      assert.equal((await logOf(failing.tasks[name])).length, 0, `fail: ${name} never ran`);
      assert.equal((await getTask(sql, cancelling.tasks[name]))?.state ?? "gone", "cancelled", `cancel: ${name}`);
      assert.equal((await logOf(cancelling.tasks[name])).length, 0, `cancel: ${name} never ran`);
    }
    const child = (await logOf(running.tasks.child))[0];
    assert.deepEqual(child.results, [[running.tasks.ok, 1]], "run: the child ran with the result of the parent that succeeded");
    assert.equal((await logOf(running.tasks.grandchild)).length, 1, "run: and its child after it");
    // Retrying every failed task queues the failed parents again, not the tasks their failure failed.
    const retried = await retry(sql, { allFailed: true });
    assert.ok(retried.includes(failing.tasks.bad) && !retried.includes(failing.tasks.child) && !retried.includes(failing.tasks.grandchild), JSON.stringify(retried));
  });

  test("a running parent deleted by its success counts as succeeded even with its cancel asked; deleted as a cancelled attempt, as cancelled", async () => {
    await clean();
    const graph = () => enqueueFlow(sql, { p: flowTask(step, { value: 1 }), c: flowTask(step, { value: 2 }, { dependsOn: ["p", "p"] }) });
    const succeeded = await graph();
    const cancelled = await graph();
    const lease = async (id: string) => {
      const [r] = await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = lease_token + 1, worker_id = gen_random_uuid(),
        lease_expires_at = now() + interval '1 hour', cancel_requested_at = now() WHERE id = ${id} RETURNING lease_token`;
      return r.lease_token as number;
    };
    await run(sql, "pgbg", "CompleteTasks", [[succeeded.tasks.p], [await lease(succeeded.tasks.p)]]);
    await run(sql, "pgbg", "FinishCancelledTasks", [[cancelled.tasks.p], [await lease(cancelled.tasks.p)]]);
    assert.equal((await getTask(sql, succeeded.tasks.c))?.state, "queued", "a parent listed twice is waited for once, and its success releases the child");
    const failed = await getTask(sql, cancelled.tasks.c);
    assert.deepEqual([failed?.state, failed?.lastError?.code, failed?.lastError?.message], ["failed", "PGBG_PARENT_FAILED", `parent task ${cancelled.tasks.p} cancelled`]);
  });

  test("ctx.complete(tx) releases the child in the app's transaction: rolled back, the child still waits", async () => {
    await clean();
    const parent = defineTask({
      name: "parent-tx",
      schema: v.object({}),
      async run(_input, ctx) {
        const [{ child }] = await sql`SELECT child_id::text AS child FROM pgbg.task_dependency WHERE parent_id = ${ctx.id}`;
        await sql.begin(async (tx) => {
          await ctx.complete(tx);
          const [c] = await tx`SELECT state::text FROM pgbg.task WHERE id = ${child}`;
          await sql`INSERT INTO flow_log (task_id, name, note) VALUES (${ctx.id}, 'parent', ${sql.json({ attempt: ctx.attempt, childInTx: c.state })})`;
          if (ctx.attempt === 1) throw new Error("roll back the first attempt's transaction");
        });
      },
    });
    const flow = await enqueueFlow(sql, { p: flowTask(parent, {}), c: flowTask(step, { value: 1 }, { dependsOn: ["p"] }) });
    await drain(sql, { tasks: [parent, step], retryDelay: 0, logger: quiet });
    assert.deepEqual(await logOf(flow.tasks.p), [{ attempt: 1, childInTx: "queued" }, { attempt: 2, childInTx: "queued" }]);
    const child = await logOf(flow.tasks.c);
    assert.equal(child.length, 1);
    assert.equal(child[0].pendingParents, 0);
  });

  test("a dependant enqueued while its parent runs is released by the parent's end", async () => {
    await clean();
    await sql`CREATE TABLE IF NOT EXISTS flow_gate (open boolean)`;
    await sql`DELETE FROM flow_gate`;
    const gated = defineTask({
      name: "gated",
      schema: v.object({}),
      async run() {
        while (!(await sql`SELECT 1 FROM flow_gate WHERE open`).length) await new Promise((r) => setTimeout(r, 20));
      },
    });
    const first = await enqueue(sql, gated, {});
    const worker = createWorker(sql, { tasks: [gated, step], concurrency: 2, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      await until(async () => (await getTask(sql, first))?.state, (state) => state === "running", 30_000, "the parent to start");
      const flow = await enqueueFlow(sql, { after: flowTask(step, { value: 5 }, { dependsOn: [{ id: first }] }) });
      assert.equal((await getTask(sql, flow.tasks.after))?.state, "waiting");
      await sql`INSERT INTO flow_gate VALUES (true)`;
      await until(() => logOf(flow.tasks.after), (log) => log.length === 1, 30_000, "the dependant to run");
      assert.equal((await logOf(flow.tasks.after))[0].pendingParents, 0);
    } finally {
      await worker.stop();
    }
  });

  test("cancelFlow cancels what has not run and stops what runs", async () => {
    await clean();
    const slow = defineTask({
      name: "slow",
      schema: v.object({}),
      run: (_input, ctx) => new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason))),
    });
    const flow = await enqueueFlow(sql, {
      first: flowTask(slow, {}),
      second: flowTask(step, { value: 1 }, { dependsOn: ["first"] }),
      third: flowTask(step, { value: 2 }, { dependsOn: ["second"] }),
    });
    const worker = createWorker(sql, { tasks: [slow, step], concurrency: 2, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      await until(async () => (await getTask(sql, flow.tasks.first))?.state, (state) => state === "running", 30_000, "the first task to start");
      const result = await cancelFlow(sql, flow.id);
      assert.deepEqual([...result.deleted].sort(), [flow.tasks.second, flow.tasks.third].sort());
      assert.deepEqual(result.signalled, [flow.tasks.first]);
      await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE flow_id = ${flow.id}`)[0].n, (n) => n === 0, 30_000, "the flow to be gone");
    } finally {
      await worker.stop();
    }
    assert.equal((await logOf(flow.tasks.second)).length + (await logOf(flow.tasks.third)).length, 0);
  });
});

describe("batches", () => {
  test("the completion task runs exactly once, after every member ended, with the counts and the failed ids", async () => {
    await clean();
    const inputs = Array.from({ length: 300 }, (_, i) => ({ value: i, fail: i % 100 === 7 }));
    const batch = await enqueueBatch(sql, step, inputs, { then: flowTask(report, {}) });
    assert.equal(batch.members.length, 300);
    assert.equal((await getTask(sql, batch.then))?.state, "waiting");
    assert.deepEqual([(await getTask(sql, batch.then))?.flowId, (await getTask(sql, batch.members[0]))?.flowId], [batch.id, batch.id]);
    const before = await getBatch(sql, batch.id);
    assert.deepEqual({ ...before, createdAt: null }, {
      id: batch.id, size: 300, createdAt: null, pending: 300, succeeded: 0, failed: 0, failedIds: [], then: { id: batch.then, state: "waiting" },
    });
    // Two workers complete members at once.
    await Promise.all([
      drain(sql, { tasks: [step], concurrency: 16, logger: quiet }),
      drain(sql, { tasks: [step], concurrency: 16, logger: quiet }),
    ]);
    const failedIds = [7, 107, 207].map((i) => batch.members[i]);
    const ended = await getBatch(sql, batch.id);
    assert.deepEqual({ ...ended, createdAt: null }, {
      id: batch.id, size: 300, createdAt: null, pending: 0, succeeded: 297, failed: 3, failedIds, then: { id: batch.then, state: "queued" },
    });
    await drain(sql, { tasks: [step, report], logger: quiet });
    const log = await logOf(batch.then);
    assert.equal(log.length, 1, "the completion task ran once");
    assert.deepEqual(log[0], { id: batch.id, size: 300, succeeded: 297, failed: 3, failedIds });
    const [{ n }] = await sql`SELECT count(*)::int AS n FROM flow_log WHERE name = 'step'`;
    assert.equal(n, 300, "every member ran once");
    const [{ started }] = await sql`SELECT min(id) AS started FROM flow_log WHERE task_id = ${batch.then}`;
    const [{ last }] = await sql`SELECT max(id) AS last FROM flow_log WHERE name = 'step'`;
    assert.ok(BigInt(started) > BigInt(last), "after every member");
    const after = await getBatch(sql, batch.id);
    assert.deepEqual([after?.pending, after?.succeeded, after?.then.state], [0, null, "finished"], "its count left the queue with the completion task");
    await retry(sql, failedIds[0]);
    assert.equal((await getBatch(sql, batch.id))?.pending, 0, "a member retried by hand is no longer the batch's");
    const flow = await enqueueFlow(sql, { a: flowTask(step, { value: 1 }) });
    assert.equal(await getBatch(sql, flow.id), null, "a flow is not a batch");
    assert.equal(await getBatch(sql, "999999999"), null);
    await assert.rejects(getBatch(sql, "x"), /getBatch\(\): "x" is not a flow id/);
  });
});

describe("the flow keeper (maintenance)", () => {
  test("queues a batch's completion task whose members ended uncounted, as a worker of the previous release ends them; prunes ended flows after a day", async () => {
    await clean();
    const batch = await enqueueBatch(sql, step, [{ value: 1 }, { value: 2 }, { value: 3 }], { then: flowTask(report, {}) });
    // The previous release's statements: a plain delete (its CompleteTasks) and a failure.
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql(batch.members.slice(0, 2))}`;
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now() WHERE id = ${batch.members[2]}`;
    const keeper = new FlowKeeper(sql, "pgbg", 60_000, silentLogger);
    assert.equal((await getTask(sql, batch.then))?.state, "waiting");
    await keeper.runOnce();
    assert.equal((await getTask(sql, batch.then))?.state, "queued");
    await drain(sql, { tasks: [step, report], logger: quiet });
    assert.deepEqual((await logOf(batch.then))[0], { id: batch.id, size: 3, succeeded: 2, failed: 1, failedIds: [batch.members[2]] });

    // A batch still running is left alone.
    const running = await enqueueBatch(sql, step, [{ value: 1 }], { then: flowTask(report, {}) });
    await keeper.runOnce();
    assert.equal((await getTask(sql, running.then))?.state, "waiting");

    // Nothing left of the first batch but its failed member: deleted, it is pruned once a day old.
    await sql`DELETE FROM pgbg.task WHERE id = ${batch.members[2]}`;
    await sql`UPDATE pgbg.flow SET created_at = now() - interval '25 hours'`;
    await keeper.runOnce();
    assert.equal(await getFlow(sql, batch.id), null);
    assert.ok(await getFlow(sql, running.id), "a flow with tasks left is kept");
  });
});
