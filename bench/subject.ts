/**
 * What the bench measures for every queue it compares (pgbg and each peer):
 * the same enqueue, drain and latency work, so their figures can be divided.
 */
import type { Database, Server } from "./harness.ts";

/** The outcome of draining queued no-op jobs. */
export interface DrainResult {
  /** Jobs drained. */
  jobs: number;
  /** Wall-clock seconds from the moment all jobs were queued and the workers were ready until the last one finished. */
  seconds: number;
  /** CPU seconds used by the workers' processes (all of them) during the drain; undefined if unknown. */
  workerCpu?: number;
  /** CPU seconds used by PostgreSQL during the drain; undefined if unknown. */
  serverCpu?: number;
  /** The setting used, for the table, such as "2 processes × 50". */
  setting: string;
}

/** A queue under test. */
export interface Subject {
  /** "pgbg", "graphile-worker", "pg-boss". */
  name: string;
  /** Its version. */
  version: string;
  /** Installs its schema into an empty database. */
  setup(db: Database): Promise<void>;
  /** Enqueues `n` no-op jobs one call at a time, `inFlight` calls at once; resolves with the seconds taken. */
  enqueueSingle(db: Database, n: number, inFlight: number): Promise<number>;
  /** Enqueues `n` no-op jobs in calls of `batch` jobs each, one call at a time; resolves with the seconds taken. */
  enqueueBatch(db: Database, n: number, batch: number): Promise<number>;
  /**
   * Drains `n` no-op jobs with its worker processes (real subprocesses),
   * configured for speed as its docs advise. The jobs are queued before the
   * clock starts; the clock stops when none is left.
   */
  drain(db: Database, server: Server, n: number): Promise<DrainResult>;
  /**
   * On an idle worker process, enqueues `samples` jobs one at a time and
   * returns, for each, the milliseconds from just before the enqueue call to
   * the start of its handler.
   */
  latency(db: Database, samples: number): Promise<number[]>;
}

/**
 * The run of median time among `runs` (an odd count gives the middle one),
 * with the rates of all of them in `setting`, so a table shows the spread.
 */
export function medianRun(runs: DrainResult[]): DrainResult {
  const sorted = [...runs].sort((a, b) => a.seconds - b.seconds);
  const middle = sorted[Math.floor((sorted.length - 1) / 2)];
  if (runs.length === 1) return middle;
  return { ...middle, setting: `${middle.setting}; ${spread(runs)}` };
}

/** "median of N runs: a, b, c/s": the rate of each of `runs`, in run order. */
export function spread(runs: { jobs: number; seconds: number }[]): string {
  return `median of ${runs.length} runs: ${runs.map((r) => Math.round(r.jobs / r.seconds).toLocaleString("en")).join(", ")}/s`;
}
