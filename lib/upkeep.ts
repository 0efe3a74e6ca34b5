/**
 * The supervisor's upkeep besides leases: deleting cancelled tasks that left
 * `running` before their worker could, and dropping old outcome counts.
 *
 * @module
 */
import type { Database } from "./statements.ts";
import { run } from "./statements.ts";

/**
 * Deletes tasks whose cancel was requested while they ran but which were
 * failed, handed back or rescued before their worker deleted them. Returns
 * their ids.
 */
export async function deleteCancelledTasks(db: Database, schema: string): Promise<string[]> {
  const rows = await run<{ id: unknown }>(db, schema, "DeleteCancelledTasks", []);
  return rows.map((r) => String(r.id));
}

/** Deletes outcome counts (task_count) older than an hour. */
export async function pruneTaskCounts(db: Database, schema: string): Promise<void> {
  await run(db, schema, "PruneTaskCounts", []);
}
