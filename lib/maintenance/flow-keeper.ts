/**
 * Looks after flows and batches: queues the completion task of a batch
 * whose members all ended without being counted (a worker of the previous
 * release ends members with statements that do not count them), and
 * deletes flows older than a day of which nothing is left.
 *
 * Safe for every host to run at once: each statement changes a row once,
 * and a second run finds nothing.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import { type Database, run } from "../statements.ts";
import type { MaintenanceService } from "./service.ts";

/** Flows deleted per statement. */
const BATCH = 1_000;

/** The care of flows and batches as a maintenance service. */
export class FlowKeeper implements MaintenanceService {
  readonly name = "looking after flows";

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    readonly interval: number,
    private readonly log: Logger,
  ) {}

  /** Rescues stuck batch completion tasks and prunes ended flows now. */
  async runOnce(): Promise<void> {
    const rescued = await run<{ id: unknown }>(this.db, this.schema, "RescueBatchCompletions", []);
    if (rescued.length) {
      this.log.warn(`queued ${rescued.length} batch completion task(s) whose members all ended uncounted (by a worker of an earlier release)`, {
        tasks: rescued.map((r) => String(r.id)),
      });
    }
    let pruned = 0;
    for (let rows = BATCH; rows === BATCH; pruned += rows) rows = (await run(this.db, this.schema, "PruneFlows", [BATCH])).length;
    if (pruned) this.log.debug(`deleted ${pruned} ended flow(s) older than a day`);
  }
}
