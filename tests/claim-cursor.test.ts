import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import postgres from "postgres";
import * as v from "valibot";
import { claimTasks, type ClaimScope } from "../lib/claim.ts";
import { ClaimCursor, type ClaimedLane, type KnownLanes, FAST_FULL_CLAIM_MS, FULL_CLAIM_EVERY_MS, FULL_CLAIM_MAX_GAP_MS, FULL_CLAIM_SHARE, ROUND_TRIPS_KEPT, SLOW_FULL_CLAIMS } from "../lib/claim-cursor.ts";
import { LimitedQueues } from "../lib/limits.ts";
import { liveness } from "../lib/liveness.ts";
import { silentLogger } from "../lib/log.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { Worker } from "../lib/worker.ts";
import { defineTask, enqueue, enqueueMany, migrate, setQueueConcurrency } from "../mod.ts";
import { run } from "../lib/statements.ts";
import { DelayProxy } from "./delay-proxy.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until, within } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const task = defineTask({ name: "cursor", schema: v.any(), run() {} });
const scope = (workerId: string): ClaimScope => ({ workerId, queues: null, names: ["cursor"], leaseMs: [60_000] });
let ids = 0;
/** A task claimed (its run time at `runAtMs`: the cursor keeps its lane alone). */
const at = (runAtMs: number, priority = 0, queue = "default", name = "cursor") => ({ queue, name, priority, id: String(++ids), runAtUs: String(runAtMs * 1000) });
/** The cursor's lanes as "queue/name/priority", sorted. */
const lanesOf = (lanes: KnownLanes | null) => lanes ? lanes.queues.map((q, i) => `${q}/${lanes.names[i]}/${lanes.priorities[i]}`).sort() : null;
const SLOW = FAST_FULL_CLAIM_MS * 5;
/** Records the full claims that make the cursor judge full claims slow, the last taking `tasks` in `ms`. */
const slowFull = (cursor: ClaimCursor, tasks: ClaimedLane[], now: number, ms = SLOW) => {
  for (let i = 1; i < SLOW_FULL_CLAIMS; i++) cursor.record(true, SLOW, [], now);
  cursor.record(true, ms, tasks, now);
};

