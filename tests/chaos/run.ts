/**
 * The fault-injection suite: `npm run chaos` (the full run) or
 * `npm run chaos -- --ci` (the short one CI runs); `--only a,b` picks
 * scenarios. It always starts its own embedded PostgreSQL, because one
 * scenario restarts the server. Each scenario gets a fresh database, with a
 * ledger of every lease (claims, and how each lease ended) kept by triggers;
 * the suite prints one line of figures per scenario and exits 1 when any
 * scenario broke the promise (lost tasks, executions overlapping while a
 * lease held, late completions that committed, tasks completed twice,
 * re-runs the scenario cannot explain) or injected no fault.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../../cli/embedded.ts";
import { migrate } from "../../mod.ts";
import { check, checkTicks, describeFigures, type ExecLine, type Lease, type RunRecord } from "./check.ts";
import { App, type RunContext, Supervisor, supervisorKills, workerEnds } from "./cluster.ts";
import { scenarios } from "./scenarios.ts";
import type { Scenario, Size, Stage } from "./stage.ts";

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

/**
 * The lease ledger. A row claim changes the lease token; a claim row
 * leases each task of its stretch (logged with the claim's id, negated, as
 * its token), and a task it holds given a lease of its own (to write an
 * outcome other than a success, or by a rescue or a release) goes on under
 * that lease, its entry taking the new token and keeping its claim's time.
 * A lease ends when its task leaves `running` (a completion deletes the
 * row, and nothing can run after it). A worker's row removed while its heartbeat was older than its
 * stale time was reaped. Times are clock_timestamp(), taken before the
 * commit, so an end is never recorded later than a process could see it.
 * The triggers slow each claim a little; they change no outcome.
 */
const LEDGER = `
CREATE TABLE chaos_claim (task_id bigint NOT NULL, token integer NOT NULL, attempt integer NOT NULL, worker_id uuid, pid integer,
  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE chaos_lease_end (task_id bigint NOT NULL, token integer NOT NULL, worker_id uuid, handed_back boolean NOT NULL,
  expires_at timestamptz, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE chaos_worker_gone (worker_id uuid NOT NULL, heartbeat_at timestamptz NOT NULL, stale_after_ms bigint,
  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION chaos_lease_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.lease_token <> OLD.lease_token THEN
    UPDATE chaos_claim c SET token = NEW.lease_token
    WHERE OLD.state = 'queued' AND c.ctid = (SELECT h.ctid FROM chaos_claim h WHERE h.task_id = NEW.id AND h.token < 0
      AND NOT EXISTS (SELECT FROM chaos_lease_end e WHERE e.task_id = h.task_id AND e.token = h.token) ORDER BY h.at DESC LIMIT 1);
    IF NOT FOUND THEN
      INSERT INTO chaos_claim (task_id, token, attempt, worker_id, pid)
      VALUES (NEW.id, NEW.lease_token, NEW.attempts, NEW.worker_id, (SELECT pid FROM pgbg.worker WHERE id = NEW.worker_id));
    END IF;
  END IF;
  IF OLD.state = 'running' AND NEW.state <> 'running' THEN
    INSERT INTO chaos_lease_end (task_id, token, worker_id, handed_back, expires_at)
    VALUES (OLD.id, OLD.lease_token, OLD.worker_id, NEW.attempts < OLD.attempts, OLD.lease_expires_at);
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_lease_log AFTER UPDATE ON pgbg.task FOR EACH ROW
  WHEN (NEW.lease_token <> OLD.lease_token OR (OLD.state = 'running' AND NEW.state <> 'running'))
  EXECUTE FUNCTION chaos_lease_log();
CREATE FUNCTION chaos_claim_row_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_claim (task_id, token, attempt, worker_id, pid)
  SELECT t.id, -NEW.id::integer, t.attempts + 1, NEW.worker_id, (SELECT pid FROM pgbg.worker WHERE id = NEW.worker_id)
  FROM pgbg.task t
  WHERE t.queue = NEW.queue AND t.name = NEW.name AND t.priority = NEW.priority AND t.state = 'queued' AND t.group_name IS NULL
    AND (t.staged_xact, t.id) > (NEW.after_xact, NEW.after_id) AND (t.staged_xact, t.id) <= (NEW.last_xact, NEW.last_id)
    AND pg_visible_in_snapshot(t.staged_xact, NEW.upto) AND (NEW.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, NEW.since));
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_claim_row_log AFTER INSERT ON pgbg.claim FOR EACH ROW WHEN (NEW.worker_id IS NOT NULL)
  EXECUTE FUNCTION chaos_claim_row_log();
CREATE FUNCTION chaos_worker_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO chaos_worker_gone (worker_id, heartbeat_at, stale_after_ms) VALUES (OLD.id, OLD.heartbeat_at, OLD.stale_after_ms);
  RETURN NULL;
END $$;
CREATE TRIGGER chaos_worker_log AFTER DELETE ON pgbg.worker FOR EACH ROW EXECUTE FUNCTION chaos_worker_log();
`;

