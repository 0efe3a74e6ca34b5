/**
 * Runs `pgbg serve` as a real subprocess for the service tests, and reads its
 * JSON log lines.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { hostname } from "node:os";
import { afterEach } from "node:test";
import { fileURLToPath } from "node:url";
import type postgres from "postgres";
import { enqueue } from "../mod.ts";
import { typeScript } from "./ts-loader/flags.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
/** The fixture tasks module. */
export const fixtureTasks = fileURLToPath(new URL("./fixtures/tasks.ts", import.meta.url));

/** One JSON log line of the service. */
export interface LogLine {
  level: string;
  component: string;
  message: string;
  pid: number;
  [field: string]: unknown;
}

/** A running `pgbg serve`. */
export interface Service {
  child: ChildProcess;
  logs: LogLine[];
  /** Output that was not a JSON log line. */
  other: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line (past or future) matching `test`. */
  waitForLog(test: (line: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
}

/**
 * Starts `pgbg serve` with `args` against `url`; `schema` defaults to pgbg.
 * `command` runs another pgbg's CLI (an earlier release's, built).
 */
export function startService(url: string, args: string[], env: Record<string, string> = {}, command = [...typeScript, cli]): Service {
  const child = spawn(process.execPath, [...command, "serve", "--log-format", "json", "--log-level", "debug", ...args], {
    env: { ...process.env, DATABASE_URL: url, ...env },
    stdio: ["ignore", "pipe", "pipe"],
    // A process group of its own, which its workers join: the harness ends
    // them all at once (serviceTestbed).
    detached: true,
  });
  const logs: LogLine[] = [];
  const other: string[] = [];
  const waiters: { test: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let buffer = "";
  const onData = (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const text = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      let line: LogLine | undefined;
      try {
        line = JSON.parse(text);
      } catch {
        if (text.trim()) other.push(text);
      }
      if (!line) continue;
      logs.push(line);
      for (const w of [...waiters]) {
        if (w.test(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  };
  child.stdout!.on("data", onData);
  child.stderr!.on("data", onData);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal }))
  );
  return {
    child,
    logs,
    other,
    exited,
    waitForLog(test, timeoutMs = 30_000) {
      const found = logs.find(test);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no matching log line within ${timeoutMs} ms; last lines:\n${logs.slice(-10).map((l) => JSON.stringify(l)).join("\n")}\n${other.slice(-10).join("\n")}`)), timeoutMs);
        waiters.push({ test, resolve: (l) => (clearTimeout(timer), resolve(l)) });
      });
    },
  };
}

/** Stops a service with SIGTERM and returns its exit status. */
export async function stopService(service: Service): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (service.child.exitCode === null && service.child.signalCode === null) service.child.kill("SIGTERM");
  return service.exited;
}

/**
 * The order a worker runs the four tasks of the claim order tests in:
 * enqueued in one transaction as priority 5, priority -1, priority 5 with
 * a run time a minute back, and priority 5. Claims read a lane (of one
 * priority) in the order its tasks became due, by their staging
 * transaction, and a past run time puts no task ahead of those enqueued
 * before it (docs/storage.md, "Claim order").
 */
export function claimOrder(order: readonly string[]): string[] {
  return [order[1], order[0], order[2], order[3]];
}

/**
 * A bound on waiting for a service on a loaded machine (the suite runs its
 * files in parallel on as few as 2 cores): long, since it only matters when
 * a test fails. Not a timing assertion.
 */
export const patience = 120_000;

/** Polls `query` until `done(result)` holds, or fails after `timeoutMs`. Not a timing assertion: only a bound on waiting. */
export async function until<T>(query: () => Promise<T>, done: (value: T) => boolean, timeoutMs = 30_000, what = "condition"): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await query();
    if (done(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last value: ${JSON.stringify(value)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until a statement of `sql`'s database waits for an advisory lock (a claim for a queue's or a group's lock), failing after `patience`. */
// deno-lint-ignore no-explicit-any
export async function untilWaitingForLock(sql: postgres.Sql<any>, what: string): Promise<void> {
  await until(
    async () => (await sql`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)[0].n as number,
    (n) => n === 1, patience, what,
  );
}

/** Resolves with `promise`, or fails after `timeoutMs` naming `what` (or what the function gives then). Not a timing assertion: only a bound on waiting. */
export function within<T>(promise: Promise<T>, timeoutMs: number, what: string | (() => string)): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${typeof what === "string" ? what : what()}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The most executions that overlapped, from their recorded start and end
 * (an execution without an end runs on); an end and a start at the same
 * instant do not overlap.
 */
function mostAtOnce(rows: readonly postgres.Row[]): number {
  const edges = rows.flatMap((r) => [[(r.started_at as Date).getTime(), 1], [((r.ended_at as Date | null) ?? new Date(8.64e15)).getTime(), -1]]);
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let most = 0;
  for (const [, step] of edges) most = Math.max(most, (now += step));
  return most;
}

/** SIGKILLs `pid` (a negative one: its process group), unless already gone. */
function killIfAlive(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/**
 * Ends the sessions the killed services had open on this database (their
 * supervisor's, their workers' and the fixture tasks' name themselves
 * "pgbg supervisor…", "pgbg worker…" and "pgbg fixture") and waits until
 * they are gone: a session being ended rolls back the statement it is in.
 * Only theirs: a `pgbg dashboard` the test file keeps running beside them
 * would meet porsager/postgres#1154 and exit (it did, twice, in CI).
 */
// deno-lint-ignore no-explicit-any
async function endSessionsOfKilled(sql: postgres.Sql<any>): Promise<void> {
  const live = () =>
    sql`SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND application_name ~ '^pgbg (supervisor|worker|fixture)' AND pid <> pg_backend_pid()`;
  await until(live, (rows) => rows.length === 0, patience, "the killed processes' database sessions to end");
}

/** Creates the tables the fixture tasks write to. */
// deno-lint-ignore no-explicit-any
export async function createFixtureTables(sql: postgres.Sql<any>): Promise<void> {
  await sql`CREATE TABLE IF NOT EXISTS execution (
    id serial PRIMARY KEY, task_id bigint NOT NULL, name text NOT NULL, pid integer NOT NULL, attempt integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz)`;
  await sql`CREATE TABLE IF NOT EXISTS note (id serial PRIMARY KEY, text text NOT NULL)`;
}

/**
 * Sets up a test file for service tests: a fresh database with pgbg and the
 * fixture tables, and a `serve(args, tasks?, env?)` that starts `pgbg serve` on it.
 * After each test every service it started is killed, so a test that failed
 * half-way cannot leave a service claiming the next test's tasks.
 */
export async function serviceTestbed<D extends { url: string; sql: postgres.Sql }>(createDatabase: () => Promise<D>, migrateFn: (sql: postgres.Sql) => Promise<unknown>) {
  const db = await createDatabase();
  await migrateFn(db.sql);
  await createFixtureTables(db.sql);
  const services: Service[] = [];
  afterEach(async () => {
    // The workers too: a worker whose supervisor died stops on its own, but
    // until it has noticed it may still claim the next test's first task.
    // Each service's process group holds its supervisor and every worker it
    // started, registered or not, orphaned by the test or not: one
    // registered only after the registered ones were read would have its
    // row deleted below and claim on until its first heartbeat, leaving
    // what it took to a lease's expiry. The registered ones are killed too,
    // for workers started otherwise.
    const workers = await db.sql`SELECT pid FROM pgbg.worker WHERE hostname = ${hostname()}`.catch(() => []);
    const killing = services.length > 0 || workers.length > 0;
    for (const s of services.splice(0)) {
      if (s.child.pid !== undefined) killIfAlive(-s.child.pid);
      await s.exited;
    }
    for (const { pid } of workers) killIfAlive(pid as number);
    // A killed process's database sessions live on until they notice: one
    // still in a claim, or yet to read the claim its worker sent before
    // the kill, commits it afterwards, and under load that claim took the
    // next test's first task for a worker that no longer exists (it then
    // waited out the claim's lease). Ended here, and waited for.
    if (killing) await endSessionsOfKilled(db.sql);
    // Tasks a failed test left behind would be claimed by the next test's service.
    await db.sql`DELETE FROM pgbg.task`;
    await db.sql`DELETE FROM pgbg.worker`;
  });
  const serve = (args: string[], tasks = fixtureTasks, env: Record<string, string> = {}): Service => {
    const checkInterval = args.includes("--check-interval") ? [] : ["--check-interval", "200ms"];
    const service = startService(db.url, ["--tasks", tasks, ...checkInterval, ...args], env);
    services.push(service);
    return service;
  };
  const { sql } = db;
  /** How many of `ids` are still in the task table. */
  const remaining = async (ids: string[]) => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(ids)}`)[0].n as number;
  /** The executions the fixture tasks recorded for `ids`, in start order. */
  const executions = (ids: string[]) =>
    sql`SELECT task_id::text, pid, attempt, started_at, ended_at FROM execution WHERE task_id IN ${sql(ids)} ORDER BY id`;
  /** The task's row, or undefined once it is gone. */
  const taskRow = async (id: string) => (await sql`SELECT * FROM pgbg.task WHERE id = ${id}`)[0];
  /** Enqueues a `work` task at the lowest priority and waits until it has run: proof that everything before it in the queue was claimed. */
  const sentinel = async () => {
    const { work } = await import("./fixtures/tasks.ts");
    const id = await enqueue(sql, work, {}, { priority: 32767 });
    await until(() => remaining([id]), (n) => n === 0, patience, "the sentinel task");
  };
  /** The most executions of `ids` that overlapped (see mostAtOnce). */
  const mostExecutionsAtOnce = async (ids: string[]) => mostAtOnce(await executions(ids));
  return { db, sql, serve, remaining, executions, mostExecutionsAtOnce, taskRow, sentinel };
}
