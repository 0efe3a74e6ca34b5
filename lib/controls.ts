/**
 * Operators' controls beside the tasks: pause and resume a queue, set its
 * concurrency and rate limits, and list schedules or fire one now, from the
 * library, the CLI (`pgbg pause`, `pgbg resume`, `pgbg limit`, `pgbg rate`,
 * `pgbg run-schedule`) and the dashboard alike.
 *
 * A pause is a row in `pgbg.queue` that every claim reads (OpenLanes, GroupQueueClosed),
 * so every worker of every host stops claiming from the queue at its next
 * claim, well within a check interval. Running tasks finish; queued tasks
 * stay queued; enqueues still work. Limits are columns of the same row
 * (lib/limits.ts).
 *
 * @module
 */
import { type AdminOptions, schemaOf } from "./admin-options.ts";
import { isValidName, MAX_DURATION, NAME_RULE } from "./define.ts";
import { parseDuration } from "./duration.ts";
import { InvalidOptionsError, UnknownScheduleError } from "./errors.ts";
import { formatValue } from "./options.ts";
import type { DatabaseClient } from "./client.ts";
import { run } from "./statements.ts";

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
export async function pauseQueue(db: DatabaseClient, queues: string | readonly string[], options?: AdminOptions): Promise<PausedQueue[]> {
  const schema = schemaOf("pauseQueue()", options);
  const rows = await run(db, schema, "PauseQueues", [queueNames("pauseQueue()", queues)]);
  return rows.map((r) => ({ queue: r.name, pausedAt: r.paused_at }));
}

/**
 * Resumes paused queues, and wakes sleeping workers so that their due
 * tasks start at once. Resolves to the queues that were paused (a queue
 * not paused is left as it is).
 */
export async function resumeQueue(db: DatabaseClient, queues: string | readonly string[], options?: AdminOptions): Promise<string[]> {
  const schema = schemaOf("resumeQueue()", options);
  const rows = await run(db, schema, "ResumeQueues", [queueNames("resumeQueue()", queues), `pgbg:${schema}`]);
  return rows.map((r) => r.name);
}

/** The paused queues, by name. */
export async function pausedQueues(db: DatabaseClient, options?: AdminOptions): Promise<PausedQueue[]> {
  return (await queueSettings(db, options)).filter((q) => q.pausedAt !== null) as PausedQueue[];
}

/** A queue's rate limit, as {@link queueSettings} lists it. */
export interface QueueRate {
  /** At most this many of the queue's tasks start in any `intervalMs`. */
  limit: number;
  /** The interval, in ms. */
  intervalMs: number;
  /** The starts counted against it now: those within the last interval. */
  recentStarts: number;
}

/** A queue's controls, as {@link queueSettings} lists them. */
export interface QueueSettings {
  queue: string;
  /** Since when it is paused; null when it is not. */
  pausedAt: Date | null;
  /** Its concurrency limit; null for none. */
  concurrency: number | null;
  /** The concurrency limit of each of its groups; null for none. */
  groupConcurrency: number | null;
  /** Its rate limit; null for none. */
  rate: QueueRate | null;
  /** The rate limit of each of its groups; null for none. */
  groupRate: GroupRate | null;
}

/** The rate limit of each group of a queue, as {@link queueSettings} lists it. */
export interface GroupRate {
  /** At most this many tasks of any one group start in any `intervalMs`. */
  limit: number;
  /** The interval, in ms. */
  intervalMs: number;
}

// deno-lint-ignore no-explicit-any
function settingsOf(r: Record<string, any>): QueueSettings {
  const rate = r.rate_limit === null ? null : { limit: r.rate_limit, intervalMs: r.rate_interval_ms, recentStarts: r.recent_starts };
  const groupRate = r.group_rate_limit === null ? null : { limit: r.group_rate_limit, intervalMs: r.group_rate_interval_ms };
  return { queue: r.name, pausedAt: r.paused_at, concurrency: r.concurrency, groupConcurrency: r.group_concurrency, rate, groupRate };
}

/** Every queue that is paused or has a limit (concurrency or rate, of the queue or per group), by name. */
export async function queueSettings(db: DatabaseClient, options?: AdminOptions): Promise<QueueSettings[]> {
  const schema = schemaOf("queueSettings()", options);
  return (await run(db, schema, "QueueSettings", [])).map(settingsOf);
}

/**
 * Sets a queue's concurrency limit: at most `concurrency` of its tasks run
 * at once, across every worker of every host (null: no limit). Only
 * running tasks count; a task waiting for its retry holds no slot. Workers
 * learn of a new limit within a check interval. Throws
 * `InvalidOptionsError` for a bad name or limit.
 */
export async function setQueueConcurrency(db: DatabaseClient, queue: string, concurrency: number | null, options?: AdminOptions): Promise<QueueSettings> {
  return await setLimit("setQueueConcurrency()", "SetQueueConcurrency", db, queue, concurrency, options);
}

/**
 * Sets the concurrency limit of each group of a queue (defineTask's
 * `group`): at most `perGroup` tasks of any one group run at once, across
 * every worker of every host (null: no limit). With 1, a group's tasks run
 * one at a time in enqueue order. Only running tasks count, as under
 * {@link setQueueConcurrency}, which may limit the queue as a whole as
 * well. Throws `InvalidOptionsError` for a bad name or limit.
 */
