/**
 * Every flag of every `pgbg` command, in one table: its kind, variable,
 * default (as --help and the README show it), description and checks. The
 * table drives citty's --help, the strict parsing and the value checks
 * (cli/args.ts); the README's flag tables are tested against it.
 *
 * @module
 */
import { isIP } from "node:net";
import { isTaskId, TASK_STATES } from "../lib/admin.ts";
import { defaults } from "../lib/config.ts";
import { MAX_RATE_LIMIT } from "../lib/controls.ts";
import { isValidName, NAME_RULE } from "../lib/define.ts";
import { parseDuration } from "../lib/duration.ts";
import { MAX_RETENTION } from "../lib/retention.ts";
import { checkSchemaName } from "../lib/statements.ts";
import { boolean, choice, type CommandArgs, count, duration, type Flags, list, text } from "./args.ts";
import { UsageError } from "./exit.ts";

/** Shortest dashboard token accepted: a guessable token would protect nothing. */
export const MIN_TOKEN_LENGTH = 16;

const d = defaults;

/** A postgres:// URL that postgres.js can read. */
function isPostgresUrl(text: string): boolean {
  try {
    const url = new URL(text);
    // postgres.js decodes these; a malformed %-escape would otherwise fail
    // later as a bare "URI malformed" that names neither flag nor fix.
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
    return /^postgres(ql)?:$/.test(url.protocol);
  } catch {
    return false;
  }
}

/** `--database-url`: never echoed, as it may hold a password. */
const databaseUrl = text({
  env: "DATABASE_URL", shown: "embedded PostgreSQL in ./.pgbg", secret: true, check: isPostgresUrl,
  rule: "a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded",
  description: "PostgreSQL connection URL (prefer the variable: flags show in ps)",
});

/** `--transaction-pooling`: the same on every command that connects. */
const transactionPooling = boolean({
  env: "PGBG_TRANSACTION_POOLING", default: false,
  description: "The database URL reaches PostgreSQL through a pooler in transaction mode (PgBouncer pool_mode=transaction): unnamed statements, no pipelining, no session state, and workers poll at --idle-sleep unless --listen-url is set",
});

const tasks = list({
  env: "PGBG_TASKS", shown: "required", required: "the module(s) exporting your defineTask() results",
  description: "Module exporting defineTask() results; repeat or comma-separate for several",
});

