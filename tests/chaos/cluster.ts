/**
 * The processes the chaos suite runs and hurts: `pgbg serve` supervisors
 * (the built package on Node, each in a process group of its own so that it
 * can be killed together with its workers), apps hosting an in-process
 * worker (tests/chaos/app.ts, each behind a proxy that can cut it off from
 * the database), and the kills and cuts themselves, each recorded with the
 * time it began.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Cut, Kill } from "./check.ts";
import { CutProxy } from "./proxy.ts";

const cli = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const tasksModule = fileURLToPath(new URL("./tasks.js", import.meta.url));
const ticksModule = fileURLToPath(new URL("./ticks.js", import.meta.url));
const appModule = fileURLToPath(new URL("./app.ts", import.meta.url));
const root = fileURLToPath(new URL("../..", import.meta.url));

/** What a scenario asks of one supervisor. */
export interface ServeOptions {
  workers: number;
  concurrency: number;
  /** Serve tests/chaos/ticks.js's schedule and task too. */
  ticks?: boolean;
  /** Extra `pgbg serve` flags; default `--timeout 5s`. */
  args?: string[];
  /** Another database URL than the scenario's (a server that never answers, say). */
  databaseUrl?: string;
}

/** Where a run keeps its execution files and process logs, and what it did to the processes. */
export interface RunContext {
  dir: string;
  databaseUrl: string;
  kills: Kill[];
  cuts: Cut[];
}

/** A running `pgbg serve`. */
export class Supervisor {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly logFile: string;
  static #count = 0;

