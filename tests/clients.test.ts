/**
 * Enqueue and the admin functions through the clients apps already have:
 * node-postgres (Client, PoolClient, Pool), Kysely, Drizzle (over
 * node-postgres and over postgres.js) and Prisma 7 (over its node-postgres
 * adapter), each the real library. For each: a
 * task enqueued in a transaction that commits runs; one in a transaction
 * that rolls back never does. A handle pgbg cannot use gets a coded error
 * naming it.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import { sql as drizzleSql } from "drizzle-orm";
import { CamelCasePlugin, Kysely, PostgresDialect } from "kysely";
import { PrismaPg } from "@prisma/adapter-pg";
import pg from "pg";
import postgres from "postgres";
import * as v from "valibot";
import {
  cancel, type DatabaseClient, defineTask, drain, enqueue, enqueueMany, getTask, listTasks, migrate, pauseQueue, queueSettings, resumeQueue, retry, type Status, status, UnsupportedClientError,
} from "../mod.ts";
import { clientOptions, createTestDatabase } from "./harness.ts";
import { generatePrismaClient } from "./prisma.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
await sql`CREATE TABLE app_order (id int PRIMARY KEY)`;

const ran: number[] = [];
const ship = defineTask({ name: "ship", schema: v.object({ order: v.number() }), result: v.number(), run: ({ order }) => (ran.push(order), order * 2) });

/** A pg Pool whose idle clients may be ended by the server when the test database is dropped. */
function pgPool(max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: db.url, max });
  pool.on("error", () => {});
  return pool;
}
const pool = pgPool(4);
const kysely = new Kysely<{ app_order: { id: number } }>({ dialect: new PostgresDialect({ pool: pgPool(2) }), plugins: [new CamelCasePlugin()] });
const postgresJs = postgres(db.url, { ...clientOptions, max: 2 });
const drizzleOnPg = drizzlePg(pool);
const drizzleOnPostgresJs = drizzlePostgresJs(postgresJs);
const { PrismaClient } = await import(generatePrismaClient());
const prisma = new PrismaClient({ adapter: new PrismaPg({ connectionString: db.url, max: 2 }) });
after(async () => {
  await prisma.$disconnect();
  await kysely.destroy();
  await pool.end();
  await postgresJs.end();
});

/** Runs what is queued and returns the orders that ran. */
async function runQueued(): Promise<number[]> {
  ran.length = 0;
  await drain(sql, { tasks: [ship] });
  return [...ran].sort((a, b) => a - b);
}

/** BEGIN, the app's write, the enqueue, then COMMIT or ROLLBACK, on a node-postgres client. */
async function pgTransaction(client: pg.ClientBase, order: number, commit: boolean): Promise<string> {
  await client.query("BEGIN");
  await client.query("INSERT INTO app_order (id) VALUES ($1)", [order]);
  const id = await enqueue(client, ship, { order });
  await client.query(commit ? "COMMIT" : "ROLLBACK");
  return id;
}

/** The app's own write and an enqueue, in one transaction of each client, by how that client begins one. */
const inTransaction: Record<string, (order: number, commit: boolean) => Promise<string>> = {
  "node-postgres Client": async (order, commit) => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      return await pgTransaction(client, order, commit);
    } finally {
      await client.end();
    }
  },
  "node-postgres PoolClient": async (order, commit) => {
    const client = await pool.connect();
    try {
      return await pgTransaction(client, order, commit);
    } finally {
      client.release();
    }
  },
  "Kysely transaction": (order, commit) => rollbackUnless(commit, (abort) =>
    kysely.transaction().execute(async (trx) => {
      await trx.insertInto("app_order").values({ id: order }).execute();
      return abort(await enqueue(trx, ship, { order }));
    })),
  "Drizzle transaction over node-postgres": (order, commit) => rollbackUnless(commit, (abort) =>
    drizzleOnPg.transaction(async (tx) => {
      await tx.execute(drizzleSql`INSERT INTO app_order (id) VALUES (${order})`);
      return abort(await enqueue(tx, ship, { order }));
    })),
  "Drizzle transaction over postgres.js": (order, commit) => rollbackUnless(commit, (abort) =>
    drizzleOnPostgresJs.transaction(async (tx) => {
      await tx.execute(drizzleSql`INSERT INTO app_order (id) VALUES (${order})`);
      return abort(await enqueue(tx, ship, { order }));
    })),
  "Prisma interactive transaction": (order, commit) => rollbackUnless(commit, (abort) =>
    // deno-lint-ignore no-explicit-any
    prisma.$transaction(async (tx: any) => {
      await tx.app_order.create({ data: { id: order } });
      return abort(await enqueue(tx, ship, { order }));
    })),
};

class Rollback extends Error {
  constructor(readonly id: string) {
    super("roll back");
  }
}