describe("the claim cursor's choice between a full claim and a claim from the cursor", () => {
  test("the first claim is full, and so is every claim while full claims are fast", () => {
    const cursor = new ClaimCursor();
    assert.equal(cursor.next(0), null);
    cursor.record(true, FAST_FULL_CLAIM_MS - 1, [at(5_000)], 0);
    assert.equal(cursor.next(1), null);
  });

  test(`claims read from the cursor only after ${SLOW_FULL_CLAIMS} slow full claims in a row: one slow claim leaves them full`, () => {
    const cursor = new ClaimCursor();
    for (let i = 1; i < SLOW_FULL_CLAIMS; i++) {
      cursor.record(true, SLOW, [at(5_000)], 0);
      assert.equal(cursor.next(1), null, `after ${i} slow full claim(s)`);
    }
    cursor.record(true, FAST_FULL_CLAIM_MS - 1, [], 0);
    cursor.record(true, SLOW, [], 0);
    assert.equal(cursor.next(1), null, "a fast one among the latest keeps claims full");
    cursor.record(true, SLOW, [], 0);
    cursor.record(true, SLOW, [], 0);
    assert.ok(cursor.next(1));
  });

  test("once full claims are slow, a claim from the cursor reads the lanes (queue, name, priority) it took tasks from, each once, and no other name's", () => {
    const cursor = new ClaimCursor();
    slowFull(cursor, [at(5_000), at(7_000), at(6_000, 3, "mail"), at(1_000, 1), at(8_000), at(8_500, 0, "default", "other-name")], 0);
    assert.deepEqual(lanesOf(cursor.next(1)), ["default/cursor/0", "default/cursor/1", "default/other-name/0", "mail/cursor/3"]);
    // A claim from the cursor adds the lanes it took from, as a full one does.
    cursor.record(false, 1, [at(9_000, 0, "other")], 2);
    assert.deepEqual(lanesOf(cursor.next(3)), ["default/cursor/0", "default/cursor/1", "default/other-name/0", "mail/cursor/3", "other/cursor/0"]);
  });

  test("while full claims are slow, one comes round every second, or after 20 times its own duration if that is longer, at most 10 s", () => {
    const slow = new ClaimCursor();
    slowFull(slow, [at(5_000)], 0);
    assert.ok(slow.next(FULL_CLAIM_EVERY_MS - 1));
    assert.equal(slow.next(FULL_CLAIM_EVERY_MS), null);
    const slower = new ClaimCursor();
    const long = 300; // a full claim of 300 ms: the next one 6 s later
    slowFull(slower, [at(5_000)], 0, long);
    assert.ok(slower.next(FULL_CLAIM_SHARE * long - 1));
    assert.equal(slower.next(FULL_CLAIM_SHARE * long), null);
    const outlier = new ClaimCursor();
    slowFull(outlier, [at(5_000)], 0, 30_000);
    assert.ok(outlier.next(FULL_CLAIM_MAX_GAP_MS - 1));
    assert.equal(outlier.next(FULL_CLAIM_MAX_GAP_MS), null, "a 30 s outlier puts the next full claim off by 10 s, not 10 minutes");
  });

  test("once full claims are slow, after one that took nothing, the claims until the next full one read no lane", () => {
    const cursor = new ClaimCursor();
    slowFull(cursor, [], 0);
    assert.deepEqual(cursor.next(1)?.queues, [], "no lane: nothing to read, not a full claim");
    assert.equal(cursor.next(FULL_CLAIM_EVERY_MS), null);
  });

  test("a wake-up makes the next claim full while the cursor knows no lane, none yet or none claimed from for a minute, and leaves the cursor's claims while it knows one", () => {
    const empty = new ClaimCursor();
    slowFull(empty, [], 0);
    empty.woken(1);
    assert.equal(empty.next(2), null, "no lane known: only a full claim can find the tasks the wake-up is for");
    empty.record(true, SLOW, [], 2);
    assert.deepEqual(empty.next(3)?.queues, [], "once it ran, claims read the cursor's lanes again");
    const known = new ClaimCursor();
    slowFull(known, [at(5_000)], 0);
    known.woken(1);
    assert.deepEqual(known.next(2)?.queues, ["default"], "a lane known: read from the cursor");
    const stale = new ClaimCursor();
    slowFull(stale, [at(5_000)], 0);
    slowFull(stale, [], 60_500);
    stale.woken(61_000);
    assert.equal(stale.next(61_001), null, "its one lane last claimed from over a minute ago counts as none");
    // The limited queues' cursors are told too.
    const limits = new LimitedQueues(60_000);
    slowFull(limits.cursorOf("limited"), [], 0);
    limits.woken(1);
    assert.equal(limits.cursorOf("limited").next(2), null, "a limited queue's cursor that knows no lane");
  });

  test("a wake-up during a full claim asks for the next one, and wake-ups make at most one full claim a second, or in 20 times the last one's duration", () => {
    const cursor = new ClaimCursor();
    slowFull(cursor, [], 0);
    const gapAt = FULL_CLAIM_EVERY_MS;
    assert.equal(cursor.next(gapAt), null, "the gap's full claim starts");
    cursor.woken(gapAt + 1);
    cursor.record(true, SLOW, [], gapAt + 2);
    assert.equal(cursor.next(gapAt + 3), null, "woken while it ran (its snapshot may have missed the task): the next claim is full");
    cursor.record(true, SLOW, [], gapAt + 4);
    cursor.woken(gapAt + 500);
    assert.deepEqual(cursor.next(gapAt + 501)?.queues, [], "woken again within a second of the full claim a wake-up made: no full claim");
    const long = new ClaimCursor();
    slowFull(long, [], 0, 100);
    long.woken(1);
    assert.equal(long.next(2), null);
    long.record(true, 100, [], 102);
    long.woken(1_500);
    assert.deepEqual(long.next(1_501)?.queues, [], "within 20 × the last full claim's 100 ms: no full claim");
  });

  test("full claims are judged net of the round trip to the database, the shortest of the latest heartbeats'", () => {
    const far = new ClaimCursor();
    for (const ms of [45, 30, 60]) far.roundTrips.add(ms);
    for (let i = 0; i < SLOW_FULL_CLAIMS; i++) far.record(true, 30 + FAST_FULL_CLAIM_MS - 1, [at(5_000)], 0);
    assert.equal(far.fullClaimsSlow, false, "39 ms, 30 ms away: fast");
    assert.equal(far.next(1), null);
    for (let i = 0; i < SLOW_FULL_CLAIMS; i++) far.record(true, 30 + FAST_FULL_CLAIM_MS, [], 1);
    assert.equal(far.fullClaimsSlow, true, "40 ms, 30 ms away: slow");
    for (let i = 0; i < ROUND_TRIPS_KEPT; i++) far.roundTrips.add(50);
    assert.equal(far.fullClaimsSlow, false, "the 30 ms round trip aged out: 50 ms away, 40 ms is fast");
    const limits = new LimitedQueues(60_000);
    limits.roundTrips.add(30);
    const limited = limits.cursorOf("made-after-the-beat");
    for (let i = 0; i < SLOW_FULL_CLAIMS; i++) limited.record(true, 30 + FAST_FULL_CLAIM_MS - 1, [], 0);
    assert.equal(limited.fullClaimsSlow, false, "a limited queue's cursor made after the beat has its round trip");
  });

  test("fullNext() makes the next claim full, and a lane no claim took from for a minute is dropped", () => {
    const cursor = new ClaimCursor();
    slowFull(cursor, [at(5_000)], 0);
    cursor.fullNext();
    assert.equal(cursor.next(1), null);
    slowFull(cursor, [at(5_000, 0, "old")], 0);
    cursor.record(false, 1, [at(5_000, 0, "new")], 59_000);
    slowFull(cursor, [], 60_500);
    assert.deepEqual(cursor.next(61_000)?.queues, ["new"]);
  });
});

