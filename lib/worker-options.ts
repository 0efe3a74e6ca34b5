/**
 * The options of `createWorker` and `drain`, their defaults (lib/config.ts)
 * and their checks. Each bad option gets an `InvalidOptionsError` that names
 * it and what it must be; an unknown name is an error, not ignored.
 *
 * @module
 */
import { defaults } from "./config.ts";
import { type AnyTask, checkTask, isValidName, MAX_DURATION, NAME_RULE } from "./define.ts";
import { InvalidOptionsError, InvalidTaskError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { checkedLater, checkOptions, formatValue, integer, ofType, type OptionCheck } from "./options.ts";
import { registerSchedules, registerTasks } from "./registry.ts";
import { isSchedule, type Schedule } from "./schedule.ts";
import { MAX_RETENTION } from "./retention.ts";
import { checkSchemaName } from "./statements.ts";

/** What an in-process worker runs and how. Durations in ms. */
export interface WorkerHostOptions {
  /** The tasks it can run: `defineTask` results. Tasks of other names stay queued for other workers. */
  tasks: readonly AnyTask[];
  /**
   * Recurring tasks (`defineSchedule` results) this host fires. Every host
   * may run the same schedules: each tick is enqueued once. @default none
   */
  schedules?: readonly Schedule[];
  /** Tasks run at once. @default 10 */
  concurrency?: number;
  /** Queues to claim from. @default every queue */
  queues?: readonly string[] | null;
  /** Time limit of one attempt, for tasks that set none. @default 30 s */
  timeout?: number;
  /** Wait before retrying a failed attempt, for tasks that set none. @default 5 s */
  retryDelay?: number;
  /** Attempts before a task is kept as failed, for tasks that set none. @default 25 */
  maxAttempts?: number;
  /** Longest sleep on an empty queue (enqueues wake the worker at once). @default 1 s */
  idleSleep?: number;
  /** Heartbeat interval, and how often the maintenance duties run; the liveness timings derive from it. @default 1 s */
  checkInterval?: number;
  /** How long `stop()` lets running tasks finish before handing them back, unless it is given its own. @default 30 s */
  shutdownTimeout?: number;
  /** How often to check whether the task table's indexes are bloated and rebuild them (needs the table's owner); 0: never. @default 30 s */
  compactInterval?: number;
  /** How often to check whether the task table has dead rows that a vacuum can remove, and vacuum it (needs the table's owner); 0: never. @default 5 s */
  vacuumInterval?: number;
  /**
   * How long completed tasks are kept in the history with their results
   * (getTask, listTasks), for tasks whose definition sets no
   * `retention.completed`; 0: not kept, but an hour for a task with a
   * result schema. Up to 365 days. @default 0
   */
  completedRetention?: number;
  /** How long tasks failed for good are kept, for tasks whose definition sets no `retention.failed`; Infinity: for ever. Up to 365 days. @default Infinity */
  failedRetention?: number;
  /** Connections of the worker's pool (claims, write-backs, maintenance); the heartbeat and LISTEN add one each. @default 4 */
  poolSize?: number;
  /**
   * `sql` reaches PostgreSQL through a pooler in transaction mode
   * (PgBouncer's `pool_mode = transaction`): the worker's own clients use
   * unnamed statements, no pipelining and no session state, and without `listenUrl` the
   * worker finds new tasks by polling, at most `idleSleep` apart.
   * @default false
   */
  transactionPooling?: boolean;
  /**
   * Under `transactionPooling`, a URL that reaches PostgreSQL directly (not
   * through the pooler), on which the worker LISTENs so that enqueues wake
   * it at once. One connection. @default none: the worker polls
   */
  listenUrl?: string;
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
  /** Aborting it stops the worker, as `stop()` does. */
  signal?: AbortSignal;
  /** Where the worker logs. @default warnings and errors to the console */
  logger?: Logger;
}

/** The checked options with every default filled in. */
export interface ResolvedWorkerOptions {
  tasks: AnyTask[];
  schedules: Schedule[];
  concurrency: number;
  queues: string[] | null;
  timeout: number;
  retryDelay: number;
  maxAttempts: number;
  idleSleep: number;
  checkInterval: number;
  shutdownTimeout: number;
  compactInterval: number;
  vacuumInterval: number;
  completedRetention: number;
  failedRetention: number;
  poolSize: number;
  transactionPooling: boolean;
  listenUrl: string | undefined;
  schema: string;
  signal: AbortSignal | undefined;
  logger: Logger;
}

const duration = (min: number): OptionCheck => integer(min, MAX_DURATION);

const checks: Record<keyof WorkerHostOptions, OptionCheck> = {
  tasks: (v) => (Array.isArray(v) && v.length ? undefined : `must be a non-empty array of defineTask() results, got ${formatValue(v)}`),
  schedules: (v) => (Array.isArray(v) && v.every(isSchedule) ? undefined : `must be an array of defineSchedule() results, got ${formatValue(v)}`),
  concurrency: integer(1, 10_000),
  queues: (v) =>
    v === null || (Array.isArray(v) && v.length && v.every(isValidName)) ? undefined : `must be null or a non-empty array of queue names (${NAME_RULE})`,
  timeout: duration(1),
  retryDelay: duration(0),
  maxAttempts: integer(1, 2_147_483_647),
  idleSleep: duration(10),
  checkInterval: integer(10, 600_000),
  shutdownTimeout: duration(0),
  compactInterval: (v) => (v === 0 ? undefined : duration(1000)(v)),
  vacuumInterval: (v) => (v === 0 ? undefined : duration(1000)(v)),
  completedRetention: integer(0, MAX_RETENTION),
  failedRetention: (v) => (v === Number.POSITIVE_INFINITY ? undefined : integer(1000, MAX_RETENTION)(v)),
  poolSize: integer(1, 100),
  transactionPooling: ofType("boolean"),
  // Not echoed: the URL may hold a password.
  listenUrl: (v) => (typeof v === "string" && /^postgres(ql)?:\/\//.test(v) ? undefined : "must be a postgres:// or postgresql:// URL"),
  schema: checkedLater,
  signal: (v) => (v instanceof AbortSignal ? undefined : `must be an AbortSignal, got ${formatValue(v)}`),
  logger: (v) =>
    typeof v === "object" && v !== null && ["debug", "info", "warn", "error"].every((m) => typeof (v as Record<string, unknown>)[m] === "function")
      ? undefined
      : "must be an object with debug, info, warn and error methods",
};

/** Warnings and errors to the console, one line each: a library is quiet unless something is wrong. */
export const consoleLogger: Logger = {
  debug() {},
  info() {},
  warn: (message, fields) => console.warn(`pgbg: ${message}`, ...(fields ? [fields] : [])),
  error: (message, fields) => console.error(`pgbg: ${message}`, ...(fields ? [fields] : [])),
  isEnabled: (level) => level === "warn" || level === "error",
};

/** Checks `options` for `where` (such as `createWorker()`) and fills in the defaults. Throws InvalidOptionsError or InvalidTaskError. */
export function resolveWorkerOptions(where: string, options: unknown): ResolvedWorkerOptions {
  if (options === undefined || options === null) throw new InvalidOptionsError(`${where}: options with \`tasks\` are required`);
  const o = checkOptions<WorkerHostOptions>(where, options, checks);
  if (!o.tasks) throw new InvalidOptionsError(`${where}: option "tasks" is required: an array of defineTask() results`);
  for (const task of o.tasks) {
    try {
      checkTask(task);
    } catch (error) {
      throw new InvalidTaskError(`${where}: ${(error as Error).message}`);
    }
  }
  if (o.listenUrl !== undefined && !o.transactionPooling) {
    throw new InvalidOptionsError(`${where}: option "listenUrl" is for transactionPooling: true (without it the worker LISTENs on its own pool)`);
  }
  const tasks = [...registerTasks(o.tasks.map((task, i) => ({ task, source: `tasks[${i}]` }))).values()];
  const schema = checkSchemaName(o.schema ?? defaults.schema);
  return {
    tasks, schedules: registerSchedules((o.schedules ?? []).map((schedule, i) => ({ schedule, source: `schedules[${i}]` }))), schema, concurrency: o.concurrency ?? defaults.concurrency, queues: o.queues ? [...o.queues] : null,
    timeout: o.timeout ?? defaults.timeout, retryDelay: o.retryDelay ?? defaults.retryDelay, maxAttempts: o.maxAttempts ?? defaults.maxAttempts,
    idleSleep: o.idleSleep ?? defaults.idleSleep, checkInterval: o.checkInterval ?? defaults.checkInterval,
    shutdownTimeout: o.shutdownTimeout ?? defaults.shutdownTimeout, compactInterval: o.compactInterval ?? defaults.compactInterval,
    vacuumInterval: o.vacuumInterval ?? defaults.vacuumInterval,
    completedRetention: o.completedRetention ?? defaults.completedRetention, failedRetention: o.failedRetention ?? defaults.failedRetention,
    poolSize: o.poolSize ?? defaults.poolSize, transactionPooling: o.transactionPooling ?? false, listenUrl: o.listenUrl, signal: o.signal, logger: o.logger ?? consoleLogger,
  };
}
