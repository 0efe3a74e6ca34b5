// A schedule the chaos suite runs beside its work (scenarios that set
// `ticks`): it fires every second, and each tick's task records its tick in
// chaos_tick in the transaction of its ctx.complete(tx), so a tick enqueued
// twice and run twice shows as two rows. Its catch-up policy backfills, so
// no tick may be missing either, however long every scheduler was down.
import process from "node:process";
import postgres from "postgres";
import * as v from "valibot";
import { defineSchedule, defineTask } from "pgbg";

let sql;

/** Records its tick in chaos_tick and completes, in one transaction. */
export const tick = defineTask({
  name: "chaos-tick",
  schema: v.object({ tick: v.string() }),
  retryDelay: 100,
  maxAttempts: 1000,
  async run(input, ctx) {
    sql ??= postgres(process.env.DATABASE_URL, { max: 2, onnotice: () => {}, fetch_types: false, connection: { application_name: "chaos ticks" } });
    await sql.begin(async (tx) => {
      await tx`INSERT INTO chaos_tick (tick, task_id) VALUES (${input.tick}, ${ctx.id})`;
      await ctx.complete(tx);
    });
  },
});

/** Every second, backfilling every missed tick: none may be skipped. */
export const everySecond = defineSchedule({
  name: "chaos-every-second",
  task: tick,
  cron: "* * * * * *",
  timezone: "UTC",
  input: (at) => ({ tick: at.toISOString() }),
  catchUp: { backfill: 1000 },
  enqueue: { queue: "ticks" },
});
