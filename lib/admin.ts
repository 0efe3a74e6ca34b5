/**
 * The admin API: what an application and an operator read and change. The
 * status of the queues and workers, one task or a page of tasks, retrying
 * failed tasks and cancelling tasks. The CLI's commands, the dashboard and
 * the metrics use these same functions; they run on the service's tables
 * through the statements of `sql/queries/admin.sql`.
 *
 * @module
 */
import { type AdminOptions, schemaOf } from "./admin-options.ts";
import { listSchedules, type QueueSettings, queueSettings, type ScheduleInfo } from "./controls.ts";
import { InvalidOptionsError } from "./errors.ts";
import { formatValue, integer, type OptionCheck, text } from "./options.ts";
import { type DatabaseClient, executorFor } from "./client.ts";
import { run } from "./statements.ts";

export type { AdminOptions } from "./admin-options.ts";

/**
 * The states `listTasks` filters on: `queued` means due now, `scheduled`
 * queued for later, `waiting` enqueued to run after other tasks
 * (enqueueFlow, enqueueBatch); `completed` and `cancelled` tasks are those
 * kept in the history (a task's retention, lib/retention.ts).
 */
export const TASK_STATES = ["queued", "scheduled", "waiting", "running", "failed", "completed", "cancelled"] as const;

/** The states of tasks kept in the history once finished. */
const FINISHED_STATES: readonly string[] = ["completed", "cancelled"];

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
  startedAt: Date;
  heartbeatAt: Date;
  heartbeatAgeMs: number;
}

/** Everything `pgbg status` shows. */
export interface Status {
  tasks: QueueStatus[];
  /** Waiting tasks whose name no live worker registered, per queue and name. */
  unregistered: { queue: string; name: string; tasks: number }[];
  workers: WorkerStatus[];
  /** The newest completed tasks kept in the history (at most {@link STATUS_COMPLETED}), newest first, with their results. */
  completed: TaskInfo[];
  /** The queues paused (`pauseQueue`) or limited (`setQueueConcurrency`). */
  queues: QueueSettings[];
  /** Every schedule a host declared, with its last and next tick. */
  schedules: ScheduleInfo[];
}

/** How many of the newest completed tasks `status` shows. */
export const STATUS_COMPLETED = 10;

/** Reads the tasks per queue and name: by state, oldest due, and the last minute's outcomes. */
export async function readTaskStatus(db: DatabaseClient, schema: string): Promise<QueueStatus[]> {
  const rows = await run(db, schema, "TaskStatus", []);
  return rows.map((r) => ({
    queue: r.queue, name: r.name, queued: r.queued, scheduled: r.scheduled, running: r.running, failed: r.failed,
    oldestQueuedMs: r.oldest_queued_ms === null ? null : Math.round(r.oldest_queued_ms),
    completedLastMinute: r.completed_last_minute, failedLastMinute: r.failed_last_minute, retriedLastMinute: r.retried_last_minute,
  }));
}


/**
 * The status of every queue, task name and worker, as `pgbg status` shows
 * it (three statements, each reading its table once), the newest completed
 * tasks kept in the history (the end of each slot's primary key), the
 * queues paused or limited, and the schedules, all read in one snapshot
 * (a read-only REPEATABLE READ transaction), except inside the caller's
 * own transaction or reserved connection, and through a Prisma client,
 * where they read as those do (TransactionMode).
 */
