/**
 * The service's metrics in Prometheus' text format: counters and histograms
 * summed from the reports of a supervisor's workers, the tasks running in
 * them, worker restarts, and the queue depth, paused queues and schedules
 * read from the database at each scrape.
 *
 * @module
 */
import { type QueueStatus, readTaskStatus } from "./admin.ts";
import { listSchedules, type QueueSettings, queueSettings, type ScheduleInfo } from "./controls.ts";
import type { ReleasedTask } from "./maintenance/dead-worker-releaser.ts";
import { allSettledOrThrow } from "./settle.ts";
import { type Database, run } from "./statements.ts";
import { addHistogram, emptySeries, HISTOGRAM_BUCKETS, type Histogram, type SeriesCounts } from "./stats.ts";
import type { WorkerReport } from "./worker.ts";

/** What one supervisor counted since it started. */
export class ServiceMetrics {
  readonly #totals = new Map<string, SeriesCounts>();
  readonly #running = new Map<number, WorkerReport["running"]>();
  /** Workers restarted after they died, stopped answering or retired. */
  workerRestarts = 0;

  /** Adds a worker's report; `worker` names its slot, whose running tasks the report replaces. */
  add(worker: number, report: WorkerReport): void {
    for (const c of report.counts) this.#add(c);
    this.#running.set(worker, report.running);
  }

  /** Attempts a release or rescue of this host ended: counted as failed or retried, as a worker counts its own. */
  released(tasks: readonly ReleasedTask[]): void {
    for (const t of tasks) {
      const counts = emptySeries(t.queue, t.name);
      counts[t.state === "failed" ? "failed" : "retried"] = 1;
      this.#add(counts);
    }
  }

  /** What the workers run now and have ended since the start, in all: the terminal's status line. */
  summary(): { running: number; completed: number; failed: number; retried: number } {
    const sum = { running: 0, completed: 0, failed: 0, retried: 0 };
    for (const list of this.#running.values()) for (const r of list) sum.running += r.count;
    for (const t of this.#totals.values()) {
      sum.completed += t.completed;
      sum.failed += t.failed;
      sum.retried += t.retried;
    }
    return sum;
  }

  /** A worker exited: it runs nothing any more. */
  workerExited(worker: number): void {
    this.#running.delete(worker);
  }

  #add(c: SeriesCounts): void {
    const key = `${c.queue}\u0000${c.name}`;
    let t = this.#totals.get(key);
    if (!t) this.#totals.set(key, (t = emptySeries(c.queue, c.name)));
    t.completed += c.completed;
    t.failed += c.failed;
    t.retried += c.retried;
    addHistogram(t.duration, c.duration);
    addHistogram(t.lag, c.lag);
  }