describe("claims from the cursor while vacuum is held back", () => {
  test("step over none of the tasks claimed from a backlog since the horizon was held, where a full claim steps over each", async () => {
    const holder = await sql.reserve();
    await holder`BEGIN ISOLATION LEVEL REPEATABLE READ`;
    await holder`SELECT txid_current()`;
    try {
      const worker = randomUUID();
      const writer = new OutcomeWriter(sql, "pgbg", 25, silentLogger, undefined, worker);
      // A backlog of 3,003 tasks due a minute ago, all with the same run_at.
      // 3,000 are claimed and completed: their entries stay in the lane
      // index, as no vacuum may remove them while the snapshot is held.
      await enqueueMany(sql, task, Array.from({ length: 3_003 }, (_, i) => i), { runAt: new Date(Date.now() - 60_000) });
      for (let left = 3_000; left > 0; left -= 500) {
        const batch = await claimTasks(sql, "pgbg", scope(worker), 500);
        writer.claimed(batch);
        for (const t of batch) writer.complete({ id: t.id, leaseToken: t.leaseToken, claimId: t.claimId });
        await writer.flush();
      }
      const full = await claimReading(null, 1);
      const cursor = new ClaimCursor();
      slowFull(cursor, full.tasks, Date.now());
      const fromCursor = await claimReading(cursor, 1);
      assert.ok(full.entries > 3_000, `the full claim read ${full.entries} entries`);
      assert.ok(fromCursor.entries < 10, `the claim from the cursor read ${fromCursor.entries} entries`);
      assert.equal(fromCursor.claimed, 1);
    } finally {
      await holder`COMMIT`;
      holder.release();
      await sql`DELETE FROM pgbg.task`;
    }
  });
});

test("a limited claim from the cursor reads its lanes' heads past the tasks completed since the horizon was held", async () => {
  const queue = "held-limited";
  // A limit no worker can reach (none is registered): the claim of a queue limited by its concurrency alone.
  await setQueueConcurrency(sql, queue, 100_000);
  const holder = await sql.reserve();
  await holder`BEGIN ISOLATION LEVEL REPEATABLE READ`;
  await holder`SELECT txid_current()`;
  const worker = randomUUID();
  const claim = (tx: Parameters<typeof run>[0], wanted: number) =>
    run(tx, "pgbg", "ClaimSlotRowTasksFrom", [worker, [queue], ["cursor"], [60_000], wanted, [queue], ["cursor"], [0], 0]);
  try {
    const writer = new OutcomeWriter(sql, "pgbg", 25, silentLogger, undefined, worker);
    await enqueueMany(sql, task, Array.from({ length: 3_003 }, (_, i) => i), { queue });
    for (let left = 3_000; left > 0; left -= 500) {
      const batch = (await claim(sql, 500)).map((r) => ({ id: String(r.id), claimId: String(r.claim_id) }));
      writer.claimed(batch);
      for (const t of batch) writer.complete({ id: t.id, leaseToken: 0, claimId: t.claimId });
      await writer.flush();
    }
    const seen = await sql.begin(async (tx) => {
      const read = async () => (await tx`SELECT pg_stat_get_xact_tuples_returned('pgbg.task_lane_idx'::regclass)::int AS n`)[0].n as number;
      const before = await read();
      const claimed = (await claim(tx, 1)).length;
      return { claimed, entries: (await read()) - before };
    });
    assert.equal(seen.claimed, 1);
    assert.ok(seen.entries < 10, `the limited claim read ${seen.entries} entries of the lane index`);
  } finally {
    await holder`COMMIT`;
    holder.release();
    await sql`DELETE FROM pgbg.task`;
    await setQueueConcurrency(sql, queue, null);
  }
});

