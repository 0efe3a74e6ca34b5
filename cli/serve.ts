/**
 * The supervisor of `pgbg serve`: waits for the database and its schema,
 * then runs a pool of worker subprocesses (cli/worker-pool.ts) beside the
 * maintenance duties every host runs (lib/maintenance.ts), serves metrics
 * when asked, and shuts down gracefully on SIGTERM/SIGINT.
 *
 * @module
 */
import { randomUUID } from "node:crypto";
import postgres from "postgres";
import { liveness } from "../lib/liveness.ts";
import { describeError, type Logger } from "../lib/log.ts";
import { Maintenance, maintenanceServices, type MaintenanceServices } from "../lib/maintenance.ts";
import { ServiceMetrics } from "../lib/metrics.ts";
import { connect } from "./client.ts";
import { type ServeConfig, STOP_MARGIN_MS } from "./config.ts";
import { launcherGone, launcherName } from "./launcher.ts";
import { statusLine } from "./log.ts";
import { type MetricsServer, startMetricsServer } from "./metrics-server.ts";
import { waitForSchema } from "./schema-wait.ts";
import { listenForSignals } from "./start-signals.ts";
import { WorkerPool } from "./worker-pool.ts";

// deno-lint-ignore no-explicit-any
type Client = postgres.Sql<any>;

/** Runs the supervisor until it is stopped by a signal; resolves with the exit code. */
export async function supervise(config: ServeConfig, databaseUrl: string, log: Logger): Promise<number> {
  // Four: an index compaction holds one connection for as long as its
  // REINDEX takes, and the other duties and metrics scrapes must not wait for it.
  const sql: Client = connect(databaseUrl, 4, "pgbg supervisor", config.transactionPooling);
  const stoppedEarly = await waitForSchema(sql, config, log);
  if (stoppedEarly) {
    log.info(`${stoppedEarly} before the service started; stopping`);
    // At once: a connect the wait left behind may hang for its timeout.
    await sql.end({ timeout: 0 }).catch(() => {});
    return 0;
  }
  const metrics = new ServiceMetrics();
  const metricsServer = await serveMetrics(config, sql, metrics, log);
  const supervisorId = randomUUID();
  const timings = liveness(config.checkInterval);
  const services = maintenanceServices({
    sql, schema: config.schema, hostId: supervisorId, maxAttempts: config.maxAttempts, timings, compactInterval: config.compactInterval,
    vacuumInterval: config.vacuumInterval, failedRetention: config.failedRetention, log, onReleased: (tasks) => metrics.released(tasks),
  });
  const maintenance = new Maintenance(Object.values(services), log);
  const pool = new WorkerPool({ config, databaseUrl, supervisorId, timings, releaser: services.releaser, metrics, log });
  const stopping = onSignals(pool, config, log);
  log.info(
    `serving: ${config.workers} worker(s) × ${config.concurrency} task(s), queues ${config.queues?.join(",") ?? "(all)"}, schema ${config.schema}`,
    { workers: config.workers, concurrency: config.concurrency, queues: config.queues, schema: config.schema, supervisorId },
  );
  maintenance.start();
  pool.start();
  const progress = showProgress(config, metrics);
  await pool.done;
  progress.stop();
  // Bounded: under a database that hangs, releasing and closing would
  // wait out connect timeouts; the bound of a stop comes first.
  const shut = shutDown({ sql, pool, maintenance, services, metricsServer }).then(() => true);
  const stopBy = stopping.stopBy();
  const inTime = stopBy === undefined ? await shut
    // A quarter second before the bound, for the exit itself.
    : await Promise.race([shut, new Promise<false>((r) => setTimeout(() => r(false), Math.max(0, stopBy - 250 - Date.now())).unref())]);
  if (!inTime) log.warn(`stopping took past the shutdown timeout plus ${STOP_MARGIN_MS} ms: exiting now; what was not released, another host rescues when its lease ends`);
  const code = stopping.exitCode();
  log.info(code === 0 ? "stopped" : "stopped at once; unfinished tasks were released");
  return code;
}