/** Runs `body`, whose `abort(id)` throws (rolling the library's transaction back) unless `commit`; resolves with the id either way. */
async function rollbackUnless(commit: boolean, body: (abort: (id: string) => string) => Promise<string>): Promise<string> {
  try {
    return await body((id) => {
      if (!commit) throw new Rollback(id);
      return id;
    });
  } catch (error) {
    if (error instanceof Rollback) return error.id;
    throw error;
  }
}

describe("enqueue through the app's own client", () => {
  let order = 0;
  for (const [client, begin] of Object.entries(inTransaction)) {
    test(`${client}: committed, the task runs with the app's write; rolled back, neither is there and nothing runs`, async () => {
      const kept = ++order;
      const id = await begin(kept, true);
      const dropped = ++order;
      const never = await begin(dropped, false);
      assert.notEqual(id, never);
      assert.deepEqual((await sql`SELECT id FROM app_order WHERE id IN (${kept}, ${dropped})`).map((r) => r.id), [kept]);
      assert.equal((await getTask(sql, never)), null, "the rolled-back enqueue left no task");
      assert.deepEqual(await runQueued(), [kept]);
      assert.equal((await getTask(sql, id))?.result, kept * 2);
    });
  }

  test("a Pool, a Kysely instance, Drizzle databases and a Prisma client enqueue on their own, each statement committed at once", async () => {
    const clients: DatabaseClient[] = [pool, kysely, drizzleOnPg, drizzleOnPostgresJs, prisma];
    const ids = [];
    for (const [i, client] of clients.entries()) ids.push(await enqueue(client, ship, { order: 100 + i }));
    assert.deepEqual((await listTasks(sql, { state: "queued" })).tasks.map((t) => t.id).sort(), [...ids].sort());
    assert.deepEqual(await runQueued(), [100, 101, 102, 103, 104]);
  });

  test("node-postgres runs pgbg's statements as named prepared statements", async () => {
    const client = await pool.connect();
    try {
      await enqueue(client, ship, { order: 200 });
      const prepared = await client.query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgbg\\_%'");
      assert.equal(prepared.rows.length, 1, "the enqueue's statement is prepared on the connection");
      await enqueue(client, ship, { order: 201 });
      assert.equal((await client.query("SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgbg\\_%'")).rows.length, 1, "and used again");
    } finally {
      client.release();
    }
    assert.deepEqual(await runQueued(), [200, 201]);
  });
});

describe("enqueueMany and keyed enqueues through node-postgres", () => {
  // Over 100,000 inputs the batch takes two statements: pgbg wraps them in a transaction of its own.
  const many = Array.from({ length: 100_001 }, (_, i) => ({ order: 1000 + i }));

  test("a batch of two statements on a Client outside a transaction is written whole, in a transaction pgbg opens", async () => {
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      const ids = await enqueueMany(client, ship, many);
      assert.equal(ids.length, many.length);
      assert.equal((await client.query("SELECT count(*)::int AS n FROM pgbg.task WHERE id = ANY($1)", [ids])).rows[0].n, many.length);
      // No transaction was left open on the app's client.
      assert.equal((await client.query("SELECT now() = statement_timestamp() AS fresh")).rows[0].fresh, true);
    } finally {
      await client.end();
    }
    await sql`DELETE FROM pgbg.task`;
  });

  test("inside the app's transaction the batch joins it: rolled back, none of it is kept", async () => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const ids = await enqueueMany(client, ship, many);
      assert.equal((await client.query("SELECT count(*)::int AS n FROM pgbg.task")).rows[0].n, many.length, "visible inside");
      await client.query("ROLLBACK");
      assert.equal(ids.length, many.length);
    } finally {
      client.release();
    }
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, 0);
  });

  test("a key holds across clients, and a key window's two statements commit together on a Pool", async () => {
    const first = await enqueue(pool, ship, { order: 300 }, { key: "order-300" });
    assert.equal(await enqueue(kysely, ship, { order: 300 }, { key: "order-300" }), first);
    assert.equal(await enqueue(drizzleOnPg, ship, { order: 300 }, { key: "order-300" }), first);
    assert.equal(await enqueue(prisma, ship, { order: 300 }, { key: "order-300" }), first);
    const windowed = await enqueue(pool, ship, { order: 301 }, { key: "order-301", keyWindow: { ms: 60_000 } });
    assert.equal(await enqueue(pool, ship, { order: 301 }, { key: "order-301", keyWindow: { ms: 60_000 } }), windowed);
    assert.deepEqual(await runQueued(), [300, 301]);
    // Found through the key's holder row: its column is task_id, which Kysely's CamelCasePlugin would rename.
    assert.equal(await enqueue(kysely, ship, { order: 301 }, { key: "order-301", keyWindow: { ms: 60_000 } }), windowed, "held for the window after it ran");
  });

  test("a failed enqueue in the app's transaction on a Client rolls back to pgbg's savepoint: the app's transaction goes on", async () => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      await client.query("INSERT INTO app_order (id) VALUES (400)");
      await assert.rejects(enqueue(client, ship, { order: 400 }, { key: "k", keyWindow: { ms: 1000 }, schema: "not_migrated" }), { code: "PGBG_SCHEMA_MISSING" });
      await client.query("INSERT INTO app_order (id) VALUES (401)");
      await client.query("COMMIT");
    } finally {
      client.release();
    }
    assert.deepEqual((await sql`SELECT id FROM app_order WHERE id >= 400 ORDER BY id`).map((r) => r.id), [400, 401]);
  });
});