  /** The metrics in Prometheus' text exposition format (version 0.0.4), with what the database holds (readDatabaseMetrics). */
  render({ depth, queues, schedules, groupWaiting }: DatabaseMetrics): string {
    const totals = [...this.#totals.values()].sort((a, b) => a.queue.localeCompare(b.queue) || a.name.localeCompare(b.name));
    const out: string[] = [];
    const family = (name: string, type: string, help: string) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    const counter = (name: string, help: string, value: (t: SeriesCounts) => number) => {
      family(name, "counter", help);
      for (const t of totals) out.push(`${name}${labels({ queue: t.queue, task: t.name })} ${value(t)}`);
    };
    counter("pgbg_tasks_completed_total", "Tasks that succeeded and were deleted, by this service's workers.", (t) => t.completed);
    counter("pgbg_tasks_failed_total", "Attempts that failed for good (the task is kept as failed).", (t) => t.failed);
    counter("pgbg_tasks_retried_total", "Attempts that failed and queued the task for a retry.", (t) => t.retried);

    family("pgbg_tasks_running", "gauge", "Attempts running now in this service's workers.");
    const running = new Map<string, { queue: string; name: string; count: number }>();
    for (const list of this.#running.values()) {
      for (const r of list) {
        const key = `${r.queue}\u0000${r.name}`;
        const slot = running.get(key) ?? running.set(key, { ...r, count: 0 }).get(key)!;
        slot.count += r.count;
      }
    }
    for (const r of running.values()) out.push(`pgbg_tasks_running${labels({ queue: r.queue, task: r.name })} ${r.count}`);

    family("pgbg_queue_depth", "gauge", "Tasks in the database by state (queued: due now; scheduled: queued for later), for every service.");
    for (const d of depth) {
      for (const state of ["queued", "scheduled", "running", "failed"] as const) {
        out.push(`pgbg_queue_depth${labels({ queue: d.queue, task: d.name, state })} ${d[state]}`);
      }
    }

    family("pgbg_queue_paused", "gauge", "1 for each paused queue (pauseQueue, pgbg pause): no worker claims from it.");
    for (const q of queues) if (q.pausedAt) out.push(`pgbg_queue_paused${labels({ queue: q.queue })} 1`);
    family("pgbg_queue_concurrency_limit", "gauge", "Each limited queue's concurrency limit (setQueueConcurrency, pgbg limit).");
    for (const q of queues) if (q.concurrency !== null) out.push(`pgbg_queue_concurrency_limit${labels({ queue: q.queue })} ${q.concurrency}`);
    family("pgbg_queue_group_concurrency_limit", "gauge", "Each group-limited queue's limit per group (setGroupConcurrency, pgbg limit --per-group).");
    for (const q of queues) if (q.groupConcurrency !== null) out.push(`pgbg_queue_group_concurrency_limit${labels({ queue: q.queue })} ${q.groupConcurrency}`);
    family("pgbg_queue_rate_limit", "gauge", "Each rate-limited queue's most starts per interval (setQueueRateLimit, pgbg rate).");
    for (const q of queues) if (q.rate) out.push(`pgbg_queue_rate_limit${labels({ queue: q.queue })} ${q.rate.limit}`);
    family("pgbg_queue_rate_interval_seconds", "gauge", "Each rate-limited queue's interval.");
    for (const q of queues) if (q.rate) out.push(`pgbg_queue_rate_interval_seconds${labels({ queue: q.queue })} ${q.rate.intervalMs / 1000}`);
    family("pgbg_queue_rate_starts", "gauge", "Starts within the last interval of each rate-limited queue: its current rate.");
    for (const q of queues) if (q.rate) out.push(`pgbg_queue_rate_starts${labels({ queue: q.queue })} ${q.rate.recentStarts}`);
    family("pgbg_queue_group_rate_limit", "gauge", "Each group-rate-limited queue's most starts per interval of each group (setGroupRateLimit, pgbg rate --per-group).");
    for (const q of queues) if (q.groupRate) out.push(`pgbg_queue_group_rate_limit${labels({ queue: q.queue })} ${q.groupRate.limit}`);
    family("pgbg_queue_group_rate_interval_seconds", "gauge", "Each group-rate-limited queue's interval.");
    for (const q of queues) if (q.groupRate) out.push(`pgbg_queue_group_rate_interval_seconds${labels({ queue: q.queue })} ${q.groupRate.intervalMs / 1000}`);
    family("pgbg_queue_limit_waiting", "gauge", "Due tasks of each limited queue held back now: all while it is at its concurrency or rate limit, else those whose group is at its concurrency or rate limit.");
    for (const q of queues) {
      if (q.concurrency !== null || q.rate || q.groupConcurrency !== null || q.groupRate) {
        out.push(`pgbg_queue_limit_waiting${labels({ queue: q.queue })} ${waitingOnLimit(q, depth, groupWaiting.get(q.queue) ?? 0)}`);
      }
    }
    family("pgbg_schedule_last_tick_seconds", "gauge", "Unix time of each schedule's newest tick handled.");
    for (const s of schedules) out.push(`pgbg_schedule_last_tick_seconds${labels({ schedule: s.name })} ${s.lastTick.getTime() / 1000}`);
    family("pgbg_schedule_next_tick_seconds", "gauge", "Unix time of each schedule's next tick.");
    for (const s of schedules) if (s.nextTick) out.push(`pgbg_schedule_next_tick_seconds${labels({ schedule: s.name })} ${s.nextTick.getTime() / 1000}`);

    const histogram = (name: string, help: string, of: (t: SeriesCounts) => Histogram) => {
      family(name, "histogram", help);
      for (const t of totals) {
        const h = of(t);
        let cumulative = 0;
        HISTOGRAM_BUCKETS.forEach((le, i) => {
          cumulative += h.counts[i];
          out.push(`${name}_bucket${labels({ queue: t.queue, task: t.name, le: String(le) })} ${cumulative}`);
        });
        cumulative += h.counts[HISTOGRAM_BUCKETS.length];
        out.push(`${name}_bucket${labels({ queue: t.queue, task: t.name, le: "+Inf" })} ${cumulative}`);
        out.push(`${name}_sum${labels({ queue: t.queue, task: t.name })} ${h.sum}`);
        out.push(`${name}_count${labels({ queue: t.queue, task: t.name })} ${cumulative}`);
      }
    };
    histogram("pgbg_task_duration_seconds", "Duration of attempts that ended.", (t) => t.duration);
    histogram("pgbg_task_lag_seconds", "Wait from when a task was due (its enqueue, delay or retry time) to the start of its attempt.", (t) => t.lag);

    family("pgbg_worker_restarts_total", "counter", "Workers this supervisor restarted after they died, stopped answering or retired.");
    out.push(`pgbg_worker_restarts_total ${this.workerRestarts}`);
    return out.join("\n") + "\n";
  }
}

/** What the metrics read from the database at each scrape. */
export interface DatabaseMetrics {
  /** Task counts per queue, name and state. */
  depth: QueueStatus[];
  /** The queues paused or limited. */
  queues: QueueSettings[];
  schedules: ScheduleInfo[];
  /** Of each queue with a limit per group, the due tasks whose group is at its limit. */
  groupWaiting: Map<string, number>;
}

/** Reads what a scrape shows of the database: the queue depth, the queues paused or limited, and the schedules. */
export async function readDatabaseMetrics(db: Database, schema: string): Promise<DatabaseMetrics> {
  const [depth, queues, schedules] = await allSettledOrThrow([readTaskStatus(db, schema), queueSettings(db, { schema }), listSchedules(db, { schema })]);
  // Read only when some queue has a limit per group: it reads their grouped tasks.
  const grouped = queues.some((q) => q.groupConcurrency !== null || q.groupRate !== null)
    ? await run<{ queue: string; waiting: number }>(db, schema, "GroupLimitWaiting", [])
    : [];
  return { depth, queues, schedules, groupWaiting: new Map(grouped.map((r) => [r.queue, r.waiting])) };
}

/**
 * The due tasks of limited queue `q` when it is at its concurrency or rate
 * limit; else `groupWaiting`, its due tasks whose group is at its limit.
 */
function waitingOnLimit(q: QueueSettings, depth: QueueStatus[], groupWaiting: number): number {
  const rows = depth.filter((d) => d.queue === q.queue);
  const running = rows.reduce((n, d) => n + d.running, 0);
  const full = (q.concurrency !== null && running >= q.concurrency) || (q.rate !== null && q.rate.recentStarts >= q.rate.limit);
  return full ? rows.reduce((n, d) => n + d.queued, 0) : groupWaiting;
}

/** `{a="x",b="y"}` with Prometheus' escaping of backslash, quote and newline. */
function labels(values: Record<string, string>): string {
  const escape = (v: string) => v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
  return `{${Object.entries(values).map(([k, v]) => `${k}="${escape(v)}"`).join(",")}}`;
}
