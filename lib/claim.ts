/**
 * The claim: takes up to N due tasks for a worker in one prepared statement.
 *
 * @module
 */
import type { Database } from "./statements.ts";
import { run } from "./statements.ts";

/** A task as a claim hands it to a worker. */
export interface ClaimedTask {
  id: string;
  name: string;
  queue: string;
  payload: unknown;
  /** This attempt's number (1 for the first). */
  attempt: number;
  /** The task's own max attempts, or null for the service's default. */
  maxAttempts: number | null;
  /** The lease's fencing token; every write about this attempt carries it. */
  leaseToken: number;
  /** How long the task waited, in ms, from when it was due to this claim (for metrics). */
  lagMs: number;
}

/** What a worker claims with: its identity, queues and the tasks it can run. */
export interface ClaimScope {
  workerId: string;
  /** Queues to claim from; null for every queue. */
  queues: string[] | null;
  /** Registered task names, and the lease length (ms) of each. */
  names: string[];
  leaseMs: number[];
}

/**
 * Claims up to `limit` due tasks of the scope's names and queues, in claim
 * order (priority, then run_at, then enqueue order), skipping rows other
 * claimers hold. Each claimed task is `running`, leased to the worker with a
 * fresh token, and has its attempts incremented.
 */
export async function claimTasks(db: Database, schema: string, scope: ClaimScope, limit: number): Promise<ClaimedTask[]> {
  const rows = await run(db, schema, "ClaimTasks", [scope.workerId, scope.queues, scope.names, scope.leaseMs, limit]);
  return rows.map((r) => ({
    id: String(r.id),
    name: r.name as string,
    queue: r.queue as string,
    payload: r.payload as unknown,
    attempt: r.attempts as number,
    maxAttempts: r.max_attempts as number | null,
    leaseToken: r.lease_token as number,
    lagMs: r.lag_ms as number,
  }));
}
