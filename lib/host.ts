/**
 * `createWorker`: runs tasks inside the application's own process, on the
 * same engine as a worker of `pgbg serve` (claims, leases, fencing,
 * heartbeat and self-stop), beside the maintenance duties any host runs,
 * so that an application with no `pgbg serve` anywhere still has expired
 * leases and dead workers rescued. When its worker is lost (cut off from
 * the database, or declared dead), the host starts a fresh one, as a
 * supervisor restarts a worker process.
 *
 * @module
 */
import { hostname } from "node:os";
import process from "node:process";
import postgres, { type Sql } from "postgres";
import { inTurn, onePerConnection } from "./client.ts";
import { defaults } from "./config.ts";
import { InvalidOptionsError } from "./errors.ts";
import { EVENT_NAMES, TaskEventEmitter, type TaskEventListener, type TaskEventName } from "./events.ts";
import { type Liveness, liveness } from "./liveness.ts";
import { describeError } from "./log.ts";
import { Maintenance, maintenanceServices, type MaintenanceServices } from "./maintenance.ts";
import { readDatabaseMetrics, ServiceMetrics } from "./metrics.ts";
import { runtimeName } from "./runtime.ts";
import { Scheduler } from "./scheduler.ts";
import { type ResolvedWorkerOptions, resolveWorkerOptions, type WorkerHostOptions } from "./worker-options.ts";
import { type LostCause, Worker, type WorkerExit } from "./worker.ts";

export type { WorkerHostOptions } from "./worker-options.ts";

/** An in-process worker, made by {@link createWorker}. */
export interface WorkerHost {
  /** This host's id: the `supervisor_id` of its workers' rows. */
  readonly id: string;
  /** Attempts running now. */
  readonly running: number;
  /**
   * Starts the maintenance duties and the worker. Resolves once the worker
   * is registered and listening; rejects, starting nothing, when it cannot
   * (database unreachable, schema not migrated: `SchemaError`).
   */
  start(): Promise<void>;
  /**
   * Stops gracefully: claims no more, lets running tasks finish for up to
   * `timeout` ms (default: the `shutdownTimeout` option), then aborts the
   * rest and hands them back uncounted. Resolves once every outcome is
   * written and the connections are closed. Safe to call twice.
   */
  stop(options?: { timeout?: number }): Promise<void>;
  /** The host's metrics in Prometheus' text format: the families of `pgbg serve --metrics-port`, for the app to serve. */
  metrics(): Promise<string>;
  /**
   * Listens to an event of this worker's attempts (`started`, `completed`,
   * `retrying`, `failed`, `snoozed`, `cancelled`, `leaseLost`); returns the
   * function that stops listening. Outcomes are told once written. A
   * listener that throws is logged and changes nothing.
   */
  on<E extends TaskEventName>(name: E, listener: TaskEventListener<E>): () => void;
}

// deno-lint-ignore no-explicit-any
type Client = Sql<any>;

/**
 * Creates an in-process worker on the database that `sql` (a postgres.js
 * client, the one the app already has) connects to. It opens its own
 * connections with the same settings: a pool of `poolSize` (default 4) for
 * claims, write-backs and maintenance, one for its heartbeat and one for
 * LISTEN, so the app's pool never starves the worker nor the other way
 * round. Nothing runs until `start()`. Throws `InvalidOptionsError` or
 * `InvalidTaskError` naming the bad option.
 *
 * @example
 * ```ts
 * const worker = createWorker(sql, { tasks: [sendEmail], concurrency: 5 });
 * await worker.start();
 * process.on("SIGTERM", () => worker.stop());
 * ```
 */
export function createWorker(sql: Client, options: WorkerHostOptions): WorkerHost {
  if (typeof sql !== "function" || typeof (sql as Partial<Client>).options !== "object") {
    throw new TypeError("createWorker(sql, options): sql must be a postgres.js client, the one postgres() returns");
  }
  return new InProcessHost(sql, resolveWorkerOptions("createWorker()", options));
}

/**
 * A client on the same server as `sql`, with its connection settings but its
 * own pool, and none of the app's transforms (pgbg reads its own columns);
 * with `transactionPooling` (behind a pooler in transaction mode), without
 * named statements and no more statements at once than connections
 * (onePerConnection).
 */
