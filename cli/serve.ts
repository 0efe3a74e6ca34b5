/**
 * The supervisor of `pgbg serve`: keeps N worker subprocesses of this runtime
 * alive, restarting those that die or stop answering (with a back-off for
 * those that die at start-up), releases the tasks of dead workers at once,
 * rescues expired leases and the tasks of workers whose heartbeats stopped,
 * compacts the task table's indexes when a drained queue left them bloated,
 * and shuts down gracefully on SIGTERM/SIGINT.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { extname } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { type CompactResult, compactIndexes } from "../lib/compact.ts";
import { handBackWorkerTasks, releaseWorkerTasks, reapStaleWorkers, removeWorkers, rescueExpiredLeases } from "../lib/lease.ts";
import { describeError, type Logger } from "../lib/log.ts";
import { ServiceMetrics } from "../lib/metrics.ts";
import { assertSchemaCurrent, migrate } from "../lib/migrate.ts";
import { scriptCommand } from "../lib/runtime.ts";
import { deleteCancelledTasks, pruneTaskCounts } from "../lib/upkeep.ts";
import { VERSION } from "../lib/version.ts";
import type { ServeConfig } from "./config.ts";
import { type MetricsServer, startMetricsServer } from "./metrics-server.ts";
import { formatBytes } from "./table.ts";
import type { WorkerMessage, WorkerSpec } from "./worker.ts";

interface Slot {
  index: number;
  child?: ChildProcess;
  workerId?: string;
  /** performance.now() of its last message, of its start, and of its "ready". */
  lastSeen: number;
  startedAt: number;
  readyAt?: number;
  lastError?: string;
  /** SIGKILL sent to this child: not again at every tick. */
  killed?: boolean;
  /** The child said it lost the database (code 5, "unreachable"): its attempts do not count. */
  handBack?: boolean;
  failures: number;
  restartTimer?: ReturnType<typeof setTimeout>;
}

/** Back-off before restarting a worker that failed `failures` times in a row at start-up. */
export function restartDelay(failures: number): number {
  return failures <= 0 ? 0 : Math.min(1000 * 2 ** (failures - 1), 30_000);
}

// A worker must have run this long after start-up for its death not to count
// as a start-up failure (which is what the back-off is for).
const HEALTHY_AFTER = 5_000;

