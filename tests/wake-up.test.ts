/**
 * How an idle worker learns of new tasks: the insert trigger's wake-up
 * while its idle flag is up, and its own claims after short sleeps for the
 * enqueue that checked the flag just before it went up.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import { ClaimCursor, FULL_CLAIM_MAX_GAP_MS, SLOW_FULL_CLAIMS } from "../lib/claim-cursor.ts";
import { LimitedQueues } from "../lib/limits.ts";
import { liveness } from "../lib/liveness.ts";
import { silentLogger } from "../lib/log.ts";
import { run } from "../lib/statements.ts";
import { IDLE_RECHECK_MS, Worker } from "../lib/worker.ts";
import type { TransactionSql } from "postgres";
import { defineTask, enqueue, migrate, setGroupRateLimit, setQueueConcurrency, setQueueRateLimit } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until, untilWaitingForLock, within } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

describe("an idle worker", () => {
  test("starts a task whose enqueue saw it busy and committed after its last claim, without waiting out its idle sleep", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let lateStarted!: () => void;
    const late = new Promise<void>((resolve) => (lateStarted = resolve));
    let gateStarted!: () => void;
    const gateRuns = new Promise<void>((resolve) => (gateStarted = resolve));
    const blocker = defineTask({ name: "gate", schema: v.any(), run: () => (gateStarted(), gate) });
    const target = defineTask({ name: "late", schema: v.any(), run: () => lateStarted() });
    const sleeps: ((ms: number) => void)[] = [];
    const nextSleep = () => new Promise<number>((resolve) => sleeps.push(resolve));
    // An idle sleep far beyond the wait below: only a claim of the worker's
    // own, after a short sleep, can find the task, as its enqueue sends no
    // wake-up.
    const worker = new Worker({
      schema: "pgbg", queues: null, concurrency: 1, timeout: 60_000, retryDelay: 1_000, maxAttempts: 3,
      idleSleep: 3_600_000, shutdownTimeout: 1_000, timings: liveness(200), sql, beatSql: sql, tasks: [blocker, target],
      log: silentLogger, overdue: "detach",
      identity: { workerId: randomUUID(), hostId: randomUUID(), hostname: "test", runtime: "node", pid: process.pid },
      onIdleSleep: (ms) => sleeps.splice(0).forEach((resolve) => resolve(ms)),
    });
    const ended = worker.start();
    const idleFlag = async () => (await sql`SELECT bool_or(idle) AS idle FROM pgbg.worker`)[0].idle as boolean;
    await enqueue(sql, blocker, 1);
    // The flag is down before the worker's first claim too: the gate must run.
    await within(gateRuns, patience, "the worker to take the task that fills its one slot");
    await until(idleFlag, (idle) => idle === false, patience, "the worker's idle flag to go down");
    const firstSleep = await sql.begin(async (tx) => {
      // The insert trigger finds no idle worker, so it sends no wake-up.
      await enqueue(tx, target, 1);
      const sleeping = nextSleep();
      release();
      // The worker ran the gate, found the queue empty (the task is not
      // committed), raised its flag, claimed once more, and now sleeps.
      return await within(sleeping, patience, "the worker to go to sleep");
    });
    assert.equal(firstSleep, IDLE_RECHECK_MS);
    await within(late, patience, "the late task to start");
    worker.stop();
    await ended;
  });

  test("that knows no lane while its full claims are judged slow is woken into a full claim, not left until the next one is due", async () => {
    // Full claims judged slow, the last so slow that the next is due
    // FULL_CLAIM_MAX_GAP_MS from now; until then claims read the cursor's
    // lanes, and it knows none (as a worker whose first claims, each on a
    // fresh connection, were slow, or one a round trip of 10 ms or more away).
    const cursor = new ClaimCursor();
    judgedSlow(cursor);
    // Left to claims from the cursor, the worker would find nothing and sleep
    // on (25 ms, 50, ...: eight sleeps or more) until the full claim due
    // seconds later.
    await assertWokenIntoFullClaim("fresh-lane", null, { cursor });
  });

  test("that knows no lane of a limited queue while that queue's full claims are judged slow is woken into a full claim of it", async () => {
    await setQueueConcurrency(sql, "limited-wake", 5);
    // The limited queue's own cursor (lib/limits.ts) in the state of the
    // test above: the worker's wake-up must reach it as well as the worker's.
    const limits = new LimitedQueues(liveness(200).heartbeatInterval);
    judgedSlow(limits.cursorOf("limited-wake"));
    await assertWokenIntoFullClaim("limited-fresh-lane", "limited-wake", { limits });
  });

  test("whose queue has a group at its rate limit sleeps no longer than until the group has room again, a log aged out notwithstanding", async () => {
    await setGroupRateLimit(sql, "paced", { limit: 1, interval: PACED_INTERVAL });
    // Group b's log is full but aged out: it has room, and must not hide group a's wait.
    await sql`INSERT INTO pgbg.group_rate (queue, group_name, starts) VALUES ('paced', 'b', ARRAY[now() - interval '1 hour'])`;
    await assertSleepCutToRoom("paced", () => "a", (tx) => tx`INSERT INTO pgbg.group_rate (queue, group_name, starts) VALUES ('paced', 'a', ARRAY[clock_timestamp()])`);
  });

  test("whose queue is at its rate limit sleeps no longer than until the queue has room again", async () => {
    await setQueueRateLimit(sql, "paced-queue", { limit: 1, interval: PACED_INTERVAL });
    await assertSleepCutToRoom("paced-queue", undefined, (tx) => tx`UPDATE pgbg.queue SET rate_starts = ARRAY[clock_timestamp()] WHERE name = 'paced-queue'`);
  });
});

/** Puts `cursor` in the state of a worker whose last SLOW_FULL_CLAIMS full claims were slow, the last so slow that the next is due FULL_CLAIM_MAX_GAP_MS from now. */
function judgedSlow(cursor: ClaimCursor): void {
  for (let i = 0; i < SLOW_FULL_CLAIMS; i++) cursor.record(true, FULL_CLAIM_MAX_GAP_MS, [], Date.now());
}

