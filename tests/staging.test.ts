/**
 * The staged transaction (migration 025): a queued task that is due records
 * the transaction that made it claimable, and gets a later one each time it
 * becomes claimable again, whichever writer queues it; a task not yet due
 * has none. The snapshot-pair claim (docs/storage.md) will take tasks by
 * it: one left with an old transaction would never be claimed, one given
 * a transaction before it is due would run early.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, drain, enqueue, enqueueFlow, enqueueMany, type EnqueueOptions, flowTask, migrate, retry } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
await sql`CREATE TABLE staged_run (task_id bigint NOT NULL, attempt integer NOT NULL, snoozes integer NOT NULL, staged text)`;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** Each attempt records its row's staged transaction as it starts, then does what its input says. */
const staged = defineTask({
  name: "staged",
  schema: v.object({ then: v.picklist(["succeed", "fail-now", "fail-later", "snooze-now", "snooze-later", "block"]) }),
  retryBackoff: (_attempt, error) => ((error as Error).message === "later" ? 3_600_000 : 0),
  maxAttempts: 3,
  async run(input, ctx) {
    await sql`INSERT INTO staged_run SELECT id, ${ctx.attempt}, ${ctx.snoozes}, staged_xact::text FROM pgbg.task WHERE id = ${ctx.id}`;
    if (input.then === "fail-now" && ctx.attempt === 1) throw new Error("now");
    if (input.then === "fail-later") throw new Error("later");
    if (input.then === "snooze-now" && ctx.snoozes === 0) ctx.retryAfter(0);
    if (input.then === "snooze-later") ctx.retryAfter(3_600_000);
    if (input.then === "block") await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
  },
});

/** The staged transactions each run of task `id` saw, in order. */
const runsOf = async (id: string) =>
  (await sql`SELECT staged FROM staged_run WHERE task_id = ${id} ORDER BY attempt, snoozes`).map((r) => r.staged === null ? null : BigInt(r.staged));
const stagedOf = async (id: string) => {
  const [row] = await sql`SELECT staged_xact::text AS staged FROM pgbg.task WHERE id = ${id}`;
  return row.staged === null ? null : BigInt(row.staged);
};

/** Enqueues in a transaction of its own and returns the task with that transaction's id. */
async function enqueueIn(input: v.InferInput<typeof staged.schema>, options: EnqueueOptions = {}): Promise<{ id: string; xact: bigint }> {
  return await sql.begin(async (tx) => {
    const id = await enqueue(tx, staged, input, options);
    const [{ xact }] = await tx`SELECT pg_current_xact_id()::text AS xact`;
    return { id, xact: BigInt(xact) };
  });
}

/** Asserts that each run after the first saw a later staged transaction than the one before it. */
function assertRestagedEachTime(runs: (bigint | null)[], count: number, what: string): void {
  assert.equal(runs.length, count, `${what}: runs`);
  for (let i = 1; i < runs.length; i++) {
    assert.ok(runs[i] !== null && runs[i - 1] !== null && runs[i]! > runs[i - 1]!, `${what}: run ${i + 1} staged by a later transaction (${runs.join(", ")})`);
  }
}

