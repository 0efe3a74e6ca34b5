/**
 * An application that hosts an in-process worker (`createWorker`) for the
 * chaos suite's `in-process` scenario: a postgres.js client on DATABASE_URL
 * (the app's own cuttable proxy), a host running tests/chaos/tasks.js's
 * `work`, and nothing else, until it is killed or stopped. It prints
 * `ready` on stdout once the host is registered and listening; its log goes
 * to stderr as JSON lines (time, level, message, pid), for the scenario to read.
 * On SIGTERM it stops the host gracefully and exits 0; on an unhandled
 * rejection it logs it and exits 70. CHAOS_APP (JSON) holds the host's
 * options.
 *
 * Run with Node and tsx in one process (`node --import tsx`), so that a
 * SIGKILL of its pid kills the host and every task running in it.
 */
import process from "node:process";
import postgres from "postgres";
import { createWorker, type Logger, type LogFields } from "../../mod.ts";
import { work } from "./tasks.js";

const options = JSON.parse(process.env.CHAOS_APP ?? "{}");

/** One JSON line per message on stderr: a synchronous write, so a SIGKILL a moment later keeps it. */
function line(level: string, message: string, fields?: LogFields): void {
  process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, message, pid: process.pid, ...fields })}\n`);
}
const logger: Logger = {
  debug() {},
  info: (message, fields) => line("info", message, fields),
  warn: (message, fields) => line("warn", message, fields),
  error: (message, fields) => line("error", message, fields),
  isEnabled: (level) => level !== "debug",
};

// An app crashes on an unhandled rejection, as Node's default has it; it
// says why first, so that the scenario's report can name the cause.
process.on("unhandledRejection", (error) => {
  const e = error as { message?: string; query?: string };
  line("error", `the app crashes: an unhandled rejection: ${e?.message ?? String(error)}`, { query: e?.query?.trim().slice(0, 200) });
  process.exit(70);
});

const sql = postgres(process.env.DATABASE_URL!, { max: 2, onnotice: () => {} });
const host = createWorker(sql, { tasks: [work], checkInterval: 200, logger, ...options });
// Before the start: a SIGTERM while it starts stops the host too.
process.once("SIGTERM", async () => {
  await host.stop();
  line("info", "stopped");
  // Hung attempts keep running; nothing else would end the process.
  process.exit(0);
});
await host.start();
process.stdout.write("ready\n");
