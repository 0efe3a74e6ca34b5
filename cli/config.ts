/**
 * The service's settings: `pgbg serve`'s flags (cli/args-table.ts), read
 * from the command line and the environment, as one checked object. A flag
 * wins over its variable, which wins over the default (lib/config.ts).
 *
 * @module
 */
import { type Env, type FlagValues, parseArgs } from "./args.ts";
import { serveArgs } from "./args-table.ts";

/**
 * How far past the shutdown timeout a stop may run, in ms, whatever the
 * database does (hung connects, a server that never answers): a worker
 * exits by the shutdown timeout plus WORKER_STOP_MARGIN_MS, its supervisor
 * kills those still running at plus POOL_KILL_MARGIN_MS, and exits by plus
 * STOP_MARGIN_MS. The README states the last as the bound of a stop.
 */
export const WORKER_STOP_MARGIN_MS = 1_000;
/** See {@link WORKER_STOP_MARGIN_MS}. */
export const POOL_KILL_MARGIN_MS = 1_500;
/** See {@link WORKER_STOP_MARGIN_MS}. */
export const STOP_MARGIN_MS = 2_000;

/**
 * How a served worker's process ends (cli/worker.ts), as its supervisor
 * reads it (cli/worker-pool.ts). `lost`: it stopped because its heartbeat
 * could not get through or another host reaped it. `leftToHandBack`: it
 * stopped past its bound with every attempt ended, no failure unwritten
 * and no claim given up (Worker.mayHandBack), so that what it still holds
 * (the hand-backs and successes it could not write in time) is its
 * supervisor's to hand back, uncounted.
 */
export const WORKER_EXIT = { stopped: 0, startFailed: 3, retired: 4, lost: 5, crashed: 6, leftToHandBack: 7 } as const;

/** The settings of `pgbg serve`, checked. Durations in ms. */
export interface ServeConfig {
  databaseUrl: string | undefined;
  /** The URL reaches a pooler in transaction mode: unnamed statements, no pipelining, no session state. */
  transactionPooling: boolean;
  /** Under transaction pooling, a direct URL where workers LISTEN; undefined: they poll. */
  listenUrl: string | undefined;
  schema: string;
  tasks: string[];
  workers: number;
  concurrency: number;
  timeout: number;
  retryDelay: number;
  checkInterval: number;
  idleSleep: number;
  maxAttempts: number;
  /** null: every queue. */
  queues: string[] | null;
  shutdownTimeout: number;
  /** How often the supervisor may compact the task table's indexes; 0: never. */
  compactInterval: number;
  vacuumInterval: number;
  /** How long completed tasks are kept, for definitions that set none (ms); 0: not kept. */
  completedRetention: number;
  /** How long tasks failed for good are kept, for definitions that set none (ms); Infinity: for ever. */
  failedRetention: number;
  migrate: boolean;
  logLevel: LogLevel;
  logFormat: "pretty" | "json";
  /** null: no metrics server. 0: any free port. */
  metricsPort: number | null;
  metricsHost: string;
}

/** Log levels, most to least severe. */
export type LogLevel = "error" | "warn" | "info" | "debug";

/**
 * The checked settings of `pgbg serve` from its arguments (`argv`, after
 * `serve`) and `env`; the log format defaults to pretty on a terminal
 * (`isTTY`), else JSON. Pure: reads nothing else. Throws the error whose
 * message is the line `pgbg serve` prints before exiting 2: a UsageError
 * (code PGBG_INVALID_CONFIG) naming the flag, its variable and its rule.
 */
export function parseServeArgs(argv: readonly string[], env: Env, isTTY: boolean): ServeConfig {
  return serveConfigOf(parseArgs(argv, serveArgs, env).flags, isTTY);
}

/** The service's settings from `pgbg serve`'s parsed flags; the log format defaults to pretty on a terminal (`isTTY`), else JSON. */
export function serveConfigOf(f: FlagValues<typeof serveArgs.flags>, isTTY: boolean): ServeConfig {
  return {
    databaseUrl: f["database-url"],
    transactionPooling: f["transaction-pooling"],
    listenUrl: f["listen-url"],
    schema: f.schema,
    tasks: f.tasks,
    workers: f.workers,
    concurrency: f.concurrency,
    timeout: f.timeout,
    retryDelay: f["retry-delay"],
    checkInterval: f["check-interval"],
    idleSleep: f["idle-sleep"],
    maxAttempts: f["max-attempts"],
    queues: f.queues ?? null,
    shutdownTimeout: f["shutdown-timeout"],
    compactInterval: f["compact-interval"],
    vacuumInterval: f["vacuum-interval"],
    completedRetention: f["completed-retention"],
    failedRetention: f["failed-retention"],
    migrate: f.migrate,
    logLevel: f["log-level"],
    logFormat: f["log-format"] ?? (isTTY ? "pretty" : "json"),
    metricsPort: f["metrics-port"] ?? null,
    metricsHost: f["metrics-host"],
  };
}

/** The URL without its password, for logs: user@host:port/database. */
export function describeDatabase(url: string): string {
  try {
    const u = new URL(url);
    return `${u.username ? `${decodeURIComponent(u.username)}@` : ""}${u.host}${u.pathname}`;
  } catch {
    return "(unparseable URL)";
  }
}
