/**
 * Operators' controls beside the tasks: pause and resume a queue, set its
 * concurrency limit, and list schedules or fire one now, from the library,
 * the CLI (`pgbg pause`, `pgbg resume`, `pgbg limit`, `pgbg run-schedule`)
 * and the dashboard alike.
 *
 * A pause is a row in `pgbg.queue` that every claim reads (ClaimFromLanes),
 * so every worker of every host stops claiming from the queue at its next
 * claim, well within a check interval. Running tasks finish; queued tasks
 * stay queued; enqueues still work. A limit is a column of the same row
 * (lib/limits.ts).
 *
 * @module
 */
import { type AdminOptions, schemaOf } from "./admin-options.ts";
import { isValidName, NAME_RULE } from "./define.ts";
import { InvalidOptionsError, UnknownScheduleError } from "./errors.ts";
import { formatValue } from "./options.ts";
import { type Database, run } from "./statements.ts";

/** A paused queue, as {@link pausedQueues} lists it. */
export interface PausedQueue {
  queue: string;
  /** Since when it is paused. */
  pausedAt: Date;
}

function queueNames(where: string, queues: unknown): string[] {
  const list = typeof queues === "string" ? [queues] : queues;
  if (!Array.isArray(list) || !list.length || !list.every(isValidName)) {
    throw new InvalidOptionsError(`${where}: give a queue name or an array of them (${NAME_RULE}), got ${formatValue(queues)}`);
  }
  return [...new Set(list)];
}

/**
 * Pauses queues: no worker claims their tasks until {@link resumeQueue}.
 * Tasks already running finish. A queue may be paused before it has any
 * task. Pausing a paused queue keeps its first pause time. Resolves to the
 * queues now paused, with since when.
 */
export async function pauseQueue(db: Database, queues: string | readonly string[], options?: AdminOptions): Promise<PausedQueue[]> {
  const schema = schemaOf("pauseQueue()", options);
  const rows = await run(db, schema, "PauseQueues", [queueNames("pauseQueue()", queues)]);
  return rows.map((r) => ({ queue: r.name, pausedAt: r.paused_at }));
}

/**
 * Resumes paused queues, and wakes sleeping workers so that their due
 * tasks start at once. Resolves to the queues that were paused (a queue
 * not paused is left as it is).
 */
export async function resumeQueue(db: Database, queues: string | readonly string[], options?: AdminOptions): Promise<string[]> {
  const schema = schemaOf("resumeQueue()", options);
  const rows = await run(db, schema, "ResumeQueues", [queueNames("resumeQueue()", queues), `pgbg:${schema}`]);
  return rows.map((r) => r.name);
}

/** The paused queues, by name. */
export async function pausedQueues(db: Database, options?: AdminOptions): Promise<PausedQueue[]> {
  return (await queueSettings(db, options)).filter((q) => q.pausedAt !== null) as PausedQueue[];
}

/** A queue's controls, as {@link queueSettings} lists them. */
export interface QueueSettings {
  queue: string;
  /** Since when it is paused; null when it is not. */
  pausedAt: Date | null;
  /** Its concurrency limit; null for none. */
  concurrency: number | null;
}

/** Every queue that is paused or has a concurrency limit, by name. */
export async function queueSettings(db: Database, options?: AdminOptions): Promise<QueueSettings[]> {
  const schema = schemaOf("queueSettings()", options);
  const rows = await run(db, schema, "QueueSettings", []);
  return rows.map((r) => ({ queue: r.name, pausedAt: r.paused_at, concurrency: r.concurrency }));
}

/**
 * Sets a queue's concurrency limit: at most `concurrency` of its tasks run
 * at once, across every worker of every host (null: no limit). Only
 * running tasks count; a task waiting for its retry holds no slot. Workers
 * learn of a new limit within a check interval. Throws
 * `InvalidOptionsError` for a bad name or limit.
 */
export async function setQueueConcurrency(db: Database, queue: string, concurrency: number | null, options?: AdminOptions): Promise<QueueSettings> {
  const schema = schemaOf("setQueueConcurrency()", options);
  if (typeof queue !== "string") throw new InvalidOptionsError(`setQueueConcurrency(): give one queue name, got ${formatValue(queue)}`);
  const [name] = queueNames("setQueueConcurrency()", queue);
  if (concurrency !== null && !(Number.isInteger(concurrency) && concurrency >= 1 && concurrency <= 2_147_483_647)) {
    throw new InvalidOptionsError(`setQueueConcurrency(): concurrency must be a whole number of at least 1, or null for no limit, got ${formatValue(concurrency)}`);
  }
  const [row] = await run(db, schema, "SetQueueConcurrency", [name, concurrency, `pgbg:${schema}`]);
  return { queue: row.name, pausedAt: row.paused_at, concurrency: row.concurrency };
}

/** A schedule as the database records it, for {@link listSchedules}. */
export interface ScheduleInfo {
  name: string;
  /** The task each tick enqueues. */
  task: string;
  cron: string;
  timezone: string;
  /** The newest tick handled (fired, or dropped by the catch-up policy). */
  lastTick: Date;
  /** When a tick last enqueued a task, and that task's id; null before the first. */
  lastFiredAt: Date | null;
  lastTaskId: string | null;
  /** The next tick, as the host that last handled it computed it. */
  nextTick: Date | null;
  /** When a host last declared it: hosts declare their schedules every minute, so an older one has left the code. */
  seenAt: Date;
  /** True while a host declared it in the last 2 minutes. */
  active: boolean;
  /** Set while a run asked for by {@link runSchedule} waits for a host. */
  runRequestedAt: Date | null;
}

/** Beyond this, a schedule no host declared has left the code: hosts declare theirs every minute. */
const ACTIVE_WITHIN = 120_000;

/** Every schedule a host has declared, by name, with its last and next tick. */
export async function listSchedules(db: Database, options?: AdminOptions): Promise<ScheduleInfo[]> {
  const schema = schemaOf("listSchedules()", options);
  const rows = await run(db, schema, "ListSchedules", []);
  return rows.map((r) => ({
    name: r.name, task: r.task, cron: r.cron, timezone: r.timezone, lastTick: r.last_tick, lastFiredAt: r.last_fired_at,
    lastTaskId: r.last_task_id === null ? null : String(r.last_task_id), nextTick: r.next_tick, seenAt: r.seen_at,
    active: r.now.getTime() - r.seen_at.getTime() < ACTIVE_WITHIN, runRequestedAt: r.run_requested_at,
  }));
}

/**
 * Fires a schedule once now, outside its cron: a host running it enqueues
 * the task at its next check (within a second), with the input of a tick
 * at that moment. Asking again before then fires it once. Throws
 * `UnknownScheduleError` for a name no host has declared.
 */
export async function runSchedule(db: Database, name: string, options?: AdminOptions): Promise<void> {
  const schema = schemaOf("runSchedule()", options);
  if (!isValidName(name)) throw new InvalidOptionsError(`runSchedule(): name must be ${NAME_RULE}, got ${formatValue(name)}`);
  const rows = await run(db, schema, "RequestScheduleRun", [name]);
  if (!rows.length) throw new UnknownScheduleError(name);
}