/**
 * Starts a worker of one task named `name` (in `queue`, or the default
 * queue) with `seams`, waits until it sleeps in its idle back-off, enqueues
 * the task, and asserts that it started with at most one more sleep: the
 * wake-up made the claim that found it.
 */
async function assertWokenIntoFullClaim(name: string, queue: string | null, seams: { cursor?: ClaimCursor; limits?: LimitedQueues }): Promise<void> {
  let ran!: () => void;
  const started = new Promise<void>((resolve) => (ran = resolve));
  const fresh = defineTask({ name, ...(queue ? { queue } : {}), schema: v.any(), run: () => ran() });
  let sleeps = 0;
  const waiters: { wanted: (ms: number) => boolean; resolve: (ms: number) => void }[] = [];
  const sleep = (wanted: (ms: number) => boolean) => new Promise<number>((resolve) => waiters.push({ wanted, resolve }));
  const worker = new Worker({
    schema: "pgbg", queues: queue ? [queue] : null, concurrency: 1, timeout: 60_000, retryDelay: 1_000, maxAttempts: 3,
    idleSleep: 3_600_000, shutdownTimeout: 1_000, timings: liveness(200), sql, beatSql: sql, tasks: [fresh], ...seams,
    log: silentLogger, overdue: "detach",
    identity: { workerId: randomUUID(), hostId: randomUUID(), hostname: "test", runtime: "node", pid: process.pid },
    onIdleSleep: (ms) => {
      sleeps++;
      waiters.splice(0).forEach((w) => (w.wanted(ms) ? w.resolve(ms) : waiters.push(w)));
    },
  });
  const ended = worker.start();
  // Its flag up and in a sleep of its back-off long enough that the wake-up comes within it.
  await within(sleep((ms) => ms >= 1_600), patience, "the worker's idle back-off to reach 1.6 s");
  const before = sleeps;
  await enqueue(sql, fresh, 1);
  await within(started, patience, "the task to start");
  assert.ok(sleeps - before <= 1, `the worker slept ${sleeps - before} times between the wake-up and the task's start`);
  worker.stop();
  await ended;
}