export function cloneClient(sql: Client, max: number, name: string, transactionPooling = false): Client {
  const o = sql.options;
  const client = postgres({
    ...o,
    max,
    // Behind a pooler in transaction mode, a statement prepared on one server session is unknown to the next.
    prepare: transactionPooling ? false : o.prepare,
    onnotice: () => {},
    transform: { undefined: undefined, column: {}, value: {}, row: {} },
    connection: { ...o.connection, application_name: name },
  } as unknown as postgres.Options<{}>);
  return transactionPooling ? onePerConnection(client) : client;
}

/**
 * postgres.js fetches the array types on every connection it opens, and
 * 3.4.9 leaves a failure of that fetch unhandled: a connection reset as it
 * opens ends the app's process. The types land in the parsers and
 * serializers that every client cloned from the app's shares, so they are
 * fetched once, by a first query, and not again.
 */
// deno-lint-ignore no-explicit-any
export async function fetchTypesOnce(client: Sql<any>): Promise<void> {
  await inTurn(client, () => client`SELECT 1`.then(() => {}));
  (client.options as { fetch_types: boolean }).fetch_types = false;
}

/** Back-off before starting a fresh worker after `failures` failed starts in a row: 0.5 s doubling up to 5 s. */
function restartDelay(failures: number): number {
  return failures <= 0 ? 0 : Math.min(500 * 2 ** (failures - 1), 5_000);
}

class InProcessHost implements WorkerHost {
  readonly id = crypto.randomUUID();
  readonly #options: ResolvedWorkerOptions;
  readonly #timings: Liveness;
  readonly #pool: Client;
  readonly #beat: Client;
  /** Where its worker LISTENs: a direct client under transaction pooling with a listen URL; false: nowhere; undefined: its pool. */
  readonly #listen: Client | false | undefined;
  readonly #metrics = new ServiceMetrics();
  readonly #events: TaskEventEmitter;
  readonly #services: MaintenanceServices;
  readonly #maintenance: Maintenance;
  #worker: Worker | undefined;
  #ended: Promise<unknown> = Promise.resolve();
  #lost: LostCause | undefined;
  #state: "new" | "running" | "stopping" | "stopped" = "new";
  #stopped: Promise<void> | undefined;
  #restartTimer: ReturnType<typeof setTimeout> | undefined;
  #failures = 0;

