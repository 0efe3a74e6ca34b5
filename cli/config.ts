/**
 * The service's settings: its flags, the environment variable behind each,
 * their defaults (from lib/config.ts) and their checks. A flag wins over its
 * variable, which wins over the default.
 *
 * @module
 */
import { defaults } from "../lib/config.ts";
import { isValidName, MAX_DURATION, NAME_RULE } from "../lib/define.ts";
import { formatDuration, parseDuration } from "../lib/duration.ts";
import { InvalidConfigError } from "../lib/errors.ts";
import { checkSchemaName } from "../lib/statements.ts";

/** The settings of `pgbg serve`, checked. Durations in ms. */
export interface ServeConfig {
  databaseUrl: string | undefined;
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
  migrate: boolean;
  logLevel: LogLevel;
  logFormat: "pretty" | "json";
  /** null: no metrics server. 0: any free port. */
  metricsPort: number | null;
  metricsHost: string;
}

/** Log levels, most to least severe. */
export type LogLevel = "error" | "warn" | "info" | "debug";

type Kind = "count" | "duration" | "list" | "text" | "boolean";

interface Setting {
  key: keyof ServeConfig;
  env: string;
  kind: Kind;
  description: string;
  /** Shown in --help. */
  shown: string;
  min?: number;
  max?: number;
  /** A duration that `0` or `off` turns off (stored as 0). */
  canBeOff?: boolean;
}

const d = defaults;
/** Every flag of `pgbg serve`, in --help order. */
export const serveSettings: Record<string, Setting> = {
  tasks: { key: "tasks", env: "PGBG_TASKS", kind: "list", shown: "(required)", description: "Module exporting defineTask() results; repeat or comma-separate for several" },
  workers: { key: "workers", env: "PGBG_WORKERS", kind: "count", shown: String(d.workers), min: 1, max: 256, description: "Worker subprocesses this supervisor keeps running" },
  concurrency: { key: "concurrency", env: "PGBG_CONCURRENCY", kind: "count", shown: String(d.concurrency), min: 1, max: 10_000, description: "Tasks each worker runs at once" },
  timeout: { key: "timeout", env: "PGBG_TIMEOUT", kind: "duration", shown: formatDuration(d.timeout), min: 1, description: "Time limit of one attempt, for tasks that set none" },
  "retry-delay": { key: "retryDelay", env: "PGBG_RETRY_DELAY", kind: "duration", shown: formatDuration(d.retryDelay), min: 0, description: "Wait before retrying a failed attempt, for tasks that set none" },
  "max-attempts": { key: "maxAttempts", env: "PGBG_MAX_ATTEMPTS", kind: "count", shown: String(d.maxAttempts), min: 1, max: 2_147_483_647, description: "Attempts before a task is kept as failed, for tasks that set none" },
  "check-interval": { key: "checkInterval", env: "PGBG_CHECK_INTERVAL", kind: "duration", shown: formatDuration(d.checkInterval), min: 10, description: "How often the supervisor checks workers, heartbeats and expired leases" },
  "idle-sleep": { key: "idleSleep", env: "PGBG_IDLE_SLEEP", kind: "duration", shown: formatDuration(d.idleSleep), min: 10, description: "Longest a worker sleeps on an empty queue (enqueues wake it at once)" },
  queues: { key: "queues", env: "PGBG_QUEUES", kind: "list", shown: "every queue", description: "Comma-separated queues to claim from" },
  "shutdown-timeout": { key: "shutdownTimeout", env: "PGBG_SHUTDOWN_TIMEOUT", kind: "duration", shown: formatDuration(d.shutdownTimeout), min: 0, description: "On SIGTERM/SIGINT, how long running tasks may finish before they are handed back" },
  "compact-interval": { key: "compactInterval", env: "PGBG_COMPACT_INTERVAL", kind: "duration", shown: formatDuration(d.compactInterval), min: 1000, canBeOff: true, description: "How often the supervisor checks whether the task table's indexes are bloated and rebuilds them (needs the table's owner); 0 or off: never" },
  schema: { key: "schema", env: "PGBG_SCHEMA", kind: "text", shown: d.schema, description: "PostgreSQL schema holding pgbg's tables" },
  "database-url": { key: "databaseUrl", env: "DATABASE_URL", kind: "text", shown: "embedded PostgreSQL in ./.pgbg", description: "PostgreSQL connection URL (prefer the variable: flags show in ps)" },
  migrate: { key: "migrate", env: "PGBG_MIGRATE", kind: "boolean", shown: "true", description: "Migrate the schema at start; --no-migrate for a role without DDL rights" },
  "log-level": { key: "logLevel", env: "PGBG_LOG_LEVEL", kind: "text", shown: "info", description: "error, warn, info or debug" },
  "log-format": { key: "logFormat", env: "PGBG_LOG_FORMAT", kind: "text", shown: "pretty on a terminal, else json", description: "pretty or json (one object per line)" },
  "metrics-port": { key: "metricsPort", env: "PGBG_METRICS_PORT", kind: "count", shown: "off", min: 0, max: 65_535, description: "Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port)" },
  "metrics-host": { key: "metricsHost", env: "PGBG_METRICS_HOST", kind: "text", shown: "0.0.0.0", description: "Address the metrics server binds (127.0.0.1: this machine only)" },
};

