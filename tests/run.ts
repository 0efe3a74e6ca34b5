/**
 * Runs the test suite on a real PostgreSQL: the one in DATABASE_URL when set,
 * otherwise an embedded server that this script starts in a temporary folder
 * and removes afterwards. Test files run in parallel, each in its own
 * process and its own database (see harness.ts), longest first.
 *
 * Usage: tsx tests/run.ts [test files…]
 */
import { spawn } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../cli/embedded.ts";
import { typeScript } from "./ts-loader/flags.ts";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const files = args.length ? args : readdirSync(here).filter((f) => f.endsWith(".test.ts")).sort().map((f) => join(here, f));

let stop: (() => Promise<void>) | undefined;
if (!process.env.DATABASE_URL) {
  // A throwaway server: nothing need survive a crash of this machine, so
  // commits do not wait for the disk. PGBG_TEST_STATEMENTS=path writes the
  // statements that took its time there (pg_stat_statements, loaded only then).
  const statements: Record<string, string> = process.env.PGBG_TEST_STATEMENTS ? { shared_preload_libraries: "pg_stat_statements" } : {};
  const server = await startEmbeddedPostgres({ settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off", ...statements } });
  process.env.DATABASE_URL = server.url;
  stop = server.stop;
  console.log(`tests: started embedded PostgreSQL ${server.version} on port ${server.port}`);
} else {
  console.log(`tests: using DATABASE_URL (${new URL(process.env.DATABASE_URL).host})`);
}

// Seven files at a time by default: the suite is bound by the CPU. At six,
// the two cores were 82-85 % busy (files waiting on a lease or a timer
// leave them idle) and the suite took 311-350 s; at seven 299 and 309 s,
// at eight 305 s with the cores 99 % busy (2026-12-04). A service test
// holds about 25 connections at its peak (two supervisors with their
// workers), so a server gets one file per 25 of the connections it allows
// ordinary roles (max_connections less superuser_reserved_connections):
// the embedded server's 200 allow seven, the machine's default of 100
// three (four once ran it out of connections). PGBG_TEST_CONCURRENCY
// overrides it.
const slots = await connectionSlots();
const concurrency = Number(process.env.PGBG_TEST_CONCURRENCY ?? Math.max(1, Math.min(7, Math.floor(slots / 25))));
if (!Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`tests: PGBG_TEST_CONCURRENCY must be a whole number of at least 1, not ${JSON.stringify(process.env.PGBG_TEST_CONCURRENCY)}`);
  await stop?.();
  process.exit(2);
}
// A file still running after this many minutes is stopped and fails, its
// report printed so far shown (PGBG_TEST_FILE_MINUTES; a hang otherwise ran
// until CI's own limit, with nothing printed of the file that hung).
const fileMinutes = Number(process.env.PGBG_TEST_FILE_MINUTES ?? 20);

/** The connections the server allows roles that are not superusers. */
async function connectionSlots(): Promise<number> {
  const sql = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
  try {
    const [{ max, reserved }] = await sql`
      SELECT current_setting('max_connections')::int AS max, current_setting('superuser_reserved_connections')::int AS reserved`;
    return max - reserved;
  } finally {
    await sql.end();
  }
}

// Longest first, by the seconds each file took in a recorded run
// (tests/durations.json; a file not in it counts as the longest): with one
// slow file started last, the suite would wait for it alone at the end.
// PGBG_TEST_TIMES=path writes this run's seconds per file there, in the same form.
const durationsFile = join(here, "durations.json");
const recorded: Record<string, number> = JSON.parse(readFileSync(durationsFile, "utf8"));
const expected = (file: string) => recorded[basename(file)] ?? Infinity;
const queue = [...files].sort((a, b) => expected(b) - expected(a));

// The files running at once stay within the server's connections: a file
// counts 25, or what a line `// Connections at its peak: N` in it says
// (limits.test.ts and groups.test.ts, four supervisors at once: 67 for
// limits.test.ts alone; rate.test.ts 47: the three at once took the machine's
// server past its 100, and a worker that could not connect failed a task
// the test waits for, 2026-12-04). A file that does not fit waits for
// running ones to end; the next file that fits goes first.
const peakOf = new Map(files.map((f) => [f, Number(/^\/\/ Connections at its peak: (\d+)/m.exec(readFileSync(f, "utf8"))?.[1] ?? 25)]));
let connectionsHeld = 0;
const fileEnded: (() => void)[] = [];

/** The next file to run that fits the connections left (longest first), waiting for one to end when none does; undefined when none are left. */
async function nextFile(): Promise<string | undefined> {
  for (;;) {
    if (!queue.length) return undefined;
    const i = queue.findIndex((f) => connectionsHeld === 0 || connectionsHeld + peakOf.get(f)! <= slots);
    if (i >= 0) {
      const [file] = queue.splice(i, 1);
      connectionsHeld += peakOf.get(file)!;
      return file;
    }
    await new Promise<void>((resolve) => fileEnded.push(resolve));
  }
}

/** What one file's process printed and how it ended. */
interface FileRun {
  file: string;
  /** Its spec report (stdout) followed by what it wrote to stderr. */
  output: string;
  /** Its spec report alone, for the totals. */
  report: string;
  /** "passed", or how it failed. */
  verdict: string;
  passed: boolean;
  seconds: number;
}

/**
 * Runs one test file in its own node process, its spec report kept until it
 * ends so that files running at once do not interleave their lines. It ends
 * at the process's exit: a grandchild still holding the pipes gets 5 s more
 * to finish the output, not the run's patience.
 */
function runFile(file: string): Promise<FileRun> {
  const started = performance.now();
  const child = spawn(process.execPath, [...typeScript, "--test-reporter=spec", "--test-reporter-destination=stdout", file], {
    stdio: ["ignore", "pipe", "pipe"],
    env: process.env,
  });
  running.set(file, started);
  let report = "";
  let errors = "";
  child.stdout.on("data", (chunk) => (report += chunk));
  child.stderr.on("data", (chunk) => (errors += chunk));
  let overdue = false;
  const limit = setTimeout(() => ((overdue = true), child.kill("SIGKILL")), fileMinutes * 60_000);
  const closed = new Promise((resolve) => child.on("close", resolve));
  return new Promise((resolve) =>
    child.on("exit", async (code, signal) => {
      clearTimeout(limit);
      await Promise.race([closed, new Promise((r) => setTimeout(r, 5_000))]);
      running.delete(file);
      const verdict = overdue ? `FAILED (still running after ${fileMinutes} minutes, killed)` : code === 0 ? "passed" : `FAILED (${signal ? `killed by ${signal}` : `exit ${code}`})`;
      resolve({ file, output: report + errors, report, verdict, passed: verdict === "passed", seconds: (performance.now() - started) / 1000 });
    })
  );
}

const running = new Map<string, number>();
const runs: FileRun[] = [];
const suiteStarted = performance.now();
console.log(`tests: ${files.length} files, ${concurrency} at a time, longest first`);
// A file that never ends (a handle left open) shows up here instead of as silence.
const watch = setInterval(() => {
  const now = performance.now();
  const long = [...running].filter(([, t]) => now - t > 240_000).map(([f, t]) => `${basename(f)} (${Math.round((now - t) / 1000)} s)`);
  if (long.length) console.log(`tests: still running: ${long.join(", ")}`);
}, 60_000);
watch.unref();

async function lane(): Promise<void> {
  for (let file = await nextFile(); file; file = await nextFile()) {
    const run = await runFile(file);
    connectionsHeld -= peakOf.get(file)!;
    fileEnded.splice(0).forEach((wake) => wake());
    runs.push(run);
    process.stdout.write(`\n# ${basename(file)}: ${run.verdict} in ${run.seconds.toFixed(1)} s\n${run.output}`);
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, files.length) }, lane));
clearInterval(watch);
if (stop && process.env.PGBG_TEST_STATEMENTS) await writeTopStatements(process.env.PGBG_TEST_STATEMENTS);
await stop?.();