/** Runs the supervisor until it is stopped by a signal; resolves with the exit code. */
export async function supervise(config: ServeConfig, databaseUrl: string, log: Logger): Promise<number> {
  // Three: an index compaction holds one connection for as long as its
  // REINDEX takes, and the checks and metrics scrapes must not wait for it.
  // deno-lint-ignore no-explicit-any
  const sql: postgres.Sql<any> = postgres(databaseUrl, { max: 3, onnotice: () => {}, connection: { application_name: "pgbg supervisor" } });
  const supervisorId = randomUUID();
  const schema = config.schema;
  // The service's signal handlers are installed once the schema is ready.
  // Until then a SIGTERM would kill the process by signal (Node's default)
  // while it waits for the database; stop it cleanly, with status 0, instead.
  let earlyStop: string | undefined;
  const onEarlyTerm = () => (earlyStop ??= "SIGTERM");
  const onEarlyInt = () => (earlyStop ??= "SIGINT");
  process.on("SIGTERM", onEarlyTerm);
  process.on("SIGINT", onEarlyInt);
  const stopBeforeStart = () => earlyStop ?? (launcherGone() ? `${launcherName()} exited` : undefined);
  const ready = await prepareSchema(sql, config, log, stopBeforeStart).finally(() => {
    process.off("SIGTERM", onEarlyTerm);
    process.off("SIGINT", onEarlyInt);
  });
  if (!ready || earlyStop) {
    log.info(`${stopBeforeStart()} before the service started; stopping`);
    await sql.end({ timeout: 2 }).catch(() => {});
    return 0;
  }

  const metrics = new ServiceMetrics();
  let metricsServer: MetricsServer | undefined;
  if (config.metricsPort !== null) {
    try {
      metricsServer = await startMetricsServer(metrics, sql, schema, config.metricsHost, config.metricsPort, log);
    } catch (error) {
      await sql.end({ timeout: 2 }).catch(() => {});
      throw new Error(`cannot serve metrics on ${config.metricsHost}:${config.metricsPort}: ${describeError(error).message}`);
    }
    log.info(`metrics at http://${config.metricsHost}:${metricsServer.port}/metrics`, { metricsPort: metricsServer.port });
  }

  const silentAfter = Math.max(10 * config.checkInterval, 10_000);
  // Loading the tasks modules may block a worker's event loop for a while
  // (a large module graph, a TypeScript loader on a busy machine), so a
  // worker is judged by its silence only once it is ready; until then it
  // gets this long to become ready at all (a module whose top-level await
  // never settles would otherwise hold its slot for good).
  const readyWithin = Math.max(silentAfter, 60_000);
  // Twice the silence after which a supervisor kills its own worker; a
  // worker whose heartbeat fails stops itself at 40 % of it. Either way a
  // worker is gone before any other supervisor may release its tasks.
  const staleAfter = 2 * silentAfter;
  const workerScript = workerModule(import.meta.url);
  const slots: Slot[] = Array.from({ length: config.workers }, (_, index) => ({ index: index + 1, lastSeen: 0, startedAt: 0, failures: 0 }));
  /** Workers that ended with tasks perhaps still leased: whether their interrupted attempts count. */
  const deadWorkers = new Map<string, boolean>();
  const allWorkerIds: string[] = [];
  let stopping = false;
  let exitCode = 0;
  let resolveDone: (code: number) => void = () => {};
  const done = new Promise<number>((r) => (resolveDone = r));

  const startWorker = (slot: Slot) => {
    slot.restartTimer = undefined;
    if (stopping) return;
    const workerId = randomUUID();
    allWorkerIds.push(workerId);
    const spec: WorkerSpec = {
      settings: {
        schema, queues: config.queues, concurrency: config.concurrency, timeout: config.timeout, retryDelay: config.retryDelay,
        maxAttempts: config.maxAttempts, idleSleep: config.idleSleep, heartbeatInterval: config.checkInterval, staleAfter, shutdownTimeout: config.shutdownTimeout,
      },
      tasks: config.tasks, cwd: process.cwd(), workerId, supervisorId, index: slot.index, logLevel: config.logLevel, logFormat: config.logFormat,
    };
    const { command, args } = scriptCommand(workerScript);
    // The URL travels in the environment, never on a command line (ps shows those).
    const child = spawn(command, args, {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      env: { ...process.env, DATABASE_URL: databaseUrl, PGBG_WORKER: JSON.stringify(spec) },
    });
    const now = performance.now();
    Object.assign(slot, { child, workerId, lastSeen: now, startedAt: now, readyAt: undefined, lastError: undefined, killed: false, handBack: false });
    child.on("message", (message: WorkerMessage) => {
      slot.lastSeen = performance.now();
      if (message.type === "ready") {
        slot.readyAt = performance.now();
        log.debug(`worker ${slot.index} ready (pid ${child.pid})`, { worker: slot.index, pid: child.pid, tasks: message.tasks });
      } else if (message.type === "stats") {
        metrics.add(slot.index, message.report);
      } else if (message.type === "fatal" || message.type === "retiring") {
        slot.lastError = message.message;
      } else if (message.type === "lost") {
        slot.lastError = message.message;
        slot.handBack = message.cause === "unreachable";
      }
    });
    child.on("error", (error) => {
      log.error(`worker ${slot.index} could not be started: ${error.message}`);
      // A process that never started emits no exit: treat it as one.
      if (child.pid === undefined && slot.child === child) onExit(slot, workerId, null, null);
    });
    child.on("exit", (code, signal) => {
      if (slot.child === child) onExit(slot, workerId, code, signal);
    });
  };

  const onExit = (slot: Slot, workerId: string, code: number | null, signal: NodeJS.Signals | null) => {
    slot.child = undefined;
    // A worker that said it stopped because its heartbeat could not get
    // through (code 5) was not ended by its task: that attempt is not
    // counted. Any other exit, a task's process.exit(5) included, counts.
    deadWorkers.set(workerId, !(code === 5 && slot.handBack));
    metrics.workerExited(slot.index);
    if (stopping) {
      if (slots.every((s) => !s.child)) resolveDone(exitCode);
      return;
    }
    void releaseDead();
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const why = slot.lastError ? `: ${slot.lastError}` : "";
    const healthy = slot.readyAt !== undefined && performance.now() - slot.readyAt >= HEALTHY_AFTER;
    slot.failures = healthy ? 0 : slot.failures + 1;
    const delay = restartDelay(slot.failures);
    log[healthy ? "warn" : "error"](`worker ${slot.index} ${how}${why}; restarting${delay ? ` in ${delay} ms` : ""}`, {
      worker: slot.index, code, signal, failures: slot.failures,
    });
    metrics.workerRestarts++;
    slot.restartTimer = setTimeout(() => startWorker(slot), delay);
  };

  /** Releases the tasks of dead workers; kept for the next check when the database is unreachable. */
  const releaseDead = async () => {
    const ids = [...deadWorkers.keys()];
    if (!ids.length) return;
    try {
      const error = { name: "WorkerDied", message: "the task's worker process died during the attempt" };
      const released = [
        ...await handBackWorkerTasks(sql, schema, ids.filter((id) => !deadWorkers.get(id))),
        ...await releaseWorkerTasks(sql, schema, ids.filter((id) => deadWorkers.get(id)), config.maxAttempts, error),
      ];
      await removeWorkers(sql, schema, ids);
      for (const id of ids) deadWorkers.delete(id);
      if (released.length) log.warn(`released ${released.length} task(s) of a dead worker`, { tasks: released.map((t) => t.id) });
    } catch (error) {
      log.warn("could not release the tasks of a dead worker yet; will retry", { error: describeError(error).message });
    }
  };

  // Index compaction: at most one in flight, started by the check but never
  // awaited there (a REINDEX CONCURRENTLY waits for older transactions),
  // first a minute after start (or the interval, when shorter), then once per
  // interval. A role that may not rebuild the indexes is warned about once.
  let compaction: Promise<void> | undefined;
  let compactAt = config.compactInterval > 0 ? Date.now() + Math.min(config.compactInterval, 60_000) : Number.POSITIVE_INFINITY;
  const reportCompaction = (r: CompactResult) => {
    const fields = {
      outcome: r.outcome, indexBytesBefore: r.before.indexBytes, indexBytesAfter: r.after?.indexBytes, liveRows: r.before.liveRows,
      durationMs: r.durationMs, dropped: r.dropped,
    };
    if (r.dropped.length) log.info(`dropped ${r.dropped.length} invalid index(es) an interrupted REINDEX CONCURRENTLY left: ${r.dropped.join(", ")}`, fields);
    if (r.outcome === "compacted") {
      log.info(`compacted the task table's indexes: ${formatBytes(r.before.indexBytes)} → ${formatBytes(r.after!.indexBytes)} (~${r.before.liveRows} live rows) in ${r.durationMs} ms`, fields);
    } else if (r.outcome === "locked") {
      log.debug("another pgbg is compacting the task table's indexes; skipped", fields);
    } else if (r.outcome === "not-permitted") {
      compactAt = Number.POSITIVE_INFINITY;
      log.warn(
        `cannot compact the task table's indexes (${formatBytes(r.before.indexBytes)} for ~${r.before.liveRows} live rows): ${r.message}. ` +
          `Rebuilding them needs the owner of ${schema}.task: run \`pgbg compact\` as the owner, or set --compact-interval off. Not trying again.`,
        fields,
      );
    }
  };
  const startCompaction = () => {
    if (compaction || Date.now() < compactAt) return;
    compactAt = Date.now() + config.compactInterval;
    compaction = compactIndexes(sql, { schema })
      // At shutdown its connection is closed under it: nothing to report then.
      .then((r) => {
        if (!stopping) reportCompaction(r);
      }, (error) => {
        if (!stopping) log.warn("index compaction failed; will retry", { error: describeError(error).message });
      })
      .finally(() => (compaction = undefined));
  };

  /**
   * Kills workers that stopped answering or never became ready. Run at every
   * tick, apart from the database checks (which may hang) and while
   * stopping too: leases are sized on the promise that a worker whose event
   * loop is blocked dies within silentAfter plus one check interval.
   */
  const killSilent = () => {
    const now = performance.now();
    for (const slot of slots) {
      if (!slot.child || slot.killed || slot.child.exitCode !== null || slot.child.signalCode !== null) continue;
      if (slot.readyAt === undefined && now - slot.startedAt > readyWithin) {
        slot.lastError = `not ready within ${readyWithin} ms (its tasks modules did not finish loading)`;
        log.error(`worker ${slot.index} (pid ${slot.child.pid}) is ${slot.lastError}; killing it`);
      } else if (slot.readyAt !== undefined && now - slot.lastSeen > silentAfter) {
        log.error(`worker ${slot.index} (pid ${slot.child.pid}) has not answered for ${silentAfter} ms; killing it`);
      } else {
        continue;
      }
      slot.killed = true;
      slot.child.kill("SIGKILL");
    }
  };

  let checking = false;
  // When the database was unreachable, no worker could heartbeat either:
  // heartbeats are judged only after a worker's full stale time of
  // reachable database (ReapStaleWorkers). Monotonic: a wall clock that
  // steps forward must not make a short reach look long.
  let reachableSince = performance.now();
  let prunedAt = 0;
  const check = async () => {
    if (checking || stopping) return;
    checking = true;
    try {
      await releaseDead();
      const rescued = await rescueExpiredLeases(sql, schema, config.maxAttempts);
      if (reachableSince === Number.POSITIVE_INFINITY) reachableSince = performance.now();
      if (rescued.length) log.warn(`rescued ${rescued.length} task(s) whose lease expired`, { tasks: rescued.map((t) => t.id) });
      const cancelled = await deleteCancelledTasks(sql, schema);
      if (cancelled.length) log.info(`deleted ${cancelled.length} cancelled task(s) whose attempt had ended`, { tasks: cancelled });
      if (Date.now() - prunedAt >= 60_000) {
        await pruneTaskCounts(sql, schema);
        prunedAt = Date.now();
      }
      const reaped = await reapStaleWorkers(sql, schema, staleAfter, config.maxAttempts, supervisorId, performance.now() - reachableSince);
      if (reaped.length) log.warn(`released ${reaped.length} task(s) of workers whose heartbeat stopped`, { tasks: reaped.map((t) => t.id) });
      startCompaction();
    } catch (error) {
      reachableSince = Number.POSITIVE_INFINITY;
      log.warn("supervisor check failed; will retry", { error: describeError(error).message });
    } finally {
      checking = false;
    }
  };
  const checker = setInterval(() => {
    if (!stopping && launcherGone()) onSignal(`${launcherName()} exited`);
    killSilent();
    void check();
  }, config.checkInterval);

  const onSignal = (signal: string) => {
    if (stopping) {
      log.warn(`second ${signal}: stopping now`);
      exitCode = 1;
      // Resolves once every killed worker has exited (onExit), so none outlives the supervisor.
      for (const slot of slots) slot.child?.kill("SIGKILL");
      if (slots.every((s) => !s.child)) resolveDone(exitCode);
      setTimeout(() => resolveDone(exitCode), 5_000).unref();
      return;
    }
    stopping = true;
    log.info(`${signal}: stopping; running tasks may finish for up to ${config.shutdownTimeout} ms`);
    for (const slot of slots) {
      clearTimeout(slot.restartTimer);
      if (slot.child?.connected) slot.child.send({ type: "stop" });
      else slot.child?.kill("SIGTERM");
    }
    if (slots.every((s) => !s.child)) resolveDone(exitCode);
    // Workers bound their own shutdown; this only guards against one that hangs.
    setTimeout(() => {
      for (const slot of slots) {
        if (slot.child) {
          log.error(`worker ${slot.index} did not stop in time; killing it`);
          slot.child.kill("SIGKILL");
        }
      }
    }, Math.min(config.shutdownTimeout + 15_000, 2_147_483_647)).unref();
  };
  const onTerm = () => onSignal("SIGTERM");
  const onInt = () => onSignal("SIGINT");
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);

  log.info(
    `serving: ${config.workers} worker(s) × ${config.concurrency} task(s), queues ${config.queues?.join(",") ?? "(all)"}, schema ${schema}`,
    { workers: config.workers, concurrency: config.concurrency, queues: config.queues, schema, supervisorId },
  );
  for (const slot of slots) startWorker(slot);

  const code = await done;
  clearInterval(checker);
  process.off("SIGTERM", onTerm);
  process.off("SIGINT", onInt);
  // Tasks of workers that were killed rather than stopped: release them now.
  for (const id of allWorkerIds) if (!deadWorkers.has(id)) deadWorkers.set(id, true);
  await Promise.race([releaseDead(), new Promise((r) => setTimeout(r, 3_000))]);
  await metricsServer?.close();
  // A compaction still running is not waited for: its connection is closed
  // at once. The server finishes the rebuild, or abandons it and leaves an
  // invalid _ccnew index that the next compaction drops.
  await sql.end({ timeout: compaction ? 0 : 2 }).catch(() => {});
  log.info(code === 0 ? "stopped" : "stopped at once; unfinished tasks were released");
  return code;
}

