/**
 * The operators' commands: `pgbg migrate`, `status`, `list`, `retry`,
 * `cancel`, `enqueue`, `pause`, `resume`, `limit`, `run-schedule` and `compact`. Each takes `--database-url` (DATABASE_URL),
 * `--schema` (PGBG_SCHEMA) and `--json`, and exits 0 on success, 1 when the
 * operation failed and 2 on bad usage, with one line on stderr. Their
 * arguments are in cli/args-table.ts, parsed and checked before they run.
 *
 * @module
 */
import process from "node:process";
import postgres from "postgres";
import { compactIndexes } from "../lib/compact.ts";
import { cancel, listTasks, retry, status } from "../lib/admin.ts";
import { getFlow } from "../lib/flow-admin.ts";
import { pauseQueue, resumeQueue, runSchedule, setGroupConcurrency, setGroupRateLimit, setQueueConcurrency, setQueueRateLimit } from "../lib/controls.ts";
import { formatDuration } from "../lib/duration.ts";
import { enqueue } from "../lib/enqueue.ts";
import { LATEST_SCHEMA_VERSION, migrate, schemaVersion } from "../lib/migrate.ts";
import { loadTasks } from "../lib/registry.ts";
import type { ArgsDef, CommandDef } from "citty";
import { type CommandArgs, defineCliCommand, type Env, type Flags, parseArgs, type ParsedArgs } from "./args.ts";
import {
  cancelArgs, compactArgs, enqueueArgs, limitArgs, listArgs, migrateArgs, parseRate, pauseArgs, rateArgs, resumeArgs, retryArgs, runScheduleArgs, statusArgs,
} from "./args-table.ts";
import { connect } from "./client.ts";
import { exitCodeOf, failWith, UsageError } from "./exit.ts";
import { describeError } from "../lib/log.ts";
import { formatCompaction, formatFlow, formatStatus, formatTaskList } from "./admin-text.ts";

/** The connection flags every operators' command takes, parsed and checked (cli/args-table.ts). */
export interface Connection {
  "database-url": string;
  "transaction-pooling": boolean;
  schema: string;
  json: boolean;
}

/** Where a command's output goes: the process's stdout, or a string in a test. */
export interface Output {
  write(text: string): unknown;
}

/**
 * Runs a command's work on a fresh connection and prints its result (JSON
 * with `--json`, else the text `format` makes). It throws after printing
 * when `failedWhen` names what failed in the result; the caller turns that
 * into the exit code (see {@link runAdmin} and the binary's commands below).
 */