const server = await startEmbeddedPostgres();
console.log(`chaos: ${size} run of ${chosen.length} scenario(s) on an embedded PostgreSQL ${server.version}`);
const admin = postgres(server.url, { max: 1, onnotice: () => {} });
let failures = 0;
try {
  for (const scenario of chosen) {
    const ok = await runScenario(scenario);
    if (!ok) failures++;
  }
} finally {
  await admin.end({ timeout: 5 });
  await server.stop();
}
console.log(failures ? `chaos: ${failures} scenario(s) broke the promise` : "chaos: every scenario kept the promise");
process.exit(failures ? 1 : 0);

// deno-lint-ignore no-explicit-any
type Client = postgres.Sql<any>;

/** A fresh, migrated database for one scenario, with the table the tasks write and the lease ledger. */
async function prepareDatabase(database: string): Promise<{ url: string; sql: Client }> {
  await admin.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
  await admin.unsafe(`CREATE DATABASE ${database}`);
  const url = new URL(server.url);
  url.pathname = `/${database}`;
  const sql = postgres(url.href, { max: 8, onnotice: () => {} });
  await migrate(sql);
  await sql`CREATE TABLE chaos_done (task_id bigint NOT NULL, pid integer NOT NULL, n integer NOT NULL, attempt integer NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp())`;
  await sql`CREATE TABLE chaos_tick (tick timestamptz NOT NULL, task_id bigint NOT NULL)`;
  await sql.unsafe(LEDGER);
  return { url: url.href, sql };
}

/** Every execution line written so far. */
function readLines(dir: string): ExecLine[] {
  const lines: ExecLine[] = [];
  for (const file of readdirSync(dir).filter((f) => f.startsWith("exec-"))) {
    for (const line of readFileSync(join(dir, file), "utf8").split("\n")) if (line) lines.push(JSON.parse(line));
  }
  return lines;
}

/** The processes a scenario started, for the runner to stop at the end. */
interface Started {
  supervisors: Supervisor[];
  apps: App[];
}