/** The flags of `pgbg serve`, in --help order. */
export const serveArgs = {
  command: "pgbg serve",
  flags: {
    tasks,
    workers: count({ env: "PGBG_WORKERS", default: d.workers, min: 1, max: 256, description: "Worker subprocesses this supervisor keeps running" }),
    concurrency: count({ env: "PGBG_CONCURRENCY", default: d.concurrency, min: 1, max: 10_000, description: "Tasks each worker runs at once" }),
    timeout: duration({ env: "PGBG_TIMEOUT", default: d.timeout, min: 1, description: "Time limit of one attempt, for tasks that set none" }),
    "retry-delay": duration({ env: "PGBG_RETRY_DELAY", default: d.retryDelay, min: 0, description: "Wait before retrying a failed attempt, for tasks that set none" }),
    "max-attempts": count({
      env: "PGBG_MAX_ATTEMPTS", default: d.maxAttempts, min: 1, max: 2_147_483_647, description: "Attempts before a task is kept as failed, for tasks that set none",
    }),
    "check-interval": duration({
      env: "PGBG_CHECK_INTERVAL", default: d.checkInterval, min: 10, description: "How often the supervisor checks workers, heartbeats and expired leases",
    }),
    "idle-sleep": duration({
      env: "PGBG_IDLE_SLEEP", default: d.idleSleep, min: 10, description: "Longest a worker sleeps on an empty queue (enqueues wake it at once)",
    }),
    queues: list({
      env: "PGBG_QUEUES", shown: "every queue", item: { test: isValidName, rule: `a list of queue names (${NAME_RULE})` },
      description: "Comma-separated queues to claim from",
    }),
    "shutdown-timeout": duration({
      env: "PGBG_SHUTDOWN_TIMEOUT", default: d.shutdownTimeout, min: 0,
      description: "On SIGTERM/SIGINT, how long running tasks may finish before they are handed back",
    }),
    "compact-interval": duration({
      env: "PGBG_COMPACT_INTERVAL", default: d.compactInterval, min: 1000, canBeOff: true,
      description: "How often the supervisor checks whether the task table's indexes are bloated and rebuilds them (needs the table's owner); 0 or off: never",
    }),
    "vacuum-interval": duration({
      env: "PGBG_VACUUM_INTERVAL", default: d.vacuumInterval, min: 1000, canBeOff: true,
      description: "How often the supervisor checks whether the task table has dead rows a vacuum can remove, and vacuums it (needs the table's owner); 0 or off: never",
    }),
    "completed-retention": duration({
      env: "PGBG_COMPLETED_RETENTION", default: d.completedRetention, shown: "off", min: 1000, max: MAX_RETENTION, canBeOff: true,
      description: "How long completed tasks are kept with their results (getTask, pgbg list --state completed), for tasks whose definition sets none; 0 or off: not kept, but an hour for a task with a result schema",
    }),
    "failed-retention": duration({
      env: "PGBG_FAILED_RETENTION", default: d.failedRetention, shown: "forever", min: 1000, max: MAX_RETENTION, canBeForever: true,
      description: "How long tasks failed for good are kept (to be retried), for tasks whose definition sets none; forever: until retried or cancelled",
    }),
    schema: text({
      env: "PGBG_SCHEMA", default: d.schema, description: "PostgreSQL schema holding pgbg's tables",
      check(schema, label) {
        try {
          return Boolean(checkSchemaName(schema));
        } catch (error) {
          throw new UsageError(`${label}: ${(error as Error).message}`);
        }
      },
    }),
    "database-url": databaseUrl,
    "transaction-pooling": transactionPooling,
    "listen-url": text({
      env: "PGBG_LISTEN_URL", shown: "none: workers poll", secret: true, check: isPostgresUrl,
      rule: "a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded",
      description: "With --transaction-pooling: a URL that reaches PostgreSQL directly, where each worker LISTENs (one connection) so enqueues wake it at once (prefer the variable: flags show in ps)",
    }),
    migrate: boolean({ env: "PGBG_MIGRATE", default: true, description: "Migrate the schema at start; --no-migrate for a role without DDL rights" }),
    "log-level": choice(["error", "warn", "info", "debug"], { env: "PGBG_LOG_LEVEL", default: "info", description: "error, warn, info or debug" }),
    "log-format": choice(["pretty", "json"], {
      env: "PGBG_LOG_FORMAT", shown: "pretty on a terminal, else json", description: "pretty or json (one object per line)",
    }),
    "metrics-port": count({
      env: "PGBG_METRICS_PORT", shown: "off", min: 0, max: 65_535, description: "Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)",
    }),
    "metrics-host": text({
      env: "PGBG_METRICS_HOST", default: "0.0.0.0", description: "Address the metrics server binds (127.0.0.1: this machine only)",
    }),
  },
  check({ flags }) {
    if (flags["listen-url"] !== undefined && !flags["transaction-pooling"]) {
      throw new UsageError("--listen-url (PGBG_LISTEN_URL) goes with --transaction-pooling: without it, workers LISTEN on the database URL");
    }
  },
} satisfies CommandArgs<Flags>;

/** The flags every operators' command takes. */
const connection = {
  "database-url": { ...databaseUrl, shown: "required", required: "" },
  "transaction-pooling": transactionPooling,
  schema: text({
    env: "PGBG_SCHEMA", default: d.schema, description: "PostgreSQL schema holding pgbg's tables",
    // The library's own message, as the operators' commands have always printed it.
    check: (schema) => Boolean(checkSchemaName(schema)),
  }),
  json: boolean({ default: false, shown: "off", description: "Print one JSON document instead of text" }),
};

/** Task ids are positive bigints. */
const ids = (description: string, required?: string) => ({
  names: { ids: description },
  many: true,
  required,
  check: (id: string) => isTaskId(id) ? undefined : "task ids are whole numbers",
});

/** `pgbg migrate`. */
export const migrateArgs = {
  command: "pgbg migrate",
  flags: { ...connection, status: boolean({ default: false, shown: "off", description: "Only show the applied and available versions" }) },
} satisfies CommandArgs<Flags>;

/** `pgbg status`. */
export const statusArgs = { command: "pgbg status", flags: connection } satisfies CommandArgs<Flags>;

