import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { defineTask, enqueue, enqueueMany, InvalidPayloadError, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

const sendEmail = defineTask({
  name: "send-email",
  schema: v.object({ to: v.pipe(v.string(), v.email()), subject: v.string() }),
  async run() {},
});
const anything = defineTask({ name: "anything", schema: v.unknown(), run() {} });
const counter = defineTask({
  name: "counter",
  schema: v.object({ n: v.number() }),
  queue: "numbers",
  priority: 7,
  maxAttempts: 3,
  run() {},
});

async function row(id: string) {
  const [r] = await sql`SELECT *, extract(epoch FROM run_at - enqueued_at) * 1000 AS delay_ms FROM pgbg.task WHERE id = ${id}`;
  return r;
}

describe("enqueue", () => {
  test("inserts a queued row with the task's name, the input as payload, and defaults", async () => {
    const id = await enqueue(sql, sendEmail, { to: "ada@example.com", subject: "hi" });
    assert.match(id, /^\d+$/);
    const r = await row(id);
    assert.equal(r.name, "send-email");
    assert.equal(r.queue, "default");
    assert.equal(r.state, "queued");
    assert.equal(r.priority, 0);
    assert.equal(r.attempts, 0);
    assert.equal(r.max_attempts, null);
    assert.equal(r.key, null);
    assert.deepEqual(r.payload, { to: "ada@example.com", subject: "hi" });
    assert.ok(r.run_at <= new Date(Date.now() + 1000));
  });

  test("takes queue, priority and maxAttempts from the task definition", async () => {
    const r = await row(await enqueue(sql, counter, { n: 1 }));
    assert.equal(r.queue, "numbers");
    assert.equal(r.priority, 7);
    assert.equal(r.max_attempts, 3);
  });

  test("options override the definition: queue, priority, maxAttempts", async () => {
    const r = await row(await enqueue(sql, counter, { n: 1 }, { queue: "mail", priority: -5, maxAttempts: 9 }));
    assert.equal(r.queue, "mail");
    assert.equal(r.priority, -5);
    assert.equal(r.max_attempts, 9);
  });

  test("delay sets run_at that many ms after enqueue, on the database clock", async () => {
    const r = await row(await enqueue(sql, counter, { n: 1 }, { delay: 10_000 }));
    assert.equal(Math.round(r.delay_ms), 10_000);
  });

  test("runAt sets run_at to that time", async () => {
    const at = new Date("2031-02-03T04:05:06.789Z");
    const r = await row(await enqueue(sql, counter, { n: 1 }, { runAt: at }));
    assert.equal(r.run_at.toISOString(), at.toISOString());
  });

  test("a transaction that commits enqueues; one that rolls back leaves nothing", async () => {
    const committed = await sql.begin((tx) => enqueue(tx, counter, { n: 100 }));
    assert.equal((await row(committed)).state, "queued");
    let rolledBack = "";
    await assert.rejects(
      sql.begin(async (tx) => {
        rolledBack = await enqueue(tx, counter, { n: 101 });
        throw new Error("application failure");
      }),
      /application failure/,
    );
    assert.match(rolledBack, /^\d+$/);
    assert.equal(await row(rolledBack), undefined);
  });

  test("key: a duplicate returns the pending task's id and writes nothing", async () => {
    const first = await enqueue(sql, sendEmail, { to: "ada@example.com", subject: "welcome" }, { key: "welcome:42" });
    const [before] = await sql`SELECT xmin::text, * FROM pgbg.task WHERE id = ${first}`;
    const second = await enqueue(sql, sendEmail, { to: "grace@example.com", subject: "other" }, { key: "welcome:42" });
    assert.equal(second, first);
    const rows = await sql`SELECT xmin::text, * FROM pgbg.task WHERE key = 'welcome:42'`;
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0], before, "the pending row is untouched");
  });

  test("key: a failed task does not hold its key", async () => {
    const first = await enqueue(sql, counter, { n: 1 }, { key: "retry-me" });
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now() WHERE id = ${first}`;
    const second = await enqueue(sql, counter, { n: 2 }, { key: "retry-me" });
    assert.notEqual(second, first);
  });

  test("key: 16 connections enqueueing the same key at once create exactly one task", async () => {
    const clients = Array.from({ length: 16 }, () => db.connect({ max: 1 }));
    await Promise.all(clients.map((c) => c`SELECT 1`));
    const ids = await Promise.all(clients.map((c, i) => enqueue(c, counter, { n: i }, { key: "race" })));
    assert.equal(new Set(ids).size, 1);
    const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE key = 'race'`;
    assert.equal(n, 1);
  });

  test("schema option writes to that schema", async () => {
    await migrate(sql, { schema: "other_app" });
    const id = await enqueue(sql, counter, { n: 5 }, { schema: "other_app" });
    const [r] = await sql`SELECT payload FROM other_app.task WHERE id = ${id}`;
    assert.deepEqual(r.payload, { n: 5 });
  });

  test("an async valibot schema is awaited", async () => {
    const task = defineTask({
      name: "async-schema",
      schema: v.pipeAsync(v.object({ n: v.number() }), v.checkAsync(async (x) => x.n > 0, "n must be positive")),
      run() {},
    });
    assert.match(await enqueue(sql, task, { n: 1 }), /^\d+$/);
    await assert.rejects(enqueue(sql, task, { n: -1 }), /n must be positive/);
  });
});

