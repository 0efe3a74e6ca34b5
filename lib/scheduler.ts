/**
 * Fires a host's schedules (lib/schedule.ts): every second it reads their
 * rows, and fires each one with a tick due, or a run asked for, in one
 * transaction that locks the row, enqueues the tasks and advances its last
 * tick (sql/queries/schedule.sql). So a tick is enqueued once however many
 * hosts run the schedule, and is never enqueued again once handled, even
 * after its task has completed and left the queue.
 *
 * Every host given schedules runs it: an in-process `createWorker` and each
 * worker of `pgbg serve` whose tasks module exports them.
 *
 * @module
 */
import type { Sql } from "postgres";
import { inTurn } from "./client.ts";
import { enqueue } from "./enqueue.ts";
import { describeError, type Logger } from "./log.ts";
import type { MaintenanceService } from "./maintenance/service.ts";
import { dueTicks, type Schedule } from "./schedule.ts";
import { run } from "./statements.ts";

/** How often a host declares its schedules again (seen_at, and a changed cron), in ms. */
const DECLARE_EVERY = 60_000;

/** Fires due schedules; a maintenance service of each host given schedules. */
export class Scheduler implements MaintenanceService {
  readonly name = "firing schedules";
  readonly firstAfter = 0;
  readonly #byName: Map<string, Schedule>;
  #declaredAt = -Infinity;
  /** The last failure logged per schedule, so that one failing each second is logged once. */
  readonly #failing = new Map<string, string>();

  constructor(
    // deno-lint-ignore no-explicit-any
    private readonly sql: Sql<any>,
    private readonly schema: string,
    schedules: readonly Schedule[],
    readonly interval: number,
    private readonly log: Logger,
  ) {
    this.#byName = new Map(schedules.map((s) => [s.name, s]));
  }

  /** Declares the schedules when due, then fires each with a tick due or a run asked for. */
  async runOnce(): Promise<void> {
    if (!this.#byName.size) return;
    if (Date.now() - this.#declaredAt >= DECLARE_EVERY) await this.#declare();
    const rows = await run(this.sql, this.schema, "ScheduleStates", [[...this.#byName.keys()]]);
    for (const row of rows) {
      const schedule = this.#byName.get(row.name)!;
      if (!row.run_requested_at && !dueTicks(schedule, row.last_tick, row.now).handled) continue;
      await this.#fire(schedule).then(() => this.#failing.delete(schedule.name), (error) => this.#failed(schedule, error));
    }
  }

  async #declare(): Promise<void> {
    const all = [...this.#byName.values()];
    const now = new Date();
    await run(this.sql, this.schema, "DeclareSchedules", [
      all.map((s) => s.name), all.map((s) => s.task.name), all.map((s) => s.cron), all.map((s) => s.timezone), all.map((s) => s.nextTick(now)?.toISOString() ?? null),
    ]);
    this.#declaredAt = Date.now();
  }

  /** Fires one schedule's due ticks, and a run asked for, unless another host holds its row. */
  async #fire(schedule: Schedule): Promise<void> {
    await inTurn(this.sql, () => this.sql.begin(async (tx) => {
      const [row] = await run(tx, this.schema, "LockSchedule", [schedule.name]);
      if (!row) return;
      const due = dueTicks(schedule, row.last_tick, row.now);
      const ticks = row.run_requested_at ? [...due.fire, row.now as Date] : due.fire;
      const ids: string[] = [];
      for (const tick of ticks) ids.push(await enqueue(tx, schedule.task, schedule.inputAt(tick), { ...schedule.enqueue, schema: this.schema }));
      const last = ids.at(-1) ?? null;
      if (ids.length) await run(tx, this.schema, "MarkScheduledTasks", [ids, schedule.name]);
      await run(tx, this.schema, "AdvanceSchedule", [schedule.name, due.handled, schedule.nextTick(row.now), Boolean(row.run_requested_at), last]);
    }));
  }

  #failed(schedule: Schedule, error: unknown): void {
    const message = describeError(error).message;
    if (this.#failing.get(schedule.name) === message) return;
    this.#failing.set(schedule.name, message);
    this.log.error(`schedule "${schedule.name}" could not fire; its tick stays due and is tried again: ${message}`);
  }
}
