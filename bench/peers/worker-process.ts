/**
 * A peer's worker subprocess for the bench: started with tsx, settings in
 * BENCH_PEER_SETTINGS, stdout read line by line (READY, BENCH_START …),
 * stdin kept open for the "GO" line that starts a gated worker.
 */
import { type ChildProcess, spawn } from "node:child_process";
import process from "node:process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { type Child, CpuMeter, type Server, since, stop, treeCpu, waitFor } from "../harness.ts";
import type { DrainResult } from "../subject.ts";

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

/**
 * Times a drain of `n` queued jobs by gated worker processes: once every
 * one is READY (connected, nothing fetched), the clock and the CPU meters
 * start and the gates open; the clock stops when `left()` says no job is
 * left. The processes are stopped afterwards, whatever happened.
 */
export async function timedDrain(
  label: string,
  workers: WorkerProcess[],
  server: Server,
  n: number,
  left: () => Promise<boolean>,
  setting: string,
): Promise<DrainResult> {
  try {
    await Promise.all(workers.map((w) => w.ready()));
    const cpu0 = workers.map((w) => treeCpu(w.child.pid));
    const meter = new CpuMeter(server);
    const t0 = performance.now();
    for (const w of workers) w.go();
    await waitFor(`${label} to drain`, async () => {
      for (const w of workers) if (w.child.exitCode !== null || w.child.signalCode !== null) throw new Error(`a ${label} process exited during the drain: ${w.output()}`);
      return (await left()) ? undefined : true;
    }, 1_800_000, 50);
    const seconds = since(t0);
    const cpu1 = workers.map((w) => treeCpu(w.child.pid));
    const workerCpu = cpu0.every((c) => c !== undefined) && cpu1.every((c) => c !== undefined)
      ? cpu1.reduce((sum, c, k) => sum + c! - cpu0[k]!, 0)
      : undefined;
    return { jobs: n, seconds, workerCpu, serverCpu: meter.read().server, setting };
  } finally {
    await Promise.all(workers.map((w) => stop(w)));
  }
}

/**
 * Enqueue-to-start latencies of `samples` jobs enqueued one at a time by
 * `enqueue(i)`, each read from the `BENCH_START i time` line its handler
 * prints; `pause()` runs between samples.
 */
export async function sampleLatencies(
  worker: WorkerProcess,
  samples: number,
  enqueue: (i: number) => Promise<unknown>,
  pause: () => Promise<unknown>,
): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < samples; i++) {
    const started = worker.next(`job ${i} to start`, (line) => {
      const match = /^BENCH_START (\d+) ([\d.]+)$/.exec(line);
      return match && Number(match[1]) === i ? Number(match[2]) : undefined;
    }, 30_000);
    started.catch(() => {}); // awaited below; only an enqueue failure could leave it unobserved
    const t0 = performance.timeOrigin + performance.now();
    await enqueue(i);
    latencies.push((await started) - t0);
    await pause();
  }
  return latencies;
}
