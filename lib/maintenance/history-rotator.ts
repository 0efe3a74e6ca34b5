/**
 * Looks after the history (migration 008): moves finished tasks to the next
 * slot once the current one has filled for {@link SLOT_AGE} and the next is
 * empty, and empties each other slot whose rows have all expired, with
 * TRUNCATE, so that the history never needs a DELETE or a vacuum. Also
 * forgets the waiters of processes that died while waiting, and the key
 * holds (throttle windows) that ended.
 *
 * Safe for every host to run at once: the rotation moves the slot only
 * from where it read it, and emptying a slot checks, under the slot's lock,
 * that nothing in it is still live.
 *
 * @module
 */
import type { Logger } from "../log.ts";
import { type Database, run } from "../statements.ts";
import type { MaintenanceService } from "./service.ts";

/** How long the current slot fills before the next empty one takes over (ms): eight slots span 80 minutes, past the default retention of results. */
export const SLOT_AGE = 10 * 60_000;

/** What one turn did. */
export interface RotationTurn {
  /** The slot moved to, if it moved. */
  rotatedTo?: number;
  /** The slots emptied. */
  emptied: number[];
}

/** One turn of the history's rotation; see the module's comment. */
export async function rotateHistory(db: Database, schema: string, slotAge: number = SLOT_AGE): Promise<RotationTurn> {
  const [state] = await run<{ slot: number; age_ms: number; filled: number[] }>(db, schema, "HistoryRotation", []);
  const turn: RotationTurn = { emptied: [] };
  for (const slot of state.filled) {
    const [r] = await run<{ emptied: boolean }>(db, schema, "EmptyHistorySlot", [slot]);
    if (r.emptied) turn.emptied.push(slot);
  }
  if (state.age_ms >= slotAge) {
    const moved = await run<{ slot: number }>(db, schema, "RotateHistory", [state.slot]);
    if (moved.length) turn.rotatedTo = moved[0].slot;
  }
  await run(db, schema, "PruneResultWaiters", []);
  await run(db, schema, "PruneKeyHolds", []);
  return turn;
}

/** The history's rotation as a maintenance service. */
export class HistoryRotator implements MaintenanceService {
  readonly name = "rotating the history";
  /** First at once: a host that restarts often must still empty expired slots. */
  readonly firstAfter = 0;
  #interval: number;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    interval: number,
    private readonly log: Logger,
  ) {
    this.#interval = interval;
  }

  /** How often it runs; 0 once the role turned out to lack the rights it needs. */
  get interval(): number {
    return this.#interval;
  }

  /** Rotates and empties now. */
  async runOnce(): Promise<void> {
    try {
      const turn = await rotateHistory(this.db, this.schema);
      if (turn.rotatedTo !== undefined || turn.emptied.length) this.log.debug("rotated the history", { ...turn });
    } catch (error) {
      if ((error as { code?: unknown }).code !== "42501") throw error;
      this.#interval = 0;
      this.log.warn(
        `cannot rotate ${this.schema}.history: ${(error as Error).message}. Grant this role UPDATE on ${this.schema}.history_rotation, ` +
          `TRUNCATE on ${this.schema}.history_0 to _7, DELETE on ${this.schema}.result_waiter and ${this.schema}.task_key ` +
          `(README, "Running under a least-privilege role"); ` +
          `until then the history is never emptied. Not trying again.`,
      );
    }
  }
}
