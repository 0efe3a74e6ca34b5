/**
 * Runs the named statements of `sql/queries` as prepared statements, for a
 * given pgbg schema. The schema name is validated as an identifier before it
 * is ever placed in SQL text; every value travels as a parameter.
 *
 * @module
 */
import type { Sql, TransactionSql } from "postgres";
import { type DatabaseClient, executorFor } from "./client.ts";
import { SchemaError } from "./errors.ts";
import { type QueryName, queries } from "./generated/sql.ts";

/**
 * A postgres.js handle: the `sql` returned by `postgres()`, a reserved
 * connection, or the `tx` of `sql.begin()`. pgbg runs its statements on it,
 * so they join the caller's transaction when there is one.
 */
// deno-lint-ignore no-explicit-any
export type Database = Sql<any> | TransactionSql<any>;

// Lower case only: an unquoted identifier folds to lower case in PostgreSQL,
// so this keeps `pgbg.migrate({ schema })` and `psql`'s `myschema.task` the
// same relation. 63 bytes is PostgreSQL's identifier limit (NAMEDATALEN - 1).
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

/**
 * Checks that `schema` can name a PostgreSQL schema for pgbg: lower-case
 * letters, digits and `_`, not starting with a digit, at most 63 characters,
 * and not a system schema. Returns it; throws {@link SchemaError} with code
 * `PGBG_INVALID_SCHEMA_NAME` otherwise.
 */
export function checkSchemaName(schema: unknown): string {
  if (typeof schema !== "string" || !SCHEMA_NAME.test(schema) || schema.startsWith("pg_") || schema === "information_schema") {
    throw new SchemaError(
      "PGBG_INVALID_SCHEMA_NAME",
      `invalid schema name ${JSON.stringify(schema)}: use 1-63 lower-case letters, digits or _, not starting with a digit or pg_`,
    );
  }
  return schema;
}

/** Replaces the `pgbg.` placeholder of compiled SQL with the quoted schema. */
export function forSchema(text: string, schema: string): string {
  return text.replaceAll("pgbg.", `"${checkSchemaName(schema)}".`);
}

const compiled = new Map<string, Record<QueryName, string>>();

/** The text of a named statement for a schema (compiled once per schema). */
export function statement(schema: string, name: QueryName): string {
  let texts = compiled.get(schema);
  if (!texts) {
    texts = {} as Record<QueryName, string>;
    for (const key of Object.keys(queries) as QueryName[]) texts[key] = forSchema(queries[key], schema);
    compiled.set(schema, texts);
  }
  return texts[name];
}

/**
 * Runs a named statement on `db`, as a prepared statement where the client
 * keeps them (postgres.js and node-postgres keep one per connection and
 * text). Errors that mean the schema has not been migrated become
 * {@link SchemaError}s.
 */
// deno-lint-ignore no-explicit-any
export async function run<T = any>(db: DatabaseClient, schema: string, name: QueryName, params: unknown[]): Promise<T[]> {
  try {
    return await executorFor(db).query<T>(statement(schema, name), params);
  } catch (error) {
    throw translateError(error, schema);
  }
}

// undefined_table, undefined_object (the state enum), invalid_schema_name,
// undefined_function (the claim's helpers)
const MISSING = new Set(["42P01", "42704", "3F000", "42883"]);

/** Turns "relation does not exist" and its kin into a SchemaError naming the fix. */
export function translateError(error: unknown, schema: string): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && MISSING.has(code)) {
    return new SchemaError(
      "PGBG_SCHEMA_MISSING",
      `the pgbg schema "${schema}" is missing or incomplete in this database: run migrate(sql) or \`pgbg migrate\` first`,
      { cause: error },
    );
  }
  return error;
}
