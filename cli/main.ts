#!/usr/bin/env node
/**
 * The `pgbg` command line: `pgbg serve` runs the service, `pgbg migrate`
 * applies the schema.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage.
 *
 * @module
 */
import process from "node:process";
import { defineCommand, runMain } from "citty";
import postgres from "postgres";
import { InvalidConfigError } from "../lib/errors.ts";
import { describeError } from "../lib/log.ts";
import { LATEST_SCHEMA_VERSION, migrate, schemaVersion } from "../lib/migrate.ts";
import { VERSION } from "../lib/version.ts";
import { cittyArgs, describeDatabase, resolveServeConfig, serveSettings } from "./config.ts";
import { resolveDatabase } from "./database.ts";
import { createLogger } from "./log.ts";
import { supervise } from "./serve.ts";

function fail(code: number, message: string): never {
  process.stderr.write(`pgbg: ${message}\n`);
  process.exit(code);
}

const serve = defineCommand({
  meta: { name: "serve", description: "Run the service: a supervisor keeping worker subprocesses that run queued tasks" },
  args: cittyArgs(serveSettings),
  async run({ args }) {
    let config;
    try {
      config = resolveServeConfig(args as Record<string, unknown>, process.env, Boolean(process.stderr.isTTY));
    } catch (error) {
      if (error instanceof InvalidConfigError) fail(2, error.message);
      throw error;
    }
    const log = createLogger(config.logLevel, config.logFormat, "supervisor");
    let stopEmbedded: (() => Promise<void>) | undefined;
    try {
      const database = await resolveDatabase(config.databaseUrl, process.cwd(), log);
      stopEmbedded = database.stop;
      if (!database.embedded) log.info(`database ${describeDatabase(database.url)}`);
      const code = await supervise(config, database.url, log);
      await stopEmbedded?.();
      process.exit(code);
    } catch (error) {
      await stopEmbedded?.().catch(() => {});
      fail(1, describeError(error).message);
    }
  },
});

const migrateCommand = defineCommand({
  meta: { name: "migrate", description: "Apply pgbg's schema to the database (safe to run concurrently)" },
  args: {
    "database-url": { type: "string", description: "PostgreSQL connection URL [env DATABASE_URL] (required)" },
    schema: { type: "string", description: "PostgreSQL schema holding pgbg's tables [env PGBG_SCHEMA] (default: pgbg)" },
    status: { type: "boolean", description: "Only show the applied and available versions" },
  },
  async run({ args }) {
    const url = (args["database-url"] as string | undefined) ?? process.env.DATABASE_URL;
    if (!url) fail(2, "--database-url (DATABASE_URL) is required");
    const schema = (args.schema as string | undefined) ?? process.env.PGBG_SCHEMA ?? "pgbg";
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      if (args.status) {
        const applied = await schemaVersion(sql, { schema });
        process.stdout.write(`schema ${schema}: applied version ${applied}, available ${LATEST_SCHEMA_VERSION}\n`);
      } else {
        const result = await migrate(sql, { schema });
        process.stdout.write(result.from === result.to
          ? `schema ${schema} is up to date (version ${result.to})\n`
          : `schema ${schema} migrated from version ${result.from} to ${result.to}\n`);
      }
    } catch (error) {
      const code = (error as { code?: string }).code;
      fail(code === "PGBG_INVALID_SCHEMA_NAME" ? 2 : 1, describeError(error).message);
    } finally {
      await sql.end({ timeout: 1 });
    }
  },
});

const main = defineCommand({
  meta: { name: "pgbg", version: VERSION, description: "A background task queue kept in PostgreSQL" },
  subCommands: { serve, migrate: migrateCommand },
});

await runMain(main);