describe("the staged transaction", () => {
  test("the enqueue stages a due task by its own transaction, and the claim keeps it", async () => {
    const one = await enqueueIn({ then: "succeed" });
    const { ids, xact } = await sql.begin(async (tx) => ({
      ids: await enqueueMany(tx, staged, [{ then: "succeed" }, { then: "succeed" }]),
      xact: (await tx`SELECT pg_current_xact_id()::text AS x`)[0].x as string,
    }));
    assert.equal(await stagedOf(one.id), one.xact);
    for (const id of ids) assert.equal(await stagedOf(id), BigInt(xact));
    await drain(sql, { tasks: [staged], logger: quiet });
    assert.deepEqual(await runsOf(one.id), [one.xact], "the attempt ran with the enqueue's transaction");
  });

  test("a task not yet due has none, from each enqueue and from a flow", async () => {
    const later = await enqueueIn({ then: "succeed" }, { delay: 3_600_000 });
    const at = await enqueueIn({ then: "succeed" }, { runAt: new Date(Date.now() + 3_600_000) });
    const many = await enqueueMany(sql, staged, [{ then: "succeed" }], { delay: 3_600_000 });
    const keyed = await enqueueIn({ then: "succeed" }, { delay: 3_600_000, key: "staging-keyed" });
    const windowed = await enqueueIn({ then: "succeed" }, { delay: 3_600_000, key: "staging-window", keyWindow: { ms: 60_000 } });
    const flow = await enqueueFlow(sql, { a: flowTask(staged, { then: "succeed" }, { delay: 3_600_000 }) });
    for (const id of [later.id, at.id, many[0], keyed.id, windowed.id, flow.tasks.a]) assert.equal(await stagedOf(id), null, `task ${id}`);
    await sql`DELETE FROM pgbg.task`;
  });

  test("a retry, a snooze and a flow's release restage the task; a wait unstages it", async () => {
    const failNow = await enqueueIn({ then: "fail-now" });
    const snoozeNow = await enqueueIn({ then: "snooze-now" });
    const failLater = await enqueueIn({ then: "fail-later" });
    const snoozeLater = await enqueueIn({ then: "snooze-later" });
    const flow = await enqueueFlow(sql, { a: flowTask(staged, { then: "succeed" }), b: flowTask(staged, { then: "succeed" }, { dependsOn: ["a"] }) });
    const childAtEnqueue = await stagedOf(flow.tasks.b);
    const worker = createWorker(sql, { tasks: [staged], concurrency: 4, checkInterval: 100, logger: quiet });
    await worker.start();
    try {
      await until(() => runsOf(failNow.id), (runs) => runs.length === 2, patience, "the retry's second attempt");
      await until(() => runsOf(snoozeNow.id), (runs) => runs.length === 2, patience, "the run after the snooze");
      await until(() => runsOf(flow.tasks.b), (runs) => runs.length === 1, patience, "the flow's child");
      await until(() => sql`SELECT snoozes, attempts, state::text FROM pgbg.task WHERE id IN (${failLater.id}, ${snoozeLater.id}) ORDER BY id`,
        (rows) => rows.length === 2 && rows[0].attempts === 1 && rows[0].state === "queued" && rows[1].snoozes === 1, patience, "the waits");
    } finally {
      await worker.stop();
    }
    assertRestagedEachTime(await runsOf(failNow.id), 2, "a failure retried at once");
    assertRestagedEachTime(await runsOf(snoozeNow.id), 2, "a snooze of 0 ms");
    const [child] = await runsOf(flow.tasks.b);
    assert.ok(childAtEnqueue !== null && child !== null && child > childAtEnqueue, "the child released by its parent's success is staged by that transaction");
    assert.equal(await stagedOf(failLater.id), null, "a retry an hour away");
    assert.equal(await stagedOf(snoozeLater.id), null, "a snooze of an hour");
    await sql`DELETE FROM pgbg.task`;
  });

  test("a hand-back at shutdown, a rescued lease and the admin's retry restage the task", async () => {
    const handedBack = await enqueueIn({ then: "block" });
    const first = createWorker(sql, { tasks: [staged], concurrency: 2, checkInterval: 100, logger: quiet });
    await first.start();
    await until(() => runsOf(handedBack.id), (runs) => runs.length === 1, patience, "the blocking attempt");
    await first.stop({ timeout: 0 });
    assert.ok((await stagedOf(handedBack.id))! > handedBack.xact, "handed back: staged again");
    await sql`DELETE FROM pgbg.task`;

    // A lease that expired under a worker that is gone: the rescue queues it again.
    const rescued = await enqueueIn({ then: "succeed" });
    await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = lease_token + 1,
      worker_id = gen_random_uuid(), lease_expires_at = now() - interval '1 second' WHERE id = ${rescued.id}`;
    const failed = await enqueueIn({ then: "fail-later" }, { maxAttempts: 1 });
    const second = createWorker(sql, { tasks: [staged], concurrency: 2, checkInterval: 100, logger: quiet });
    await second.start();
    try {
      await until(() => runsOf(rescued.id), (runs) => runs.length === 1, patience, "the rescued task's run");
      await until(() => sql`SELECT state::text FROM pgbg.task WHERE id = ${failed.id}`, (rows) => rows[0]?.state === "failed", patience, "the failure");
    } finally {
      await second.stop();
    }
    assertRestagedEachTime([rescued.xact, ...await runsOf(rescued.id)], 2, "a rescued lease");
    const before = await runsOf(failed.id);
    assert.deepEqual(await retry(sql, failed.id), [failed.id]);
    assert.ok((await stagedOf(failed.id))! > before[0]!, "retried by the admin: staged again");
  });

  test("moving a queued task restages it: sooner, with a new priority", async () => {
    const delayed = await enqueueIn({ then: "succeed" }, { delay: 3_600_000, key: "staging-move" });
    await enqueue(sql, staged, { then: "succeed" }, { key: "staging-move", replace: true });
    const moved = await stagedOf(delayed.id);
    assert.ok(moved !== null && moved > delayed.xact, "replaced to run now: staged");
    await sql`UPDATE pgbg.task SET priority = 5 WHERE id = ${delayed.id}`;
    const reprioritised = await stagedOf(delayed.id);
    assert.ok(reprioritised! > moved, "a new priority: staged again");
    await sql`UPDATE pgbg.task SET payload = '{"then":"succeed"}' WHERE id = ${delayed.id}`;
    assert.equal(await stagedOf(delayed.id), reprioritised, "a change of input alone leaves it");
    await sql`DELETE FROM pgbg.task`;
  });
});