/** `pgbg list`. */
export const listArgs = {
  command: "pgbg list",
  flags: {
    ...connection,
    state: choice(TASK_STATES, { shown: "any", rule: `one of ${TASK_STATES.join(", ")}`, description: "Only tasks in this state (queued: due now)" }),
    task: text({ shown: "any", description: "Only tasks of this name" }),
    queue: text({ shown: "any", description: "Only tasks of this queue" }),
    key: text({ shown: "any", description: "Only tasks of this dedup key" }),
    after: text({ shown: "from the first", description: "Start after this task id: the next page's, as the last one printed" }),
    limit: count({ default: 50, min: 1, max: 10_000, description: "At most this many tasks, 1-10000" }),
    flow: text({ shown: "none", description: "Instead: the tasks of this flow or batch (the id enqueueFlow or enqueueBatch returned), with their states and parents" }),
  },
  check({ flags }) {
    const others = (["state", "task", "queue", "key", "after"] as const).filter((f) => flags[f] !== undefined);
    if (flags.flow !== undefined && others.length) throw new UsageError(`--flow lists one flow's tasks; it does not go with --${others.join(", --")}`);
  },
} satisfies CommandArgs<Flags>;

/** `pgbg retry`. */
export const retryArgs = {
  command: "pgbg retry",
  flags: {
    ...connection,
    "all-failed": boolean({ default: false, shown: "off", description: "Retry every failed task" }),
    task: text({ shown: "any", description: "With --all-failed: only tasks of this name" }),
  },
  positionals: ids("Ids of failed tasks"),
  check({ flags, positionals }) {
    if (flags["all-failed"] === (positionals.length > 0)) throw new UsageError("give the ids of failed tasks, or --all-failed");
    if (flags.task !== undefined && !flags["all-failed"]) throw new UsageError("--task goes with --all-failed");
  },
} satisfies CommandArgs<Flags>;

/** `pgbg cancel`. */
export const cancelArgs = {
  command: "pgbg cancel",
  flags: connection,
  positionals: ids("Ids of tasks to cancel (required)", "give the ids of the tasks to cancel"),
} satisfies CommandArgs<Flags>;

/** `pgbg enqueue`. */
export const enqueueArgs = {
  command: "pgbg enqueue",
  flags: {
    ...connection,
    tasks,
    delay: duration({ shown: "0", min: 0, rule: "a duration such as 500ms, 30s, 5m", description: "Not claimable before this delay: 500ms, 30s, 5m, 1h" }),
    queue: text({ shown: "the task's, else default", description: "Queue" }),
    // Its range is enqueue()'s to check, with enqueue()'s message.
    priority: text({
      shown: "the task's, else 0", check: (n) => /^\s*-?\d+\s*$/.test(n), rule: "a whole number from -32768 to 32767", description: "Lower runs first, -32768 to 32767",
    }),
    // An empty key reaches enqueue(), which says what a key must be.
    key: text({ shown: "none", allowEmpty: true, description: "Deduplication key: a pending task with it is returned instead" }),
  },
  positionals: {
    names: { name: "The task's name (required)", input: "The task's input as JSON (required)" },
    required: "give the task's name and its input as JSON: pgbg enqueue NAME 'JSON'",
  },
} satisfies CommandArgs<Flags>;

/** Queue names, as positionals. */
const queueNames = (description: string, required: string) => ({
  names: { queues: description },
  many: true,
  required,
  check: (queue: string) => isValidName(queue) ? undefined : `queue names are ${NAME_RULE}`,
});

/** `pgbg pause`. */
export const pauseArgs = {
  command: "pgbg pause",
  flags: connection,
  positionals: queueNames("Queues to pause (required)", "give the queues to pause"),
} satisfies CommandArgs<Flags>;

/** `pgbg resume`. */
export const resumeArgs = {
  command: "pgbg resume",
  flags: connection,
  positionals: queueNames("Queues to resume (required)", "give the queues to resume"),
} satisfies CommandArgs<Flags>;

