/**
 * Deletes tasks that failed for good once they are older than their
 * retention: the one their definition gave (`retention.failed`, stored at
 * enqueue), else the host's `failedRetention`. By default failed tasks are
 * kept for ever, and this deletes nothing.
 *
 * Safe for every host to run at once: a DELETE removes each row once. Two
 * hosts with different defaults each apply their own to the tasks whose
 * definition set none; give every host the same.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import { type Database, run } from "../statements.ts";
import type { MaintenanceService } from "./service.ts";

/** Failed tasks deleted per statement, so that one turn holds no lock for long. */
const BATCH = 1_000;

/** Deletes expired failed tasks, `BATCH` at a time until none is left; returns how many. */
export async function pruneFailedTasks(db: Database, schema: string, retention: number): Promise<number> {
  const fallback = retention === Number.POSITIVE_INFINITY ? null : retention;
  let total = 0;
  for (;;) {
    const rows = await run(db, schema, "PruneFailedTasks", [fallback, BATCH]);
    total += rows.length;
    if (rows.length < BATCH) return total;
  }
}

/** The pruning of failed tasks as a maintenance service. */
export class FailedPruner implements MaintenanceService {
  readonly name = "pruning failed tasks";
  /** First at once: a host that restarts often must still prune. */
  readonly firstAfter = 0;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    /** The retention of failed tasks whose definition set none (ms); Infinity: for ever. */
    private readonly retention: number,
    readonly interval: number,
    private readonly log: Logger,
  ) {}

  /** Prunes now. */
  async runOnce(): Promise<void> {
    const deleted = await pruneFailedTasks(this.db, this.schema, this.retention);
    if (deleted) this.log.info(`deleted ${deleted} failed task(s) past their retention`);
  }
}