/** citty argument definitions for the settings, with env and default in each description. */
export function cittyArgs(settings: Record<string, Setting>) {
  return Object.fromEntries(
    Object.entries(settings).map(([flag, s]) => [
      flag,
      { type: s.kind === "boolean" ? "boolean" : "string", description: `${s.description} [env ${s.env}] (default: ${s.shown})` } as const,
    ]),
  ) as Record<string, { type: "string" | "boolean"; description: string }>;
}

function bad(flag: string, setting: Setting, raw: unknown, rule: string): InvalidConfigError {
  return new InvalidConfigError(`--${flag} (${setting.env}) must be ${rule}, got ${JSON.stringify(raw)}`);
}

function parseValue(flag: string, s: Setting, raw: unknown): unknown {
  switch (s.kind) {
    case "count": {
      const text = String(raw).trim();
      const n = /^\d+$/.test(text) ? Number(text) : Number.NaN;
      if (!Number.isSafeInteger(n) || n < s.min! || n > s.max!) throw bad(flag, s, raw, `a whole number from ${s.min} to ${s.max}`);
      return n;
    }
    case "duration": {
      if (s.canBeOff && /^\s*(0|off)\s*$/i.test(String(raw))) return 0;
      const ms = parseDuration(String(raw));
      if (ms === undefined || ms < (s.min ?? 0)) {
        const off = s.canBeOff ? ", or 0 or off" : "";
        throw bad(flag, s, raw, `a duration such as 500ms, 30s, 5m or plain milliseconds, from ${s.min ?? 0} ms to ${formatDuration(MAX_DURATION)}${off}`);
      }
      return ms;
    }
    case "list": {
      const items = (Array.isArray(raw) ? raw : [raw]).flatMap((x) => String(x).split(",")).map((x) => x.trim()).filter(Boolean);
      if (!items.length) throw bad(flag, s, Array.isArray(raw) ? raw.join(",") : raw, "a non-empty comma-separated list");
      return items;
    }
    case "boolean":
      if (typeof raw === "boolean") return raw;
      if (/^(1|true|yes|on)$/i.test(String(raw))) return true;
      if (/^(0|false|no|off)$/i.test(String(raw))) return false;
      throw bad(flag, s, raw, "true or false");
    default:
      if (Array.isArray(raw)) throw bad(flag, s, raw, "given once");
      return String(raw);
  }
}

/**
 * Builds the checked service settings from parsed flags and the environment.
 * Throws `InvalidConfigError` whose message names the flag, its variable and
 * what it must be.
 */
export function resolveServeConfig(flags: Record<string, unknown>, env: Record<string, string | undefined>, isTTY: boolean): ServeConfig {
  const out: Record<string, unknown> = {
    databaseUrl: undefined, schema: d.schema, tasks: [], workers: d.workers, concurrency: d.concurrency, timeout: d.timeout,
    retryDelay: d.retryDelay, checkInterval: d.checkInterval, idleSleep: d.idleSleep, maxAttempts: d.maxAttempts, queues: null,
    shutdownTimeout: d.shutdownTimeout, compactInterval: d.compactInterval, migrate: true, logLevel: "info", logFormat: isTTY ? "pretty" : "json",
    metricsPort: null, metricsHost: "0.0.0.0",
  };
  for (const [flag, s] of Object.entries(serveSettings)) {
    const raw = flags[flag] ?? env[s.env];
    if (raw === undefined || raw === "") continue;
    out[s.key] = parseValue(flag, s, raw);
  }
  const config = out as unknown as ServeConfig;
  if (!config.tasks.length) throw new InvalidConfigError("--tasks (PGBG_TASKS) is required: the module(s) exporting your defineTask() results");
  try {
    checkSchemaName(config.schema);
  } catch (error) {
    throw new InvalidConfigError(`--schema (PGBG_SCHEMA): ${(error as Error).message}`);
  }
  for (const queue of config.queues ?? []) {
    if (!isValidName(queue)) throw bad("queues", serveSettings.queues, queue, `a list of queue names (${NAME_RULE})`);
  }
  if (!["error", "warn", "info", "debug"].includes(config.logLevel)) throw bad("log-level", serveSettings["log-level"], config.logLevel, "error, warn, info or debug");
  if (!["pretty", "json"].includes(config.logFormat)) throw bad("log-format", serveSettings["log-format"], config.logFormat, "pretty or json");
  if (config.databaseUrl !== undefined) {
    try {
      const url = new URL(config.databaseUrl);
      if (!/^postgres(ql)?:$/.test(url.protocol)) throw new Error();
      // postgres.js decodes these; a malformed %-escape would otherwise fail
      // later as a bare "URI malformed" that names neither flag nor fix.
      decodeURIComponent(url.username);
      decodeURIComponent(url.password);
    } catch {
      // Never echo the value: it may hold a password.
      throw new InvalidConfigError("--database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded");
    }
  }
  return config;
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