export async function status(db: DatabaseClient, options?: AdminOptions): Promise<Status> {
  const schema = schemaOf("status()", options);
  // One snapshot for every statement, so that the figures agree: separate
  // ones could count a task done by the tasks' statement and still running
  // by the workers' (TransactionMode). One statement after another: a
  // node-postgres client warns of (and pg 9 refuses) a query sent while
  // another runs.
  return await executorFor(db).transaction(async (tx) => {
    const tasks = await readTaskStatus(tx, schema);
    const unregistered = await run(tx, schema, "UnregisteredTasks", []);
    const workers = await run(tx, schema, "WorkerStatus", []);
    const completed = await run(tx, schema, "RecentFinishedTasks", [STATUS_COMPLETED, "completed"]);
    return {
      tasks,
      unregistered: unregistered.map((r) => ({ queue: r.queue, name: r.name, tasks: r.tasks })),
      workers: workers.map((r) => ({
        id: r.id, supervisorId: r.supervisor_id, pid: r.pid, hostname: r.hostname, runtime: r.runtime, concurrency: r.concurrency,
        queues: r.queues, tasks: r.tasks, idle: r.idle, running: r.running, startedAt: r.started_at, heartbeatAt: r.heartbeat_at,
        heartbeatAgeMs: Math.round(r.heartbeat_age_ms),
      })),
      completed: completed.map(finishedTaskInfo),
      queues: await queueSettings(tx, { schema }),
      schedules: await listSchedules(tx, { schema }),
    };
  }, "snapshot");
}

/** A task as `getTask` and `listTasks` return it. */
export interface TaskInfo {
  id: string;
  queue: string;
  name: string;
  state: TaskState;
  /** Attempts started so far (snoozes not counted). */
  attempts: number;
  /** Times it was snoozed (ctx.retryAfter). */
  snoozes: number;
  /** null: the service's --max-attempts. */
  maxAttempts: number | null;
  priority: number;
  /** Its dedup key, if it has one. */
  key: string | null;
  /** Its group in its queue (defineTask's `group`), if it has one; null for a finished task: not kept. */
  group: string | null;
  /** The flow or batch it was enqueued in (enqueueFlow, enqueueBatch: getFlow), if any. */
  flowId: string | null;
  /** The schedule (defineSchedule) that enqueued it, if one did (from schema 21 on). */
  schedule: string | null;
  /** When it is (or was) due. */
  runAt: Date;
  enqueuedAt: Date;
  failedAt: Date | null;
  /** The worker holding its lease, while running. */
  workerId: string | null;
  /** Set on a running task whose cancel was requested. */
  cancelRequestedAt: Date | null;
  /** The last attempt's error: name, message, attempt, at, and more. */
  lastError: { name?: string; message?: string; [field: string]: unknown } | null;
  /** Its input, as stored. */
  payload: unknown;
  /** The version of the task's definition it was enqueued for (null for a finished task: not kept). */
  inputVersion: number | null;
  /** When it completed or was cancelled; null while in the queue. */
  finishedAt: Date | null;
  /** When a finished task is forgotten (its retention ends); null while in the queue. */
  expiresAt: Date | null;
  /** What its run resolved to, for a completed task with a result schema; null otherwise. */
  result: unknown;
  /**
   * From `getTask` only: each failed attempt's
   * error, oldest first (the last 20), as `lastError` with `worker` (the
   * worker that ran it), `attempt`, `at` (its end) and, for an attempt
   * that failed in its handler, `startedAt`; kept with the task in the
   * history (from schema 18 on). Empty for a task no attempt of which failed.
   */
  errors?: { name?: string; message?: string; [field: string]: unknown }[];
  /**
   * From `getTask` only, for a completed task in the history (from schema
   * 20 on): the attempt that succeeded, with `attempt`, `worker`,
   * `startedAt` (its claim) and `at` (its end); null otherwise.
   */
  completedAttempt?: { attempt: number; worker: string; startedAt: string; at: string } | null;
}

// deno-lint-ignore no-explicit-any
function taskInfo(r: any): TaskInfo {
  return {
    id: String(r.id), queue: r.queue, name: r.name, state: r.state, attempts: r.attempts, snoozes: r.snoozes, maxAttempts: r.max_attempts, priority: r.priority,
    key: r.key, group: r.group_name, flowId: optionalId(r.flow_id), runAt: r.run_at, enqueuedAt: r.enqueued_at, failedAt: r.failed_at, workerId: r.worker_id,
    cancelRequestedAt: r.cancel_requested_at, lastError: r.last_error, payload: r.payload, inputVersion: r.input_version, schedule: r.schedule ?? null,
    finishedAt: null, expiresAt: null, result: null, ...("errors" in r ? { errors: r.errors ?? [] } : {}),
  };
}