describe("a task due before its lane's latest claim", () => {
  test("is taken by the next claim from the cursor: a claim row's pair starts past every task taken before, not at a run time", async () => {
    await sql`DELETE FROM pgbg.claim`;
    const worker = randomUUID();
    const now = Date.now();
    const [first] = await enqueueMany(sql, task, ["first"]);
    const cursor = new ClaimCursor();
    const [claimed] = await claimTasks(sql, "pgbg", scope(worker), 10, cursor);
    assert.equal(claimed?.id, first);
    // The last full claim took 500 ms: the next is 10 s away, so the claim below is from the cursor.
    slowFull(cursor, [at(now)], Date.now(), 500);
    // Enqueued after that claim, due a minute before it.
    const late = await enqueue(sql, task, "late", { runAt: new Date(now - 60_000) });
    const [taken] = await claimTasks(sql, "pgbg", scope(worker), 10, cursor);
    assert.equal(taken?.id, late);
    await sql`DELETE FROM pgbg.task`;
  });
});

/**
 * Claims up to `limit` tasks in a transaction, and counts the entries of
 * task_lane_idx its scans read (dead ones included), from the
 * transaction's own statistics.
 */
async function claimReading(cursor: ClaimCursor | null, limit: number) {
  return await sql.begin(async (tx) => {
    // Counts not yet sent to the statistics collector carry over from earlier
    // transactions of this backend; none are sent inside a transaction.
    const read = async () => (await tx`SELECT pg_stat_get_xact_tuples_returned('pgbg.task_lane_idx'::regclass)::int AS n`)[0].n as number;
    const before = await read();
    const claimed = await claimTasks(tx, "pgbg", scope(randomUUID()), limit, cursor ?? undefined);
    return { claimed: claimed.length, entries: (await read()) - before, tasks: claimed };
  });
}

describe("a worker a round trip of 10 ms or more from its database", () => {
  test("judges its full claims net of the round trip, so that on a healthy table they are not slow", async () => {
    const target = new URL(db.url);
    const proxy = new DelayProxy({ host: target.hostname, port: Number(target.port || 5432) }, 10);
    await proxy.start();
    const url = new URL(db.url);
    url.host = `127.0.0.1:${proxy.port}`;
    const far = postgres(url.href, { max: 4, onnotice: () => {} });
    const cursor = new ClaimCursor();
    const farTask = defineTask({ name: "far", schema: v.any(), run() {} });
    const sleeps: { wanted: (ms: number) => boolean; resolve: () => void }[] = [];
    const sleep = (wanted: (ms: number) => boolean) => new Promise<void>((resolve) => sleeps.push({ wanted, resolve }));
    const worker = new Worker({
      schema: "pgbg", queues: null, concurrency: 1, timeout: 60_000, retryDelay: 1_000, maxAttempts: 3,
      idleSleep: 3_600_000, shutdownTimeout: 1_000, timings: liveness(200), sql: far, listenSql: false, tasks: [farTask], cursor,
      log: silentLogger, overdue: "detach",
      identity: { workerId: randomUUID(), hostId: randomUUID(), hostname: "test", runtime: "node", pid: process.pid },
      onIdleSleep: (ms) => sleeps.splice(0).forEach((w) => (w.wanted(ms) ? w.resolve() : sleeps.push(w))),
    });
    const ended = worker.start();
    try {
      // Its first claims are full, and each took the 20 ms round trip at least.
      await within(sleep((ms) => ms >= 100), patience, "the worker's first claims");
      // Once its heartbeats time the round trip, full claims on this table,
      // empty and healthy, are judged fast (the ones timed before, or the
      // next full one), and every claim is full again.
      await until(async () => cursor.fullClaimsSlow, (slow) => !slow, patience, "full claims to be judged fast");
    } finally {
      worker.stop();
      await ended;
      await far.end();
      await proxy.close();
    }
  });
});
