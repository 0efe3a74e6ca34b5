/**
 * Recurring tasks: `defineSchedule` and the rule that decides which ticks
 * of a schedule fire. The firing itself, durable and once per tick across
 * hosts, is the scheduler's (lib/scheduler.ts).
 *
 * Cron expressions are read by croner (5 fields, or 6 with seconds first;
 * IANA time zones through Intl). It has no dependencies and runs on Node,
 * Bun and Deno alike; see bench/RESULTS.md for why it was chosen.
 *
 * @module
 */
import { Cron } from "croner";
import { type AnyTask, isValidName, NAME_RULE, type TaskInput } from "./define.ts";
import type { EnqueueOptions } from "./enqueue.ts";
import { InvalidScheduleError } from "./errors.ts";
import { formatValue } from "./options.ts";

/**
 * What happens to ticks missed while no host ran the schedule (a tick is
 * missed once it is more than {@link MISSED_AFTER} late; later ones always
 * fire): `"skip"` drops them, `"once"` fires one task for the newest of
 * them, `{ backfill: n }` fires one for each of the newest `n`, oldest first.
 */
export type CatchUp = "skip" | "once" | { backfill: number };

/** A tick more than this late (ms) is missed, and left to the catch-up policy; one less late fires. */
export const MISSED_AFTER = 60_000;

/** Most ticks one backfill fires. */
export const MAX_BACKFILL = 1_000;

/** The enqueue options a schedule may set for its tasks. */
export type ScheduleEnqueueOptions = Pick<EnqueueOptions, "queue" | "priority" | "maxAttempts">;

/** A schedule, as `defineSchedule` takes it. */
export interface ScheduleDefinition<T extends AnyTask = AnyTask> {
  /** Its name, unique among schedules. @default the task's name */
  name?: string;
  /** The task each tick enqueues. */
  task: T;
  /** When it fires: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first. */
  cron: string;
  /** The IANA time zone the cron is read in. @default "UTC" */
  timezone?: string;
  /** The task's input: a value, or a function of the tick's time. */
  input: TaskInput<T> | ((tick: Date) => TaskInput<T>);
  /** Ticks missed while no host ran it. @default "skip" */
  catchUp?: CatchUp;
  /** Queue, priority and max attempts of its tasks. @default the task's */
  enqueue?: ScheduleEnqueueOptions;
}

/** A schedule made by {@link defineSchedule}. */
export interface Schedule<T extends AnyTask = AnyTask> {
  readonly kind: "pgbg.schedule";
  readonly name: string;
  readonly task: T;
  readonly cron: string;
  readonly timezone: string;
  readonly catchUp: CatchUp;
  readonly enqueue: ScheduleEnqueueOptions;
  /** The input of the tick at `tick`. */
  inputAt(tick: Date): TaskInput<T>;
  /** The ticks after `after` up to `now`, the newest last, at most `count` of them. */
  ticksBetween(after: Date, now: Date, count: number): Date[];
  /** The first tick after `after`, or null when it never fires again. */
  nextTick(after: Date): Date | null;
}

/** True for the result of {@link defineSchedule}. */
export function isSchedule(value: unknown): value is Schedule {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "pgbg.schedule";
}

function checkCatchUp(label: string, catchUp: unknown): CatchUp {
  if (catchUp === undefined) return "skip";
  if (catchUp === "skip" || catchUp === "once") return catchUp;
  const n = (catchUp as { backfill?: unknown } | null)?.backfill;
  if (typeof n === "number" && Number.isInteger(n) && n >= 1 && n <= MAX_BACKFILL) return { backfill: n };
  throw new InvalidScheduleError(`${label}: catchUp must be "skip", "once" or { backfill: n } with n from 1 to ${MAX_BACKFILL}, got ${formatValue(catchUp)}`);
}

/**
 * The schedule's enqueue options, checked here rather than at each tick: a
 * bad one would fail every tick. Only these three: a `key` would dedupe
 * ticks, and a delay would move them.
 */
function checkEnqueueOptions(label: string, options: unknown): ScheduleEnqueueOptions {
  if (options === undefined) return {};
  if (typeof options !== "object" || options === null) throw new InvalidScheduleError(`${label}: enqueue must be an object { queue, priority, maxAttempts }`);
  const o = options as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !["queue", "priority", "maxAttempts"].includes(k));
  if (unknown.length) throw new InvalidScheduleError(`${label}: enqueue takes queue, priority and maxAttempts, not ${unknown.join(", ")}`);
  const whole = (v: unknown, min: number, max: number) => typeof v === "number" && Number.isInteger(v) && v >= min && v <= max;
  if (o.queue !== undefined && !isValidName(o.queue)) throw new InvalidScheduleError(`${label}: enqueue.queue must be ${NAME_RULE}`);
  if (o.priority !== undefined && !whole(o.priority, -32768, 32767)) throw new InvalidScheduleError(`${label}: enqueue.priority must be a whole number from -32768 to 32767`);
  if (o.maxAttempts !== undefined && !whole(o.maxAttempts, 1, 2_147_483_647)) throw new InvalidScheduleError(`${label}: enqueue.maxAttempts must be a whole number of at least 1`);
  return { queue: o.queue as string | undefined, priority: o.priority as number | undefined, maxAttempts: o.maxAttempts as number | undefined };
}

