/**
 * The entry point of a worker subprocess, started by `pgbg serve`: a thin
 * host of the worker engine (lib/worker.ts). It reads its settings from
 * PGBG_WORKER (JSON) and the database URL from DATABASE_URL, both set by the
 * supervisor, loads the tasks modules, and runs a Worker until told to stop.
 *
 * Exit codes (WORKER_EXIT, cli/config.ts): 0 stopped, 3 could not start, 4
 * retired (a task ignored its timeout), 5 lost (its heartbeat failed for
 * its self-stop time, or another host declared it dead; a "lost" message
 * says which), 6 crashed (an exception nothing caught), 7 left to hand back
 * (past its stop's bound; a "leftToHandBack" message says so).
 *
 * @module
 */
import { hostname } from "node:os";
import process from "node:process";
import { connect } from "./client.ts";
import { describeError, type Logger } from "../lib/log.ts";
import { defaults } from "../lib/config.ts";
import { Maintenance } from "../lib/maintenance.ts";
import { loadTaskModules } from "../lib/registry.ts";
import { Scheduler } from "../lib/scheduler.ts";
import { runtimeName } from "../lib/runtime.ts";
import { type LostCause, Worker, type WorkerReport, type WorkerSettings } from "../lib/worker.ts";
import { type LogLevel, WORKER_EXIT, WORKER_STOP_MARGIN_MS } from "./config.ts";
import { isConnectionError } from "./connection-error.ts";
import { createLogger } from "./log.ts";

/** What the supervisor passes to a worker in PGBG_WORKER. */
export interface WorkerSpec {
  settings: WorkerSettings;
  /** The database URL reaches a pooler in transaction mode; the direct URL to LISTEN on, if any, is PGBG_LISTEN_URL. */
  transactionPooling: boolean;
  tasks: string[];
  cwd: string;
  workerId: string;
  supervisorId: string;
  index: number;
  logLevel: LogLevel;
  logFormat: "pretty" | "json";
}

/** Messages a worker sends its supervisor over IPC. */
export type WorkerMessage =
  | { type: "ready"; tasks: string[] }
  | { type: "alive"; running: number }
  | { type: "stats"; report: WorkerReport }
  /** `unreachable`: it could not start because the database could not be reached; the supervisor restarts it once the database answers. */
  | { type: "fatal"; message: string; unreachable?: boolean }
  /** Sent just before exiting with code 5; `unreachable`: its tasks did not fail, their attempts need not count. */
  | { type: "lost"; cause: LostCause; message: string }
  | { type: "retiring"; message: string }
  /** Sent just before exiting with code 7 (WORKER_EXIT.leftToHandBack): what it holds did not fail, its attempts need not count. */
  | { type: "leftToHandBack" };

function send(message: WorkerMessage): void {
  if (process.send && process.connected) process.send(message);
}

/** Sends `message` (when connected), then exits with `code`; exits anyway after `boundMs`. */
function sendThenExit(message: WorkerMessage, code: number, boundMs: number): void {
  const exit = () => process.exit(code);
  if (!process.send || !process.connected) return exit();
  process.send(message, exit);
  setTimeout(exit, boundMs).unref();
}

/**
 * An exception nothing caught (a task's timer callback that throws, or
 * postgres.js when a connection drops with a write queued,
 * porsager/postgres#1154) leaves this process in a state nobody can vouch
 * for: say why in one line and exit at once. The supervisor releases this
 * worker's tasks and starts a fresh one, as after any crash.
 */
function exitOnUncaught(log: Logger): void {
  let crashed = false;
  const crash = (error: unknown) => {
    if (crashed) return;
    crashed = true;
    const message = `uncaught error: ${describeError(error).message}`;
    log.error(`${message}; exiting so that a fresh worker takes over`);
    // Not marked unreachable even when it is a connection error: a task's
    // own client (a third-party API in a timer) throws those too, and a
    // crash loop must keep its back-off.
    sendThenExit({ type: "fatal", message }, WORKER_EXIT.crashed, 500);
  };
  process.on("uncaughtException", crash);
  process.on("unhandledRejection", crash);
}

/**
 * Stops the worker on the supervisor's "stop" message, on its own signals
 * (Ctrl-C reaches the whole process group), and when its supervisor
 * vanishes (the IPC channel closes). Before the worker exists (tasks modules
 * still loading) nothing is claimed, so it exits at once: a module that
 * never finishes loading must not hold the shutdown. Once stopping, it
 * exits by `boundMs` whatever it waits for.
 */
