/**
 * The bench side of the workers' reports (./reporter.js): a UDP socket on
 * localhost that files each task's start (with its enqueue time) and finish
 * into 100 ms bins of the run's clock, beside the producer's acknowledged
 * enqueues, so that a sample can be computed over any window after the fact.
 *
 * Windows are read a little after they close (see `REPORT_DELAY_MS`):
 * workers send every 200 ms, and a window read at once would miss the starts
 * of its last fraction of a second and count them in the next one, which
 * makes depth and rate jitter by the tasks of one flush.
 */
import { createSocket, type Socket } from "node:dgram";

/** Bin width of the run's clock. */
const BIN_MS = 100;
/** How long after a window closes its reports are all in: 200 ms flushes, plus slack for a busy machine. */
export const REPORT_DELAY_MS = 1_500;

/** What the workers reported over one window of the run. */
export interface Window {
  /** Tasks whose enqueue was acknowledged. */
  acked: number;
  /** Tasks whose handler finished. */
  finished: number;
  /** Tasks whose handler started. */
  started: number;
  /** Start latencies (ms) of the tasks that started. */
  latencies: number[];
}

/** Receives the workers' datagrams and keeps their times in bins. */
export class Collector {
  #socket: Socket;
  #t0 = 0;
  #acked: number[] = [];
  #started: number[] = [];
  #finished: number[] = [];
  #latencies: number[][] = [];
  #sequences = new Map<number, number>();
  /** Datagrams missing from the workers' sequence numbers (lost on the way, or dropped by a full buffer). */
  lost = 0;
  /** Starts reported without a valid enqueue time. */
  malformed = 0;

  private constructor(socket: Socket) {
    this.#socket = socket;
    socket.on("message", (message) => this.#receive(message));
  }

  /** Opens the socket on a free localhost port. */
  static async open(): Promise<Collector> {
    const socket = createSocket("udp4");
    await new Promise<void>((resolve, reject) => {
      socket.once("error", reject);
      socket.bind(0, "127.0.0.1", () => resolve());
    });
    // A few flushes of thousands of starts may arrive together; the default
    // receive buffer (about 200 KiB) would drop some while the loop is busy.
    try {
      socket.setRecvBufferSize(8 * 1024 * 1024);
    } catch {
      // Capped by net.core.rmem_max; the sequence numbers will tell if it matters.
    }
    return new Collector(socket);
  }

  /** The port the workers send to (BENCH_PRESSURE_PORT). */
  get port(): number {
    return this.#socket.address().port;
  }

  /** Starts a new run at `t0` (epoch ms): everything before is forgotten. */
  reset(t0: number): void {
    this.#t0 = t0;
    this.#acked = [];
    this.#started = [];
    this.#finished = [];
    this.#latencies = [];
    this.#sequences.clear();
    this.lost = 0;
    this.malformed = 0;
  }

  #bin(epochMs: number): number {
    return Math.floor((epochMs - this.#t0) / BIN_MS);
  }

  /** Records `n` tasks whose enqueue was acknowledged at `epochMs`. */
  acked(n: number, epochMs: number): void {
    const bin = this.#bin(epochMs);
    if (bin >= 0) this.#acked[bin] = (this.#acked[bin] ?? 0) + n;
  }

  #receive(message: Buffer): void {
    if (message.length < 16) return;
    const pid = message.readUInt32LE(0);
    const sequence = message.readUInt32LE(4);
    const starts = message.readUInt32LE(8);
    const finishes = message.readUInt32LE(12);
    if (message.length !== 16 + 8 * (2 * starts + finishes)) return;
    const last = this.#sequences.get(pid);
    if (last !== undefined && sequence > last + 1) this.lost += sequence - last - 1;
    this.#sequences.set(pid, Math.max(sequence, last ?? -1));
    let at = 16;
    for (let k = 0; k < starts; k++, at += 16) {
      const enqueued = message.readDoubleLE(at);
      const started = message.readDoubleLE(at + 8);
      const bin = this.#bin(started);
      if (bin < 0) continue; // a task of an earlier run
      this.#started[bin] = (this.#started[bin] ?? 0) + 1;
      if (!Number.isFinite(enqueued)) {
        this.malformed++;
        continue;
      }
      (this.#latencies[bin] ??= []).push(started - enqueued);
    }
    for (let k = 0; k < finishes; k++, at += 8) {
      const bin = this.#bin(message.readDoubleLE(at));
      if (bin >= 0) this.#finished[bin] = (this.#finished[bin] ?? 0) + 1;
    }
  }

  /** What was reported in [fromMs, toMs) of the run's clock (ms since t0). */
  window(fromMs: number, toMs: number): Window {
    const result: Window = { acked: 0, finished: 0, started: 0, latencies: [] };
    for (let bin = Math.floor(fromMs / BIN_MS); bin < Math.floor(toMs / BIN_MS); bin++) {
      result.acked += this.#acked[bin] ?? 0;
      result.finished += this.#finished[bin] ?? 0;
      result.started += this.#started[bin] ?? 0;
      const latencies = this.#latencies[bin];
      if (latencies) for (const l of latencies) result.latencies.push(l);
    }
    return result;
  }

  /** Tasks acknowledged minus tasks started, up to `atMs` of the run's clock: the queue's depth then. */
  depth(atMs: number): number {
    let depth = 0;
    const end = Math.floor(atMs / BIN_MS);
    for (let bin = 0; bin < end; bin++) depth += (this.#acked[bin] ?? 0) - (this.#started[bin] ?? 0);
    return depth;
  }

  /** Closes the socket. */
  close(): void {
    this.#socket.close();
  }
}

/** p50, p95 and p99 of `latencies` by nearest rank (as harness percentile, with one sort for the three), NaN when there are none. */
export function latencyPercentiles(latencies: number[]): { p50: number; p95: number; p99: number } {
  if (!latencies.length) return { p50: Number.NaN, p95: Number.NaN, p99: Number.NaN };
  const sorted = latencies.sort((a, b) => a - b);
  const at = (p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
  return { p50: at(50), p95: at(95), p99: at(99) };
}

