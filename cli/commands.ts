/**
 * The `pgbg` commands (cli/main.ts loads them): `pgbg serve` runs the service; `migrate`,
 * `status`, `list`, `retry`, `cancel`, `enqueue` and `compact` are the operators'
 * commands (cli/admin.ts), and `dashboard` serves them as a web page. Every
 * command's arguments are parsed from one table (cli/args-table.ts).
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage.
 *
 * @module
 */
import process from "node:process";
import { defineCommand, runMain } from "citty";
import { describeError } from "../lib/log.ts";
import { VERSION } from "../lib/version.ts";
import { adminCommands } from "./admin.ts";
import { defineCliCommand } from "./args.ts";
import { serveArgs } from "./args-table.ts";
import { describeDatabase, serveConfigOf } from "./config.ts";
import { dashboardCommand } from "./dashboard.ts";
import { resolveDatabase } from "./database.ts";
import { fail } from "./exit.ts";
import { createLogger } from "./log.ts";
import { supervise } from "./serve.ts";

const serve = defineCliCommand(serveArgs, "Run the service: a supervisor keeping worker subprocesses that run queued tasks", async ({ flags }) => {
  const config = serveConfigOf(flags, Boolean(process.stderr.isTTY));
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
});

const commands = { serve, ...adminCommands, dashboard: dashboardCommand };
const main = defineCommand({
  meta: { name: "pgbg", version: VERSION, description: "A background task queue kept in PostgreSQL" },
  subCommands: commands,
});

// citty exits 1 on an unknown or a missing command; either is bad usage.
const [command] = process.argv.slice(2);
if (command !== undefined && !command.startsWith("-") && !Object.hasOwn(commands, command)) fail(2, `unknown command ${JSON.stringify(command)} (see pgbg --help)`);
if (command === undefined || (command.startsWith("-") && !["--help", "-h", "--version", "-v"].includes(command))) {
  fail(2, `give a command: ${Object.keys(commands).join(", ")} (see pgbg --help)`);
}

await runMain(main);
