import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, test } from "node:test";
import { lockForMigration } from "../lib/migrate.ts";
import { LATEST_SCHEMA_VERSION, migrate, schemaVersion, SchemaError } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;

describe("migrate", () => {
  test("creates the schema, and a second run is a no-op", async () => {
    assert.equal(await schemaVersion(sql, { schema: "twice" }), 0);
    assert.deepEqual(await migrate(sql, { schema: "twice" }), { schema: "twice", from: 0, to: LATEST_SCHEMA_VERSION });
    const [before] = await sql`SELECT count(*)::int AS n, max(applied_at) AS at FROM twice.migration`;
    assert.deepEqual(await migrate(sql, { schema: "twice" }), { schema: "twice", from: LATEST_SCHEMA_VERSION, to: LATEST_SCHEMA_VERSION });
    const [again] = await sql`SELECT count(*)::int AS n, max(applied_at) AS at FROM twice.migration`;
    assert.equal(again.n, LATEST_SCHEMA_VERSION);
    assert.deepEqual(again, before);
    assert.equal(await schemaVersion(sql, { schema: "twice" }), LATEST_SCHEMA_VERSION);
  });

  test("eight processes' worth of concurrent migrators apply each migration once", async () => {
    const clients = Array.from({ length: 8 }, () => db.connect({ max: 1 }));
    const results = await Promise.all(clients.map((c) => migrate(c, { schema: "racing" })));
    assert.equal(results.filter((r) => r.from === 0).length, 1, "exactly one migrator applied the migrations");
    assert.ok(results.every((r) => r.to === LATEST_SCHEMA_VERSION));
    const rows = await sql`SELECT version FROM racing.migration ORDER BY version`;
    assert.deepEqual(rows.map((r) => r.version), Array.from({ length: LATEST_SCHEMA_VERSION }, (_, i) => i + 1));
  });

  test("runs inside a caller's transaction, and rolls back with it", async () => {
    await assert.rejects(
      sql.begin(async (tx) => {
        await migrate(tx, { schema: "rolled" });
        throw new Error("abort");
      }),
      /abort/,
    );
    assert.equal(await schemaVersion(sql, { schema: "rolled" }), 0);
  });

  test("the lock step before the migrations, losing a deadlock to a worker's statement, is rolled back to its savepoint and tried again; the caller's work in the transaction stays", async () => {
    await migrate(sql, { schema: "lockstep" });
    // A worker's transaction: it reads the worker table (after task in the
    // lock step's order), then, once the lock step holds task and waits for
    // worker, reads task. Its own deadlock check comes late, so the lock
    // step (whose check comes after 1 s) is the one to find the deadlock.
    const worker = await sql.reserve();
    try {
      await worker`SET deadlock_timeout = '60s'`;
      await worker`BEGIN`;
      await worker`SELECT 1 FROM lockstep.worker LIMIT 0`;
      const migrating = sql.begin(async (tx) => {
        await tx`CREATE TABLE lockstep_caller (x int)`;
        await lockForMigration(tx, "lockstep");
        return (await tx`SELECT count(*)::int AS n FROM pg_locks WHERE pid = pg_backend_pid() AND mode = 'AccessExclusiveLock' AND relation = 'lockstep.worker'::regclass`)[0].n;
      });
      await until(
        async () => (await sql`SELECT count(*)::int AS n FROM pg_locks WHERE relation = 'lockstep.worker'::regclass AND NOT granted`)[0].n as number,
        (n) => n === 1, patience, "the lock step to wait for the worker table",
      );
      // Deadlock: this waits for the lock step's lock on task.
      await worker`SELECT 1 FROM lockstep.task LIMIT 0`;
      await worker`COMMIT`;
      assert.equal(await migrating, 1, "every table locked in the end");
      assert.equal((await sql`SELECT to_regclass('lockstep_caller') IS NOT NULL AS kept`)[0].kept, true, "the caller's work kept");
    } finally {
      await worker`ROLLBACK`.catch(() => {});
      worker.release();
      await sql`DROP TABLE IF EXISTS lockstep_caller`;
    }
  });

  test("refuses a schema migrated by a newer pgbg", async () => {
    await migrate(sql, { schema: "future" });
    await sql`INSERT INTO future.migration (version, name) VALUES (${LATEST_SCHEMA_VERSION + 1}, 'from_the_future')`;
    const error = await migrate(sql, { schema: "future" }).catch((e) => e);
    assert.ok(error instanceof SchemaError);
    assert.equal(error.code, "PGBG_SCHEMA_TOO_NEW");
    assert.match(error.message, /newer than this pgbg knows/);
  });

  for (const bad of ["", "Upper", "1digit", "has-dash", "has space", 'quo"te', "pg_catalog", "x".repeat(64), 42]) {
    test(`refuses the schema name ${JSON.stringify(bad)} before touching the database`, async () => {
      const error = await migrate(sql, { schema: bad as string }).catch((e) => e);
      assert.ok(error instanceof SchemaError, String(error));
      assert.equal(error.code, "PGBG_INVALID_SCHEMA_NAME");
    });
  }

  test("the schema matches the committed snapshot (tests/schema.snapshot.txt)", async () => {
    await migrate(sql);
    const snapshot = await describeSchema(sql, "pgbg");
    const file = new URL("./schema.snapshot.txt", import.meta.url);
    if (process.env.UPDATE_SNAPSHOT) writeFileSync(file, snapshot);
    assert.equal(snapshot, readFileSync(file, "utf8"), "schema changed: review it and rerun with UPDATE_SNAPSHOT=1");
  });
});

/** A stable text description of a schema's tables, columns, constraints, indexes and options. */
async function describeSchema(sql: typeof db.sql, schema: string): Promise<string> {
  const columns = await sql`
    SELECT c.relname AS t, a.attname AS col, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS nn,
           pg_get_expr(d.adbin, d.adrelid) AS def, a.attidentity AS ident
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = ${schema} AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY c.relname, a.attnum`;
  const constraints = await sql`
    SELECT c.relname AS t, k.conname AS name, pg_get_constraintdef(k.oid) AS def
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema} ORDER BY 1, 2`;
  const indexes = await sql`SELECT indexdef FROM pg_indexes WHERE schemaname = ${schema} ORDER BY indexname`;
  const options = await sql`
    SELECT c.relname AS t, c.reloptions AS opts FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ${schema} AND c.relkind = 'r' ORDER BY 1`;
  const triggers = await sql`
    SELECT pg_get_triggerdef(t.oid) AS def FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ${schema} AND NOT t.tgisinternal ORDER BY t.tgname`;
  return [
    ...columns.map((c) => `column ${c.t}.${c.col} ${c.type}${c.nn ? " NOT NULL" : ""}${c.def ? ` DEFAULT ${c.def}` : ""}${c.ident ? ` IDENTITY ${c.ident}` : ""}`),
    ...constraints.map((c) => `constraint ${c.t}.${c.name} ${c.def}`),
    ...indexes.map((i) => `index ${i.indexdef}`),
    ...options.map((o) => `options ${o.t} ${(o.opts ?? []).join(",")}`),
    ...triggers.map((t) => `trigger ${t.def}`),
  ].join("\n") + "\n";
}
