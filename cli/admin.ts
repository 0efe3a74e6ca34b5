/**
 * The operators' commands: `pgbg migrate`, `status`, `list`, `retry`,
 * `cancel`, `enqueue` and `compact`. Each takes `--database-url` (DATABASE_URL),
 * `--schema` (PGBG_SCHEMA) and `--json`, and exits 0 on success, 1 when the
 * operation failed and 2 on bad usage, with one line on stderr.
 *
 * @module
 */
import process from "node:process";
import postgres from "postgres";
import { compactIndexes } from "../lib/compact.ts";
import { cancelTasks, listTasks, readStatus, retryFailedTasks, TASK_STATES, type TaskState } from "../lib/admin.ts";
import { defaults } from "../lib/config.ts";
import { parseDuration } from "../lib/duration.ts";
import { enqueue } from "../lib/enqueue.ts";
import { LATEST_SCHEMA_VERSION, migrate, schemaVersion } from "../lib/migrate.ts";
import { loadTasks } from "../lib/registry.ts";
import { checkSchemaName } from "../lib/statements.ts";
import { failWith, UsageError } from "./exit.ts";
import { defineStrictCommand } from "./strict-command.ts";
import { formatCompaction, formatStatus, formatTaskList } from "./admin-text.ts";

/** The arguments every operators' command takes. */
export const connectionArgs = {
  "database-url": { type: "string", description: "PostgreSQL connection URL [env DATABASE_URL] (required; prefer the variable: flags show in ps)" },
  schema: { type: "string", description: `PostgreSQL schema holding pgbg's tables [env PGBG_SCHEMA] (default: ${defaults.schema})` },
  json: { type: "boolean", description: "Print one JSON document instead of text (default: false)" },
} as const;

interface Connection {
  "database-url"?: string;
  schema?: string;
  json?: boolean;
}

