/**
 * What operators read and change: the status of the queues and workers, the
 * tasks in a state, retrying failed tasks and cancelling tasks. The CLI's
 * commands, the dashboard and the metrics use these; they run on the same
 * tables as the service, through the statements of `sql/queries/admin.sql`.
 *
 * @module
 */
import type { Database } from "./statements.ts";
import { run } from "./statements.ts";

/** The states `listTasks` filters on: `queued` means due now, `scheduled` queued for later. */
export const TASK_STATES = ["queued", "scheduled", "running", "failed"] as const;

/** One of {@link TASK_STATES}. */
export type TaskState = typeof TASK_STATES[number];

/** The tasks of one queue and task name. */
export interface QueueStatus {
  queue: string;
  name: string;
  /** Due now, waiting for a worker. */
  queued: number;
  /** Queued for later (a delay or a retry's wait). */
  scheduled: number;
  running: number;
  failed: number;
  /** Age of the oldest due task in ms, or null when none is due. */
  oldestQueuedMs: number | null;
  /** Outcomes of about the last minute (counted in 10-second periods). */
  completedLastMinute: number;
  failedLastMinute: number;
  retriedLastMinute: number;
}

/** A live worker process. */
export interface WorkerStatus {
  id: string;
  supervisorId: string;
  pid: number;
  hostname: string;
  runtime: string;
  concurrency: number;
  /** null: every queue. */
  queues: string[] | null;
  tasks: string[];
  idle: boolean;
  running: number;
  startedAt: string;
  heartbeatAt: string;
  heartbeatAgeMs: number;
}

/** Everything `pgbg status` shows. */
export interface Status {
  tasks: QueueStatus[];
  /** Waiting tasks whose name no live worker registered, per queue and name. */
  unregistered: { queue: string; name: string; tasks: number }[];
  workers: WorkerStatus[];
}

const iso = (value: unknown) => (value instanceof Date ? value.toISOString() : value === null ? null : String(value));

/** Reads the tasks per queue and name: by state, oldest due, and the last minute's outcomes. */
export async function readTaskStatus(db: Database, schema: string): Promise<QueueStatus[]> {
  const rows = await run(db, schema, "TaskStatus", []);
  return rows.map((r) => ({
    queue: r.queue, name: r.name, queued: r.queued, scheduled: r.scheduled, running: r.running, failed: r.failed,
    oldestQueuedMs: r.oldest_queued_ms === null ? null : Math.round(r.oldest_queued_ms),
    completedLastMinute: r.completed_last_minute, failedLastMinute: r.failed_last_minute, retriedLastMinute: r.retried_last_minute,
  }));
}

/** Reads the status of every queue, task name and worker (three statements, each reading its table once). */
export async function readStatus(db: Database, schema: string): Promise<Status> {
  const [tasks, unregistered, workers] = await Promise.all([
    readTaskStatus(db, schema),
    run(db, schema, "UnregisteredTasks", []),
    run(db, schema, "WorkerStatus", []),
  ]);
  return {
    tasks,
    unregistered: unregistered.map((r) => ({ queue: r.queue, name: r.name, tasks: r.tasks })),
    workers: workers.map((r) => ({
      id: r.id, supervisorId: r.supervisor_id, pid: r.pid, hostname: r.hostname, runtime: r.runtime, concurrency: r.concurrency,
      queues: r.queues, tasks: r.tasks, idle: r.idle, running: r.running, startedAt: iso(r.started_at)!, heartbeatAt: iso(r.heartbeat_at)!,
      heartbeatAgeMs: Math.round(r.heartbeat_age_ms),
    })),
  };
}

/** A task as `listTasks` returns it. */
export interface TaskRow {
  id: string;
  queue: string;
  name: string;
  state: TaskState;
  attempts: number;
  /** null: the service's --max-attempts. */
  maxAttempts: number | null;
  priority: number;
  key: string | null;
  runAt: string;
  enqueuedAt: string;
  failedAt: string | null;
  workerId: string | null;
  /** Set on a running task whose cancel was requested. */
  cancelRequestedAt: string | null;
  /** The last attempt's error: name, message, attempt, at, and more. */
  lastError: { name?: string; message?: string; [field: string]: unknown } | null;
  payload: unknown;
}

/** Lists tasks, oldest first: those in `state` (any when omitted), of task `name` (any when omitted), at most `limit`. */
export async function listTasks(db: Database, schema: string, filter: { state?: TaskState; name?: string; limit: number }): Promise<TaskRow[]> {
  const rows = await run(db, schema, "ListTasks", [filter.state ?? null, filter.name ?? null, filter.limit]);
  return rows.map((r) => ({
    id: String(r.id), queue: r.queue, name: r.name, state: r.state, attempts: r.attempts, maxAttempts: r.max_attempts, priority: r.priority,
    key: r.key, runAt: iso(r.run_at)!, enqueuedAt: iso(r.enqueued_at)!, failedAt: iso(r.failed_at), workerId: r.worker_id,
    cancelRequestedAt: iso(r.cancel_requested_at), lastError: r.last_error, payload: r.payload,
  }));
}

/**
 * Queues failed tasks again, due now and with their attempts reset: those in
 * `ids`, or every failed task when `ids` is omitted; only of task `name`
 * when given. Returns the ids it queued. A task that is not failed, or whose
 * dedup key another pending task holds now, is left alone.
 */
export async function retryFailedTasks(db: Database, schema: string, which: { ids?: string[]; name?: string }): Promise<string[]> {
  const rows = await run(db, schema, "RetryFailedTasks", [which.ids ?? null, which.name ?? null]);
  return rows.map((r) => String(r.id));
}

/** What `cancelTasks` did with each id. */
export interface CancelResult {
  /** Queued or failed tasks, deleted. */
  deleted: string[];
  /** Running tasks: their worker aborts the attempt and deletes the task when it ends. */
  signalled: string[];
  /** Ids of no task (perhaps one that just finished). */
  notFound: string[];
}

/**
 * Cancels tasks: deletes the queued and failed ones at once; marks the
 * running ones, whose worker learns of it at its next heartbeat, aborts the
 * attempt's `ctx.signal` and deletes the task when the attempt ends (a
 * supervisor deletes it if the attempt ended otherwise first).
 */
export async function cancelTasks(db: Database, schema: string, ids: string[]): Promise<CancelResult> {
  const result: CancelResult = { deleted: [], signalled: [], notFound: [] };
  let todo = [...new Set(ids)];
  // A task that changed state during the statement is in neither of its
  // results: ask again for those, a few times.
  for (let round = 0; round < 5 && todo.length; round++) {
    const rows = await run<{ id: unknown; outcome: "deleted" | "signalled" }>(db, schema, "CancelTasks", [todo]);
    for (const row of rows) result[row.outcome].push(String(row.id));
    const handled = new Set(rows.map((r) => String(r.id)));
    todo = todo.filter((id) => !handled.has(id));
    if (!rows.length) break;
  }
  result.notFound = todo;
  return result;
}