/**
 * `value` without its clock readings: how long the oldest task has waited,
 * and the last minute's outcomes, whose oldest counts may leave the minute
 * between two reads (CI once read 15 completed, then 12), kept as their type.
 */
const LAST_MINUTE = new Set(["completedLastMinute", "failedLastMinute", "retriedLastMinute"]);
const untimed = (value: unknown) =>
  JSON.parse(JSON.stringify(value, (k, v) => (k === "oldestQueuedMs" ? undefined : LAST_MINUTE.has(k) ? typeof v : v)));

/**
 * Each last-minute count of `got` lies between those of `before` and
 * `after`, read by postgres.js around it: with nothing finishing
 * meanwhile, a count only falls, as its periods leave the minute.
 */
function assertWithinMinute(got: Status, before: Status, after: Status): void {
  const count = (s: Status, row: Status["tasks"][number], key: string) =>
    (s.tasks.find((r) => r.queue === row.queue && r.name === row.name) as Record<string, unknown> | undefined)?.[key] as number ?? 0;
  for (const row of got.tasks) {
    for (const key of LAST_MINUTE) {
      const [low, value, high] = [count(after, row, key), count(got, row, key), count(before, row, key)];
      assert.ok(low <= value && value <= high, `${row.queue} ${row.name} ${key}: ${value}, read between ${high} and ${low}`);
    }
  }
}

describe("the admin functions through node-postgres, Kysely, Drizzle and Prisma", () => {
  test("getTask, listTasks, cancel, retry, pause and resume", async () => {
    const id = await enqueue(sql, ship, { order: 500 }, { queue: "admin" });
    assert.equal((await getTask(pool, id))?.state, "queued");
    // Each client reads what postgres.js reads (Prisma's int8 columns are BigInts, node-postgres' strings).
    for (const client of [pool, kysely, drizzleOnPg, prisma] as DatabaseClient[]) {
      assert.deepEqual(await getTask(client, id), await getTask(sql, id));
      assert.deepEqual(await listTasks(client, { queue: "admin" }), await listTasks(sql, { queue: "admin" }));
      const [before, got, after] = [await status(sql), await status(client), await status(sql)];
      assert.deepEqual(untimed(got), untimed(after));
      assertWithinMinute(got, before, after);
      assert.deepEqual(await queueSettings(client), await queueSettings(sql));
    }
    assert.deepEqual((await getTask(kysely, id))?.payload, { order: 500 }, "no plugin renames pgbg's columns");
    assert.deepEqual((await listTasks(drizzleOnPg, { queue: "admin" })).tasks.map((t) => t.id), [id]);
    assert.deepEqual((await pauseQueue(pool, "admin")).map((p) => p.queue), ["admin"]);
    assert.deepEqual(await resumeQueue(kysely, "admin"), ["admin"]);
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), attempts = 1 WHERE id = ${id}`;
    assert.deepEqual(await retry(drizzleOnPostgresJs, id), [id]);
    assert.deepEqual((await cancel(pool, id)).deleted, [id]);
    assert.equal((await getTask(pool, id))?.state, "cancelled", "kept, as its task keeps results");
  });
});

describe("a handle pgbg cannot use", () => {
  const cases: [string, unknown, RegExp][] = [
    ["undefined", undefined, /on undefined:/],
    ["a string", "postgres://localhost/db", /on a string:/],
    ["a Map", new Map(), /on an instance of Map \(methods: get, set, has, delete, clear, entries, forEach, keys, …\):/],
    ["a plain object", { unsafe: () => {} }, /on a plain object \(methods: unsafe\):/],
    ["a Drizzle database whose client is neither", { _: { session: { client: {} } }, execute() {} }, /this Drizzle database, whose driver's client is a plain object/],
  ];
  for (const [label, handle, message] of cases) {
    test(`${label}: PGBG_UNSUPPORTED_CLIENT names it and what is accepted, and nothing is written`, async () => {
      const before = (await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n;
      const error = await enqueue(handle as DatabaseClient, ship, { order: 1 }).then(() => undefined, (e) => e);
      assert.ok(error instanceof UnsupportedClientError, String(error));
      assert.equal(error.code, "PGBG_UNSUPPORTED_CLIENT");
      assert.match(error.message, message);
      if (!label.startsWith("a Drizzle")) assert.match(error.message, /pass a postgres\.js sql, reserved connection or transaction; a node-postgres Client, PoolClient or Pool; a Kysely instance or transaction; a Drizzle database or transaction; or a Prisma client or interactive transaction$/);
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, before);
    });
  }
});

