-- Statements of migrate(). The migrations themselves are in sql/migrations.

-- name: MigrateLock
-- Serialises migrators of one schema (held until the transaction ends), so
-- two processes migrating at once apply each migration exactly once.
SELECT pg_advisory_xact_lock(hashtextextended('pgbg.migrate:' || $1::text, 0));

-- name: SchemaExists
-- Checked before CREATE SCHEMA, which needs the CREATE privilege on the
-- database even when the schema exists; a least-privilege role can then
-- run migrate() on an up-to-date schema.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1::text) AS exists;

-- name: MigrationTableExists
SELECT to_regclass(format('%I.migration', $1::text)) IS NOT NULL AS exists;

-- name: CreateMigrationTable
CREATE TABLE pgbg.migration (
  version    integer NOT NULL PRIMARY KEY,
  name       text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: SchemaVersion
SELECT coalesce(max(version), 0) AS version FROM pgbg.migration;

-- name: RecordMigration
INSERT INTO pgbg.migration (version, name) VALUES ($1, $2);

-- name: SchemaTables
-- The schema's tables, in name order, for lockForMigration (whose
-- statement is built from them, each name quoted). Partitions are locked
-- with their parent.
SELECT c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1::text AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname;
