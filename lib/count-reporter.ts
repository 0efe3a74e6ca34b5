/**
 * Hands a worker's counts on at each heartbeat: to its host (for the
 * metrics) and to the database's `task_count` (for `pgbg status`), one
 * statement per heartbeat rather than per batch.
 *
 * @module
 */
import { describeError, type Logger } from "./log.ts";
import { type Database, run } from "./statements.ts";
import { addHistogram, emptySeries, HISTOGRAM_BUCKETS, type SeriesCounts, type TaskStats } from "./stats.ts";

/** What a worker's tasks did since its last report, and what runs now. */
export interface WorkerReport {
  /** Outcomes, durations and lags since the last report, per queue and task name. */
  counts: SeriesCounts[];
  /** Attempts running now, per queue and task name. */
  running: { queue: string; name: string; count: number }[];
}

/** A running attempt as the report counts it. */
export interface RunningSeries {
  queue: string;
  name: string;
}

/** Reports one worker's counts; one report at a time. */
export class CountReporter {
  /** Counts not yet added to the database's task_count (a write failed). */
  #unrecorded: SeriesCounts[] = [];
  #reporting: Promise<void> | undefined;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly stats: TaskStats,
    private readonly running: () => Iterable<RunningSeries>,
    private readonly log: Logger,
    private readonly onReport?: (report: WorkerReport) => void,
  ) {}

  /** Reports unless a report is in flight; resolves when that report is done. */
  report(): Promise<void> {
    this.#reporting ??= this.#write().finally(() => (this.#reporting = undefined));
    return this.#reporting;
  }

  /** The last report, after any in flight; bounded, so an unreachable database cannot hold a worker's exit. */
  async last(boundMs: number): Promise<void> {
    const reported = this.#reporting ? this.#reporting.then(() => this.report()) : this.report();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([reported, new Promise((r) => (timer = setTimeout(r, boundMs)))]);
    clearTimeout(timer);
  }

  async #write(): Promise<void> {
    const counts = this.stats.take();
    if (this.onReport) this.onReport({ counts, running: countRunning(this.running()) });
    const todo = mergeSeries([...this.#unrecorded, ...counts.filter((c) => c.completed || c.failed || c.retried || c.lag.counts.some(Boolean))]);
    if (!todo.length) return;
    try {
      await run(this.db, this.schema, "RecordTaskCounts", [
        todo.map((c) => c.queue), todo.map((c) => c.name), todo.map((c) => c.completed), todo.map((c) => c.failed), todo.map((c) => c.retried),
        todo.flatMap((c) => c.lag.counts), HISTOGRAM_BUCKETS.length + 1,
      ]);
      this.#unrecorded = [];
    } catch (error) {
      // Kept for the next heartbeat, merged with its counts; one entry per
      // queue and task name, so bounded by the task names the worker runs.
      this.#unrecorded = todo;
      this.log.warn("could not record task counts; will retry", { error: describeError(error).message });
    }
  }
}

/** One entry per queue and task name: counts kept from a failed write added to the new ones. */
function mergeSeries(all: SeriesCounts[]): SeriesCounts[] {
  const merged = new Map<string, SeriesCounts>();
  for (const c of all) {
    const key = `${c.queue}\u0000${c.name}`;
    const into = merged.get(key) ?? merged.set(key, emptySeries(c.queue, c.name)).get(key)!;
    into.completed += c.completed;
    into.failed += c.failed;
    into.retried += c.retried;
    addHistogram(into.duration, c.duration);
    addHistogram(into.lag, c.lag);
  }
  return [...merged.values()];
}

/** Running attempts per queue and task name. */
function countRunning(attempts: Iterable<RunningSeries>): WorkerReport["running"] {
  const running = new Map<string, { queue: string; name: string; count: number }>();
  for (const { queue, name } of attempts) {
    const key = `${queue}\u0000${name}`;
    const slot = running.get(key) ?? running.set(key, { queue, name, count: 0 }).get(key)!;
    slot.count++;
  }
  return [...running.values()];
}
