/**
 * Schedules: which ticks fire (on time, or missed and left to the catch-up
 * policy), one task per tick however many hosts run the schedule, in
 * process and under `pgbg serve` with supervisors SIGKILLed and started
 * again, a run asked for by runSchedule, and definitions refused with the
 * field named.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import * as v from "valibot";
import {
  createWorker, defineSchedule, defineTask, enqueue, getTask, InvalidOptionsError, InvalidScheduleError, listSchedules, migrate, runSchedule, status,
  UnknownScheduleError,
} from "../mod.ts";
import { dueTicks, MISSED_AFTER } from "../lib/schedule.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, startService, stopService, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const report = defineTask({ name: "report", schema: v.object({ at: v.string() }), run() {} });
/** What the hosts run: the scheduled tasks are left queued, for the tests to read. */
const idle = defineTask({ name: "idle", schema: v.object({}), run() {} });

/** The tick times of the queued tasks of `name`'s schedule, oldest first. */
const ticksOf = async (queue: string) =>
  (await sql`SELECT payload->>'at' AS at FROM pgbg.task WHERE queue = ${queue} ORDER BY id`).map((r) => r.at as string);
const row = async (name: string) => (await sql`SELECT * FROM pgbg.schedule WHERE name = ${name}`)[0];

function secondsApart(ticks: string[]): number[] {
  return ticks.slice(1).map((t, i) => (Date.parse(t) - Date.parse(ticks[i])) / 1000);
}

describe("which ticks fire", () => {
  const at = (iso: string) => new Date(iso);
  const hourly = (catchUp?: Parameters<typeof defineSchedule>[0]["catchUp"]) =>
    defineSchedule({ name: "hourly", task: report, cron: "0 * * * *", input: { at: "" }, catchUp });
  const now = at("2026-12-02T10:00:30Z");
  const fourHoursAgo = at("2026-12-02T06:00:00Z");

  test("a tick less than a minute late fires under every policy; none is due twice", () => {
    for (const policy of ["skip", "once", { backfill: 3 }] as const) {
      const due = dueTicks(hourly(policy), at("2026-12-02T09:00:00Z"), now);
      assert.deepEqual(due.fire, [at("2026-12-02T10:00:00Z")], JSON.stringify(policy));
      assert.deepEqual(due.handled, at("2026-12-02T10:00:00Z"));
      assert.deepEqual(dueTicks(hourly(policy), due.handled!, now), { fire: [], handled: null });
    }
  });

  test("missed ticks: skip drops them, once fires the newest, backfill the newest n oldest first", () => {
    const missed = ["07", "08", "09"].map((h) => at(`2026-12-02T${h}:00:00Z`));
    const onTime = at("2026-12-02T10:00:00Z");
    assert.deepEqual(dueTicks(hourly("skip"), fourHoursAgo, now).fire, [onTime]);
    assert.deepEqual(dueTicks(hourly("once"), fourHoursAgo, now).fire, [missed[2], onTime]);
    assert.deepEqual(dueTicks(hourly({ backfill: 2 }), fourHoursAgo, now).fire, [missed[1], missed[2], onTime]);
    assert.deepEqual(dueTicks(hourly({ backfill: 10 }), fourHoursAgo, now).fire, [...missed, onTime]);
    const late = new Date(now.getTime() + MISSED_AFTER);
    assert.deepEqual(dueTicks(hourly("skip"), fourHoursAgo, late), { fire: [], handled: onTime }, "more than a minute late: missed too");
  });

  test("the cron is read in its time zone", () => {
    const berlin = defineSchedule({ name: "b", task: report, cron: "0 3 * * *", timezone: "Europe/Berlin", input: { at: "" } });
    assert.deepEqual(berlin.nextTick(at("2026-12-02T00:00:00Z")), at("2026-12-02T02:00:00Z"), "03:00 CET");
    assert.deepEqual(berlin.nextTick(at("2026-07-02T00:00:00Z")), at("2026-07-02T01:00:00Z"), "03:00 CEST");
  });
});