/** Starts the metrics server when --metrics-port is set; throws naming the address when it cannot bind. */
async function serveMetrics(config: ServeConfig, sql: Client, metrics: ServiceMetrics, log: Logger): Promise<MetricsServer | undefined> {
  if (config.metricsPort === null) return undefined;
  try {
    const server = await startMetricsServer(metrics, sql, config.schema, config.metricsHost, config.metricsPort, log);
    log.info(`metrics at http://${config.metricsHost}:${server.port}/metrics`, { metricsPort: server.port });
    return server;
  } catch (error) {
    await sql.end({ timeout: 2 }).catch(() => {});
    throw new Error(`cannot serve metrics on ${config.metricsHost}:${config.metricsPort}: ${describeError(error).message}`);
  }
}

/**
 * Installs the service's signal handlers and the tick that kills silent
 * workers: a first SIGTERM/SIGINT (or the exit of the package runner that
 * started the service) stops the pool gracefully, a second kills it. Both
 * are removed once the pool is done. Returns the exit code so far, and by
 * when the service must have stopped (the first signal's time plus the
 * shutdown timeout and STOP_MARGIN_MS; undefined without a signal).
 */
function onSignals(pool: WorkerPool, config: ServeConfig, log: Logger): { exitCode(): number; stopBy(): number | undefined } {
  let stopping = false;
  let exitCode = 0;
  let stopBy: number | undefined;
  const onSignal = (signal: string) => {
    if (stopping) {
      log.warn(`second ${signal}: stopping now`);
      exitCode = 1;
      pool.kill();
      return;
    }
    stopping = true;
    stopBy = Date.now() + config.shutdownTimeout + STOP_MARGIN_MS;
    log.info(`${signal}: stopping; running tasks may finish for up to ${config.shutdownTimeout} ms`);
    pool.stop();
  };
  const stopListening = listenForSignals(onSignal);
  // Run at every tick, apart from the database duties (which may hang).
  const ticker = setInterval(() => {
    if (!stopping && launcherGone()) onSignal(`${launcherName()} exited`);
    pool.killSilent();
  }, config.checkInterval);
  void pool.done.then(() => {
    clearInterval(ticker);
    stopListening();
  });
  return { exitCode: () => exitCode, stopBy: () => stopBy };
}

/**
 * On a terminal, with the pretty log format: a status line under the log,
 * redrawn each second, with what the workers run and have ended since the
 * start. Off a terminal it writes nothing (see StatusLine).
 */
function showProgress(config: ServeConfig, metrics: ServiceMetrics): { stop(): void } {
  if (config.logFormat !== "pretty") return { stop() {} };
  const fmt = (n: number) => n.toLocaleString("en");
  const timer = setInterval(() => {
    const s = metrics.summary();
    statusLine.set(`${config.workers} worker(s) · ${fmt(s.running)} running · ${fmt(s.completed)} done · ${fmt(s.failed)} failed · ${fmt(s.retried)} retried`);
  }, 1_000);
  // Never what keeps the process alive, whatever ends the pool.
  timer.unref();
  return {
    stop() {
      clearInterval(timer);
      statusLine.set("");
    },
  };
}

/** What a stopping supervisor closes. */
interface Running {
  sql: Client;
  pool: WorkerPool;
  maintenance: Maintenance;
  services: MaintenanceServices;
  metricsServer: MetricsServer | undefined;
}

/**
 * Releases what the workers left leased (those killed rather than stopped),
 * closes the metrics server and the pool. A compaction still running is not
 * waited for: its connection is closed at once, and the server finishes the
 * rebuild or leaves an invalid _ccnew index that the next compaction drops.
 */
async function shutDown({ sql, pool, maintenance, services, metricsServer }: Running): Promise<void> {
  const idle = await maintenance.stop(2_000);
  for (const id of pool.workerIds) services.releaser.add(id, true);
  // Workers that stopped cleanly removed their rows and have no tasks left: releasing them is a no-op.
  await Promise.race([services.releaser.runOnce().catch(() => {}), new Promise((r) => setTimeout(r, 3_000))]);
  await metricsServer?.close();
  await sql.end({ timeout: idle ? 2 : 0 }).catch(() => {});
}
