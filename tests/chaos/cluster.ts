/**
 * The processes the chaos suite runs and hurts: `pgbg serve` supervisors
 * (the built package on Node, each in a process group of its own so that it
 * can be killed together with its workers), and the kills themselves, each
 * recorded with the time it was sent.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { Kill } from "./check.ts";

const cli = fileURLToPath(new URL("../../dist/cli/main.js", import.meta.url));
const tasksModule = fileURLToPath(new URL("./tasks.js", import.meta.url));

/** What a scenario asks of one supervisor. */
export interface ServeOptions {
  workers: number;
  concurrency: number;
  /** Extra `pgbg serve` flags; default `--timeout 5s`. */
  args?: string[];
}

/** Where a run keeps its execution files and supervisor logs, and what it did to the processes. */
export interface RunContext {
  dir: string;
  databaseUrl: string;
  kills: Kill[];
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
      cli, "serve", "--tasks", tasksModule, "--workers", String(options.workers), "--concurrency", String(options.concurrency),
      "--check-interval", "200ms", "--log-format", "json", "--log-level", "warn", "--no-migrate",
      ...(options.args ?? ["--timeout", "5s"]),
    ], { detached: true, stdio: ["ignore", out, out], env: { ...process.env, DATABASE_URL: ctx.databaseUrl, CHAOS_DIR: ctx.dir } });
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
  logs(): { level: string; message: string; time?: string }[] {
    return readFileSync(this.logFile, "utf8").split("\n").flatMap((line) => {
      try {
        return [JSON.parse(line)];
      } catch {
        return [];
      }
    });
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
