/**
 * Rescues tasks whose lease ran out: their worker vanished without anyone
 * noticing (its host died too), or an in-process attempt outlived its lease;
 * and the tasks of claim rows whose lease ran out, through leases of their
 * own.
 * They become claimable again, the attempt counted, or failed when out of
 * attempts. Their late writes are refused by the lease token.
 *
 * Safe for every host to run at once: the UPDATE locks each row it moves,
 * and a second host's run, waiting on that lock, finds the row no longer
 * running and leaves it. It reads task_lease_idx, so it costs an index
 * probe when nothing has expired.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";
import { leaseExpiredClaims, type ReleasedTask, releasedTasks, type ReleaseListener } from "./dead-worker-releaser.ts";

const EXPIRED = { name: "LeaseExpired", message: "the task's lease expired before its worker reported a result" };

/** Makes tasks whose lease expired claimable again (or failed, when out of attempts). */
export async function rescueExpiredLeases(db: Database, schema: string, maxAttempts: number): Promise<ReleasedTask[]> {
  await leaseExpiredClaims(db, schema, []);
  return releasedTasks(await run(db, schema, "RescueExpiredLeases", [maxAttempts, JSON.stringify(EXPIRED)]));
}

/** The lease rescue as a maintenance service. */
export class LeaseRescuer implements MaintenanceService {
  readonly name = "rescuing expired leases";

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly maxAttempts: number,
    readonly interval: number,
    private readonly log: Logger,
    private readonly onReleased: ReleaseListener = () => {},
  ) {}

  /** Rescues what has expired now; resolves with those tasks. */
  async runOnce(): Promise<void> {
    await this.rescue();
  }

  /** As {@link runOnce}, returning the rescued tasks. */
  async rescue(): Promise<ReleasedTask[]> {
    const rescued = await rescueExpiredLeases(this.db, this.schema, this.maxAttempts);
    if (rescued.length) this.onReleased(rescued);
    if (rescued.length) this.log.warn(`rescued ${rescued.length} task(s) whose lease expired`, { tasks: rescued.map((t) => t.id) });
    return rescued;
  }
}
