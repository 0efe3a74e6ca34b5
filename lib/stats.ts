/**
 * A worker's own counts of what its tasks did, per queue and task name:
 * outcomes written, attempt durations and the wait from due to start. The
 * worker hands them on at each heartbeat (to the database's `task_count` for
 * `pgbg status`, and to its supervisor for the metrics) and starts again
 * from zero, so the hot path only adds numbers in memory.
 *
 * @module
 */

/** Upper bounds, in seconds, of the buckets of the duration and lag histograms. */
export const HISTOGRAM_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** Observations per bucket (not cumulative; the last slot is above every bound) and their sum in seconds. */
export interface Histogram {
  counts: number[];
  sum: number;
}

/** An empty histogram. */
export function emptyHistogram(): Histogram {
  return { counts: new Array(HISTOGRAM_BUCKETS.length + 1).fill(0), sum: 0 };
}

/** Adds one observation of `ms` milliseconds. */
export function observe(histogram: Histogram, ms: number): void {
  const seconds = ms / 1000;
  let i = 0;
  while (i < HISTOGRAM_BUCKETS.length && seconds > HISTOGRAM_BUCKETS[i]) i++;
  histogram.counts[i]++;
  histogram.sum += seconds;
}

/** Adds `from` into `into`. */
export function addHistogram(into: Histogram, from: Histogram): void {
  for (let i = 0; i < into.counts.length; i++) into.counts[i] += from.counts[i] ?? 0;
  into.sum += from.sum;
}

/** What the tasks of one queue and name did since the counts were last taken. */
export interface SeriesCounts {
  queue: string;
  name: string;
  /** Tasks whose success was written (deleted). */
  completed: number;
  /** Attempts whose failure was written and left the task failed for good. */
  failed: number;
  /** Attempts whose failure was written and queued the task for a retry. */
  retried: number;
  /** Durations of the attempts that ended. */
  duration: Histogram;
  /** Waits from when the task was due (enqueue, delay or retry time) to its start. */
  lag: Histogram;
}

/** Zero counts for a queue and task name. */
export function emptySeries(queue: string, name: string): SeriesCounts {
  return { queue, name, completed: 0, failed: 0, retried: 0, duration: emptyHistogram(), lag: emptyHistogram() };
}

/** One worker's counts, per queue and task name. */
export class TaskStats {
  /** The series by queue, then task name: looked up once a task, so without a key made for it. */
  readonly #byQueue = new Map<string, Map<string, SeriesCounts>>();

  /** The counts of a queue and task name, made on first use; a worker keeps them with each running task. */
  series(queue: string, name: string): SeriesCounts {
    let byName = this.#byQueue.get(queue);
    if (!byName) this.#byQueue.set(queue, (byName = new Map()));
    let series = byName.get(name);
    if (!series) byName.set(name, (series = emptySeries(queue, name)));
    return series;
  }

  /** Returns the counts gathered since the last call (series with something in them) and zeroes them. */
  take(): SeriesCounts[] {
    const out: SeriesCounts[] = [];
    for (const s of [...this.#byQueue.values()].flatMap((byName) => [...byName.values()])) {
      const touched = s.completed || s.failed || s.retried || s.duration.sum || s.lag.sum ||
        s.duration.counts.some(Boolean) || s.lag.counts.some(Boolean);
      if (!touched) continue;
      out.push({ ...s });
      s.completed = s.failed = s.retried = 0;
      s.duration = emptyHistogram();
      s.lag = emptyHistogram();
    }
    return out;
  }
}

/**
 * The `q` quantile (0 to 1) of observations counted per bucket of
 * HISTOGRAM_BUCKETS (the last slot above every bound), in ms, as a
 * Prometheus histogram is read: linear within the bucket the quantile falls
 * in, from 0 for the first bucket; the last bound for the slot above every
 * bound. Null when nothing was observed.
 */
export function bucketQuantile(counts: readonly number[], q: number): number | null {
  const total = counts.reduce((n, c) => n + c, 0);
  if (!total) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < counts.length; i++) {
    if (below + counts[i] >= rank && counts[i] > 0) {
      if (i >= HISTOGRAM_BUCKETS.length) return HISTOGRAM_BUCKETS[HISTOGRAM_BUCKETS.length - 1] * 1000;
      const lower = i === 0 ? 0 : HISTOGRAM_BUCKETS[i - 1];
      return (lower + (HISTOGRAM_BUCKETS[i] - lower) * ((rank - below) / counts[i])) * 1000;
    }
    below += counts[i];
  }
  return HISTOGRAM_BUCKETS[HISTOGRAM_BUCKETS.length - 1] * 1000;
}
