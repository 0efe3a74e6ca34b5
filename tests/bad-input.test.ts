import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import {
  defineTask,
  enqueue,
  enqueueMany,
  InvalidInputError,
  InvalidOptionsError,
  InvalidPayloadError,
  InvalidTaskError,
  migrate,
  PayloadTooLargeError,
  SchemaError,
  schemaVersion,
} from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
// Something already queued, which no bad input may disturb.
const anything = defineTask({ name: "anything", schema: v.any(), run() {} });
const bystander = await enqueue(sql, anything, { keep: true });

async function taskCount(): Promise<number> {
  const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task`;
  return n;
}

/** Asserts that `call` rejects with `type` and `code`, that nothing was written, and returns the error. */
async function refused<E extends Error>(call: () => Promise<unknown>, type: new (...args: never[]) => E, code: string): Promise<E> {
  const before = await taskCount();
  const error = await call().then(() => undefined, (e) => e);
  assert.ok(error instanceof type, `expected ${type.name}, got ${error}`);
  assert.equal((error as unknown as { code: string }).code, code);
  assert.equal(await taskCount(), before, "nothing was written");
  const [kept] = await sql`SELECT payload FROM pgbg.task WHERE id = ${bystander}`;
  assert.deepEqual(kept.payload, { keep: true }, "the task already queued is intact");
  return error;
}

const user = defineTask({
  name: "user",
  schema: v.object({ email: v.pipe(v.string(), v.email()), age: v.pipe(v.number(), v.minValue(0)) }),
  run() {},
});

describe("schema violations", () => {
  test("enqueue lists every issue with its path", async () => {
    const error = await refused(() => enqueue(sql, user, { email: "nope", age: -1 }), InvalidInputError, "PGBG_INVALID_INPUT");
    assert.deepEqual(error.issues.map((i) => i.path), ["email", "age"]);
    assert.match(error.message, /^invalid input for task "user": email: Invalid email.*; age: Invalid value/);
  });

  test("enqueueMany rejects the whole batch and names the index", async () => {
    const inputs = [{ email: "a@example.com", age: 1 }, { email: "b@example.com", age: 2 }, { email: "c@example.com", age: "3" }];
    // deno-lint-ignore no-explicit-any
    const error = await refused(() => enqueueMany(sql, user, inputs as any), InvalidInputError, "PGBG_INVALID_INPUT");
    assert.equal(error.index, 2);
    assert.match(error.message, /at index 2: age: Invalid type/);
  });
});

describe("values JSON cannot carry", () => {
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  const cases: [string, unknown, string, RegExp][] = [
    ["a BigInt", { n: 10n }, "n", /BigInt/],
    ["a function", { f: () => 1 }, "f", /function/],
    ["a symbol", { s: Symbol("x") }, "s", /symbol/],
    ["a cycle", cyclic, "self", /cycle/],
    ["NaN", { x: [1, Number.NaN] }, "x.1", /NaN is not a finite number/],
    ["Infinity", { x: Number.POSITIVE_INFINITY }, "x", /Infinity/],
    ["a Date", { at: new Date(0) }, "at", /Date is not plain JSON data.*toISOString/],
    ["a Map", { m: new Map() }, "m", /Map/],
    ["undefined in an array", { list: [1, undefined] }, "list.1", /undefined/],
    ["a \\u0000 in a string", { s: "a\u0000b" }, "s", /\\u0000/],
    ["a lone surrogate", { s: "\ud800" }, "s", /surrogate/],
    ["undefined at the root", undefined, "", /undefined/],
  ];
  for (const [label, input, path, message] of cases) {
    test(`refuses ${label}, naming the path`, async () => {
      const error = await refused(() => enqueue(sql, anything, input), InvalidPayloadError, "PGBG_INVALID_PAYLOAD");
      assert.equal(error.path, path);
      assert.match(error.message, message);
    });
  }

  test("a shared (non-cyclic) object is fine, and undefined properties are left out", async () => {
    const shared = { x: 1 };
    const id = await enqueue(sql, anything, { a: shared, b: shared, gone: undefined });
    const [r] = await sql`SELECT payload FROM pgbg.task WHERE id = ${id}`;
    assert.deepEqual(r.payload, { a: { x: 1 }, b: { x: 1 } });
  });

  test("enqueueMany names the index of the bad value", async () => {
    const error = await refused(() => enqueueMany(sql, anything, [{ ok: 1 }, { bad: 1n }]), InvalidPayloadError, "PGBG_INVALID_PAYLOAD");
    assert.match(error.message, /at index 1 .*bad: a BigInt/);
  });
});

describe("payload size", () => {
  test("refuses a payload over 1 MiB by default", async () => {
    const error = await refused(() => enqueue(sql, anything, "é".repeat(600 * 1024)), PayloadTooLargeError, "PGBG_PAYLOAD_TOO_LARGE");
    assert.equal(error.limit, 1024 * 1024);
    assert.equal(error.bytes, 600 * 1024 * 2 + 2);
  });

  test("accepts one just under the limit", async () => {
    const id = await enqueue(sql, anything, "x".repeat(1024 * 1024 - 2));
    assert.match(id, /^\d+$/);
  });

  test("the limit is configurable per task and per call", async () => {
    const small = defineTask({ name: "small", schema: v.string(), maxPayloadBytes: 10, run() {} });
    await refused(() => enqueue(sql, small, "x".repeat(9)), PayloadTooLargeError, "PGBG_PAYLOAD_TOO_LARGE");
    assert.match(await enqueue(sql, small, "x".repeat(9), { maxPayloadBytes: 11 }), /^\d+$/);
  });
});

describe("malformed options", () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["an unknown option", { dealy: 5 }, /unknown option "dealy"/],
    ["a negative delay", { delay: -1 }, /option "delay" must be a number of milliseconds/],
    ["a NaN delay", { delay: Number.NaN }, /option "delay"/],
    ["an invalid runAt", { runAt: new Date("nope") }, /option "runAt" must be a valid Date, got an invalid Date/],
    ["runAt as a string", { runAt: "2030-01-01" }, /option "runAt" must be a valid Date/],
    ["both delay and runAt", { delay: 1, runAt: new Date() }, /either "delay" or "runAt"/],
    ["a fractional priority", { priority: 1.5 }, /option "priority" must be a whole number from -32768 to 32767/],
    ["a priority out of range", { priority: 40000 }, /option "priority"/],
    ["an empty queue", { queue: "" }, /option "queue" must be 1-128 characters/],
    ["a queue with spaces", { queue: "a b" }, /option "queue"/],
    ["an empty key", { key: "" }, /option "key" must be a string of 1-512 characters/],
    ["a key too long", { key: "k".repeat(513) }, /option "key"/],
    ["zero maxAttempts", { maxAttempts: 0 }, /option "maxAttempts" must be a whole number from 1/],
  ];
  for (const [label, options, message] of cases) {
    test(`enqueue refuses ${label}`, async () => {
      const error = await refused(() => enqueue(sql, anything, 1, options), InvalidOptionsError, "PGBG_INVALID_OPTIONS");
      assert.match(error.message, message);
    });
  }

  test("enqueueMany refuses a key function that returns a bad key", async () => {
    const error = await refused(() => enqueueMany(sql, anything, [1, 2], { key: (_, i) => (i === 1 ? "" : "k") }), InvalidOptionsError, "PGBG_INVALID_OPTIONS");
    assert.match(error.message, /returned "" at index 1/);
  });

  test("enqueueMany refuses inputs that are not an array", async () => {
    // deno-lint-ignore no-explicit-any
    await refused(() => enqueueMany(sql, anything, "nope" as any), InvalidOptionsError, "PGBG_INVALID_OPTIONS");
  });

  test("an invalid schema name", async () => {
    await refused(() => enqueue(sql, anything, 1, { schema: "drop table" }), SchemaError, "PGBG_INVALID_SCHEMA_NAME");
  });

  test("a schema that was never migrated", async () => {
    const error = await refused(() => enqueue(sql, anything, 1, { schema: "never_migrated" }), SchemaError, "PGBG_SCHEMA_MISSING");
    assert.match(error.message, /run migrate/);
  });
});

describe("defineTask", () => {
  test("returns its argument", () => {
    const definition = { name: "same", schema: v.string(), run() {} };
    assert.equal(defineTask(definition), definition);
  });

  const base = { name: "t", schema: v.string(), run() {} };
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["a missing name", { name: undefined }, /name must be 1-128 characters/],
    ["a name with spaces", { name: "send email" }, /task "send email": name must be/],
    ["a name too long", { name: "n".repeat(129) }, /name must be/],
    ["a schema that is no Standard Schema", { schema: { parse() {} } }, /schema must be a Standard Schema v1, such as one of valibot, zod \(3.24 or later\) or arktype/],
    ["a missing run", { run: undefined }, /run must be a function/],
    ["a zero timeout", { timeout: 0 }, /timeout must be a whole number of milliseconds above 0/],
    ["a negative retryDelay", { retryDelay: -5 }, /retryDelay must be a whole number/],
    ["an unknown retryBackoff", { retryBackoff: "linear" }, /retryBackoff must be "fixed", "exponential" or a function \(attempt, error\) => ms/],
    ["zero maxAttempts", { maxAttempts: 0 }, /maxAttempts must be a whole number of at least 1/],
    ["a bad queue", { queue: "" }, /queue must be/],
    ["a priority out of range", { priority: -40000 }, /priority must be a whole number from -32768 to 32767/],
  ];
  for (const [label, change, message] of cases) {
    test(`refuses ${label}`, () => {
      // deno-lint-ignore no-explicit-any
      const error = (() => { try { defineTask({ ...base, ...change } as any); } catch (e) { return e; } })();
      assert.ok(error instanceof InvalidTaskError, String(error));
      assert.equal(error.code, "PGBG_INVALID_TASK");
      assert.match(error.message, message);
    });
  }
});

describe("tasks not made by defineTask", () => {
  const rule = "1-128 characters of A-Z a-z 0-9 _ . : / -, starting with a letter or digit";
  const cases: [string, unknown, string][] = [
    ["a name no task may have", { name: "has space", schema: v.any(), run() {} }, `task "has space": name must be ${rule}`],
    ["no name at all", { schema: v.any(), run() {} }, `task: name must be ${rule}`],
    ["null", null, "a task must be an object from defineTask()"],
  ];
  for (const [label, task, message] of cases) {
    test(`enqueue and enqueueMany refuse ${label}`, async () => {
      // deno-lint-ignore no-explicit-any
      for (const call of [() => enqueue(sql, task as any, 1), () => enqueueMany(sql, task as any, [1])]) {
        const error = await refused(call, InvalidTaskError, "PGBG_INVALID_TASK");
        assert.equal(error.message, message);
      }
    });
  }
});

describe("hostile strings", () => {
  const injection = `'); DROP TABLE pgbg.task; --`;

  test("keys and payloads holding SQL are stored as given: every value travels as a parameter", async () => {
    const payload = { q: injection, backslash: "\\", dollar: "$1 $$ $tag$", quote: `"'"`, nested: [injection] };
    const id = await enqueue(sql, anything, payload, { key: injection });
    const [many] = await enqueueMany(sql, anything, [payload], { key: () => `${injection} 2` });
    const rows = await sql`SELECT id::text, key, payload FROM pgbg.task WHERE id IN ${sql([id, many])} ORDER BY id`;
    assert.deepEqual(rows.map((r) => [r.id, r.key, r.payload]), [[id, injection, payload], [many, `${injection} 2`, payload]]);
    assert.equal(await enqueue(sql, anything, 0, { key: injection }), id, "the key matched as a value, too");
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql([id, many])}`;
  });

  const schema = `pgbg"; DROP TABLE pgbg.task; --`;
  const message = `invalid schema name ${JSON.stringify(schema)}: use 1-63 lower-case letters, digits or _, not starting with a digit or pg_`;
  test("a schema name holding SQL is refused by every call before it reaches SQL text", async () => {
    for (const call of [
      () => enqueue(sql, anything, 1, { schema }),
      () => enqueueMany(sql, anything, [1], { schema }),
      () => migrate(sql, { schema }),
      () => schemaVersion(sql, { schema }),
    ]) {
      const error = await refused(call, SchemaError, "PGBG_INVALID_SCHEMA_NAME");
      assert.equal(error.message, message);
    }
  });
});