  constructor(sql: Client, options: ResolvedWorkerOptions) {
    this.#options = options;
    this.#events = new TaskEventEmitter(options.logger);
    this.#timings = liveness(options.checkInterval);
    this.#pool = cloneClient(sql, options.poolSize, "pgbg worker", options.transactionPooling);
    this.#beat = cloneClient(sql, 1, "pgbg worker heartbeat", options.transactionPooling);
    this.#listen = options.listenUrl
      // No array types to fetch for a LISTEN (and no fetch to fail unhandled).
      ? postgres(options.listenUrl, { max: 1, fetch_types: false, onnotice: () => {}, connection: { application_name: "pgbg worker listen" } })
      : options.transactionPooling ? false : undefined;
    this.#services = maintenanceServices({
      sql: this.#pool, schema: options.schema, hostId: this.id, maxAttempts: options.maxAttempts, timings: this.#timings,
      compactInterval: options.compactInterval, vacuumInterval: options.vacuumInterval, failedRetention: options.failedRetention, log: options.logger,
      onReleased: (tasks) => this.#metrics.released(tasks),
    });
    const scheduler = new Scheduler(this.#pool, options.schema, options.schedules, defaults.scheduleInterval, options.logger);
    this.#maintenance = new Maintenance([...Object.values(this.#services), scheduler], options.logger);
    options.signal?.addEventListener("abort", () => void this.stop(), { once: true });
  }

  get running(): number {
    return this.#worker?.running ?? 0;
  }

  async start(): Promise<void> {
    if (this.#state !== "new") throw new Error(`createWorker(): start() was already called (this worker is ${this.#state})`);
    if (this.#options.signal?.aborted) return void (await this.stop());
    this.#state = "running";
    try {
      await fetchTypesOnce(this.#pool);
      await fetchTypesOnce(this.#beat);
      await this.#launch();
    } catch (error) {
      this.#state = "stopped";
      await this.#close();
      throw error;
    }
    this.#maintenance.start();
  }

  /** Starts a fresh worker; resolves once it is ready, rejects when it could not start. */
  #launch(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      const worker = this.#newWorker(() => {
        ready = true;
        resolve();
      });
      this.#worker = worker;
      this.#lost = undefined;
      this.#ended = worker.start().then((how) => this.#afterExit(worker, how), (error) => {
        if (!ready) return reject(error);
        this.#options.logger.error(`the worker failed: ${describeError(error).message}`);
        return this.#afterExit(worker, "lost");
      });
    });
  }

  #newWorker(onReady: () => void): Worker {
    const o = this.#options;
    return new Worker({
      schema: o.schema, queues: o.queues, concurrency: o.concurrency, timeout: o.timeout, retryDelay: o.retryDelay, maxAttempts: o.maxAttempts,
      idleSleep: o.idleSleep, shutdownTimeout: o.shutdownTimeout, completedRetention: o.completedRetention, timings: this.#timings,
      sql: this.#pool, beatSql: this.#beat, listenSql: this.#listen, tasks: o.tasks, log: o.logger, overdue: "detach", onReady,
      identity: { workerId: crypto.randomUUID(), hostId: this.id, hostname: hostname(), runtime: runtimeName(), pid: process.pid },
      onLost: (cause) => (this.#lost = cause),
      onReport: (report) => this.#metrics.add(1, report),
      events: this.#events,
    });
  }

  /** A worker ended: when it was lost, hand its tasks on and start a fresh one. */
  async #afterExit(worker: Worker, how: WorkerExit): Promise<void> {
    this.#metrics.workerExited(1);
    if (how === "stopped" || this.#state !== "running") return;
    // Cut off from the database, its attempts did not fail: handed back
    // uncounted once the database answers again. Otherwise counted.
    this.#services.releaser.add(worker.id, this.#lost !== "unreachable");
    void this.#services.releaser.runOnce().catch(() => {});
    this.#metrics.workerRestarts++;
    this.#scheduleRestart();
  }

  #scheduleRestart(): void {
    const delay = restartDelay(++this.#failures);
    this.#options.logger.warn(`starting a fresh worker in ${delay} ms`);
    this.#restartTimer = setTimeout(() => {
      if (this.#state !== "running") return;
      this.#launch().then(() => (this.#failures = 0), (error) => {
        this.#options.logger.warn(`could not start a fresh worker: ${describeError(error).message}`);
        this.#scheduleRestart();
      });
    }, delay);
  }

  stop(options: { timeout?: number } = {}): Promise<void> {
    if (options.timeout !== undefined && !(Number.isInteger(options.timeout) && options.timeout >= 0)) {
      return Promise.reject(new TypeError(`stop(): timeout must be a whole number of ms from 0 up, got ${options.timeout}`));
    }
    this.#stopped ??= this.#stop(options.timeout);
    return this.#stopped;
  }

  async #stop(timeout: number | undefined): Promise<void> {
    const wasRunning = this.#state === "running";
    this.#state = "stopping";
    clearTimeout(this.#restartTimer);
    if (wasRunning) {
      this.#worker?.stop(timeout);
      await this.#ended;
    }
    const idle = await this.#maintenance.stop(2_000);
    // Bounded: after a network cut a statement can wait out the driver's
    // connect timeout (30 s); what is left leased then waits for the stale
    // time or the lease, as after a crash.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.#services.releaser.runOnce().catch(() => {}), new Promise((r) => (timer = setTimeout(r, 3_000)))]);
    clearTimeout(timer);
    await this.#close(idle ? 2 : 0);
    this.#state = "stopped";
  }

  async #close(timeout = 2): Promise<void> {
    await Promise.all([this.#pool.end({ timeout }), this.#beat.end({ timeout }), this.#listen && this.#listen.end({ timeout })]).catch(() => {});
  }

  on<E extends TaskEventName>(name: E, listener: TaskEventListener<E>): () => void {
    if (!EVENT_NAMES.includes(name)) throw new InvalidOptionsError(`worker.on(): unknown event ${JSON.stringify(name)} (known: ${EVENT_NAMES.join(", ")})`);
    if (typeof listener !== "function") throw new InvalidOptionsError("worker.on(): the listener must be a function");
    return this.#events.on(name, listener);
  }

  async metrics(): Promise<string> {
    return this.#metrics.render(await readDatabaseMetrics(this.#pool, this.#options.schema));
  }
}
