/**
 * What every benchmark shares: the PostgreSQL server (DATABASE_URL or an
 * embedded one), a fresh database per measurement, CPU accounting from
 * /proc for the server and for process trees, statistics, and the live
 * progress line.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import process from "node:process";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../cli/embedded.ts";

/** A postgres.js client as the bench uses it. */
// deno-lint-ignore no-explicit-any
export type Sql = postgres.Sql<any>;

/** The server all measurements of one run use. */
export interface Server {
  url: string;
  version: string;
  /** Where it came from: "DATABASE_URL" or "embedded". */
  source: string;
  /** The postmaster's pid when the server runs on this machine and /proc shows it, for CPU accounting. */
  postmasterPid?: number;
  settings: Record<string, string>;
  stop(): Promise<void>;
}

/** Connects to DATABASE_URL, or starts an embedded PostgreSQL. */
export async function startServer(): Promise<Server> {
  let url = process.env.DATABASE_URL;
  let stop = async () => {};
  let source = "DATABASE_URL";
  if (!url) {
    const embedded = await startEmbeddedPostgres();
    url = embedded.url;
    stop = embedded.stop;
    source = "embedded";
  }
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const [{ version }] = await sql`SELECT current_setting('server_version') AS version`;
  const rows = await sql`SELECT name, setting FROM pg_settings WHERE name IN
    ('shared_buffers', 'max_connections', 'synchronous_commit', 'fsync', 'wal_level', 'work_mem', 'max_wal_size', 'autovacuum', 'data_directory')`;
  await sql.end();
  const settings = Object.fromEntries(rows.map((r) => [r.name, r.setting]));
  let postmasterPid: number | undefined;
  try {
    postmasterPid = Number(readFileSync(`${settings.data_directory}/postmaster.pid`, "utf8").split("\n")[0]);
    readFileSync(`/proc/${postmasterPid}/stat`);
  } catch {
    postmasterPid = undefined;
  }
  delete settings.data_directory;
  return { url, version, source, postmasterPid, settings, stop };
}

/** A database of its own for one measurement; `drop()` removes it. */
export interface Database {
  url: string;
  sql: Sql;
  drop(): Promise<void>;
}

/** Creates an empty database on `server`. */
export async function freshDatabase(server: Server, label: string): Promise<Database> {
  const name = `pgbg_bench_${label.replace(/[^a-z0-9_]/g, "_")}_${randomBytes(3).toString("hex")}`;
  const admin = postgres(server.url, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE "${name}"`);
  const url = new URL(server.url);
  url.pathname = `/${name}`;
  const sql = postgres(url.href, { max: 20, onnotice: () => {} });
  return {
    url: url.href,
    sql,
    async drop() {
      await sql.end({ timeout: 5 });
      await admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      await admin.end();
    },
  };
}

// ---- CPU accounting ----

const TICKS = 100; // USER_HZ: 100 on Linux everywhere pgbg is benchmarked (getconf CLK_TCK)

interface ProcStat {
  ppid: number;
  /** utime + stime + cutime + cstime, in seconds: the process and its reaped children. */
  cpu: number;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(rest[11]) + Number(rest[12]) + Number(rest[13]) + Number(rest[14]);
    return { ppid: Number(rest[1]), cpu: ticks / TICKS };
  } catch {
    return undefined;
  }
}

/**
 * CPU seconds used so far by `root` and every process below it, live or
 * exited (an exited child's time is in its parent's cutime once reaped).
 */
export function treeCpu(root: number | undefined): number | undefined {
  if (root === undefined) return undefined;
  const stats = new Map<number, ProcStat>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat) stats.set(Number(entry), stat);
  }
  if (!stats.has(root)) return undefined;
  const children = new Map<number, number[]>();
  for (const [pid, stat] of stats) children.set(stat.ppid, [...(children.get(stat.ppid) ?? []), pid]);
  let total = 0;
  const queue = [root];
  while (queue.length) {
    const pid = queue.pop()!;
    total += stats.get(pid)?.cpu ?? 0;
    queue.push(...(children.get(pid) ?? []));
  }
  return total;
}

/** CPU seconds of the server and of a process tree over a stretch of work. */
export class CpuMeter {
  #server0?: number;
  #tree0?: number;
  constructor(private server: Server, private tree?: () => number | undefined) {
    this.#server0 = treeCpu(server.postmasterPid);
    this.#tree0 = tree ? treeCpu(tree()) : undefined;
  }
  /** Seconds used since construction: { server, tree }; undefined where /proc could not tell. */
  read(): { server?: number; tree?: number } {
    const server = treeCpu(this.server.postmasterPid);
    const tree = this.tree ? treeCpu(this.tree()) : undefined;
    return {
      server: server !== undefined && this.#server0 !== undefined ? server - this.#server0 : undefined,
      tree: tree !== undefined && this.#tree0 !== undefined ? tree - this.#tree0 : undefined,
    };
  }
}

/** CPU seconds of the bench process itself (the client side of in-process measurements). */
export function selfCpu(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

// ---- statistics ----

/** The p-th percentile (0..100) of `values`, by nearest rank. */
export function percentile(values: number[], p: number): number {
  if (!values.length) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/** The median of `values`. */
export const median = (values: number[]): number => percentile(values, 50);

// ---- progress ----

const tty = process.stderr.isTTY;
let lastLength = 0;

/** Shows `text` as the live progress line on a terminal (nothing otherwise). */
export function progress(text: string): void {
  if (!tty) return;
  const line = text.length > 118 ? `${text.slice(0, 117)}…` : text;
  process.stderr.write(`\r${line}${" ".repeat(Math.max(0, lastLength - line.length))}`);
  lastLength = line.length;
}

/** Clears the progress line and prints `text` as a permanent line. */
export function note(text: string): void {
  if (tty && lastLength) process.stderr.write(`\r${" ".repeat(lastLength)}\r`);
  lastLength = 0;
  console.error(text);
}

// ---- waiting ----

/** Polls `check` every `everyMs` until it returns a value, or fails after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 600_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A child process and its exit. */
export interface Child {
  child: ChildProcess;
  exited: Promise<number | null>;
  output: () => string;
}

/** Spawns `argv` with output captured (the last 64 KiB), for scripts of the bench. */
export function start(argv: string[], env: NodeJS.ProcessEnv, cwd?: string): Child {
  const child = spawn(argv[0], argv.slice(1), { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-65_536);
  };
  child.stdout!.on("data", collect);
  child.stderr!.on("data", collect);
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, exited, output: () => output };
}

/** Stops a child with SIGTERM and waits for it (SIGKILL after `graceMs`). */
export async function stop(c: Child, graceMs = 30_000): Promise<number | null> {
  if (c.child.exitCode !== null || c.child.signalCode !== null) return c.exited;
  c.child.kill("SIGTERM");
  const timer = setTimeout(() => c.child.kill("SIGKILL"), graceMs);
  const code = await c.exited;
  clearTimeout(timer);
  return code;
}

/** Runs `fn` with `inFlight` calls in flight until `total` calls were made. */
export async function inFlight(total: number, inFlight: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < total) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, total) }, lane));
}

/** Seconds since `t0` (a performance.now() reading). */
export const since = (t0: number): number => (performance.now() - t0) / 1000;
