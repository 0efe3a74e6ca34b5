/**
 * Leases: how long a claimed task is held, and the release and rescue of
 * tasks whose worker stopped or died.
 *
 * @module
 */
import type { Database } from "./statements.ts";
import { run } from "./statements.ts";

/**
 * How long a worker lets a task that ignores its abort signal keep its slot
 * after the deadline, before it gives up on it and retires: half the
 * timeout, between 1 and 15 seconds.
 */
export function graceFor(timeout: number): number {
  return Math.min(Math.max(Math.round(timeout / 2), 1000), 15_000);
}

/** Safety margin of a lease over the longest a worker can hold a task. */
export const LEASE_MARGIN = 5_000;

/**
 * The lease of a task with this timeout. A worker aborts the attempt at the
 * timeout, gives up on it after one grace period, and exits after a second
 * at the latest, so its process is gone before the lease expires and no
 * other worker can start the task while this one may still run it.
 *
 * `killWithin`: a task that blocks its worker's event loop stops the
 * worker's own timers, so only its supervisor can end it, by killing the
 * worker once it has been silent that long. The block may begin at any
 * moment up to the worker's own exit, so the lease covers both in turn.
 */
export function leaseFor(timeout: number, killWithin = 0): number {
  return timeout + 2 * graceFor(timeout) + killWithin + LEASE_MARGIN;
}

/**
 * The longest a worker whose event loop is blocked outlives the block's
 * start: its supervisor kills a worker silent for half of `staleAfter`,
 * noticed at its next check, `checkInterval` later at most.
 */
export function killWithin(staleAfter: number, checkInterval: number): number {
  return Math.ceil(staleAfter / 2) + checkInterval;
}

/** A task moved out of `running` by a release or rescue. */
export interface ReleasedTask {
  id: string;
  state: "queued" | "failed";
}

function released(rows: { id: unknown; state: string }[]): ReleasedTask[] {
  return rows.map((r) => ({ id: String(r.id), state: r.state as ReleasedTask["state"] }));
}

/**
 * Releases every task leased by the given (dead) workers at once: queued
 * again, or failed when its attempts are used up. `error` becomes the tasks'
 * last error.
 */
export async function releaseWorkerTasks(db: Database, schema: string, workerIds: string[], maxAttempts: number, error: object): Promise<ReleasedTask[]> {
  if (!workerIds.length) return [];
  return released(await run(db, schema, "ReleaseWorkerTasks", [workerIds, maxAttempts, JSON.stringify(error)]));
}

/**
 * Hands back at once, uncounted, the tasks of workers that stopped
 * themselves because their heartbeat could not get through: the tasks did
 * not fail, their worker lost the database.
 */
export async function handBackWorkerTasks(db: Database, schema: string, workerIds: string[]): Promise<ReleasedTask[]> {
  if (!workerIds.length) return [];
  return released(await run(db, schema, "HandBackWorkerTasks", [workerIds]));
}

/** Makes tasks whose lease expired claimable again (or failed, when out of attempts). */
export async function rescueExpiredLeases(db: Database, schema: string, maxAttempts: number): Promise<ReleasedTask[]> {
  const error = { name: "LeaseExpired", message: "the task's lease expired before its worker reported a result" };
  return released(await run(db, schema, "RescueExpiredLeases", [maxAttempts, JSON.stringify(error)]));
}

/**
 * Takes the workers of other supervisors whose heartbeat is older than their
 * own stale time (`staleAfter` ms for workers of an older pgbg) for dead,
 * removes them, and releases their tasks. `reachableFor`: how long the
 * caller has reached the database without a break; a worker is judged only
 * once that covers its stale time.
 */
export async function reapStaleWorkers(
  db: Database,
  schema: string,
  staleAfter: number,
  maxAttempts: number,
  supervisorId: string,
  reachableFor: number,
): Promise<ReleasedTask[]> {
  const dead = await run<{ id: string }>(db, schema, "ReapStaleWorkers", [staleAfter, supervisorId, reachableFor]);
  const error = { name: "WorkerLost", message: "the task's worker stopped heartbeating and was taken for dead" };
  return releaseWorkerTasks(db, schema, dead.map((w) => w.id), maxAttempts, error);
}

/** Removes worker rows (a stopped worker, or the dead workers of a supervisor). */
export async function removeWorkers(db: Database, schema: string, workerIds: string[]): Promise<void> {
  if (workerIds.length) await run(db, schema, "RemoveWorkers", [workerIds]);
}