function makeStage(name: string, sql: Client, ctx: RunContext, started: Started, notes: string[]): Stage {
  return {
    size,
    sql,
    url: ctx.databaseUrl,
    committed: [],
    rolledBack: [],
    serve(options) {
      const supervisor = new Supervisor(ctx, options);
      started.supervisors.push(supervisor);
      return supervisor;
    },
    async host(options) {
      const app = await App.start(ctx, options);
      started.apps.push(app);
      return app;
    },
    lines: () => readLines(ctx.dir),
    async drained(tick) {
      const deadline = Date.now() + DRAIN_LIMIT_MS;
      for (;;) {
        let left: number | undefined;
        try {
          const [row] = await sql`SELECT
            (SELECT count(*) FROM pgbg.task WHERE state IN ('queued', 'running') AND name <> 'chaos-tick')::int AS left,
            (SELECT count(*) FROM chaos_done)::int AS done`;
          left = row.left;
          progress(`${name}: ${row.done} done, ${left} queued or running`);
        } catch (error) {
          // The server may be restarting: the scenario's own client reconnects.
          progress(`${name}: waiting for the database (${(error as Error).message})`);
        }
        if (left === 0) return;
        const all = [...started.supervisors, ...started.apps];
        if (all.every((s) => !s.alive)) throw new Error(`every supervisor and app exited (log: ${all.at(-1)?.logFile})`);
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
}

/**
 * Stops what still runs, gracefully; a process that does not exit 0 is a
 * problem, as is an app that exited by itself. When a process is slow to
 * stop, the scenario database's sessions are written down while it still
 * hangs (their states and waits say what it waits for).
 */
async function stopAll(sql: Client, ctx: RunContext, started: Started, problems: string[]): Promise<void> {
  for (const app of started.apps) {
    for (const how of app.crashes) problems.push(`an app ended by itself (${how}); its log says why (${app.logFile})`);
  }
  const slowToStop = async <T>(pid: number, stopping: Promise<T>): Promise<{ result: T; sessions: string }> => {
    const sessions = join(ctx.dir, `sessions-while-${pid}-stopped.txt`);
    const slow = setTimeout(() => void writeSessions(sql, sessions), 10_000);
    const result = await stopping;
    clearTimeout(slow);
    return { result, sessions };
  };
  await Promise.all([
    ...started.supervisors.filter((s) => s.alive).map(async (s) => {
      const { result: code, sessions } = await slowToStop(s.pid, s.stop());
      if (code !== 0) problems.push(`a supervisor (pid ${s.pid}) exited with code ${code} on SIGTERM (log: ${s.logFile}; sessions: ${sessions})`);
    }),
    ...started.apps.filter((a) => a.alive).map(async (a) => {
      const pid = a.pid;
      const { result: wrong, sessions } = await slowToStop(pid, a.stop());
      if (wrong) problems.push(`an app (pid ${pid}) ${wrong} (log: ${a.logFile}; sessions: ${sessions})`);
    }),
  ]);
}

/** The sessions on the scenario's database, one line each, into `file`. */
async function writeSessions(sql: Client, file: string): Promise<void> {
  const rows = await sql`SELECT application_name, client_port, state, wait_event_type, wait_event,
      round(extract(epoch FROM now() - xact_start))::int AS xact_s, left(regexp_replace(query, '\s+', ' ', 'g'), 120) AS query
    FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() ORDER BY application_name, client_port`.catch(() => []);
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}

/** The lease ledger, one entry per claim, each with how its lease ended (see LEDGER and check.ts's LeaseEnd). */
async function readLeases(sql: Client): Promise<Lease[]> {
  const rows = await sql`SELECT c.task_id::text AS task, c.pid, c.attempt,
      floor(extract(epoch FROM c.at) * 1000)::float8 AS claimed_at,
      floor(extract(epoch FROM e.at) * 1000)::float8 AS ended_at,
      CASE WHEN e.at IS NULL THEN NULL
        WHEN e.expires_at <= e.at THEN 'expired'
        WHEN e.handed_back THEN 'handed back'
        WHEN EXISTS (SELECT 1 FROM chaos_worker_gone g WHERE g.worker_id = e.worker_id AND g.at <= e.at
          AND g.heartbeat_at < g.at - g.stale_after_ms * interval '1 millisecond') THEN 'reaped'
        ELSE 'ended' END AS ended
    FROM chaos_claim c LEFT JOIN chaos_lease_end e ON e.task_id = c.task_id AND e.token = c.token`;
  return rows.map((r) => ({ task: r.task, pid: r.pid, attempt: r.attempt, claimedAt: r.claimed_at, endedAt: r.ended_at, ended: r.ended }));
}

/**
 * The every-second schedule's ticks (tests/chaos/ticks.js): those its tasks
 * recorded and those still queued, against the schedule's last handled
 * tick. Adds a problem for each tick fired twice or skipped; returns the
 * figures' note.
 */
async function tickFigures(sql: Client, problems: string[]): Promise<string> {
  const fired = (await sql`SELECT tick FROM chaos_tick UNION ALL SELECT (payload->>'tick')::timestamptz FROM pgbg.task WHERE name = 'chaos-tick'`)
    .map((r) => (r.tick as Date).toISOString());
  const [schedule] = await sql`SELECT last_tick FROM pgbg.schedule WHERE name = 'chaos-every-second'`;
  const ticks = checkTicks(fired, schedule?.last_tick ?? null);
  if (ticks.fired < 5) problems.push(`the schedule fired ${ticks.fired} ticks: too few to prove anything`);
  if (ticks.duplicated.length) problems.push(`${ticks.duplicated.length} tick(s) fired twice: ${ticks.duplicated.slice(0, 5).join(", ")}`);
  if (ticks.skipped.length) problems.push(`${ticks.skipped.length} tick(s) skipped: ${ticks.skipped.slice(0, 5).join(", ")}`);
  return `ticks fired ${ticks.fired}, twice ${ticks.duplicated.length}, skipped ${ticks.skipped.length}`;
}

/** Everything the run left behind, for the verdict. */
async function readRecord(sql: Client, ctx: RunContext, stage: Stage): Promise<RunRecord> {
  const completions = new Map<string, number>();
  for (const r of await sql`SELECT task_id::text AS id, count(*)::int AS n FROM chaos_done GROUP BY task_id`) completions.set(r.id, r.n);
  const completedBy = (await sql`SELECT pid, n FROM chaos_done`).map((r) => `${r.pid}:${r.n}`);
  const left = (await sql`SELECT id::text, state::text FROM pgbg.task WHERE name <> 'chaos-tick'`).map((r) => ({ id: r.id as string, state: r.state as string }));
  const results = new Map<string, string>();
  for (const r of await sql`SELECT id::text, result FROM pgbg.history WHERE state = 'completed'`) results.set(r.id, `${r.result.p}:${r.result.n}`);
  return {
    committed: stage.committed, rolledBack: stage.rolledBack, lines: readLines(ctx.dir), kills: ctx.kills, cuts: ctx.cuts,
    leases: await readLeases(sql), completions, completedBy, results, left,
  };
}

async function runScenario(scenario: Scenario): Promise<boolean> {
  const { name } = scenario;
  const database = `chaos_${name.replace(/-/g, "_")}`;
  const { url, sql } = await prepareDatabase(database);
  const ctx: RunContext = { dir: mkdtempSync(join(tmpdir(), `pgbg-chaos-${name}-`)), databaseUrl: url, kills: [], cuts: [] };
  const started: Started = { supervisors: [], apps: [] };
  const notes: string[] = [];
  const problems: string[] = [];
  const stage = makeStage(name, sql, ctx, started, notes);

  const t0 = performance.now();
  try {
    await scenario.run(stage);
  } catch (error) {
    problems.push(`the scenario failed: ${(error as Error).message}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  await stopAll(sql, ctx, started, problems);
  for (const supervisor of started.supervisors) ctx.kills.push(...supervisorKills(supervisor));
  const ends = new Map<string, number>();
  for (const end of started.supervisors.flatMap(workerEnds)) ends.set(end, (ends.get(end) ?? 0) + 1);
  if (ends.size) notes.push(`workers replaced: ${[...ends].map(([how, n]) => `${how} ×${n}`).join(", ")}`);

  const record = await readRecord(sql, ctx, stage);
  const verdict = check(record, scenario.allowed, scenario.expected, scenario.limit, scenario.groupLimit);
  problems.push(...verdict.problems);
  if (scenario.ticks) notes.push(await tickFigures(sql, problems));
  await sql.end({ timeout: 5 });
  progress("");
  console.log(`${problems.length ? "FAIL" : "ok  "} ${describeFigures(name, verdict.figures, seconds)}${notes.length ? `; ${notes.join("; ")}` : ""}`);
  for (const p of problems.slice(0, 20)) console.log(`       ${p}`);
  if (problems.length > 20) console.log(`       … and ${problems.length - 20} more`);
  if (problems.length || values.keep) console.log(`       records kept in ${ctx.dir}`);
  else rmSync(ctx.dir, { recursive: true, force: true });
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