/** Writes the statements that took the embedded server's time, most first (how the suite's cost was measured). */
async function writeTopStatements(path: string): Promise<void> {
  const sql = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
  try {
    await sql`CREATE EXTENSION IF NOT EXISTS pg_stat_statements`;
    const rows = await sql`
      SELECT round(sum(total_exec_time)) AS ms, sum(calls)::bigint AS calls, left(regexp_replace(query, '[[:space:]]+', ' ', 'g'), 160) AS query
      FROM pg_stat_statements GROUP BY 3 ORDER BY 1 DESC LIMIT 40`;
    writeFileSync(path, rows.map((r) => `${r.ms} ms\t${r.calls} calls\t${r.query}`).join("\n") + "\n");
  } finally {
    await sql.end();
  }
}

// The totals of the spec reports' closing lines ("ℹ pass 12").
const totals = new Map<string, number>();
for (const { report } of runs) {
  for (const [, key, n] of report.matchAll(/^ℹ (tests|pass|fail|cancelled|skipped|todo) (\d+)$/gm)) totals.set(key, (totals.get(key) ?? 0) + Number(n));
}
// Every file must have run and passed: a run that started none is no pass.
const failed = [...runs.filter((r) => !r.passed).map((r) => basename(r.file)), ...files.filter((f) => !runs.some((r) => r.file === f)).map((f) => `${basename(f)} (not run)`)];
const seconds = (performance.now() - suiteStarted) / 1000;
console.log(`\ntests: ${[...totals].map(([k, n]) => `${k} ${n}`).join(", ")}; ${files.length} files in ${seconds.toFixed(0)} s`);
if (failed.length) console.log(`tests: failed: ${failed.join(", ")}`);
// Again, last: the failures' own words, where a log shown by its tail (CI's) keeps them.
for (const run of runs.filter((r) => !r.passed)) console.log(`\ntests: how ${basename(run.file)} failed:\n${failureOf(run)}`);

/** The spec report's closing "failing tests" section of `run`, and its stderr (at most 10,000 characters); its last 6,000 when it has no such section. */
function failureOf(run: FileRun): string {
  const at = run.report.lastIndexOf("failing tests:");
  const errors = run.output.slice(run.report.length);
  return at >= 0 ? `${run.report.slice(at, at + 8_000)}${errors.slice(-2_000)}` : run.output.slice(-6_000);
}
if (process.env.PGBG_TEST_TIMES) {
  const times = Object.fromEntries(runs.map((r) => [basename(r.file), Math.round(r.seconds * 10) / 10]).sort(([a], [b]) => String(a).localeCompare(String(b))));
  writeFileSync(process.env.PGBG_TEST_TIMES, `${JSON.stringify(times, null, 2)}\n`);
}
process.exit(failed.length ? 1 : 0);
