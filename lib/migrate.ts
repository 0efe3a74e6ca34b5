/**
 * `migrate`: brings a database's pgbg schema up to this version of pgbg.
 *
 * @module
 */
import type { TransactionSql } from "postgres";
import { inTurn } from "./client.ts";
import { defaults } from "./config.ts";
import { SchemaError } from "./errors.ts";
import { migrations } from "./generated/sql.ts";
import { checkedLater, checkOptions } from "./options.ts";
import { checkSchemaName, type Database, forSchema, run } from "./statements.ts";

/** Options of {@link migrate} and {@link schemaVersion}. */
export interface MigrateOptions {
  /** PostgreSQL schema to hold pgbg's tables. @default "pgbg" */
  schema?: string;
}

/** What {@link migrate} did. */
export interface MigrateResult {
  /** The schema migrated. */
  schema: string;
  /** Version before the call (0: no pgbg schema). */
  from: number;
  /** Version after the call: the latest this pgbg knows. */
  to: number;
}

/** The newest schema version this pgbg knows. */
export const LATEST_SCHEMA_VERSION: number = migrations[migrations.length - 1].version;

/**
 * Applies the migrations in `sql/migrations` that the schema lacks, in order,
 * in one transaction, under an advisory lock: safe to run from several
 * processes at once, and a no-op when the schema is up to date. Pass a
 * transaction to migrate inside it. Throws `SchemaError` with code
 * `PGBG_SCHEMA_TOO_NEW` when a newer pgbg migrated the schema.
 */
export async function migrate(db: Database, options?: MigrateOptions): Promise<MigrateResult> {
  const opts = checkOptions<MigrateOptions>("migrate()", options, { schema: checkedLater });
  const schema = checkSchemaName(opts.schema ?? defaults.schema);
  // deno-lint-ignore no-explicit-any
  const work = async (tx: TransactionSql<any>): Promise<MigrateResult> => {
    await run(tx, schema, "MigrateLock", [schema]);
    const [{ exists }] = await run<{ exists: boolean }>(tx, schema, "SchemaExists", [schema]);
    // One of two SQL texts built here (and lockForMigration's): the name was validated and is quoted.
    if (!exists) await tx.unsafe(`CREATE SCHEMA "${schema}"`);
    const [table] = await run<{ exists: boolean }>(tx, schema, "MigrationTableExists", [schema]);
    if (!table.exists) await run(tx, schema, "CreateMigrationTable", []);
    const from = await readVersion(tx, schema);
    if (from > LATEST_SCHEMA_VERSION) throw tooNew(schema, from);
    if (from > 0 && from < LATEST_SCHEMA_VERSION) await lockForMigration(tx, schema);
    for (const migration of migrations) {
      if (migration.version <= from) continue;
      // Simple protocol: a migration file holds several statements.
      await tx.unsafe(forSchema(migration.sql, schema));
      await run(tx, schema, "RecordMigration", [migration.version, migration.name]);
    }
    return { schema, from, to: LATEST_SCHEMA_VERSION };
  };
  return "begin" in db ? ((await inTurn(db, () => db.begin(work))) as MigrateResult) : work(db);
}

/** Deadlocks the lock step may lose before migrate() gives up, each followed by a longer pause. */
const LOCK_TRIES = 8;

/**
 * Takes every table of the schema in ACCESS EXCLUSIVE mode before the
 * migrations run, so that none of them waits for a lock while holding
 * another. Workers of the running release keep claiming while a schema
 * migrates under them, and their statements take several tables at once:
 * a migration that altered one table and then waited for the next could
 * deadlock with a worker holding the second and waiting for the first,
 * and the migration, several statements in, would fail. The lock step
 * alone can lose such a race; it is then rolled back to its savepoint
 * (the caller's own work in the transaction stays) and tried again after
 * a pause, while the worker's statement completes.
 */
export async function lockForMigration(
  // deno-lint-ignore no-explicit-any
  tx: TransactionSql<any>, schema: string,
): Promise<void> {
  const tables = await run<{ name: string }>(tx, schema, "SchemaTables", [schema]);
  if (!tables.length) return;
  // Built from the catalog's names, each quoted; the schema's was validated.
  const statement = `LOCK TABLE ${tables.map((t) => `"${schema}"."${t.name.replaceAll('"', '""')}"`).join(", ")} IN ACCESS EXCLUSIVE MODE`;
  for (let attempt = 1;; attempt++) {
    try {
      // postgres.js: an error inside the savepoint's scope is that scope's alone.
      await tx.savepoint((sp) => sp.unsafe(statement));
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== "40P01" || attempt >= LOCK_TRIES) throw error;
      await new Promise((r) => setTimeout(r, 25 * 2 ** attempt));
    }
  }
}

async function readVersion(db: Database, schema: string): Promise<number> {
  const [{ version }] = await run<{ version: number }>(db, schema, "SchemaVersion", []);
  return Number(version);
}

function tooNew(schema: string, version: number): SchemaError {
  return new SchemaError(
    "PGBG_SCHEMA_TOO_NEW",
    `schema "${schema}" is at version ${version}, newer than this pgbg knows (${LATEST_SCHEMA_VERSION}): upgrade pgbg`,
  );
}

/**
 * The schema's applied version: 0 when it has no pgbg tables. Reads only;
 * needs no privilege beyond reading the schema's `migration` table.
 */
export async function schemaVersion(db: Database, options?: MigrateOptions): Promise<number> {
  const opts = checkOptions<MigrateOptions>("schemaVersion()", options, { schema: checkedLater });
  const schema = checkSchemaName(opts.schema ?? defaults.schema);
  const [table] = await run<{ exists: boolean }>(db, schema, "MigrationTableExists", [schema]);
  return table.exists ? readVersion(db, schema) : 0;
}

/**
 * Checks that the schema is exactly at the version this pgbg knows, as the
 * service does before it starts. Throws `SchemaError`: `PGBG_SCHEMA_MISSING`
 * (not migrated, or behind) or `PGBG_SCHEMA_TOO_NEW`.
 */
export async function assertSchemaCurrent(db: Database, options?: MigrateOptions): Promise<void> {
  const schema = checkSchemaName(options?.schema ?? defaults.schema);
  const version = await schemaVersion(db, { schema });
  if (version > LATEST_SCHEMA_VERSION) throw tooNew(schema, version);
  if (version < LATEST_SCHEMA_VERSION) {
    throw new SchemaError(
      "PGBG_SCHEMA_MISSING",
      `schema "${schema}" is at version ${version}, this pgbg needs ${LATEST_SCHEMA_VERSION}: run migrate(sql) or \`pgbg migrate\``,
    );
  }
}