async function runCommand<T>(
  args: Connection,
  out: Output,
  work: (sql: postgres.Sql, schema: string) => Promise<T>,
  format: (result: T) => string,
  failedWhen: (result: T) => string | undefined = () => undefined,
): Promise<void> {
  const sql = connect(args["database-url"], 3, "pgbg admin", args["transaction-pooling"]);
  try {
    const result = await work(sql, args.schema);
    out.write(args.json ? `${JSON.stringify(result, null, 2)}\n` : format(result));
    const failed = failedWhen(result);
    if (failed) throw new Error(failed);
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

/** An operators' command: its arguments, its help line, and its run, which prints to `out` and throws when it failed. */
interface AdminCommand {
  spec: CommandArgs<Flags>;
  description: string;
  run: (args: ParsedArgs<Flags>, out: Output) => Promise<void>;
}

/** Declares an operators' command: its run is typed by its own flags, then kept beside the others'. */
function adminCommand<F extends Flags>(spec: CommandArgs<F>, description: string, run: (args: ParsedArgs<F>, out: Output) => Promise<void>): AdminCommand {
  return { spec: spec as CommandArgs<Flags>, description, run: run as unknown as AdminCommand["run"] };
}

/** `pgbg migrate [--status]`. */
const migrateCommand = adminCommand(
  migrateArgs,
  "Apply pgbg's schema to the database (safe to run concurrently); --status only shows the versions",
  ({ flags }, out) =>
    runCommand(flags, out, async (sql, schema) => {
      if (flags.status) return { schema, applied: await schemaVersion(sql, { schema }), available: LATEST_SCHEMA_VERSION };
      return migrate(sql, { schema });
    }, (r) => {
      if ("applied" in r) return `schema ${r.schema}: applied version ${r.applied}, available ${r.available}\n`;
      return r.from === r.to ? `schema ${r.schema} is up to date (version ${r.to})\n` : `schema ${r.schema} migrated from version ${r.from} to ${r.to}\n`;
    }),
);

/** `pgbg status`. */
const statusCommand = adminCommand(
  statusArgs,
  "Show tasks per queue and name (queued, scheduled, running, failed, oldest queued, last minute's outcomes), unregistered task names and live workers",
  ({ flags }, out) => runCommand(flags, out, (sql, schema) => status(sql, { schema }), formatStatus),
);

/** `pgbg list`. */
const listCommand = adminCommand(
  listArgs,
  "List tasks, oldest first, with their attempts and last error; a full page ends with the command for the next",
  ({ flags }, out) =>
    flags.flow !== undefined
      ? runCommand(flags, out, (sql, schema) => getFlow(sql, flags.flow!, { schema }), (flow) => formatFlow(flags.flow!, flow), (flow) => flow ? undefined : `no flow ${flags.flow}`)
      : runCommand(flags, out, (sql, schema) => listTasks(sql, {
        schema, state: flags.state, name: flags.task, queue: flags.queue, key: flags.key, after: flags.after, limit: flags.limit,
      }), formatTaskList),
);

/** `pgbg retry`. */
const retryCommand = adminCommand(
  retryArgs,
  "Queue failed tasks again, due now, with their attempts reset: the given ids, or --all-failed",
  ({ flags, positionals: ids }, out) =>
    runCommand(flags, out, async (sql, schema) => {
      const retried = await retry(sql, flags["all-failed"] ? { allFailed: true, name: flags.task } : ids, { schema });
      const done = new Set(retried);
      return { retried, notRetried: ids.filter((id) => !done.has(id)) };
    }, (r) => `${r.retried.length ? `retried ${r.retried.length} task(s): ${r.retried.join(", ")}` : "retried no task"}\n`,
    (r) => r.notRetried.length ? `not retried (not failed, unknown, or its key is pending again): ${r.notRetried.join(", ")}` : undefined),
);

/** `pgbg cancel`. */
const cancelCommand = adminCommand(
  cancelArgs,
  "Delete queued or failed tasks; a running task's attempt is aborted through its worker and the task deleted when the attempt ends",
  ({ flags, positionals: ids }, out) =>
    runCommand(flags, out, (sql, schema) => cancel(sql, ids, { schema }), (r) =>
      [
        r.deleted.length ? `deleted ${r.deleted.join(", ")}\n` : "",
        r.signalled.length ? `signalled ${r.signalled.join(", ")} (running: deleted when the attempt ends)\n` : "",
      ].join(""), (r) => r.notFound.length ? `no such task: ${r.notFound.join(", ")}` : undefined),
);

/** `pgbg enqueue`. */
const enqueueCommand = adminCommand(
  enqueueArgs,
  "Enqueue one task, its input validated by the task's schema as enqueue() does",
  ({ flags, positionals: [name, text] }, out) => {
    let input: unknown;
    try {
      input = JSON.parse(text);
    } catch (error) {
      throw new UsageError(`the input is not valid JSON: ${(error as Error).message}`);
    }
    return runCommand(flags, out, async (sql, schema) => {
      const tasks = await loadTasks(flags.tasks, process.cwd());
      const task = tasks.get(name);
      if (!task) throw new UsageError(`no task named ${JSON.stringify(name)} in ${flags.tasks.join(", ")} (defined: ${[...tasks.keys()].join(", ")})`);
      const { delay, queue, key, priority } = flags;
      const id = await enqueue(sql, task, input, { schema, delay, queue, key, priority: priority === undefined ? undefined : Number(priority) });
      return { id };
    }, (r) => `enqueued task ${r.id}\n`);
  },
);

/** `pgbg pause`. */
const pauseCommand = adminCommand(
  pauseArgs,
  "Pause queues: no worker claims their tasks until resumed; running tasks finish, enqueues still work",
  ({ flags, positionals: queues }, out) =>
    runCommand(flags, out, (sql, schema) => pauseQueue(sql, queues, { schema }), (r) =>
      r.map((p) => `paused ${p.queue} (since ${p.pausedAt.toISOString()})\n`).join("")),
);

/** `pgbg resume`. */
const resumeCommand = adminCommand(
  resumeArgs,
  "Resume paused queues: their due tasks start at once",
  ({ flags, positionals: queues }, out) =>
    runCommand(flags, out, async (sql, schema) => {
      const resumed = await resumeQueue(sql, queues, { schema });
      return { resumed, notPaused: queues.filter((q) => !resumed.includes(q)) };
    }, (r) => [
      r.resumed.length ? `resumed ${r.resumed.join(", ")}\n` : "",
      r.notPaused.length ? `not paused: ${r.notPaused.join(", ")}\n` : "",
    ].join("")),
);

/** `pgbg limit`. */
const limitCommand = adminCommand(
  limitArgs,
  "Set a queue's concurrency limit (with --per-group, each group's): at most N of its tasks run at once across every worker and host; off removes it",
  ({ flags, positionals: [queue, limit] }, out) => {
    const n = limit === "off" ? null : Number(limit);
    if (flags["per-group"]) {
      return runCommand(flags, out, (sql, schema) => setGroupConcurrency(sql, queue, n, { schema }), (r) =>
        r.groupConcurrency === null ? `queue ${r.queue} has no group limit\n` : `queue ${r.queue}: at most ${r.groupConcurrency} of each group running at once\n`);
    }
    return runCommand(flags, out, (sql, schema) => setQueueConcurrency(sql, queue, n, { schema }), (r) =>
      r.concurrency === null ? `queue ${r.queue} has no concurrency limit\n` : `queue ${r.queue}: at most ${r.concurrency} running at once\n`);
  },
);

/** `pgbg rate`. */
const rateCommand = adminCommand(
  rateArgs,
  "Set a queue's rate limit (with --per-group, each group's): at most N of its tasks start in any INTERVAL across every worker and host; off removes it",
  ({ flags, positionals: [queue, rate] }, out) => {
    const limit = rate === "off" ? null : parseRate(rate)!;
    if (flags["per-group"]) {
      return runCommand(flags, out, (sql, schema) => setGroupRateLimit(sql, queue, limit, { schema }), (r) =>
        r.groupRate === null ? `queue ${r.queue} has no group rate limit\n` : `queue ${r.queue}: at most ${r.groupRate.limit} starts of each group per ${formatDuration(r.groupRate.intervalMs)}\n`);
    }
    return runCommand(flags, out, (sql, schema) => setQueueRateLimit(sql, queue, limit, { schema }), (r) =>
      r.rate === null ? `queue ${r.queue} has no rate limit\n` : `queue ${r.queue}: at most ${r.rate.limit} starts per ${formatDuration(r.rate.intervalMs)}\n`);
  },
);

/** `pgbg run-schedule`. */
const runScheduleCommand = adminCommand(
  runScheduleArgs,
  "Fire a schedule once now, outside its cron: a host running it enqueues the task within a second",
  ({ flags, positionals: [name] }, out) =>
    runCommand(flags, out, async (sql, schema) => {
      await runSchedule(sql, name, { schema });
      return { schedule: name, requested: true };
    }, (r) => `asked for a run of schedule ${r.schedule}\n`),
);

/** `pgbg compact`. */
const compactCommand = adminCommand(
  compactArgs,
  "Rebuild the task table's indexes (REINDEX CONCURRENTLY) when a drained queue left them bloated, as the service does; needs the table's owner",
  ({ flags }, out) =>
    runCommand(flags, out, (sql, schema) => compactIndexes(sql, { schema, force: flags.force }), formatCompaction, (r) => {
      if (r.outcome === "locked") return `another pgbg is compacting the indexes of ${r.schema}.task now; try again later`;
      if (r.outcome === "not-permitted") return `not permitted: ${r.message}; rebuilding the indexes needs the owner of ${r.schema}.task: run pgbg compact as that role`;
      return undefined;
    }),
);

/** The operators' commands, by name. */
const commands = {
  migrate: migrateCommand,
  status: statusCommand,
  list: listCommand,
  retry: retryCommand,
  cancel: cancelCommand,
  enqueue: enqueueCommand,
  pause: pauseCommand,
  resume: resumeCommand,
  limit: limitCommand,
  rate: rateCommand,
  "run-schedule": runScheduleCommand,
  compact: compactCommand,
};

/** An operators' command's name. */
export type AdminCommandName = keyof typeof commands;

/**
 * The operators' commands as `pgbg`'s subcommands: each prints to stdout and
 * exits 0, or prints its one line to stderr and exits 1 or 2.
 */
export const adminCommands = Object.fromEntries(Object.entries(commands).map(([name, command]) => [
  name,
  defineCliCommand(command.spec, command.description, async (args) => {
    try {
      await command.run(args, process.stdout);
    } catch (error) {
      failWith(error);
    }
    process.exit(0);
  }),
])) as Record<AdminCommandName, CommandDef<ArgsDef>>;

/**
 * Runs an operators' command in this process, as `pgbg name argv…` would
 * with `env` for its environment, without exiting: its exit code and what it
 * printed. The same parsing and the same run as the binary's (tests use it:
 * a spawned `pgbg` costs about 0.7 s of CPU before it does anything).
 */
export async function runAdmin(name: AdminCommandName, argv: readonly string[], env: Env): Promise<{ code: number; stdout: string; stderr: string }> {
  const command = commands[name];
  let stdout = "";
  try {
    await command.run(parseArgs(argv, command.spec, env), { write: (text: string) => (stdout += text) });
    return { code: 0, stdout, stderr: "" };
  } catch (error) {
    return { code: exitCodeOf(error), stdout, stderr: `pgbg: ${describeError(error).message.split("\n")[0]}\n` };
  }
}
