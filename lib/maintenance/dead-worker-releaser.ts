/**
 * Releases the tasks of workers known to be dead at once, without waiting
 * for their leases or their stale time: a supervisor knows the moment its
 * worker process exits, and an in-process host the moment its worker was
 * lost. A worker that stopped because it lost the database, or a served
 * worker that stopped past its stop's bound with every attempt ended (each
 * said so), has its tasks handed back uncounted; any other death counts the
 * attempt, so a task that keeps killing its workers ends as failed.
 *
 * Two hosts never release the same worker: each knows only its own. The
 * statements are fenced by state and worker id, so a run repeated after a
 * failure changes nothing twice.
 *
 * @module
 */
import { removeWorkers } from "../heartbeat.ts";
import type { Logger } from "../log.ts";
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";

/** A task moved out of `running` by a release, hand-back or rescue. */
export interface ReleasedTask {
  id: string;
  state: "queued" | "failed";
  queue: string;
  name: string;
}

/**
 * Told of the attempts a release or rescue ended and counted (not of
 * hand-backs, which count nothing), so that a host's metrics count them as
 * its workers' failures are counted.
 */
export type ReleaseListener = (counted: ReleasedTask[]) => void;

/** The rows a release or rescue returned, as {@link ReleasedTask}s. */
export function releasedTasks(rows: { id: unknown; state: string; queue: string; name: string }[]): ReleasedTask[] {
  return rows.map((r) => ({ id: String(r.id), state: r.state as ReleasedTask["state"], queue: r.queue, name: r.name }));
}

/**
 * Ends the claim rows whose lease ran out or whose worker is one of
 * `workerIds`, each of their tasks given a lease of its own held by the
 * claim's worker (LeaseExpiredClaims): the release or rescue of row leases
 * that follows then takes them as it takes any task. A claim row never
 * outlives its worker's release: whoever releases a worker, or rescues
 * expired leases, calls this first.
 */
export async function leaseExpiredClaims(db: Database, schema: string, workerIds: string[]): Promise<void> {
  try {
    await run(db, schema, "LeaseExpiredClaims", [workerIds]);
  } catch (error) {
    // A role that may not use pgbg.claim cannot have claimed by claim rows:
    // the release of row leases goes on without its grant (README, "Running
    // under a least-privilege role").
    if ((error as { code?: string }).code !== "42501") throw error;
  }
}

/**
 * Releases every task leased by the given (dead) workers at once, the
 * attempt counted: queued again, or failed when its attempts are used up.
 * `error` becomes the tasks' last error.
 */
export async function releaseWorkerTasks(db: Database, schema: string, workerIds: string[], maxAttempts: number, error: object): Promise<ReleasedTask[]> {
  if (!workerIds.length) return [];
  await leaseExpiredClaims(db, schema, workerIds);
  return releasedTasks(await run(db, schema, "ReleaseWorkerTasks", [maxAttempts, JSON.stringify(error), workerIds]));
}

/**
 * Hands back at once, uncounted, the tasks of workers that stopped because
 * their heartbeat could not get through, or past their stop's bound with
 * every attempt ended, while their rows exist (a reaped worker's tasks are
 * its reaper's to release).
 */
export async function handBackWorkerTasks(db: Database, schema: string, workerIds: string[]): Promise<ReleasedTask[]> {
  if (!workerIds.length) return [];
  await leaseExpiredClaims(db, schema, workerIds);
  return releasedTasks(await run(db, schema, "HandBackWorkerTasks", [workerIds]));
}

const DIED = { name: "WorkerDied", message: "the task's worker process died during the attempt" };

/** Releases dead workers' tasks; those it could not release yet are kept for the next run. */
export class DeadWorkerReleaser implements MaintenanceService {
  readonly name = "releasing the tasks of dead workers";
  /** Dead workers not released yet: whether their interrupted attempts count. */
  readonly #dead = new Map<string, boolean>();
  #running: Promise<void> | undefined;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly maxAttempts: number,
    readonly interval: number,
    private readonly log: Logger,
    private readonly onReleased: ReleaseListener = () => {},
  ) {}

  /** Marks a worker dead. `counted`: false when it stopped because it lost the database, or left its hand-backs to its supervisor. A worker already marked keeps its mark. */
  add(workerId: string, counted: boolean): void {
    if (!this.#dead.has(workerId)) this.#dead.set(workerId, counted);
  }

  /** Workers marked dead and not released yet. */
  get pending(): number {
    return this.#dead.size;
  }

  /** Releases the tasks of every worker marked dead and removes their rows. One run at a time: a call during a run waits for it. */
  async runOnce(): Promise<void> {
    while (this.#running) await this.#running;
    if (!this.#dead.size) return;
    this.#running = this.#release().finally(() => (this.#running = undefined));
    return this.#running;
  }

  async #release(): Promise<void> {
    const ids = [...this.#dead.keys()];
    const handedBack = await handBackWorkerTasks(this.db, this.schema, ids.filter((id) => !this.#dead.get(id)));
    const counted = await releaseWorkerTasks(this.db, this.schema, ids.filter((id) => this.#dead.get(id)), this.maxAttempts, DIED);
    if (counted.length) this.onReleased(counted);
    const released = [...handedBack, ...counted];
    await removeWorkers(this.db, this.schema, ids);
    for (const id of ids) this.#dead.delete(id);
    if (released.length) this.log.warn(`released ${released.length} task(s) of a dead worker`, { tasks: released.map((t) => t.id) });
  }
}