/** A bigint column as an id string, or null. */
const optionalId = (value: unknown): string | null => value === null || value === undefined ? null : String(value);

/** A finished task of the history as TaskInfo: what the queue's columns held at the end, where the history keeps them. */
// deno-lint-ignore no-explicit-any
function finishedTaskInfo(r: any): TaskInfo {
  return {
    id: String(r.id), queue: r.queue, name: r.name, state: r.state, attempts: r.attempts, snoozes: 0, maxAttempts: null, priority: 0,
    key: r.key, group: null, flowId: optionalId(r.flow_id), runAt: r.enqueued_at, enqueuedAt: r.enqueued_at, failedAt: null, workerId: null, cancelRequestedAt: null,
    lastError: r.last_error, payload: r.payload, inputVersion: null, finishedAt: r.finished_at, expiresAt: r.expires_at, result: r.result,
    schedule: r.schedule ?? null,
  };
}

const TASK_ID = /^[1-9][0-9]{0,18}$/;

/** True when `id` is a task id: the decimal string of a positive bigint, as `enqueue` returns it. */
export function isTaskId(id: unknown): id is string {
  return typeof id === "string" && TASK_ID.test(id) && BigInt(id) <= 9223372036854775807n;
}

/** `ids` checked as task ids (what `enqueue` returned); throws InvalidOptionsError naming the first that is not one. */
function taskIds(where: string, ids: readonly unknown[]): string[] {
  for (const id of ids) {
    if (!isTaskId(id)) {
      throw new InvalidOptionsError(`${where}: ${formatValue(id)} is not a task id (the decimal string enqueue() returned)`);
    }
  }
  return [...new Set(ids as string[])];
}

/**
 * One task by its id: from the queue while it is queued, running or
 * failed, then from the history while its retention lasts (completed, with
 * its result, or cancelled). Null for an id it does not know: never
 * enqueued, past its retention, or finished without keeping its history.
 */
export async function getTask(db: DatabaseClient, id: string, options?: AdminOptions): Promise<TaskInfo | null> {
  const schema = schemaOf("getTask()", options);
  const [checked] = taskIds("getTask()", [id]);
  return readTask(db, schema, checked);
}

/** The task `id` (checked) from the queue, else from the history (see getTask). */
export async function readTask(db: DatabaseClient, schema: string, id: string): Promise<TaskInfo | null> {
  const [row] = await run(db, schema, "GetTask", [id]);
  if (row) return taskInfo(row);
  // Read after the queue: a task that finished between the two reads is
  // in the history by now (its end moved it in one statement).
  const [finished] = await run(db, schema, "GetFinishedTask", [id]);
  return finished ? { ...finishedTaskInfo(finished), errors: finished.errors ?? [], completedAttempt: finished.completed_attempt ?? null } : null;
}

/** What `listTasks` filters on and how it pages. Every filter is optional. */
export interface ListTasksOptions extends AdminOptions {
  state?: TaskState;
  queue?: string;
  /** Task name. */
  name?: string;
  /** The start of the task name (`"send-"` finds `send-email` and `send-sms`). */
  namePrefix?: string;
  /** Dedup key. */
  key?: string;
  /** Enqueued at or after this time. */
  from?: Date;
  /** Enqueued before this time. */
  to?: Date;
  /** The `next` of the previous page: this page starts after it. */
  after?: string;
  /** At most this many tasks, 1 to 10,000. @default 100 */
  limit?: number;
}

/** One page of `listTasks`. */
export interface TaskPage {
  /** In enqueue (id) order. */
  tasks: TaskInfo[];
  /** Pass as `after` for the next page; null when this page is the last. */
  next: string | null;
}

const date: OptionCheck = (value) =>
  value instanceof Date && !Number.isNaN(value.getTime()) ? undefined : `must be a valid Date, got ${formatValue(value)}`;
