/**
 * Deletes tasks whose cancel was asked while they ran but which left
 * `running` before their worker could delete them (failed or handed back
 * first, or their worker died).
 *
 * Safe for every host to run at once: a DELETE removes each row once, and a
 * second run finds nothing.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";

/** Deletes cancelled tasks that are no longer running, up to 1,000; returns their ids. */
export async function deleteCancelledTasks(db: Database, schema: string): Promise<string[]> {
  const rows = await run<{ id: unknown }>(db, schema, "DeleteCancelledTasks", []);
  return rows.map((r) => String(r.id));
}

/** The sweep of cancelled tasks as a maintenance service. */
export class CancelSweeper implements MaintenanceService {
  readonly name = "deleting cancelled tasks";

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    readonly interval: number,
    private readonly log: Logger,
  ) {}

  /** Deletes what is left of cancelled tasks now. */
  async runOnce(): Promise<void> {
    const deleted = await deleteCancelledTasks(this.db, this.schema);
    if (deleted.length) this.log.info(`deleted ${deleted.length} cancelled task(s) whose attempt had ended`, { tasks: deleted });
  }
}