/** The database URL and schema of a command, from its flags or the environment. Throws UsageError. */
export function connectionOf(args: Connection): { url: string; schema: string } {
  const url = args["database-url"] ?? process.env.DATABASE_URL;
  if (!url) throw new UsageError("--database-url (DATABASE_URL) is required");
  if (!/^postgres(ql)?:\/\//.test(url)) throw new UsageError("--database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL");
  return { url, schema: checkSchemaName(args.schema ?? process.env.PGBG_SCHEMA ?? defaults.schema) };
}

/**
 * Runs a command's work on a fresh connection, prints its result (JSON with
 * `--json`, else the text `format` makes) and exits with the right code.
 * `work` may return `{ failed: message }` to exit 1 after printing.
 */
async function runCommand<T>(
  args: Connection,
  work: (sql: postgres.Sql, schema: string) => Promise<T>,
  format: (result: T) => string,
  failedWhen: (result: T) => string | undefined = () => undefined,
): Promise<never> {
  let sql: postgres.Sql | undefined;
  try {
    const { url, schema } = connectionOf(args);
    sql = postgres(url, { max: 3, onnotice: () => {}, connection: { application_name: "pgbg admin" } });
    const result = await work(sql, schema);
    process.stdout.write(args.json ? `${JSON.stringify(result, null, 2)}\n` : format(result));
    const failed = failedWhen(result);
    await sql.end({ timeout: 1 });
    if (failed) throw new Error(failed);
    process.exit(0);
  } catch (error) {
    await sql?.end({ timeout: 1 }).catch(() => {});
    failWith(error);
  }
}

/** Task ids from positional arguments: whole numbers, else UsageError. */
function taskIds(values: unknown[]): string[] {
  const ids = values.map(String);
  const bad = ids.find((id) => !/^[1-9]\d{0,18}$/.test(id));
  if (bad !== undefined) throw new UsageError(`task ids are whole numbers, got ${JSON.stringify(bad)}`);
  return ids;
}

const idsOf = (args: { _: unknown[] }) => {
  try {
    return taskIds(args._);
  } catch (error) {
    failWith(error);
  }
};

/** `pgbg migrate [--status]`. */
export const migrateCommand = defineStrictCommand({
  meta: { name: "migrate", description: "Apply pgbg's schema to the database (safe to run concurrently); --status only shows the versions" },
  args: { ...connectionArgs, status: { type: "boolean", description: "Only show the applied and available versions (default: false)" } },
  run: ({ args }) =>
    runCommand(args, async (sql, schema) => {
      if (args.status) return { schema, applied: await schemaVersion(sql, { schema }), available: LATEST_SCHEMA_VERSION };
      return migrate(sql, { schema });
    }, (r) => {
      if ("applied" in r) return `schema ${r.schema}: applied version ${r.applied}, available ${r.available}\n`;
      return r.from === r.to ? `schema ${r.schema} is up to date (version ${r.to})\n` : `schema ${r.schema} migrated from version ${r.from} to ${r.to}\n`;
    }),
});

/** `pgbg status`. */
export const statusCommand = defineStrictCommand({
  meta: { name: "status", description: "Show tasks per queue and name (queued, scheduled, running, failed, oldest queued, last minute's outcomes), unregistered task names and live workers" },
  args: connectionArgs,
  run: ({ args }) => runCommand(args, readStatus, formatStatus),
});

/** `pgbg list`. */
export const listCommand = defineStrictCommand({
  meta: { name: "list", description: "List tasks, oldest first, with their attempts and last error" },
  args: {
    ...connectionArgs,
    state: { type: "string", description: `Only tasks in this state: ${TASK_STATES.join(", ")} (queued: due now; default: any)` },
    task: { type: "string", description: "Only tasks of this name (default: any)" },
    limit: { type: "string", description: "At most this many tasks, 1-10000 (default: 50)" },
  },
  run: ({ args }) => {
    const state = args.state as TaskState | undefined;
    const limit = Number(args.limit ?? 50);
    try {
      if (state !== undefined && !TASK_STATES.includes(state)) throw new UsageError(`--state must be one of ${TASK_STATES.join(", ")}, got ${JSON.stringify(state)}`);
      if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new UsageError(`--limit must be a whole number from 1 to 10000, got ${JSON.stringify(args.limit)}`);
    } catch (error) {
      failWith(error);
    }
    return runCommand(args, async (sql, schema) => ({ tasks: await listTasks(sql, schema, { state, name: args.task, limit }) }), (r) => formatTaskList(r.tasks));
  },
});

/** `pgbg retry`. */
export const retryCommand = defineStrictCommand({
  meta: { name: "retry", description: "Queue failed tasks again, due now, with their attempts reset: the given ids, or --all-failed" },
  args: {
    ...connectionArgs,
    ids: { type: "positional", required: false, description: "Ids of failed tasks" },
    "all-failed": { type: "boolean", description: "Retry every failed task (default: false)" },
    task: { type: "string", description: "With --all-failed: only tasks of this name (default: any)" },
  },
  run: ({ args }) => {
    const ids = idsOf(args);
    const all = Boolean(args["all-failed"]);
    if (all === (ids.length > 0)) failWith(new UsageError("give the ids of failed tasks, or --all-failed"));
    if (args.task !== undefined && !all) failWith(new UsageError("--task goes with --all-failed"));
    return runCommand(args, async (sql, schema) => {
      const retried = await retryFailedTasks(sql, schema, all ? { name: args.task } : { ids });
      const done = new Set(retried);
      return { retried, notRetried: ids.filter((id) => !done.has(id)) };
    }, (r) => `${r.retried.length ? `retried ${r.retried.length} task(s): ${r.retried.join(", ")}` : "retried no task"}\n`,
    (r) => r.notRetried.length ? `not retried (not failed, unknown, or its key is pending again): ${r.notRetried.join(", ")}` : undefined);
  },
}, true);

/** `pgbg cancel`. */
export const cancelCommand = defineStrictCommand({
  meta: { name: "cancel", description: "Delete queued or failed tasks; a running task's attempt is aborted through its worker and the task deleted when the attempt ends" },
  args: { ...connectionArgs, ids: { type: "positional", required: false, description: "Ids of tasks to cancel (required)" } },
  run: ({ args }) => {
    const ids = idsOf(args);
    if (!ids.length) failWith(new UsageError("give the ids of the tasks to cancel"));
    return runCommand(args, (sql, schema) => cancelTasks(sql, schema, ids), (r) =>
      [
        r.deleted.length ? `deleted ${r.deleted.join(", ")}\n` : "",
        r.signalled.length ? `signalled ${r.signalled.join(", ")} (running: deleted when the attempt ends)\n` : "",
      ].join(""), (r) => r.notFound.length ? `no such task: ${r.notFound.join(", ")}` : undefined);
  },
}, true);

/** `pgbg enqueue`. */
export const enqueueCommand = defineStrictCommand({
  meta: { name: "enqueue", description: "Enqueue one task, its input validated by the task's schema as enqueue() does" },
  args: {
    ...connectionArgs,
    name: { type: "positional", required: false, description: "The task's name (required)" },
    input: { type: "positional", required: false, description: "The task's input as JSON (required)" },
    tasks: { type: "string", description: "Module(s) exporting the task's defineTask() result, comma-separated [env PGBG_TASKS] (required)" },
    delay: { type: "string", description: "Not claimable before this delay: 500ms, 30s, 5m, 1h (default: 0)" },
    queue: { type: "string", description: "Queue (default: the task's, else default)" },
    priority: { type: "string", description: "Lower runs first, -32768 to 32767 (default: the task's, else 0)" },
    key: { type: "string", description: "Deduplication key: a pending task with it is returned instead (default: none)" },
  },
  run: ({ args }) => {
    const paths = String(args.tasks ?? process.env.PGBG_TASKS ?? "").split(",").map((p) => p.trim()).filter(Boolean);
    let input: unknown;
    let delay: number | undefined;
    try {
      if (args.name === undefined || args.input === undefined) throw new UsageError("give the task's name and its input as JSON: pgbg enqueue NAME 'JSON'");
      if (!paths.length) throw new UsageError("--tasks (PGBG_TASKS) is required: the module exporting the task, to validate its input");
      try {
        input = JSON.parse(String(args.input));
      } catch (error) {
        throw new UsageError(`the input is not valid JSON: ${(error as Error).message}`);
      }
      if (args.delay !== undefined && (delay = parseDuration(String(args.delay))) === undefined) {
        throw new UsageError(`--delay must be a duration such as 500ms, 30s, 5m, got ${JSON.stringify(args.delay)}`);
      }
    } catch (error) {
      failWith(error);
    }
    return runCommand(args, async (sql, schema) => {
      const tasks = await loadTasks(paths, process.cwd());
      const task = tasks.get(String(args.name));
      if (!task) throw new UsageError(`no task named ${JSON.stringify(args.name)} in ${paths.join(", ")} (defined: ${[...tasks.keys()].join(", ")})`);
      const id = await enqueue(sql, task, input, {
        schema, delay, queue: args.queue, key: args.key, priority: args.priority === undefined ? undefined : Number(args.priority),
      });
      return { id };
    }, (r) => `enqueued task ${r.id}\n`);
  },
});

/** `pgbg compact`. */
export const compactCommand = defineStrictCommand({
  meta: {
    name: "compact",
    description: "Rebuild the task table's indexes (REINDEX CONCURRENTLY) when a drained queue left them bloated, as the service does; needs the table's owner",
  },
  args: { ...connectionArgs, force: { type: "boolean", description: "Rebuild them even when they are not bloated (default: false)" } },
  run: ({ args }) =>
    runCommand(args, (sql, schema) => compactIndexes(sql, { schema, force: Boolean(args.force) }), formatCompaction, (r) => {
      if (r.outcome === "locked") return `another pgbg is compacting the indexes of ${r.schema}.task now; try again later`;
      if (r.outcome === "not-permitted") return `not permitted: ${r.message}; rebuilding the indexes needs the owner of ${r.schema}.task: run pgbg compact as that role`;
      return undefined;
    }),
});

/** The operators' commands, by name, for `pgbg`'s subcommands. */
export const adminCommands = {
  migrate: migrateCommand,
  status: statusCommand,
  list: listCommand,
  retry: retryCommand,
  cancel: cancelCommand,
  enqueue: enqueueCommand,
  compact: compactCommand,
};
