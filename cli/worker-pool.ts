/**
 * The supervisor's worker pool: keeps N worker subprocesses of this runtime
 * alive. It spawns them, reads their IPC messages, restarts those that die
 * (with a back-off for those that die at start-up), kills those that stop
 * answering, and stops them on request. What their deaths leave leased is
 * the dead-worker releaser's (lib/maintenance/dead-worker-releaser.ts).
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { extname } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import type { Liveness } from "../lib/liveness.ts";
import type { Logger } from "../lib/log.ts";
import type { DeadWorkerReleaser } from "../lib/maintenance/dead-worker-releaser.ts";
import type { ServiceMetrics } from "../lib/metrics.ts";
import { scriptCommand } from "../lib/runtime.ts";
import { VERSION } from "../lib/version.ts";
import { POOL_KILL_MARGIN_MS, type ServeConfig, WORKER_EXIT } from "./config.ts";
import { DatabaseWatch } from "./database-watch.ts";
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
  /**
   * The exit the child announced as one whose attempts do not count: 5
   * (lost, "unreachable": it lost the database) or 7 (left to hand back).
   */
  uncountedExit?: number;
  /** The child failed because the database could not be reached: it restarts as soon as the database answers (DatabaseWatch). */
  waitsForDatabase?: boolean;
  /** Started early by the DatabaseWatch and not healthy since: failing so again, it waits out its back-off (no restart loop on a database that answers probes but not workers). */
  startedByWatch?: boolean;
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

/** What the pool needs. */
export interface PoolOptions {
  config: ServeConfig;
  databaseUrl: string;
  supervisorId: string;
  timings: Liveness;
  releaser: DeadWorkerReleaser;
  metrics: ServiceMetrics;
  log: Logger;
}