/**
 * The worker entry point beside this module: `worker.ts` in the sources,
 * `worker.js` once built for npm. Loaded from JSR, the worker is the
 * package's `./worker` export of the same version: run from its https URL it
 * would lack the package's import map.
 */
export function workerModule(selfUrl: string): string {
  if (selfUrl.startsWith("https://jsr.io/")) return `jsr:@pgbg/pgbg@${VERSION}/worker`;
  const url = new URL(`./worker${extname(new URL(selfUrl).pathname)}`, selfUrl);
  return url.protocol === "file:" ? fileURLToPath(url) : url.href;
}

/**
 * True for errors a later retry may cure: the server is down, starting or
 * restarting (SQLSTATE classes 08 and 57P), or the network failed (node
 * errno codes, postgres.js' CONNECT_TIMEOUT). A wrong password, an unknown
 * database or a pgbg schema error is final.
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  if (code.startsWith("PGBG_")) return false;
  if (/^[0-9A-Z]{5}$/.test(code)) return code.startsWith("08") || code.startsWith("57P");
  return true;
}

/**
 * Migrates (or checks) the schema, waiting with back-off while the database
 * is unreachable. False when `stopRequested` names a reason (a signal, or
 * the launcher exited) during the wait.
 */
// deno-lint-ignore no-explicit-any
async function prepareSchema(sql: postgres.Sql<any>, config: ServeConfig, log: Logger, stopRequested: () => string | undefined): Promise<boolean> {
  for (let delay = 500; ; delay = Math.min(delay * 2, 15_000)) {
    try {
      if (config.migrate) await migrate(sql, { schema: config.schema });
      else await assertSchemaCurrent(sql, { schema: config.schema });
      return true;
    } catch (error) {
      if (!isConnectionError(error)) throw error;
      log.error(`cannot reach the database (${describeError(error).message}); retrying in ${delay} ms`);
      for (const end = Date.now() + delay; Date.now() < end;) {
        if (stopRequested()) return false;
        await new Promise((r) => setTimeout(r, Math.min(250, end - Date.now())));
      }
    }
  }
}

// npx (npm exec) runs the command under a shell that dies with it on
// SIGTERM, leaving the service running with nobody to stop it. When a
// package runner started this process, its exit counts as SIGTERM. Read at
// start-up, before anything can outlive the runner.
const launcher = process.env.npm_command === "exec" ? process.ppid : undefined;

function launcherGone(): boolean {
  return launcher !== undefined && process.ppid !== launcher;
}

function launcherName(): string {
  return process.env.npm_lifecycle_event ?? "npx";
}