function parseCron(label: string, cron: unknown, timezone: string): Cron {
  if (typeof cron !== "string") throw new InvalidScheduleError(`${label}: cron must be a string such as "0 3 * * *", got ${formatValue(cron)}`);
  let parsed: Cron;
  try {
    parsed = new Cron(cron, { timezone, paused: true, mode: "5-or-6-parts" });
  } catch (error) {
    throw new InvalidScheduleError(`${label}: cron ${JSON.stringify(cron)} is not valid: ${(error as Error).message}`, { cause: error });
  }
  try {
    parsed.nextRun();
  } catch (error) {
    throw new InvalidScheduleError(`${label}: timezone ${JSON.stringify(timezone)} is not an IANA time zone such as "Europe/Berlin"`, { cause: error });
  }
  return parsed;
}

/**
 * Defines a recurring task: `task` is enqueued with `input` at each tick of
 * `cron`, read in `timezone`. Exactly one task is enqueued per tick, however
 * many hosts run the schedule (each `createWorker` given it in `schedules`,
 * each `pgbg serve` whose tasks module exports it), and across their
 * restarts. Throws `InvalidScheduleError` naming the field when malformed.
 *
 * @example
 * ```ts
 * export const nightly = defineSchedule({
 *   name: "nightly-report",
 *   task: report,
 *   cron: "0 3 * * *",
 *   timezone: "Europe/Berlin",
 *   input: (tick) => ({ day: tick.toISOString().slice(0, 10) }),
 * });
 * ```
 */
export function defineSchedule<const T extends AnyTask>(definition: ScheduleDefinition<T>): Schedule<T> {
  if (typeof definition !== "object" || definition === null) throw new InvalidScheduleError("defineSchedule(): give { task, cron, input }");
  const d = definition as ScheduleDefinition<T>;
  const name = d.name ?? (d.task as { name?: unknown } | undefined)?.name;
  const label = isValidName(name) ? `schedule "${name}"` : "schedule";
  if (typeof d.task !== "object" || d.task === null || typeof d.task.run !== "function") {
    throw new InvalidScheduleError(`${label}: task must be a defineTask() result`);
  }
  if (!isValidName(name)) throw new InvalidScheduleError(`${label}: name must be ${NAME_RULE}, got ${formatValue(name)}`);
  const timezone = d.timezone ?? "UTC";
  if (typeof timezone !== "string") throw new InvalidScheduleError(`${label}: timezone must be an IANA time zone name, got ${formatValue(timezone)}`);
  const cron = parseCron(label, d.cron, timezone);
  const catchUp = checkCatchUp(label, d.catchUp);
  const enqueueOptions = checkEnqueueOptions(label, d.enqueue);
  if (!("input" in d)) throw new InvalidScheduleError(`${label}: input is required: the task's input, or a function (tick) => input`);
  const input = d.input;
  return Object.freeze({
    kind: "pgbg.schedule" as const,
    name,
    task: d.task,
    cron: d.cron,
    timezone,
    catchUp,
    enqueue: enqueueOptions,
    inputAt: (tick: Date) => (typeof input === "function" ? (input as (tick: Date) => TaskInput<T>)(tick) : input),
    ticksBetween(after: Date, now: Date, count: number): Date[] {
      return cron.previousRuns(count, now).filter((tick) => tick > after).reverse();
    },
    nextTick: (after: Date) => cron.nextRun(after),
  });
}

/** Which ticks fire, and the newest handled, after `after` up to `now`. */
export interface DueTicks {
  /** The ticks to enqueue a task for, oldest first. */
  fire: Date[];
  /** The newest tick handled (fired or dropped), or null when none was due. */
  handled: Date | null;
}

/**
 * The ticks of `schedule` due after `after` (the newest handled) up to
 * `now`: those less than {@link MISSED_AFTER} late fire; of the missed ones,
 * the catch-up policy picks. Both times are the database's clock.
 */
export function dueTicks(schedule: Schedule, after: Date, now: Date): DueTicks {
  const backfill = typeof schedule.catchUp === "object" ? schedule.catchUp.backfill : schedule.catchUp === "once" ? 1 : 0;
  // At most one tick a second: a minute holds at most 60 on time.
  const ticks = schedule.ticksBetween(after, now, MISSED_AFTER / 1000 + 1 + backfill);
  if (!ticks.length) return { fire: [], handled: null };
  const onTimeFrom = now.getTime() - MISSED_AFTER;
  const onTime = ticks.filter((t) => t.getTime() >= onTimeFrom);
  const missed = ticks.filter((t) => t.getTime() < onTimeFrom);
  return { fire: [...(backfill ? missed.slice(-backfill) : []), ...onTime], handled: ticks[ticks.length - 1] };
}
