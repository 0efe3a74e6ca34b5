#!/usr/bin/env node
/**
 * The `pgbg` command line: `pgbg serve` runs the service; `migrate`,
 * `status`, `list`, `retry`, `cancel`, `enqueue` and `compact` are the operators'
 * commands (cli/admin.ts), and `dashboard` serves them as a web page.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage.
 *
 * @module
 */
import process from "node:process";
import { defineCommand, runMain } from "citty";
import { InvalidConfigError } from "../lib/errors.ts";
import { describeError } from "../lib/log.ts";
import { VERSION } from "../lib/version.ts";
import { adminCommands } from "./admin.ts";
import { dashboardCommand } from "./dashboard.ts";
import { cittyArgs, describeDatabase, resolveServeConfig, serveSettings } from "./config.ts";
import { resolveDatabase } from "./database.ts";
import { parseFlags } from "./flags.ts";
import { fail } from "./exit.ts";
import { createLogger } from "./log.ts";
import { supervise } from "./serve.ts";

const serve = defineCommand({
  meta: { name: "serve", description: "Run the service: a supervisor keeping worker subprocesses that run queued tasks" },
  args: cittyArgs(serveSettings),
  // citty prints --help; the flags themselves are parsed strictly (cli/flags.ts).
  async run({ rawArgs }) {
    let config;
    try {
      config = resolveServeConfig(parseFlags(rawArgs, serveSettings, "pgbg serve"), process.env, Boolean(process.stderr.isTTY));
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

const commands = { serve, ...adminCommands, dashboard: dashboardCommand };
const main = defineCommand({
  meta: { name: "pgbg", version: VERSION, description: "A background task queue kept in PostgreSQL" },
  subCommands: commands,
});

// citty exits 1 on an unknown command; it is bad usage.
const [command] = process.argv.slice(2);
if (command !== undefined && !command.startsWith("-") && !(command in commands)) fail(2, `unknown command ${JSON.stringify(command)} (see pgbg --help)`);

await runMain(main);