describe("defineSchedule refuses bad definitions, naming the field", () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ["a bad cron", { cron: "every day" }, /cron "every day" is not valid/],
    ["a cron of 7 fields", { cron: "0 0 0 * * * 2027" }, /cron .* is not valid/],
    ["an unknown time zone", { timezone: "Mars/Base" }, /timezone "Mars\/Base" is not an IANA time zone/],
    ["a bad catch-up", { catchUp: { backfill: 0 } }, /catchUp must be/],
    ["a bad name", { name: "no spaces" }, /name must be/],
    ["no task", { task: undefined }, /task must be a defineTask\(\) result/],
    ["a key among its enqueue options (it would dedupe ticks)", { enqueue: { key: "k" } }, /enqueue takes queue, priority and maxAttempts, not key/],
    ["a bad queue", { enqueue: { queue: "no spaces" } }, /enqueue.queue must be/],
    ["a bad priority", { enqueue: { priority: 99999 } }, /enqueue.priority must be/],
  ];
  for (const [what, change, message] of cases) {
    test(what, () => {
      assert.throws(() => defineSchedule({ task: report, cron: "* * * * *", input: { at: "" }, ...change } as never), (e: unknown) =>
        e instanceof InvalidScheduleError && e.code === "PGBG_INVALID_SCHEDULE" && message.test(e.message));
    });
  }
  test("two different schedules of one name given to a worker", () => {
    const a = defineSchedule({ name: "same", task: report, cron: "* * * * *", input: { at: "" } });
    const b = defineSchedule({ name: "same", task: report, cron: "0 * * * *", input: { at: "" } });
    assert.throws(() => createWorker(sql, { tasks: [idle], schedules: [a, b] }), (e: unknown) => e instanceof InvalidScheduleError && /defined twice/.test(e.message));
    assert.throws(() => createWorker(sql, { tasks: [idle], schedules: [{ cron: "* * * * *" }] as never }), InvalidOptionsError);
  });
});

