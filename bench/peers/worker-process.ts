/**
 * A peer's worker subprocess for the bench: started with tsx, settings in
 * BENCH_PEER_SETTINGS, stdout read line by line (READY, BENCH_START …),
 * stdin kept open for the "GO" line that starts a gated worker.
 */
import { type ChildProcess, spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { Child } from "../harness.ts";

const root = fileURLToPath(new URL("../..", import.meta.url));

/**
 * A worker subprocess whose stdout is read line by line. It fits harness
 * `stop()`, and unlike harness `start()` it keeps stdin open for the "GO"
 * line that starts a gated worker.
 */
export class WorkerProcess implements Child {
  child: ChildProcess;
  exited: Promise<number | null>;
  #output = "";
  #waiters = new Set<(line: string) => void>();

  constructor(private readonly label: string, script: string, settings: object, url: string) {
    this.child = spawn(process.execPath, ["--import", "tsx", script], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: url, BENCH_PEER_SETTINGS: JSON.stringify(settings) },
      stdio: ["pipe", "pipe", "pipe"],
    });
    const keep = (text: string) => {
      this.#output = (this.#output + text).slice(-65_536);
    };
    this.child.stderr!.on("data", (chunk: Buffer) => keep(chunk.toString()));
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      if (!line.startsWith("BENCH_START")) keep(`${line}\n`);
      for (const waiter of this.#waiters) waiter(line);
    });
    // A worker killed by stop() must not turn its closed stdin into an uncaught EPIPE.
    this.child.stdin!.on("error", () => {});
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }

  output = (): string => this.#output;

  /** Resolves with what `match` makes of the first line it accepts; rejects if the process exits first. */
  next<T>(what: string, match: (line: string) => T | undefined, timeoutMs = 60_000): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const done = (error?: Error, value?: T) => {
        this.#waiters.delete(waiter);
        clearTimeout(timer);
        this.child.off("exit", onExit);
        if (error) reject(error);
        else resolve(value as T);
      };
      const waiter = (line: string) => {
        const value = match(line);
        if (value !== undefined) done(undefined, value);
      };
      const onExit = () => done(new Error(`${this.label} process exited while waiting for ${what}: ${this.#output}`));
      const timer = setTimeout(() => done(new Error(`bench: timed out after ${timeoutMs} ms waiting for ${what}: ${this.#output}`)), timeoutMs);
      this.#waiters.add(waiter);
      this.child.on("exit", onExit);
      if (this.child.exitCode !== null || this.child.signalCode !== null) onExit();
    });
  }

  /** Waits for the "READY" line. */
  ready(): Promise<true> {
    return this.next("READY", (line) => (line === "READY" ? true : undefined));
  }

  /** Starts a gated worker. */
  go(): void {
    this.child.stdin!.write("GO\n");
  }
}
