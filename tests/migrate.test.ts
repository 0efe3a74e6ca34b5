import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { describe, test } from "node:test";
import { LATEST_SCHEMA_VERSION, migrate, schemaVersion, SchemaError } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

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
