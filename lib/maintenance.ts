/**
 * The maintenance duties every host runs, the supervisor of `pgbg serve` and
 * an in-process `createWorker` alike: each a small service in
 * `lib/maintenance/` with its interval and a `runOnce()`, run here on its
 * own timer so that a slow one (an index compaction waits for older
 * transactions) never holds back another (the rescue of expired leases).
 *
 * Every duty is safe when several hosts run it at once; each module says
 * why. So every host runs all of them, and a queue keeps its rescue however
 * many hosts there are, or however few survive.
 *
 * @module
 */
import type { Sql } from "postgres";
import { defaults } from "./config.ts";
import type { Liveness } from "./liveness.ts";
import { describeError, type Logger } from "./log.ts";
import { CancelSweeper } from "./maintenance/cancel-sweeper.ts";
import { CountPruner } from "./maintenance/count-pruner.ts";
import { DepthSampler } from "./maintenance/depth-sampler.ts";
import { DeadWorkerReleaser, type ReleaseListener } from "./maintenance/dead-worker-releaser.ts";
import { FailedPruner } from "./maintenance/failed-pruner.ts";
import { FlowKeeper } from "./maintenance/flow-keeper.ts";
import { HistoryRotator } from "./maintenance/history-rotator.ts";
import { IndexCompactor } from "./maintenance/index-compactor.ts";
import { LeaseRescuer } from "./maintenance/lease-rescuer.ts";
import { TableVacuumer } from "./maintenance/table-vacuumer.ts";
import type { MaintenanceService } from "./maintenance/service.ts";
import { WorkerReaper } from "./maintenance/worker-reaper.ts";

export type { MaintenanceService } from "./maintenance/service.ts";

/** What the standard set of duties needs. */
export interface MaintenanceSettings {
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>;
  schema: string;
  /** The supervisor or in-process host running them: its own workers are not reaped by it. */
  hostId: string;
  maxAttempts: number;
  timings: Liveness;
  /** How often to check whether the task table's indexes need compacting; 0: never. */
  compactInterval: number;
  /** How often to check whether the task table needs a vacuum; 0: never. */
  vacuumInterval: number;
  /** How long tasks failed for good are kept when their definition set no retention (ms); Infinity: for ever. */
  failedRetention: number;
  log: Logger;
  /** Told of the attempts that releases and rescues end (the host's metrics count them). */
  onReleased?: ReleaseListener;
}

/** The standard duties, by name. */
export interface MaintenanceServices {
  releaser: DeadWorkerReleaser;
  rescuer: LeaseRescuer;
  reaper: WorkerReaper;
  sweeper: CancelSweeper;
  pruner: CountPruner;
  sampler: DepthSampler;
  compactor: IndexCompactor;
  vacuumer: TableVacuumer;
  rotator: HistoryRotator;
  failedPruner: FailedPruner;
  flowKeeper: FlowKeeper;
}

/** Builds every duty with its interval: the checks at the heartbeat interval, pruning, the depth's sample every 20 s, the history's rotation and the care of flows each minute, compaction and vacuum at their own. */
export function maintenanceServices(settings: MaintenanceSettings): MaintenanceServices {
  const { sql, schema, hostId, maxAttempts, timings, compactInterval, vacuumInterval, failedRetention, log, onReleased } = settings;
  const every = timings.heartbeatInterval;
  return {
    releaser: new DeadWorkerReleaser(sql, schema, maxAttempts, every, log, onReleased),
    rescuer: new LeaseRescuer(sql, schema, maxAttempts, every, log, onReleased),
    reaper: new WorkerReaper(sql, schema, { hostId, maxAttempts, staleAfter: timings.staleAfter, interval: every }, log, onReleased),
    sweeper: new CancelSweeper(sql, schema, every, log),
    pruner: new CountPruner(sql, schema, 60_000),
    sampler: new DepthSampler(sql, schema, 20_000),
    compactor: new IndexCompactor(sql, schema, compactInterval, log),
    vacuumer: new TableVacuumer(sql, schema, vacuumInterval, log),
    rotator: new HistoryRotator(sql, schema, defaults.historyInterval, log),
    failedPruner: new FailedPruner(sql, schema, failedRetention, defaults.historyInterval, log),
    flowKeeper: new FlowKeeper(sql, schema, defaults.historyInterval, log),
  };
}

/** Runs services, each on its own timer, one run of each at a time. */
export class Maintenance {
  readonly #services: readonly MaintenanceService[];
  readonly #log: Logger;
  readonly #timers = new Set<ReturnType<typeof setTimeout>>();
  readonly #runs = new Set<Promise<void>>();
  #stopped = false;

  constructor(services: readonly MaintenanceService[], log: Logger) {
    this.#services = services;
    this.#log = log;
  }

  /** Starts every service with an interval. */
  start(): void {
    for (const service of this.#services) if (service.interval > 0) this.#schedule(service, service.firstAfter ?? service.interval);
  }

  /** Stops scheduling; resolves once the runs in flight end, or after `waitMs`. True when none is left running. */
  async stop(waitMs: number): Promise<boolean> {
    this.#stopped = true;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([Promise.all(this.#runs), new Promise((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
    return this.#runs.size === 0;
  }

  #schedule(service: MaintenanceService, delay: number): void {
    if (this.#stopped) return;
    const timer = setTimeout(() => {
      this.#timers.delete(timer);
      const running = service.runOnce().catch((error) => {
        if (!this.#stopped) this.#log.warn(`${service.name} failed; will retry`, { error: describeError(error).message });
      }).finally(() => {
        this.#runs.delete(running);
        if (service.interval > 0) this.#schedule(service, service.interval);
      });
      this.#runs.add(running);
    }, Math.min(delay, 2_147_483_647));
    this.#timers.add(timer);
  }
}
