/**
 * Concurrency limits of queues (`setQueueConcurrency`): at most N of a
 * queue's tasks run at once, across every worker of every host.
 *
 * The ordinary claim leaves a limited queue alone (ClaimFromLanes). A
 * worker claims from it with the limited claim: a transaction that takes
 * the queue's advisory lock (LockLimitedQueue), then counts the queue's
 * running tasks (QueueFreeSlots), then claims at most the free slots
 * (ClaimLimitedTasks). Each statement of a READ COMMITTED transaction reads
 * a fresh snapshot, so the count, taken after the lock, sees every task the
 * claims before it took; completions meanwhile only free slots. Only
 * running tasks count: a task waiting for its retry, or released from a
 * dead worker, holds no slot.
 *
 * A worker learns which queues are limited each check interval, so a new
 * limit holds from one check interval after it is set.
 *
 * @module
 */
import type { Sql } from "postgres";
import { type Database, run } from "./statements.ts";

/** Which queues have a concurrency limit, read again when older than `refreshMs`. */
export class LimitedQueues {
  #names: string[] = [];
  #readAt = -Infinity;

  constructor(private readonly refreshMs: number) {}

  /** The limited queues among `queues` (null: every queue), read from the database when the last read is stale. */
  async among(db: Database, schema: string, queues: string[] | null): Promise<string[]> {
    if (Date.now() - this.#readAt >= this.refreshMs) {
      const rows = await run(db, schema, "LimitedQueues", []);
      this.#names = rows.map((r) => r.name as string);
      this.#readAt = Date.now();
    }
    return queues ? this.#names.filter((q) => queues.includes(q)) : this.#names;
  }
}

/**
 * Claims up to `want` tasks from the limited `queue`, within its free
 * slots, in one transaction (see the module's comment). `claimParams` are
 * ClaimTasks' first four parameters.
 */
// deno-lint-ignore no-explicit-any
export async function claimLimited(sql: Sql<any>, schema: string, queue: string, claimParams: unknown[], want: number): Promise<Record<string, unknown>[]> {
  return await sql.begin(async (tx) => {
    await run(tx, schema, "LockLimitedQueue", [queue]);
    const [slots] = await run(tx, schema, "QueueFreeSlots", [queue]);
    const free = Math.min(want, slots?.free ?? 0);
    if (free <= 0) return [];
    const [workerId, , names, leaseMs] = claimParams;
    return await run(tx, schema, "ClaimLimitedTasks", [workerId, [queue], names, leaseMs, free]);
  }) as Record<string, unknown>[];
}
