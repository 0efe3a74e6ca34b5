/**
 * Dedup windows: a key held for a window after its enqueue or its task's
 * finish (throttle), and `replace`, which gives a queued task holding the
 * key the latest input and run time (debounce), under 16 concurrent
 * enqueues as the plain key is tested. A window's end is brought forward by
 * moving the hold's end in the table, not by waiting.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { cancel, defineTask, drain, enqueue, enqueueMany, InvalidOptionsError, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const ping = defineTask({ name: "ping", schema: v.object({ n: v.number() }), run() {} });
const broken = defineTask({ name: "broken", schema: v.object({ n: v.number() }), maxAttempts: 1, run() { throw new Error("no"); } });
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const rows = (key: string) => sql`SELECT id::text, payload, state::text FROM pgbg.task WHERE key = ${key} ORDER BY id`;
const hold = async (key: string) => (await sql`SELECT held_until, task_id::text FROM pgbg.task_key WHERE key = ${key}`)[0];
/** Ends the key's hold now, as its window's passing would. */
const endHold = (key: string) => sql`UPDATE pgbg.task_key SET held_until = now() - interval '1 ms' WHERE key = ${key}`;

/** 16 connections enqueue `key` at once with `options`; returns the ids they got. */
async function race(key: string, options: Parameters<typeof enqueue>[3]): Promise<string[]> {
  const clients = Array.from({ length: 16 }, () => db.connect({ max: 1 }));
  try {
    await Promise.all(clients.map((c) => c`SELECT 1`));
    return await Promise.all(clients.map((c, i) => enqueue(c, ping, { n: i }, { key, ...options })));
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

describe("a key's window (throttle)", () => {
  test("from the enqueue: 16 concurrent enqueues make one task; the key stays taken after it completed, until the window ends", async () => {
    const ids = await race("hourly", { keyWindow: { ms: 3_600_000 } });
    assert.equal(new Set(ids).size, 1, "every enqueue got the one task's id");
    const [id] = ids;
    assert.equal((await rows("hourly")).length, 1);
    const held = await hold("hourly");
    assert.equal(held.task_id, id);
    await drain(sql, { tasks: [ping], logger: quiet });
    assert.equal((await rows("hourly")).length, 0, "completed and gone");
    assert.equal(await enqueue(sql, ping, { n: 99 }, { key: "hourly", keyWindow: { ms: 3_600_000 } }), id, "refused inside the window: the taker's id");
    assert.equal((await rows("hourly")).length, 0, "nothing written");
    await endHold("hourly");
    const next = await enqueue(sql, ping, { n: 100 }, { key: "hourly", keyWindow: { ms: 3_600_000 } });
    assert.notEqual(next, id);
    assert.deepEqual((await rows("hourly")).map((r) => r.payload), [{ n: 100 }]);
  });

  test("from the finish: held while pending, then for the window from when it completed, was cancelled or failed for good", async () => {
    const window = { ms: 60_000, from: "finish" as const };
    const id = await enqueue(sql, ping, { n: 1 }, { key: "after", keyWindow: window });
    assert.equal((await hold("after")).held_until, null, "held until it finishes");
    assert.equal(await enqueue(sql, ping, { n: 2 }, { key: "after", keyWindow: window }), id);
    const before = Date.now();
    await drain(sql, { tasks: [ping], logger: quiet });
    const until = (await hold("after")).held_until as Date;
    assert.ok(until.getTime() >= before + 60_000 - 5_000, `held for the window from the finish, until ${until.toISOString()}`);
    assert.equal(await enqueue(sql, ping, { n: 3 }, { key: "after", keyWindow: window }), id);
    await endHold("after");
    const second = await enqueue(sql, ping, { n: 4 }, { key: "after", keyWindow: window });
    assert.notEqual(second, id);
    await cancel(sql, second);
    assert.ok((await hold("after")).held_until > new Date(), "a cancel is a finish");
    await endHold("after");
    const failing = await enqueue(sql, broken, { n: 5 }, { key: "after", keyWindow: window });
    await drain(sql, { tasks: [broken], logger: quiet });
    assert.equal((await rows("after"))[0].state, "failed");
    assert.ok((await hold("after")).held_until > new Date(), "failing for good is a finish");
    assert.equal(await enqueue(sql, ping, { n: 6 }, { key: "after", keyWindow: window }), failing);
  });

  for (const from of ["enqueue", "finish"] as const) {
    test(`from the ${from}: 16 concurrent enqueues make one task, and 16 more inside the window after it finished write nothing`, async () => {
      const key = `burst-${from}`;
      const ids = await race(key, { keyWindow: { ms: 3_600_000, from } });
      assert.equal(new Set(ids).size, 1);
      assert.equal((await hold(key)).task_id, ids[0], "the taker is named for later refusals");
      await drain(sql, { tasks: [ping], logger: quiet });
      const again = await race(key, { keyWindow: { ms: 3_600_000, from } });
      assert.deepEqual(new Set(again), new Set([ids[0]]));
      assert.equal((await rows(key)).length, 0);
    });
  }

  test("a malformed window, or one without a key or in enqueueMany, is refused by name and writes nothing", async () => {
    const refused = (options: object, pattern: RegExp) =>
      assert.rejects(enqueue(sql, ping, { n: 1 }, { key: "bad", ...options }), (e) => e instanceof InvalidOptionsError && pattern.test(e.message));
    await refused({ keyWindow: { ms: 0 } }, /option "keyWindow" must be \{ ms, from\? \}.*got \{"ms":0\}/);
    await refused({ keyWindow: { ms: 1000, from: "start" } }, /option "keyWindow" must be/);
    await refused({ keyWindow: { ms: 1000, every: 2 } }, /option "keyWindow" must be/);
    await refused({ replace: "yes" }, /replace/);
    await assert.rejects(enqueue(sql, ping, { n: 1 }, { keyWindow: { ms: 1000 } }), /keyWindow and replace need a key/);
    // deno-lint-ignore no-explicit-any
    await assert.rejects(enqueueMany(sql, ping, [{ n: 1 }], { keyWindow: { ms: 1000 } } as any), /unknown option "keyWindow"/);
    assert.equal((await rows("bad")).length, 0);
  });
});

describe("replace (debounce)", () => {
  test("a queued task holding the key takes the latest input, run time and priority; 16 at once leave one task with one of their inputs", async () => {
    const first = await enqueue(sql, ping, { n: -1 }, { key: "typing", delay: 3_600_000 });
    const ids = await race("typing", { replace: true, delay: 60_000, priority: 5 });
    assert.deepEqual(new Set(ids), new Set([first]));
    const [task] = await sql`SELECT payload, priority, extract(epoch FROM run_at - now()) AS wait FROM pgbg.task WHERE key = 'typing'`;
    assert.ok(task.payload.n >= 0 && task.payload.n < 16, `one of the racers' inputs: ${JSON.stringify(task.payload)}`);
    assert.equal(task.priority, 5);
    assert.ok(task.wait > 30 && task.wait <= 60, `due in a minute, not an hour: ${task.wait} s`);
    assert.equal((await rows("typing")).length, 1);
  });

  test("a queued task of another name holding the key keeps its input", async () => {
    const other = defineTask({ name: "other", schema: v.object({ n: v.number() }), run() {} });
    const id = await enqueue(sql, other, { n: 1 }, { key: "shared", delay: 3_600_000 });
    assert.equal(await enqueue(sql, ping, { n: 2 }, { key: "shared", replace: true }), id);
    assert.deepEqual((await rows("shared"))[0].payload, { n: 1 });
    await sql`DELETE FROM pgbg.task WHERE id = ${id}`;
  });

  test("a running task is left as it is; without replace the input is ignored", async () => {
    const id = await enqueue(sql, ping, { n: 1 }, { key: "busy" });
    assert.equal(await enqueue(sql, ping, { n: 2 }, { key: "busy" }), id);
    assert.deepEqual((await rows("busy"))[0].payload, { n: 1 }, "ignored without replace");
    await sql`UPDATE pgbg.task SET state = 'running', worker_id = gen_random_uuid(), lease_expires_at = now() + interval '1 hour' WHERE id = ${id}`;
    assert.equal(await enqueue(sql, ping, { n: 3 }, { key: "busy", replace: true }), id);
    assert.deepEqual((await rows("busy"))[0].payload, { n: 1 }, "the running task keeps its input");
    await sql`DELETE FROM pgbg.task WHERE id = ${id}`;
  });
});
