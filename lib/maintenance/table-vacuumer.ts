/**
 * Vacuums the task table as soon as its dead rows can be removed. Every
 * claim and every completion leaves a dead row version and dead index
 * entries behind; claims step over the entries, and the table grows with
 * the rows, until a vacuum removes them. Autovacuum comes round once a
 * minute per database at best (and never when it is off), and while a
 * transaction holds the horizon back nothing can be removed at all; the
 * moment it lets go, the queue should shed what piled up, not a minute
 * later. docs/storage.md has the measurements.
 *
 * It vacuums when the dead rows reach {@link VACUUM_MIN_DEAD_ROWS} and the
 * horizon moved since its last vacuum (an unmoved horizon means that vacuum
 * would remove nothing new), or a minute passed. `VACUUM (SKIP_LOCKED)`
 * takes no lock that blocks the queue's statements, and skips its turn when
 * autovacuum or another host is vacuuming, so every host may run it.
 *
 * @module
 */
import type { Sql } from "postgres";
import { inTurn } from "../client.ts";
import type { Logger } from "../log.ts";
import { run, statement } from "../statements.ts";
import type { MaintenanceService } from "./service.ts";

/** Fewer dead rows than this are not worth a vacuum (the task table's autovacuum threshold, 001_init.sql). */
export const VACUUM_MIN_DEAD_ROWS = 5_000;
/** While the horizon seems not to move, vacuum at most this often (ms): it may be moving where this role cannot see. */
const UNMOVED_HORIZON_RETRY_MS = 60_000;

/** The task table as the vacuum judges it (TaskVacuumState). */
export interface VacuumState {
  deadRows: number;
  liveRows: number;
  /** Whether the current role owns the table. */
  owned: boolean;
  /** The oldest transaction id still held and what holds it, as text; null when none is visible. */
  horizon: string | null;
}

/** The last vacuum this service ran: when (ms, its clock) and at which horizon. */
export interface LastVacuum {
  at: number;
  horizon: string | null;
}

/** Reads the task table's dead rows, ownership and horizon. */
// deno-lint-ignore no-explicit-any
export async function readVacuumState(sql: Sql<any>, schema: string): Promise<VacuumState> {
  const [r] = await run<{ dead_rows: number; live_rows: number; owned: boolean; horizon: string | null }>(sql, schema, "TaskVacuumState", []);
  return { deadRows: r.dead_rows, liveRows: r.live_rows, owned: r.owned, horizon: r.horizon };
}

/** Whether a vacuum now would be worth it, given the last one (see the module's comment). */
export function vacuumDue(state: VacuumState, last: LastVacuum | null, now: number): boolean {
  if (state.deadRows < VACUUM_MIN_DEAD_ROWS) return false;
  if (!last || now - last.at >= UNMOVED_HORIZON_RETRY_MS) return true;
  return state.horizon === null || state.horizon !== last.horizon;
}

/** The task table's vacuum as a maintenance service. */
export class TableVacuumer implements MaintenanceService {
  readonly name = "vacuum of the task table";
  #interval: number;
  #last: LastVacuum | null = null;

  constructor(
    // deno-lint-ignore no-explicit-any
    private readonly sql: Sql<any>,
    private readonly schema: string,
    interval: number,
    private readonly log: Logger,
  ) {
    this.#interval = interval;
  }

  /** How often it runs; 0 once the role turned out not to own the table. */
  get interval(): number {
    return this.#interval;
  }

  /** Vacuums when due. */
  async runOnce(): Promise<void> {
    await this.vacuumIfDue();
  }

  /** Vacuums when due; resolves to whether it did. */
  async vacuumIfDue(): Promise<boolean> {
    const state = await readVacuumState(this.sql, this.schema);
    if (!state.owned) {
      this.#interval = 0;
      this.log.warn(
        `cannot vacuum ${this.schema}.task: only its owner may. Autovacuum still does, once a minute at best; ` +
          `run pgbg as the owner, or set --vacuum-interval off to silence this. Not trying again.`,
      );
      return false;
    }
    const now = Date.now();
    if (!vacuumDue(state, this.#last, now)) return false;
    const started = performance.now();
    await inTurn(this.sql, () => this.sql.unsafe(statement(this.schema, "VacuumTask")).then(() => {}));
    this.#last = { at: now, horizon: state.horizon };
    this.log.debug(`vacuumed ${this.schema}.task`, { deadRows: state.deadRows, liveRows: state.liveRows, durationMs: Math.round(performance.now() - started) });
    return true;
  }
}