  constructor(private readonly ctx: RunContext, options: ServeOptions) {
    this.logFile = join(ctx.dir, `supervisor-${++Supervisor.#count}.log`);
    const out = openSync(this.logFile, "a");
    this.child = spawn(process.execPath, [
      cli, "serve", "--tasks", options.ticks ? `${tasksModule},${ticksModule}` : tasksModule, "--workers", String(options.workers), "--concurrency", String(options.concurrency),
      "--check-interval", "200ms", "--log-format", "json", "--log-level", "warn", "--no-migrate",
      ...(options.args ?? ["--timeout", "5s"]),
    ], { detached: true, stdio: ["ignore", out, out], env: { ...process.env, DATABASE_URL: options.databaseUrl ?? ctx.databaseUrl, CHAOS_DIR: ctx.dir } });
    closeSync(out);
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Pids of its worker subprocesses now. */
  workerPids(): number[] {
    try {
      return readFileSync(`/proc/${this.pid}/task/${this.pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  /** SIGKILLs one of its workers, chosen at random; false when none was running. */
  killRandomWorker(): boolean {
    const pids = this.workerPids();
    if (!pids.length) return false;
    const pid = pids[Math.floor(Math.random() * pids.length)];
    this.ctx.kills.push({ pid, group: false, at: Date.now() });
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      return false; // it exited by itself a moment ago
    }
    return true;
  }

  /** SIGKILLs the supervisor alone, leaving its workers orphaned; resolves once it is gone. */
  async killSupervisor(): Promise<void> {
    this.ctx.kills.push({ pid: this.pid, group: false, at: Date.now() });
    process.kill(this.pid, "SIGKILL");
    await this.exited;
  }

  /** SIGKILLs the supervisor and its workers at once (its process group). */
  async killAll(): Promise<void> {
    this.ctx.kills.push({ pid: this.pid, group: true, at: Date.now() });
    process.kill(-this.pid, "SIGKILL");
    await this.exited;
  }

  /** Stops it with SIGTERM and returns its exit code; SIGKILLs the group after `graceMs`. */
  async stop(graceMs = 60_000): Promise<number | null> {
    if (this.alive) this.child.kill("SIGTERM");
    const timer = setTimeout(() => {
      try {
        process.kill(-this.pid, "SIGKILL");
      } catch { /* already gone */ }
    }, graceMs);
    const { code } = await this.exited;
    clearTimeout(timer);
    return code;
  }

  /** Its log lines (JSON), parsed. */
  logs(): LogLine[] {
    return readLog(this.logFile);
  }
}

/** One JSON log line of a supervisor or an app. */
export interface LogLine {
  level: string;
  message: string;
  time?: string;
  /** The app process that wrote it (apps only). */
  pid?: number;
}

function readLog(file: string): LogLine[] {
  return readFileSync(file, "utf8").split("\n").flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
}

/** createWorker options of one app (see tests/chaos/app.ts); durations in ms. */
export interface HostOptions {
  concurrency: number;
  timeout: number;
  checkInterval: number;
  /** Queues it claims from; default every queue. */
  queues?: string[] | null;
  shutdownTimeout?: number;
}

/**
 * An app hosting an in-process worker, behind a proxy of its own, so that
 * it alone can be cut off from the database. `kill()` and `start()` replace
 * its process; the proxy, the log file and the options stay. Each process
 * of it is a host of its own, as a restarted app would be.
 */
export class App {
  readonly logFile: string;
  /** How its processes that ended by themselves (not by kill() or stop()) ended: "code 70"… */
  readonly crashes: string[] = [];
  readonly #proxy: CutProxy;
  #child: ChildProcess | undefined;
  /** How its current process ended: "code 0", "SIGKILL"… */
  #exited: Promise<string> = Promise.resolve("");
  #ending = false;
  #ready = false;
  static #count = 0;

  private constructor(private readonly ctx: RunContext, private readonly options: HostOptions, proxy: CutProxy) {
    this.logFile = join(ctx.dir, `app-${++App.#count}.log`);
    this.#proxy = proxy;
  }

  /** Starts an app on a new proxy; resolves once its host is registered and listening. */
  static async start(ctx: RunContext, options: HostOptions): Promise<App> {
    const url = new URL(ctx.databaseUrl);
    const proxy = new CutProxy({ host: url.hostname, port: Number(url.port) });
    await proxy.start();
    const app = new App(ctx, options, proxy);
    await app.start();
    return app;
  }

  /** Starts a fresh process (after a kill); resolves once it is ready, rejects when it exits first or is not ready in `limitMs`. */
  async start(limitMs = 60_000): Promise<void> {
    if (this.alive) throw new Error(`app ${this.pid} is still running`);
    const url = new URL(this.ctx.databaseUrl);
    url.port = String(this.#proxy.port);
    const log = openSync(this.logFile, "a");
    // One process (tsx as a loader, not its CLI, which runs a child): a
    // SIGKILL of this pid kills the host and the tasks running in it.
    const child = spawn(process.execPath, ["--import", "tsx", appModule], {
      cwd: root,
      stdio: ["ignore", "pipe", log],
      env: { ...process.env, DATABASE_URL: url.href, CHAOS_DIR: this.ctx.dir, CHAOS_APP: JSON.stringify(this.options) },
    });
    closeSync(log);
    this.#child = child;
    this.#ending = false;
    this.#ready = false;
    this.#exited = new Promise((resolve) =>
      child.on("exit", (code, signal) => {
        const how = signal ?? `code ${code}`;
        if (!this.#ending) this.crashes.push(how);
        resolve(how);
      })
    );
    const ready = new Promise<void>((resolve) => createInterface({ input: child.stdout! }).on("line", (l) => l === "ready" && resolve()));
    const early = this.#exited.then((how) => Promise.reject(new Error(`an app ended (${how}) before it was ready (log: ${this.logFile})`)));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`an app was not ready within ${limitMs / 1000} s (log: ${this.logFile})`)), limitMs);
    });
    try {
      await Promise.race([ready, early, late]);
    } finally {
      clearTimeout(timer);
    }
    this.#ready = true;
  }

  get pid(): number {
    return this.#child?.pid ?? 0;
  }

  get alive(): boolean {
    return !!this.#child && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** SIGKILLs its process, with its host and every task running in it; resolves once it is gone. */
  async kill(): Promise<void> {
    this.#ending = true;
    this.ctx.kills.push({ pid: this.pid, group: false, at: Date.now() });
    this.#child!.kill("SIGKILL");
    await this.#exited;
  }

  /**
   * Cuts the process off from the database until `healWhen` holds (checked
   * every 100 ms), failing after `limitMs`; heals the cut either way.
   */
  async cut(healWhen: () => boolean | Promise<boolean>, limitMs: number, what: string): Promise<void> {
    const cut: Cut = { pid: this.pid, from: Date.now(), to: Number.POSITIVE_INFINITY };
    this.ctx.cuts.push(cut);
    this.#proxy.cut();
    try {
      await waitUntil(healWhen, limitMs, what);
    } finally {
      this.#proxy.heal();
      cut.to = Date.now();
    }
  }

  /**
   * Stops it with SIGTERM (a graceful stop of its host); resolves with what
   * went wrong, or undefined when it exited 0. It is SIGKILLed after
   * `graceMs`: its host's shutdown timeout, plus postgres.js's connect
   * timeout (30 s), which a write-back queued on a connection reset while
   * it opened waits out.
   */
  async stop(graceMs = 45_000): Promise<string | undefined> {
    this.#ending = true;
    const wasReady = this.#ready;
    if (this.alive) this.#child!.kill("SIGTERM");
    // A kill all the same: the executions still running in it end there.
    let killed = false;
    const timer = setTimeout(() => {
      killed = true;
      this.ctx.kills.push({ pid: this.pid, group: false, at: Date.now() });
      this.#child?.kill("SIGKILL");
    }, graceMs);
    const how = await this.#exited;
    clearTimeout(timer);
    await this.#proxy.close();
    if (how === "code 0") return undefined;
    if (killed) return `did not exit within ${graceMs / 1000} s of SIGTERM and was SIGKILLed`;
    // Still loading, it had no handler for SIGTERM yet: nothing to stop gracefully.
    if (how === "SIGTERM" && !wasReady) return undefined;
    return `ended with ${how} on SIGTERM`;
  }

  /** Its log lines (JSON), of every process it ran, parsed. */
  logs(): LogLine[] {
    return readLog(this.logFile);
  }
}

/** Resolves once `condition` holds, checked every 100 ms; rejects after `limitMs`, saying `what` it waited for. */
export async function waitUntil(condition: () => boolean | Promise<boolean>, limitMs: number, what: string): Promise<void> {
  for (const deadline = Date.now() + limitMs; !(await condition());) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${limitMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The kills the supervisor sent itself (a worker silent too long, or not
 * ready in time), as kills too, at the time of its log line, which it writes
 * before it sends the signal.
 */
export function supervisorKills(supervisor: Supervisor): Kill[] {
  return supervisor.logs().flatMap((l) => {
    const m = /\(pid (\d+)\) (?:has not answered|is not ready)/.exec(l.message);
    return m && l.time ? [{ pid: Number(m[1]), group: false, at: Date.parse(l.time) }] : [];
  });
}

/** How its workers ended, as the supervisor logged it: "code 4", "SIGKILL"… one entry per worker end. */
export function workerEnds(supervisor: Supervisor): string[] {
  return supervisor.logs().flatMap((l) => {
    const m = /^worker \d+ (?:exited with (code \d+)|was killed by (\w+))/.exec(l.message);
    return m ? [m[1] ?? m[2]] : [];
  });
}