const listChecks: Record<string, OptionCheck> = {
  state: text((s) => (TASK_STATES as readonly string[]).includes(s), `one of ${TASK_STATES.join(", ")}`),
  queue: text((s) => s.length > 0, "a queue name"),
  name: text((s) => s.length > 0, "a task name"),
  namePrefix: text((s) => s.length > 0, "the start of a task name"),
  key: text((s) => s.length >= 1 && s.length <= 512, "a string of 1-512 characters"),
  from: date,
  to: date,
  after: text((s) => TASK_ID.test(s), "a task id (the decimal string of a page's next)"),
  limit: integer(1, 10_000),
};

/**
 * A page of tasks in enqueue order, filtered by state, queue, task name,
 * dedup key and enqueue time. Without a state, the tasks in the queue;
 * with `completed` or `cancelled`, those kept in the history. Pages by keyset: pass the page's `next` as
 * `after` for the one after it, which costs what the first did however deep
 * it is.
 */
export async function listTasks(db: DatabaseClient, options?: ListTasksOptions): Promise<TaskPage> {
  const schema = schemaOf("listTasks()", options, listChecks);
  const o = options ?? {};
  const limit = o.limit ?? 100;
  const finished = o.state !== undefined && FINISHED_STATES.includes(o.state);
  const rows = await run(db, schema, finished ? "ListFinishedTasks" : o.state === "failed" ? "ListFailedTasks" : "ListTasks", filterParams(o, limit));
  const tasks = rows.map(finished ? finishedTaskInfo : taskInfo);
  return { tasks, next: tasks.length === limit ? tasks[tasks.length - 1].id : null };
}

/** The parameters of TaskFilter (sql/queries/admin.sql) and FinishedTaskFilter, with `limit` as $3. */
function filterParams(o: ListTasksOptions, limit: number): unknown[] {
  return [o.state ?? null, o.name ?? null, limit, o.queue ?? null, o.key ?? null, o.from ?? null, o.to ?? null, o.after ?? null, o.namePrefix ?? null];
}

/** What `countTasks` filters on (as `listTasks`), and where it stops counting. */
export interface CountTasksOptions extends Omit<ListTasksOptions, "limit"> {
  /** Counts up to this many, 1 to 1,000,000: a count reads every task it counts. @default 10000 */
  cap?: number;
}

/** How many tasks `countTasks` found. */
export interface TaskCount {
  /** The tasks found, `cap` at most. */
  count: number;
  /** True when it stopped at `cap`: there may be more. */
  capped: boolean;
}

/**
 * How many tasks `listTasks` would list with the same filters (over all its
 * pages), counted up to `cap`.
 */
export async function countTasks(db: DatabaseClient, options?: CountTasksOptions): Promise<TaskCount> {
  const { limit: _, ...filters } = listChecks;
  const schema = schemaOf("countTasks()", options, { ...filters, cap: integer(1, 1_000_000) });
  const o = options ?? {};
  const cap = o.cap ?? 10_000;
  const finished = o.state !== undefined && FINISHED_STATES.includes(o.state);
  const [{ n }] = await run<{ n: number }>(db, schema, finished ? "CountFinishedTasks" : o.state === "failed" ? "CountFailedTasks" : "CountTasks", filterParams(o, cap));
  return { count: n, capped: n >= cap };
}

/** The newest `limit` tasks kept in the history in `state` (completed or cancelled), newest first: what the dashboard shows. */
export async function recentFinishedTasks(db: DatabaseClient, state: "completed" | "cancelled", limit: number, options?: AdminOptions): Promise<TaskInfo[]> {
  const schema = schemaOf("recentFinishedTasks()", options);
  return (await run(db, schema, "RecentFinishedTasks", [limit, state])).map(finishedTaskInfo);
}

/** Which failed tasks `retry` queues again: ids, or every failed task (of one task name, when given). */
export type RetryTarget = string | readonly string[] | { allFailed: true; name?: string };

/**
 * Queues failed tasks again, due now, with their attempts and snoozes reset
 * (a retried task gets all of them again). Returns the ids it queued. A task that
 * is not failed (or unknown), or whose dedup key another pending task holds
 * now, is left alone.
 */