/** The rate limits' interval in the sleep tests (ms): the idle back-off must grow past it. */
const PACED_INTERVAL = 3_000;

/**
 * Starts a worker of one task in the rate-limited `queue` (in the group
 * `group` names, if given) with no wake-ups and an idle sleep far beyond
 * PACED_INTERVAL, waits until its back-off's next step is past the
 * interval, then, while holding the queue's lock so that the worker's next
 * claim waits for it, uses up the rate (`useUp`) and enqueues the task. It
 * asserts that the sleep after that claim was cut to the wait for room (at
 * most the interval), short of the back-off's next step, and that the task
 * starts once it has room.
 */
async function assertSleepCutToRoom(queue: string, group: (() => string) | undefined, useUp: (tx: TransactionSql) => Promise<unknown>): Promise<void> {
  let ran!: () => void;
  const started = new Promise<void>((resolve) => (ran = resolve));
  const paced = defineTask({ name: queue, queue, schema: v.object({ n: v.number() }), ...(group ? { group } : {}), run: () => ran() });
  const waiters: { wanted: (ms: number) => boolean; resolve: (ms: number) => void }[] = [];
  const sleep = (wanted: (ms: number) => boolean) => new Promise<number>((resolve) => waiters.push({ wanted, resolve }));
  // No wake-ups (no LISTEN): the back-off alone sets the sleeps, and an
  // idle sleep far beyond the interval lets it grow past it.
  const worker = new Worker({
    schema: "pgbg", queues: [queue], concurrency: 2, timeout: 60_000, retryDelay: 1_000, maxAttempts: 3,
    idleSleep: 3_600_000, shutdownTimeout: 1_000, timings: liveness(200), sql, beatSql: sql, listenSql: false, tasks: [paced],
    log: silentLogger, overdue: "detach",
    identity: { workerId: randomUUID(), hostId: randomUUID(), hostname: "test", runtime: "node", pid: process.pid },
    onIdleSleep: (ms) => waiters.splice(0).forEach((w) => (w.wanted(ms) ? w.resolve(ms) : waiters.push(w))),
  });
  const ended = worker.start();
  // Idle on an empty queue until its back-off's next step is past the interval.
  const step = await within(sleep((ms) => ms * 2 > PACED_INTERVAL), patience, "the worker's idle back-off to grow past the rate's interval");
  let cut!: Promise<number>;
  await sql.begin(async (tx) => {
    // The claim after this sleep waits for the queue's lock, held here:
    // the rate is used up right before that claim reads it, whatever the
    // time the sleep and the claim took.
    await run(tx, "pgbg", "LockLimitedQueue", [queue]);
    await untilWaitingForLock(sql, "the claim after the sleep to wait for the queue's lock");
    await useUp(tx);
    await enqueue(tx, paced, { n: 1 });
    cut = sleep(() => true);
  });
  // The claim found the rate used up until some time within the interval:
  // the sleep is cut to that wait, short of the back-off's next step (over
  // the interval).
  const slept = await within(cut, patience, "the worker to sleep after the claim that found the rate used up");
  assert.ok(slept > 0 && slept <= PACED_INTERVAL, `slept ${slept} ms, for the rate's room (at most ${PACED_INTERVAL} ms) rather than the back-off's ${step * 2} ms`);
  await within(started, patience, "the task to start once it has room");
  worker.stop();
  await ended;
}
