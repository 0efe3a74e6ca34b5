/**
 * What the queue did per minute over the last hours, for the dashboard's
 * charts and any app that draws its own: outcomes, start latency and depth.
 * Read from `task_count` (written by the workers at each heartbeat) and
 * `task_depth` (sampled each minute by a host's DepthSampler), both kept
 * for 24 hours.
 *
 * @module
 */
import { type AdminOptions, schemaOf } from "./admin-options.ts";
import type { DatabaseClient } from "./client.ts";
import { integer, text } from "./options.ts";
import { run } from "./statements.ts";
import { bucketQuantile } from "./stats.ts";

/** What `activity` reads. */
export interface ActivityOptions extends AdminOptions {
  /** How many minutes back, the current one included (1 to 1,440: the 24 hours kept). @default 60 */
  minutes?: number;
  /** Only this queue's tasks. @default every queue */
  queue?: string;
  /** Only tasks of this name. @default every task name */
  name?: string;
}

/** One minute of activity. */
export interface ActivityMinute {
  /** The minute's start, ISO 8601. */
  minute: string;
  /** Tasks that succeeded. */
  completed: number;
  /** Attempts that failed and left their task failed for good. */
  failed: number;
  /** Attempts that failed and queued their task for a retry. */
  retried: number;
  /** Attempts started. */
  started: number;
  /** Median wait of the started attempts from due to start, in ms (read off histogram buckets); null when none started. */
  latencyP50Ms: number | null;
  /** 95th percentile of that wait, in ms; null when none started. */
  latencyP95Ms: number | null;
  /** Due tasks waiting to be claimed, when the minute was sampled; null when no host sampled it. */
  queued: number | null;
  /** Tasks waiting for their time (a delay or a retry's backoff); null when not sampled. */
  scheduled: number | null;
  /** Tasks running; null when not sampled. */
  running: number | null;
}

interface ActivityRow {
  minute: Date;
  completed: number;
  failed: number;
  retried: number;
  lag: number[] | null;
  sampled: boolean;
  queued: number;
  scheduled: number;
  running: number;
}

/**
 * Every minute of the last `minutes` (oldest first, the current one, still
 * counting, last), with zeros for minutes in which nothing happened.
 * Outcomes reach the table at each worker's heartbeat, so the current
 * minute trails by up to one heartbeat.
 */
export async function activity(db: DatabaseClient, options?: ActivityOptions): Promise<ActivityMinute[]> {
  const schema = schemaOf("activity()", options, {
    minutes: integer(1, 1440),
    queue: text((s) => s.length > 0, "a queue name"),
    name: text((s) => s.length > 0, "a task name"),
  });
  const { minutes = 60, queue = null, name = null } = options ?? {};
  return (await run<ActivityRow>(db, schema, "Activity", [minutes, queue, name])).map(activityMinute);
}

function activityMinute(row: ActivityRow): ActivityMinute {
  // Numbers and a Date whatever the client (lib/client.ts) parsed them into.
  const lag = (row.lag ?? []).map(Number);
  return {
    minute: new Date(row.minute).toISOString(),
    completed: Number(row.completed),
    failed: Number(row.failed),
    retried: Number(row.retried),
    started: lag.reduce((n, c) => n + c, 0),
    latencyP50Ms: bucketQuantile(lag, 0.5),
    latencyP95Ms: bucketQuantile(lag, 0.95),
    queued: row.sampled ? Number(row.queued) : null,
    scheduled: row.sampled ? Number(row.scheduled) : null,
    running: row.sampled ? Number(row.running) : null,
  };
}
