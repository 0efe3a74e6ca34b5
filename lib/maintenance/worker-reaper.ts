/**
 * Reaps workers of other hosts whose heartbeat is older than their own
 * stale time: it removes their rows and releases their tasks, the attempt
 * counted. A worker stops itself well before (lib/liveness.ts), so a reaped
 * worker runs nothing any more.
 *
 * Safe for every host to run at once: the DELETE returns each dead worker's
 * row to one host only, which then releases its tasks; should that host die
 * in between, the leases expire and the rescuer takes over. A host's own
 * workers are never reaped by it: it watches them directly.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";
import { type ReleasedTask, type ReleaseListener, releaseWorkerTasks } from "./dead-worker-releaser.ts";

const LOST = { name: "WorkerLost", message: "the task's worker stopped heartbeating and was taken for dead" };

/** What the reaper needs besides its database. */
export interface ReaperSettings {
  /** This host: its own workers are not reaped by it. */
  hostId: string;
  maxAttempts: number;
  /** The stale time of rows from a pgbg that did not store one (before migration 3). */
  staleAfter: number;
  interval: number;
}

/**
 * Takes the workers of other hosts whose heartbeat is older than their own
 * stale time for dead, removes them, and releases their tasks.
 * `reachableFor`: how long the caller has reached the database without a
 * break; during an outage no worker could heartbeat, so a worker is judged
 * only once that covers its stale time.
 */
export async function reapStaleWorkers(db: Database, schema: string, s: Omit<ReaperSettings, "interval">, reachableFor: number): Promise<ReleasedTask[]> {
  const dead = await run<{ id: string }>(db, schema, "ReapStaleWorkers", [s.staleAfter, s.hostId, reachableFor]);
  return releaseWorkerTasks(db, schema, dead.map((w) => w.id), s.maxAttempts, LOST);
}

/** The reaper as a maintenance service; it measures its own reach of the database. */
export class WorkerReaper implements MaintenanceService {
  readonly name = "reaping stale workers";
  readonly interval: number;
  /** performance.now() since when its runs have reached the database; Infinity after one failed. Monotonic: a wall clock that steps forward must not make a short reach look long. */
  #reachableSince = performance.now();

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly settings: ReaperSettings,
    private readonly log: Logger,
    private readonly onReleased: ReleaseListener = () => {},
  ) {
    this.interval = settings.interval;
  }

  /** Reaps what is stale now. */
  async runOnce(): Promise<void> {
    await this.reap();
  }

  /** As {@link runOnce}, returning the released tasks. */
  async reap(): Promise<ReleasedTask[]> {
    const startedAt = performance.now();
    try {
      const reachableFor = startedAt - Math.min(this.#reachableSince, startedAt);
      const released = await reapStaleWorkers(this.db, this.schema, this.settings, reachableFor);
      if (this.#reachableSince === Number.POSITIVE_INFINITY) this.#reachableSince = startedAt;
      if (released.length) this.onReleased(released);
      if (released.length) this.log.warn(`released ${released.length} task(s) of workers whose heartbeat stopped`, { tasks: released.map((t) => t.id) });
      return released;
    } catch (error) {
      this.#reachableSince = Number.POSITIVE_INFINITY;
      throw error;
    }
  }
}