/** `pgbg limit`. */
export const limitArgs = {
  command: "pgbg limit",
  flags: {
    ...connection,
    "per-group": boolean({ default: false, shown: "off", description: "Limit each group of the queue (defineTask's group) instead of the whole queue" }),
  },
  positionals: {
    names: { queue: "The queue (required)", concurrency: "Most of its tasks (with --per-group: of each group's) running at once, or off for no limit (required)" },
    required: "give the queue and its limit: pgbg limit QUEUE N, or pgbg limit QUEUE off",
  },
  check({ positionals: [queue, concurrency] }) {
    if (!isValidName(queue)) throw new UsageError(`queue names are ${NAME_RULE}`);
    if (concurrency !== "off" && !(/^[1-9]\d{0,9}$/.test(concurrency) && Number(concurrency) <= 2_147_483_647)) throw new UsageError(`the limit must be a whole number of at least 1, or off; got ${JSON.stringify(concurrency)}`);
  },
} satisfies CommandArgs<Flags>;

/** `pgbg rate`: its rate, `N/INTERVAL`, as setQueueRateLimit takes it; undefined for anything else. */
export function parseRate(text: string): { limit: number; interval: number } | undefined {
  const match = /^([1-9]\d{0,4})\/(.+)$/.exec(text);
  const interval = match ? parseDuration(match[2]) : undefined;
  if (!match || interval === undefined || interval < 1 || Number(match[1]) > MAX_RATE_LIMIT) return undefined;
  return { limit: Number(match[1]), interval };
}

/** `pgbg rate`. */
export const rateArgs = {
  command: "pgbg rate",
  flags: {
    ...connection,
    "per-group": boolean({ default: false, shown: "off", description: "Limit each group of the queue (defineTask's group) instead of the whole queue" }),
  },
  positionals: {
    names: { queue: "The queue (required)", rate: "Most starts (with --per-group: of each group's) per interval as N/INTERVAL (100/1m, 5/1s), or off for no rate limit (required)" },
    required: "give the queue and its rate: pgbg rate QUEUE N/INTERVAL, or pgbg rate QUEUE off",
  },
  check({ positionals: [queue, rate] }) {
    if (!isValidName(queue)) throw new UsageError(`queue names are ${NAME_RULE}`);
    if (rate !== "off" && !parseRate(rate)) {
      throw new UsageError(`the rate must be N/INTERVAL, N from 1 to ${MAX_RATE_LIMIT} and INTERVAL a duration from 1ms to 7d (100/1m, 5/1s), or off; got ${JSON.stringify(rate)}`);
    }
  },
} satisfies CommandArgs<Flags>;

/** `pgbg run-schedule`. */
export const runScheduleArgs = {
  command: "pgbg run-schedule",
  flags: connection,
  positionals: {
    names: { name: "The schedule's name (required)" },
    required: "give the schedule's name: pgbg run-schedule NAME",
  },
} satisfies CommandArgs<Flags>;

/** `pgbg compact`. */
export const compactArgs = {
  command: "pgbg compact",
  flags: { ...connection, force: boolean({ default: false, shown: "off", description: "Rebuild them even when they are not bloated" }) },
} satisfies CommandArgs<Flags>;

/** `pgbg dashboard`. */
export const dashboardArgs = {
  command: "pgbg dashboard",
  flags: {
    ...connection,
    port: count({ env: "PGBG_DASHBOARD_PORT", default: 8080, min: 0, max: 65_535, description: "Port to listen on, 0 for any free one" }),
    host: text({
      env: "PGBG_DASHBOARD_HOST", default: "127.0.0.1", description: "Address to bind; 0.0.0.0 exposes it to the network",
      // An empty host would make Node listen on every interface: it gets this rule's message.
      allowEmpty: true, rule: "an IP address or a host name such as 127.0.0.1",
      check: (host) => isIP(host) !== 0 || /^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(host),
    }),
    token: text({
      env: "PGBG_DASHBOARD_TOKEN", shown: "required", required: "the dashboard can retry and cancel tasks", secret: true,
      check: (token) => token.length >= MIN_TOKEN_LENGTH, rule: `at least ${MIN_TOKEN_LENGTH} characters`,
      description: `Token that signs in, at least ${MIN_TOKEN_LENGTH} characters (prefer the variable: flags show in ps)`,
    }),
  },
} satisfies CommandArgs<Flags>;

/** The arguments of every command, by name. */
export const commandArgs = {
  serve: serveArgs, migrate: migrateArgs, status: statusArgs, list: listArgs, retry: retryArgs,
  cancel: cancelArgs, enqueue: enqueueArgs, pause: pauseArgs, resume: resumeArgs, limit: limitArgs, rate: rateArgs, "run-schedule": runScheduleArgs, compact: compactArgs,
  dashboard: dashboardArgs,
};