/** N worker subprocesses, kept alive until stopped. */
export class WorkerPool {
  readonly #options: PoolOptions;
  readonly #slots: Slot[];
  readonly #script = workerModule(import.meta.url);
  /** Every worker this pool started: at the end, those not known dead are released too. */
  readonly #started: string[] = [];
  #stopping = false;
  #resolveDone: () => void = () => {};
  /** Resolves once every worker has exited after {@link stop} or {@link kill}. */
  readonly done = new Promise<void>((r) => (this.#resolveDone = r));

  readonly #watch: DatabaseWatch;

  constructor(options: PoolOptions) {
    this.#options = options;
    const probeEvery = Math.max(100, Math.min(options.config.checkInterval / 2, 1_000));
    this.#watch = new DatabaseWatch(options.databaseUrl, probeEvery, () => this.#databaseBack());
    this.#slots = Array.from({ length: options.config.workers }, (_, i) => ({ index: i + 1, lastSeen: 0, startedAt: 0, failures: 0 }));
  }

  /** Starts every worker. */
  start(): void {
    for (const slot of this.#slots) this.#spawn(slot);
  }

  /** Ids of every worker started, for the release at the end. */
  get workerIds(): readonly string[] {
    return this.#started;
  }

  #spawn(slot: Slot): void {
    slot.restartTimer = undefined;
    if (this.#stopping) return;
    const workerId = randomUUID();
    this.#started.push(workerId);
    const { command, args } = scriptCommand(this.#script);
    // The URL travels in the environment, never on a command line (ps shows those).
    const child = spawn(command, args, {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      env: { ...process.env, DATABASE_URL: this.#options.databaseUrl, ...listenEnv(this.#options.config), PGBG_WORKER: JSON.stringify(this.#spec(slot, workerId)) },
    });
    const now = performance.now();
    Object.assign(slot, { child, workerId, lastSeen: now, startedAt: now, readyAt: undefined, lastError: undefined, killed: false, uncountedExit: undefined, waitsForDatabase: false });
    child.on("message", (message: WorkerMessage) => this.#onMessage(slot, child, message));
    child.on("error", (error) => {
      this.#options.log.error(`worker ${slot.index} could not be started: ${error.message}`);
      // A process that never started emits no exit: treat it as one.
      if (child.pid === undefined && slot.child === child) this.#onExit(slot, workerId, null, null);
    });
    child.on("exit", (code, signal) => {
      if (slot.child === child) this.#onExit(slot, workerId, code, signal);
    });
  }

  #spec(slot: Slot, workerId: string): WorkerSpec {
    const c = this.#options.config;
    return {
      settings: {
        schema: c.schema, queues: c.queues, concurrency: c.concurrency, timeout: c.timeout, retryDelay: c.retryDelay,
        maxAttempts: c.maxAttempts, idleSleep: c.idleSleep, shutdownTimeout: c.shutdownTimeout, completedRetention: c.completedRetention,
        timings: this.#options.timings,
      },
      transactionPooling: c.transactionPooling, tasks: c.tasks, cwd: process.cwd(), workerId, supervisorId: this.#options.supervisorId, index: slot.index, logLevel: c.logLevel, logFormat: c.logFormat,
    };
  }

  #onMessage(slot: Slot, child: ChildProcess, message: WorkerMessage): void {
    slot.lastSeen = performance.now();
    if (message.type === "ready") {
      slot.readyAt = performance.now();
      this.#options.log.debug(`worker ${slot.index} ready (pid ${child.pid})`, { worker: slot.index, pid: child.pid, tasks: message.tasks });
    } else if (message.type === "stats") {
      this.#options.metrics.add(slot.index, message.report);
    } else if (message.type === "fatal" || message.type === "retiring") {
      slot.lastError = message.message;
      slot.waitsForDatabase = message.type === "fatal" && message.unreachable === true;
    } else if (message.type === "lost") {
      slot.lastError = message.message;
      slot.waitsForDatabase = message.cause === "unreachable";
      slot.uncountedExit = slot.waitsForDatabase ? WORKER_EXIT.lost : undefined;
    } else if (message.type === "leftToHandBack") {
      slot.uncountedExit = WORKER_EXIT.leftToHandBack;
    }
  }

  #onExit(slot: Slot, workerId: string, code: number | null, signal: NodeJS.Signals | null): void {
    slot.child = undefined;
    // A worker that said it stopped because its heartbeat could not get
    // through (lost) was not ended by its task: that attempt is not counted;
    // nor what one that said it stopped past its bound with every attempt
    // ended still holds (leftToHandBack: hand-backs and successes it could
    // not write in time). Any other exit, a task's process.exit(5) or (7)
    // without the message announcing that code included, counts.
    this.#options.releaser.add(workerId, code !== slot.uncountedExit);
    this.#options.metrics.workerExited(slot.index);
    if (this.#stopping) {
      if (this.#slots.every((s) => !s.child)) this.#resolveDone();
      return;
    }
    void this.#options.releaser.runOnce().catch(() => {}); // kept for its next run when the database is unreachable
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const why = slot.lastError ? `: ${slot.lastError}` : "";
    const healthy = slot.readyAt !== undefined && performance.now() - slot.readyAt >= HEALTHY_AFTER;
    slot.failures = healthy ? 0 : slot.failures + 1;
    if (healthy) slot.startedByWatch = false;
    const delay = restartDelay(slot.failures);
    this.#options.log[healthy ? "warn" : "error"](`worker ${slot.index} ${how}${why}; restarting${delay ? ` in ${delay} ms` : ""}`, {
      worker: slot.index, code, signal, failures: slot.failures,
    });
    this.#options.metrics.workerRestarts++;
    slot.restartTimer = setTimeout(() => this.#spawn(slot), delay);
    if (slot.waitsForDatabase && !slot.startedByWatch && delay > 0) this.#watch.watch();
  }

  /** The database answers again: the workers waiting out a back-off for it start now. */
  #databaseBack(): void {
    for (const slot of this.#slots) {
      if (this.#stopping || slot.child || !slot.waitsForDatabase || slot.startedByWatch || slot.restartTimer === undefined) continue;
      clearTimeout(slot.restartTimer);
      slot.startedByWatch = true;
      this.#options.log.info(`the database answers again: starting worker ${slot.index} now`, { worker: slot.index });
      this.#spawn(slot);
    }
  }

  /**
   * Kills workers that stopped answering or never became ready. Called at
   * every tick, apart from the database checks (which may hang) and while
   * stopping too: leases are sized on the promise that a worker whose event
   * loop is blocked dies within the kill silence plus one check interval.
   */
  killSilent(): void {
    const now = performance.now();
    const t = this.#options.timings;
    for (const slot of this.#slots) {
      if (!slot.child || slot.killed || slot.child.exitCode !== null || slot.child.signalCode !== null) continue;
      if (slot.readyAt === undefined && now - slot.startedAt > t.readyWithin) {
        slot.lastError = `not ready within ${t.readyWithin} ms (its tasks modules did not finish loading)`;
        this.#options.log.error(`worker ${slot.index} (pid ${slot.child.pid}) is ${slot.lastError}; killing it`);
      } else if (slot.readyAt !== undefined && now - slot.lastSeen > t.killSilence) {
        this.#options.log.error(`worker ${slot.index} (pid ${slot.child.pid}) has not answered for ${t.killSilence} ms; killing it`);
      } else {
        continue;
      }
      slot.killed = true;
      slot.child.kill("SIGKILL");
    }
  }

  /** Asks every worker to stop gracefully; kills those still running after the shutdown timeout plus POOL_KILL_MARGIN_MS. */
  stop(): void {
    this.#stopping = true;
    this.#watch.stop();
    for (const slot of this.#slots) {
      clearTimeout(slot.restartTimer);
      if (slot.child?.connected) slot.child.send({ type: "stop" });
      else slot.child?.kill("SIGTERM");
    }
    if (this.#slots.every((s) => !s.child)) this.#resolveDone();
    // Workers bound their own shutdown; this only guards against one that hangs.
    setTimeout(() => {
      for (const slot of this.#slots) {
        if (!slot.child) continue;
        this.#options.log.error(`worker ${slot.index} did not stop in time; killing it`);
        slot.child.kill("SIGKILL");
      }
    }, Math.min(this.#options.config.shutdownTimeout + POOL_KILL_MARGIN_MS, 2_147_483_647)).unref();
  }

  /** Kills every worker now; {@link done} resolves once all exited (or after 5 s). */
  kill(): void {
    this.#stopping = true;
    this.#watch.stop();
    for (const slot of this.#slots) {
      clearTimeout(slot.restartTimer);
      slot.child?.kill("SIGKILL");
    }
    if (this.#slots.every((s) => !s.child)) this.#resolveDone();
    setTimeout(() => this.#resolveDone(), 5_000).unref();
  }
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

/** The direct URL a worker LISTENs on under transaction pooling, in its environment (a password never goes on a command line). */
function listenEnv(config: ServeConfig): { PGBG_LISTEN_URL?: string } {
  return config.listenUrl === undefined ? {} : { PGBG_LISTEN_URL: config.listenUrl };
}
