/**
 * The fault-injection suite: `npm run chaos` (the full run) or
 * `npm run chaos -- --ci` (the short one CI runs); `--only a,b` picks
 * scenarios. It always starts its own embedded PostgreSQL, because one
 * scenario restarts the server. Each scenario gets a fresh database; the
 * suite prints one line of figures per scenario and exits 1 when any
 * scenario broke the promise (lost tasks, overlapping executions, tasks
 * completed twice, re-runs the scenario cannot explain).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../../cli/embedded.ts";
import { migrate } from "../../mod.ts";
import { type Cause, check, describeFigures, type ExecLine, type Kill } from "./check.ts";
import { type RunContext, Supervisor, supervisorKills, workerEnds } from "./cluster.ts";
import { scenarios, type Size, type Stage } from "./scenarios.ts";

const { values } = parseArgs({ options: { ci: { type: "boolean", default: false }, only: { type: "string" }, keep: { type: "boolean", default: false } } });
const size: Size = values.ci ? "ci" : "full";
const only = values.only?.split(",").map((s) => s.trim());
const chosen = only ? scenarios.filter((s) => only.includes(s.name)) : scenarios;
if (only && chosen.length !== only.length) {
  console.error(`chaos: unknown scenario in --only; the scenarios are ${scenarios.map((s) => s.name).join(", ")}`);
  process.exit(2);
}

// Generous bound on waiting for a drain: a scenario that cannot finish fails instead of hanging CI.
const DRAIN_LIMIT_MS = 15 * 60_000;

const server = await startEmbeddedPostgres();
console.log(`chaos: ${size} run of ${chosen.length} scenario(s) on an embedded PostgreSQL ${server.version}`);
const admin = postgres(server.url, { max: 1, onnotice: () => {} });
let failures = 0;
try {
  for (const scenario of chosen) {
    const ok = await runScenario(scenario.name, scenario.allowed, scenario.run);
    if (!ok) failures++;
  }
} finally {
  await admin.end({ timeout: 5 });
  await server.stop();
}
console.log(failures ? `chaos: ${failures} scenario(s) broke the promise` : "chaos: every scenario kept the promise");
process.exit(failures ? 1 : 0);

async function runScenario(name: string, allowed: readonly Cause[], body: (stage: Stage) => Promise<void>): Promise<boolean> {
  const database = `chaos_${name.replace(/-/g, "_")}`;
  await admin.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin.unsafe(`CREATE DATABASE ${database}`);
  const url = new URL(server.url);
  url.pathname = `/${database}`;
  const sql = postgres(url.href, { max: 8, onnotice: () => {} });
  await migrate(sql);
  await sql`CREATE TABLE chaos_done (task_id bigint NOT NULL, pid integer NOT NULL, attempt integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`;
  const dir = mkdtempSync(join(tmpdir(), `pgbg-chaos-${name}-`));
  const kills: Kill[] = [];
  const ctx: RunContext = { dir, databaseUrl: url.href, kills };
  const supervisors: Supervisor[] = [];
  const notes: string[] = [];
  const problems: string[] = [];
  const stage: Stage = {
    size,
    sql,
    committed: [],
    rolledBack: [],
    serve(options) {
      const supervisor = new Supervisor(ctx, options);
      supervisors.push(supervisor);
      return supervisor;
    },
    async drained(tick) {
      const deadline = Date.now() + DRAIN_LIMIT_MS;
      for (;;) {
        let left: number | undefined;
        try {
          const [row] = await sql`SELECT
            (SELECT count(*) FROM pgbg.task WHERE state IN ('queued', 'running'))::int AS left,
            (SELECT count(*) FROM chaos_done)::int AS done`;
          left = row.left;
          progress(`${name}: ${row.done} done, ${left} queued or running`);
        } catch (error) {
          // The server may be restarting: the scenario's own client reconnects.
          progress(`${name}: waiting for the database (${(error as Error).message})`);
        }
        if (left === 0) return;
        if (supervisors.every((s) => !s.alive)) throw new Error(`every supervisor exited (log: ${supervisors.at(-1)?.logFile})`);
        if (Date.now() > deadline) throw new Error(`the queue did not drain within ${DRAIN_LIMIT_MS / 60_000} minutes`);
        if (left !== undefined) await tick?.();
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async restartServer(downMs) {
      await server.restart(downMs);
    },
    note(text) {
      notes.push(text);
    },
  };

  const t0 = performance.now();
  try {
    await body(stage);
  } catch (error) {
    problems.push(`the scenario failed: ${(error as Error).message}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  for (const supervisor of supervisors) {
    if (!supervisor.alive) continue;
    const code = await supervisor.stop();
    if (code !== 0) problems.push(`a supervisor exited with code ${code} on SIGTERM (log: ${supervisor.logFile})`);
  }
  for (const supervisor of supervisors) kills.push(...supervisorKills(supervisor));
  const ends = new Map<string, number>();
  for (const end of supervisors.flatMap(workerEnds)) ends.set(end, (ends.get(end) ?? 0) + 1);
  if (ends.size) notes.push(`workers replaced: ${[...ends].map(([how, n]) => `${how} ×${n}`).join(", ")}`);

  const lines: ExecLine[] = [];
  for (const file of readdirSync(dir).filter((f) => f.startsWith("exec-"))) {
    for (const line of readFileSync(join(dir, file), "utf8").split("\n")) if (line) lines.push(JSON.parse(line));
  }
  const completions = new Map<string, number>();
  for (const r of await sql`SELECT task_id::text AS id, count(*)::int AS n FROM chaos_done GROUP BY task_id`) completions.set(r.id, r.n);
  const left = (await sql`SELECT id::text, state::text FROM pgbg.task`).map((r) => ({ id: r.id as string, state: r.state as string }));
  await sql.end({ timeout: 5 });

  const verdict = check({ committed: stage.committed, rolledBack: stage.rolledBack, lines, kills, completions, left }, allowed);
  problems.push(...verdict.problems);
  progress("");
  console.log(`${problems.length ? "FAIL" : "ok  "} ${describeFigures(name, verdict.figures, seconds)}${notes.length ? `; ${notes.join("; ")}` : ""}`);
  for (const p of problems.slice(0, 20)) console.log(`       ${p}`);
  if (problems.length > 20) console.log(`       … and ${problems.length - 20} more`);
  if (problems.length || values.keep) console.log(`       records kept in ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
  await admin.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  return problems.length === 0;
}

let lastLength = 0;
/** A live progress line on a terminal; nothing otherwise. */
function progress(text: string): void {
  if (!process.stdout.isTTY) return;
  process.stdout.write(`\r${text}${" ".repeat(Math.max(0, lastLength - text.length))}\r`);
  lastLength = text.length;
}