export async function retry(db: DatabaseClient, which: RetryTarget, options?: AdminOptions): Promise<string[]> {
  const schema = schemaOf("retry()", options);
  let params: [string[] | null, string | null];
  if (typeof which === "string" || Array.isArray(which)) params = [taskIds("retry()", typeof which === "string" ? [which] : which), null];
  else if (typeof which === "object" && which !== null && (which as { allFailed?: unknown }).allFailed === true) {
    const name = (which as { name?: unknown }).name;
    if (name !== undefined && typeof name !== "string") throw new InvalidOptionsError(`retry(): name must be a task name, got ${formatValue(name)}`);
    params = [null, name ?? null];
  } else throw new InvalidOptionsError("retry(): give a task id, an array of them, or { allFailed: true, name? }");
  const rows = await run(db, schema, "RetryFailedTasks", params);
  return rows.map((r) => String(r.id));
}

/** What `cancel` did with each task. */
export interface CancelResult {
  /** Queued or failed tasks, deleted. Each list in id order. */
  deleted: string[];
  /** Running tasks: their worker aborts the attempt and deletes the task when it ends. */
  signalled: string[];
  /** Ids of no task (perhaps one that just finished). */
  notFound: string[];
}

/** Which tasks `cancel` cancels: ids, or the pending (queued or running) task holding a dedup key. */
export type CancelTarget = string | readonly string[] | { key: string };

/**
 * Cancels tasks: deletes the queued and failed ones at once; marks the
 * running ones, whose worker learns of it at its next heartbeat, aborts the
 * attempt's `ctx.signal` and deletes the task when the attempt ends (a
 * supervisor deletes it if the attempt ended otherwise first). By key, it
 * cancels the pending task holding the key, if any (a failed task keeps
 * its key without holding it: cancel it by id).
 */
export async function cancel(db: DatabaseClient, which: CancelTarget, options?: AdminOptions): Promise<CancelResult> {
  const schema = schemaOf("cancel()", options);
  let ids: string[];
  if (typeof which === "string" || Array.isArray(which)) ids = taskIds("cancel()", typeof which === "string" ? [which] : which);
  else if (typeof which === "object" && which !== null && typeof (which as { key?: unknown }).key === "string") {
    const key = (which as { key: string }).key;
    ids = (await run<{ id: unknown }>(db, schema, "PendingTaskIdsByKey", [[key]])).map((r) => String(r.id));
  } else throw new InvalidOptionsError("cancel(): give a task id, an array of them, or { key }");
  return cancelByIds(db, schema, ids);
}

/**
 * One round of a cancel: the lanes' locks (LockTaskLanes), then the cancel
 * (CancelTasks), in one transaction, so that the cancel's snapshot sees
 * every claim row that holds one of the tasks (the caller's own
 * transaction, when given one, holds the locks until it ends).
 */
async function cancelRound(db: DatabaseClient, schema: string, ids: string[]): Promise<{ id: unknown; outcome: "deleted" | "signalled" }[]> {
  return await executorFor(db).transaction(async (tx) => {
    await run(tx, schema, "LockTaskLanes", [ids]);
    return await run<{ id: unknown; outcome: "deleted" | "signalled" }>(tx, schema, "CancelTasks", [ids]);
  });
}

/** Cancels the tasks `ids` (see {@link cancel}), asking again for those that changed state meanwhile. */
export async function cancelByIds(db: DatabaseClient, schema: string, ids: string[]): Promise<CancelResult> {
  const result: CancelResult = { deleted: [], signalled: [], notFound: [] };
  let todo = ids;
  // A task that changed state during the statement is in neither of its
  // results: ask again for those, a few times.
  for (let round = 0; round < 5 && todo.length; round++) {
    const rows = await cancelRound(db, schema, todo);
    for (const row of rows) result[row.outcome].push(String(row.id));
    const handled = new Set(rows.map((r) => String(r.id)));
    todo = todo.filter((id) => !handled.has(id));
    if (!rows.length) break;
  }
  result.notFound = todo;
  // In id order: the statement returns its rows in whatever order its plan read them.
  for (const list of [result.deleted, result.signalled, result.notFound]) list.sort((a, b) => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0));
  return result;
}