export async function setGroupConcurrency(db: DatabaseClient, queue: string, perGroup: number | null, options?: AdminOptions): Promise<QueueSettings> {
  return await setLimit("setGroupConcurrency()", "SetGroupConcurrency", db, queue, perGroup, options);
}

async function setLimit(where: string, statement: "SetQueueConcurrency" | "SetGroupConcurrency", db: DatabaseClient, queue: string, limit: number | null, options?: AdminOptions) {
  return await setControl(where, statement, db, queue, options, () => {
    if (limit !== null && !(Number.isInteger(limit) && limit >= 1 && limit <= 2_147_483_647)) {
      throw new InvalidOptionsError(`${where}: the limit must be a whole number of at least 1, or null for no limit, got ${formatValue(limit)}`);
    }
    return [limit];
  });
}

/**
 * Writes one control of `queue` with `statement`, whose parameters are the
 * queue's name, what `values` returns (it throws for a bad value) and the
 * wake-up channel; returns the queue's settings.
 */
async function setControl(where: string, statement: "SetQueueConcurrency" | "SetGroupConcurrency" | "SetQueueRateLimit" | "SetGroupRateLimit", db: DatabaseClient, queue: string, options: AdminOptions | undefined, values: () => unknown[]) {
  const schema = schemaOf(where, options);
  if (typeof queue !== "string") throw new InvalidOptionsError(`${where}: give one queue name, got ${formatValue(queue)}`);
  const [name] = queueNames(where, queue);
  const [row] = await run(db, schema, statement, [name, ...values(), `pgbg:${schema}`]);
  return settingsOf(row);
}

/** A rate limit for {@link setQueueRateLimit} and {@link setGroupRateLimit}: at most `limit` starts per `interval`. */
export interface RateLimit {
  /** Starts allowed per interval: a whole number from 1 to 10,000. */
  limit: number;
  /** The interval: milliseconds, or a duration such as `"1s"`, `"1m"` (at most 7 days). */
  interval: number | string;
}

/** Most starts a rate limit allows per interval: its log holds one entry per start. */
export const MAX_RATE_LIMIT = 10_000;

/**
 * Sets a queue's rate limit: at most `limit` of its tasks start in any
 * `interval`, across every worker of every host (null: no rate limit). A
 * start is a claim, so an attempt that fails and is retried starts again;
 * a task over the limit waits queued and uses no attempt. Workers learn of
 * a new limit within a check interval. Throws `InvalidOptionsError` for a
 * bad name, limit or interval.
 */
export async function setQueueRateLimit(db: DatabaseClient, queue: string, rate: RateLimit | null, options?: AdminOptions): Promise<QueueSettings> {
  return await setRate("setQueueRateLimit()", "SetQueueRateLimit", db, queue, rate, options);
}

/**
 * Sets the rate limit of each group of a queue (defineTask's `group`): at
 * most `limit` tasks of any one group start in any `interval`, across
 * every worker of every host (null: no group rate limit), while the groups
 * start side by side: a quota per tenant or per account. It counts and
 * waits as {@link setQueueRateLimit} does, and may sit beside the queue's
 * own limits: all hold. Tasks without a group are not held by it. Throws
 * `InvalidOptionsError` for a bad name, limit or interval.
 */
export async function setGroupRateLimit(db: DatabaseClient, queue: string, rate: RateLimit | null, options?: AdminOptions): Promise<QueueSettings> {
  return await setRate("setGroupRateLimit()", "SetGroupRateLimit", db, queue, rate, options);
}

async function setRate(where: string, statement: "SetQueueRateLimit" | "SetGroupRateLimit", db: DatabaseClient, queue: string, rate: RateLimit | null, options?: AdminOptions) {
  return await setControl(where, statement, db, queue, options, () => rate === null ? [null, null] : rateOf(where, rate));
}

function rateOf(where: string, rate: RateLimit): [number, number] {
  if (typeof rate !== "object" || rate === null) {
    throw new InvalidOptionsError(`${where}: give { limit, interval }, or null for no rate limit, got ${formatValue(rate)}`);
  }
  const { limit, interval } = rate;
  if (!(Number.isInteger(limit) && limit >= 1 && limit <= MAX_RATE_LIMIT)) {
    throw new InvalidOptionsError(`${where}: limit must be a whole number from 1 to ${MAX_RATE_LIMIT}, got ${formatValue(limit)}`);
  }
  const ms = typeof interval === "string" ? parseDuration(interval) : interval;
  if (!(typeof ms === "number" && Number.isInteger(ms) && ms >= 1 && ms <= MAX_DURATION)) {
    throw new InvalidOptionsError(`${where}: interval must be a duration from 1 ms to 7 days (ms, or text such as "1s"), got ${formatValue(interval)}`);
  }
  return [limit, ms];
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
export async function listSchedules(db: DatabaseClient, options?: AdminOptions): Promise<ScheduleInfo[]> {
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
export async function runSchedule(db: DatabaseClient, name: string, options?: AdminOptions): Promise<void> {
  const schema = schemaOf("runSchedule()", options);
  if (!isValidName(name)) throw new InvalidOptionsError(`runSchedule(): name must be ${NAME_RULE}, got ${formatValue(name)}`);
  const rows = await run(db, schema, "RequestScheduleRun", [name]);
  if (!rows.length) throw new UnknownScheduleError(name);
}