describe("firing, in process", () => {
  test("three hosts running one every-second schedule enqueue one task per tick, with none skipped", async () => {
    const schedule = defineSchedule({
      name: "three-hosts", task: report, cron: "* * * * * *", input: (tick) => ({ at: tick.toISOString() }), enqueue: { queue: "three" },
    });
    const hosts = [0, 1, 2].map(() => createWorker(db.connect({ max: 2 }), { tasks: [idle], schedules: [schedule], logger: quiet }));
    await Promise.all(hosts.map((h) => h.start()));
    try {
      await until(() => ticksOf("three"), (t) => t.length >= 6, patience, "six ticks");
    } finally {
      await Promise.all(hosts.map((h) => h.stop()));
    }
    const ticks = await ticksOf("three");
    assert.equal(new Set(ticks).size, ticks.length, `no tick twice: ${ticks.join(", ")}`);
    assert.deepEqual(secondsApart(ticks), ticks.slice(1).map(() => 1), `one a second, none skipped: ${ticks.join(", ")}`);
    const [info] = (await listSchedules(sql)).filter((s) => s.name === "three-hosts");
    assert.equal(info.task, "report");
    assert.equal(info.lastTick.toISOString(), ticks.at(-1));
    assert.ok(info.nextTick && info.nextTick > info.lastTick, "the next tick is after the last");
    assert.equal(info.active, true);
    assert.ok((await status(sql)).schedules.some((s) => s.name === "three-hosts"), "status() shows it");
    // Each tick's task names its schedule; a task the app enqueued names none.
    const ids = (await sql`SELECT id::text FROM pgbg.task WHERE queue = 'three'`).map((r) => r.id as string);
    assert.deepEqual(new Set((await Promise.all(ids.map((id) => getTask(sql, id)))).map((t) => t?.schedule)), new Set(["three-hosts"]));
    assert.equal((await getTask(sql, await enqueue(sql, report, { at: "" }, { queue: "three-app" })))?.schedule, null);
  });

  test("after downtime, the catch-up policy decides the missed ticks; a tick handled before the downtime is not fired again", async () => {
    // Hourly at a minute half an hour from now: the newest tick is about 30
    // minutes late, so it is missed too.
    const minute = (new Date().getUTCMinutes() + 30) % 60;
    let newest = Math.floor(Date.now() / 3_600_000) * 3_600_000 + minute * 60_000;
    if (newest > Date.now()) newest -= 3_600_000;
    const hoursBefore = (n: number) => new Date(newest - n * 3_600_000).toISOString();
    for (const [catchUp, expected] of [["skip", []], ["once", [hoursBefore(0)]], [{ backfill: 3 }, [hoursBefore(2), hoursBefore(1), hoursBefore(0)]]] as const) {
      const name = `catch-up-${typeof catchUp === "string" ? catchUp : "backfill"}`;
      const cron = `${minute} * * * *`;
      const schedule = defineSchedule({ name, task: report, cron, input: (tick) => ({ at: tick.toISOString() }), catchUp, enqueue: { queue: name } });
      const first = createWorker(sql, { tasks: [idle], schedules: [schedule], logger: quiet });
      await first.start();
      await until(() => row(name), Boolean, patience, "the schedule's row");
      await first.stop();
      // Ten hours of downtime, the tick before them handled.
      await sql`UPDATE pgbg.schedule SET last_tick = ${hoursBefore(10)} WHERE name = ${name}`;
      const second = createWorker(sql, { tasks: [idle], schedules: [schedule], logger: quiet });
      await second.start();
      try {
        await until(() => row(name), (r) => r.last_tick.toISOString() === hoursBefore(0), patience, "the ticks to be handled");
      } finally {
        await second.stop();
      }
      assert.deepEqual(await ticksOf(name), expected, name);
    }
  });

  test("runSchedule fires one now through a host; an unknown name is refused with its code", async () => {
    const schedule = defineSchedule({ name: "on-demand", task: report, cron: "0 0 1 1 *", input: (tick) => ({ at: tick.toISOString() }), enqueue: { queue: "demand" } });
    const host = createWorker(sql, { tasks: [idle], schedules: [schedule], logger: quiet });
    await host.start();
    try {
      await until(() => row("on-demand"), Boolean, patience, "the schedule's row");
      await runSchedule(sql, "on-demand");
      const [ticks] = await Promise.all([until(() => ticksOf("demand"), (t) => t.length === 1, patience, "the run asked for"), runSchedule(sql, "on-demand").catch(() => {})]);
      assert.equal(ticks.length, 1);
      const info = (await listSchedules(sql)).find((s) => s.name === "on-demand")!;
      assert.equal(info.lastTaskId, (await sql`SELECT id::text FROM pgbg.task WHERE queue = 'demand'`)[0].id);
    } finally {
      await host.stop();
    }
    await assert.rejects(runSchedule(sql, "never-declared"), (e: unknown) => e instanceof UnknownScheduleError && e.code === "PGBG_UNKNOWN_SCHEDULE");
  });
});

describe("firing under pgbg serve", () => {
  test("two supervisors, one SIGKILLed and started again: one task per tick, none skipped", async () => {
    const tasks = fileURLToPath(new URL("./fixtures/schedules.ts", import.meta.url));
    const args = ["--tasks", tasks, "--workers", "2", "--check-interval", "250ms"];
    const a = startService(db.url, args);
    let b = startService(db.url, args);
    try {
      await until(() => ticksOf("default"), (t) => t.length >= 3, patience, "three ticks");
      b.child.kill("SIGKILL");
      await b.exited;
      const before = (await ticksOf("default")).length;
      await until(() => ticksOf("default"), (t) => t.length >= before + 3, patience, "three ticks with one supervisor");
      b = startService(db.url, args);
      await b.waitForLog((l) => l.message.includes("ready"), patience);
      const now = (await ticksOf("default")).length;
      await until(() => ticksOf("default"), (t) => t.length >= now + 3, patience, "three more ticks with two");
    } finally {
      await Promise.all([stopService(a), stopService(b)]);
    }
    const ticks = await ticksOf("default");
    assert.equal(new Set(ticks).size, ticks.length, `no tick twice: ${ticks.join(", ")}`);
    assert.deepEqual(secondsApart(ticks), ticks.slice(1).map(() => 1), `one a second, none skipped: ${ticks.join(", ")}`);
  });
});