describe("rows written by hand", () => {
  // The schema refuses what no worker could make sense of, so such a row
  // never exists. The values a caller gives (a name's or a key's length,
  // max attempts) are refused by the library before any write, not by the
  // table (migration 031): a row written by hand is the writer's.
  const cases: [string, string, string, string][] = [
    ["a NULL task name", `INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', NULL, '{}')`,
      "23502", `null value in column "name" of relation "task" violates not-null constraint`],
    ["a NULL queue", `INSERT INTO pgbg.task (queue, name, payload) VALUES (NULL, 'anything', '{}')`,
      "23502", `null value in column "queue" of relation "task" violates not-null constraint`],
    ["a NULL payload", `INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'anything', NULL)`,
      "23502", `null value in column "payload" of relation "task" violates not-null constraint`],
    ["a payload that is not JSON", `INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'anything', '{not json')`,
      "22P02", "invalid input syntax for type json"],
    ["an unknown state", `INSERT INTO pgbg.task (queue, name, payload, state) VALUES ('default', 'anything', '{}', 'paused')`,
      "22P02", `invalid input value for enum pgbg.task_state: "paused"`],
    ["a running task without a lease", `INSERT INTO pgbg.task (queue, name, payload, state) VALUES ('default', 'anything', '{}', 'running')`,
      "23514", `new row for relation "task" violates check constraint "task_running_has_lease"`],
    ["a failed task without its failure time", `INSERT INTO pgbg.task (queue, name, payload, state) VALUES ('default', 'anything', '{}', 'failed')`,
      "23514", `new row for relation "task" violates check constraint "task_failed_has_failed_at"`],
  ];
  for (const [label, statement, code, message] of cases) {
    test(`the schema refuses ${label}`, async () => {
      const before = await taskCount();
      const error = await sql.unsafe(statement).then(() => undefined, (e) => e);
      assert.deepEqual([error?.code, error?.message], [code, message]);
      assert.equal(await taskCount(), before, "nothing was written");
    });
  }
});