function stopOnRequest(worker: () => Worker | undefined, boundMs: number, log: Logger): void {
  let stopping = false;
  const stop = () => {
    const w = worker();
    if (!w) process.exit(WORKER_EXIT.stopped);
    w.stop();
    if (stopping) return;
    stopping = true;
    // Whatever the database does (a connect that hangs for its 30 s
    // timeout, a server that never answers): the supervisor, or whoever
    // rescues the leases of an orphan, takes over what is left.
    setTimeout(() => {
      const message = `still stopping ${boundMs} ms after being asked to; exiting now, `;
      if (!worker()?.mayHandBack) {
        log.warn(`${message}leaving its unwritten outcomes to the release of its tasks`);
        process.exit(WORKER_EXIT.stopped);
      }
      log.warn(`${message}its supervisor to hand back what it holds, uncounted, as this worker would have`);
      sendThenExit({ type: "leftToHandBack" }, WORKER_EXIT.leftToHandBack, 200);
    }, boundMs).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  process.on("message", (m: { type?: string }) => m?.type === "stop" && stop());
  process.on("disconnect", stop);
  // A supervisor that died while this process was starting closed the
  // channel before the listener above existed, and "disconnect" will not
  // come again: without this check the worker would run on with nobody to stop it.
  if (process.send && !process.connected) stop();
}

/**
 * The worker's clients: a pool for claims and write-backs, one connection
 * for its heartbeat, and under transaction pooling one direct connection to
 * LISTEN on when PGBG_LISTEN_URL is set (false: the worker polls).
 */
function clientsOf(spec: WorkerSpec) {
  const url = process.env.DATABASE_URL ?? "";
  const listenUrl = process.env.PGBG_LISTEN_URL;
  const name = `pgbg worker ${spec.index}`;
  const pooled = spec.transactionPooling;
  return {
    sql: connect(url, 4, name, pooled),
    beatSql: connect(url, 1, `${name} heartbeat`, pooled),
    listenSql: !pooled ? undefined : listenUrl ? connect(listenUrl, 1, `${name} listen`, false) : (false as const),
  };
}

async function main(): Promise<number> {
  const spec = JSON.parse(process.env.PGBG_WORKER ?? "null") as WorkerSpec | null;
  if (!spec) {
    console.error("pgbg worker: PGBG_WORKER is not set; workers are started by `pgbg serve`");
    return 2;
  }
  const log = createLogger(spec.logLevel, spec.logFormat, `worker ${spec.index}`);
  let worker: Worker | undefined;
  stopOnRequest(() => worker, spec.settings.shutdownTimeout + WORKER_STOP_MARGIN_MS, log);
  exitOnUncaught(log);
  const alive = setInterval(() => send({ type: "alive", running: worker?.running ?? 0 }), spec.settings.timings.heartbeatInterval);
  let clients: ReturnType<typeof clientsOf> | undefined;
  let scheduler: Maintenance | undefined;
  try {
    const { tasks, schedules } = await loadTaskModules(spec.tasks, spec.cwd);
    clients = clientsOf(spec);
    if (schedules.length) scheduler = new Maintenance([new Scheduler(clients.sql, spec.settings.schema, schedules, defaults.scheduleInterval, log)], log);
    worker = new Worker({
      ...spec.settings,
      ...clients,
      tasks: [...tasks.values()],
      identity: { workerId: spec.workerId, hostId: spec.supervisorId, hostname: hostname(), runtime: runtimeName(), pid: process.pid },
      log,
      overdue: "retire",
      onReady: () => send({ type: "ready", tasks: [...tasks.keys()] }),
      // Its tasks may be released to other workers now: end every one of
      // them, including any that ignores its signal, by ending the process.
      onLost: (cause, reason) => sendThenExit({ type: "lost", cause, message: `lost: ${reason}` }, WORKER_EXIT.lost, 200),
      onReport: (report) => send({ type: "stats", report }),
    });
    const started = worker.start();
    scheduler?.start();
    const exit = await started;
    if (exit === "retired") send({ type: "retiring", message: "a task ignored its abort signal past its timeout" });
    return WORKER_EXIT[exit];
  } catch (error) {
    const message = describeError(error).message;
    log.error(`worker could not start: ${message}`);
    send({ type: "fatal", message, unreachable: isConnectionError(error) });
    return WORKER_EXIT.startFailed;
  } finally {
    clearInterval(alive);
    await scheduler?.stop(1_000);
    await Promise.all([clients?.sql.end({ timeout: 1 }), clients?.beatSql.end({ timeout: 1 }), clients?.listenSql && clients.listenSql.end({ timeout: 1 })])
      .catch(() => {});
  }
}

const code = await main();
// Exit even if a task that ignored its signal still holds the event loop.
process.exit(code);
