/**
 * The main job on a fresh clone (`npm start`): finds a database (DATABASE_URL,
 * or an embedded PostgreSQL in ./.pgbg), enqueues the example tasks, runs
 * `pgbg serve` on them as a real subprocess, shows progress live (serve's
 * status line on a terminal, a line each half second elsewhere), and stops
 * the service once the queue has drained.
 */
import { spawn } from "node:child_process";
import process from "node:process";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { resolveDatabase } from "../cli/database.ts";
import { createLogger } from "../cli/log.ts";
import { enqueueMany, migrate } from "../mod.ts";
import { add, sendEmail } from "./tasks.ts";

const log = createLogger("info", "pretty", "demo");
const database = await resolveDatabase(process.env.DATABASE_URL, process.cwd(), log);
const sql = postgres(database.url, { onnotice: () => {} });
await migrate(sql);
const adds = await enqueueMany(sql, add, Array.from({ length: 20_000 }, (_, i) => ({ a: i, b: i })));
const emails = await enqueueMany(sql, sendEmail, Array.from({ length: 500 }, (_, i) => ({ to: `user${i}@example.com`, subject: `hello ${i}` })));
log.info(`enqueued ${adds.length} "add" and ${emails.length} "send-email" tasks; starting pgbg serve`);

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const tasks = fileURLToPath(new URL("./tasks.ts", import.meta.url));
// Without DATABASE_URL, serve finds the embedded server this script started, and says so.
const serve = spawn(process.execPath, [...process.execArgv, cli, "serve", "--tasks", tasks, "--workers", "2", "--concurrency", "50", "--log-level", "warn", "--log-format", "pretty"], {
  stdio: ["ignore", "inherit", "inherit"],
  env: process.env,
});

const gone = () => serve.exitCode !== null || serve.signalCode !== null;
const started = Date.now();
let left = Number.POSITIVE_INFINITY;
let failed = 0;
for (;;) {
  await new Promise((r) => setTimeout(r, 500));
  const [s] = await sql`SELECT count(*) FILTER (WHERE state = 'queued' AND run_at <= now())::int AS queued,
      count(*) FILTER (WHERE state = 'queued' AND run_at > now())::int AS scheduled,
      count(*) FILTER (WHERE state = 'running')::int AS running,
      count(*) FILTER (WHERE state = 'failed')::int AS failed
    FROM pgbg.task`;
  // On a terminal, pgbg serve draws its own status line under its log;
  // elsewhere this prints a line each half second.
  if (!process.stderr.isTTY) {
    console.log(`queued ${s.queued}  scheduled (retries) ${s.scheduled}  running ${s.running}  failed ${s.failed}  after ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
  left = s.queued + s.scheduled + s.running;
  failed = s.failed;
  if (left === 0 || gone()) break;
}
const diedEarly = gone();
const exited = diedEarly ? Promise.resolve(serve.exitCode ?? serve.signalCode) : new Promise((r) => serve.on("exit", (c, signal) => r(c ?? signal)));
if (!diedEarly) serve.kill("SIGTERM");
const code = await exited;
if (diedEarly || code !== 0) {
  log.error(`pgbg serve exited with code ${code} with ${left} task(s) not yet run`);
} else {
  log.info(`pgbg serve stopped (exit code 0); every task ran${failed ? `, ${failed} of them failed for good` : ""}`);
}
await sql.end();
await database.stop?.();
process.exitCode = diedEarly || code !== 0 ? 1 : 0;