describe("enqueueMany", () => {
  test("100,000 inputs in one call: ids in input order, every payload stored", async () => {
    const inputs = Array.from({ length: 100_000 }, (_, n) => ({ n }));
    const ids = await enqueueMany(sql, counter, inputs, { queue: "bulk" });
    assert.equal(ids.length, 100_000);
    assert.equal(new Set(ids).size, 100_000);
    const rows = await sql`SELECT id::text, (payload->>'n')::int AS n FROM pgbg.task WHERE queue = 'bulk'`;
    assert.equal(rows.length, 100_000);
    const byId = new Map(rows.map((r) => [r.id, r.n]));
    for (let i = 0; i < ids.length; i += 1) assert.equal(byId.get(ids[i]), i);
  });

  test("options apply to every input", async () => {
    const ids = await enqueueMany(sql, counter, [{ n: 1 }, { n: 2 }], { delay: 60_000, priority: 3, maxAttempts: 2, queue: "opts" });
    for (const id of ids) {
      const r = await row(id);
      assert.equal(Math.round(r.delay_ms), 60_000);
      assert.deepEqual([r.priority, r.max_attempts, r.queue], [3, 2, "opts"]);
    }
  });

  test("keys: pending keys and repeats within the batch map to one task", async () => {
    const existing = await enqueue(sql, counter, { n: 0 }, { key: "many:a" });
    const inputs = [{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }, { n: 5 }];
    const keys = ["many:a", "many:b", undefined, "many:b", undefined];
    const ids = await enqueueMany(sql, counter, inputs, { key: (_, i) => keys[i] });
    assert.equal(ids[0], existing);
    assert.equal(ids[1], ids[3]);
    assert.equal(new Set(ids).size, 4);
    const payloads = await Promise.all(ids.map(async (id) => (await row(id)).payload.n));
    assert.deepEqual(payloads, [0, 2, 3, 2, 5]);
  });

  test("payloads holding line feeds, control characters and separators are stored as given", async () => {
    const tricky = [
      { s: "line\nfeed\r\n", t: "\t\u0001\u001f", k: { "a\nb": ",", "": "\\n" } },
      { s: "\u2028\u2029 and , ; ' \" \\ {}[]", list: ["\n", "", "x\ny"] },
      "a string payload\n",
      ["\n"],
      null,
      12.5,
    ];
    const ids = await enqueueMany(sql, anything, tricky);
    const keyed = await enqueueMany(sql, anything, tricky, { key: (_, i) => (i % 2 ? `tricky\n${i}` : undefined) });
    for (const batch of [ids, keyed]) {
      const rows = await Promise.all(batch.map(row));
      assert.deepEqual(rows.map((r) => r.payload), tricky);
    }
  });

  test("a batch over 32 MiB of JSON goes in several statements, one transaction, ids in input order", async () => {
    const big = "x".repeat(12 * 1024 * 1024);
    const inputs = [{ n: 0, big }, { n: 1, big }, { n: 2, big }, { n: 3 }];
    const ids = await enqueueMany(sql, anything, inputs, { queue: "huge", maxPayloadBytes: 16 * 1024 * 1024 });
    const rows = await sql`SELECT id::text, (payload->>'n')::int AS n, xmin::text AS tx FROM pgbg.task WHERE queue = 'huge' ORDER BY id`;
    assert.deepEqual(rows.map((r) => r.id), ids);
    assert.deepEqual(rows.map((r) => r.n), [0, 1, 2, 3]);
    assert.equal(new Set(rows.map((r) => r.tx)).size, 1, "one transaction");
  });

  test("a nested value JSON cannot carry is named by its index and full path", async () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.again = { inner: [cyclic] };
    const cases: [unknown, string, RegExp][] = [
      [{ a: { b: [0, { c: 1n }] } }, "a.b.1.c", /BigInt/],
      [{ a: [[1, 2], [3, Number.NaN]] }, "a.1.1", /NaN/],
      [{ ok: { x: 1 }, bad: { "k\u0000": 1 } }, "bad.k\u0000", /keys cannot contain/],
      [cyclic, "again.inner.0", /cycle/],
    ];
    for (const [input, path, message] of cases) {
      await assert.rejects(enqueueMany(sql, anything, [{ fine: [1, { deep: true }] }, input]), (error: InvalidPayloadError) => {
        assert.ok(error instanceof InvalidPayloadError);
        assert.equal(error.path, path);
        assert.match(error.message, / at index 1 /);
        assert.match(error.message, message);
        return true;
      });
    }
    const shared = { x: [1] };
    assert.equal((await enqueueMany(sql, anything, [{ a: shared, b: [shared, shared] }])).length, 1, "a shared object is no cycle");
  });

  test("an empty list enqueues nothing", async () => {
    assert.deepEqual(await enqueueMany(sql, counter, []), []);
  });

  test("inside a transaction that rolls back, nothing stays", async () => {
    await assert.rejects(
      sql.begin(async (tx) => {
        await enqueueMany(tx, counter, [{ n: 1 }, { n: 2 }], { queue: "rolled-back" });
        throw new Error("nope");
      }),
    );
    const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'rolled-back'`;
    assert.equal(n, 0);
  });
});
