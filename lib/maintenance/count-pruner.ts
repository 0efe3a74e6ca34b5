/**
 * Drops outcome counts (`task_count`) and depth samples (`task_depth`)
 * older than 24 hours: the dashboard's charts reach that far back, and the
 * tables must not grow with the uptime. Drops the start logs of groups
 * (`group_rate`) that count nothing any more: a queue under a group rate
 * limit may have any number of groups.
 *
 * Safe for every host to run at once: a DELETE of old periods, which a
 * second run finds gone.
 *
 * @module
 */
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";

/** Deletes outcome counts and depth samples older than 24 hours, and group rate logs that count nothing, each by its own statement. */
export async function pruneTaskCounts(db: Database, schema: string): Promise<void> {
  await run(db, schema, "PruneTaskCounts", []);
  await run(db, schema, "PruneTaskDepth", []);
  await run(db, schema, "PruneGroupRates", []);
}

/** The pruning of counts as a maintenance service. */
export class CountPruner implements MaintenanceService {
  readonly name = "pruning task counts";
  /** First at once: a host that restarts often must still prune. */
  readonly firstAfter = 0;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    readonly interval: number,
  ) {}

  /** Prunes now. */
  async runOnce(): Promise<void> {
    await pruneTaskCounts(this.db, this.schema);
  }
}
