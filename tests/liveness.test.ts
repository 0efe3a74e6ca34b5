/**
 * The inequalities "never two at once while the lease holds" rests on,
 * checked over a table of check intervals and task timeouts. Each row names
 * the race it rules out; a change to lib/liveness.ts that breaks one fails
 * here before any process test could notice.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { graceFor, leaseFor, liveness, overdueExitBy } from "../lib/liveness.ts";

const CHECK_INTERVALS = [10, 100, 200, 1_000, 2_000, 5_000, 60_000, 600_000];
const TIMEOUTS = [1, 500, 1_000, 30_000, 3_600_000, 7 * 24 * 3_600_000];

type Timings = ReturnType<typeof liveness>;
const rules: [string, (t: Timings) => boolean][] = [
  ["a heartbeat goes out within 5 % of the stale time, so an outage's first unanswered beat is sent long before the self-stop", (t) =>
    t.heartbeatInterval <= 0.05 * t.staleAfter],
  ["a sent heartbeat gets its reply allowance before the self-stop can fire", (t) => t.replyAllowance < t.selfStopAfter],
  ["a cut-off worker stops itself (plus one tick) before another host may reap it", (t) =>
    t.selfStopAfter + t.heartbeatInterval < t.staleAfter],
  ["... and before a supervisor of an older pgbg, which reaps after half today's stale time", (t) =>
    t.selfStopAfter + t.heartbeatInterval < t.staleAfter / 2],
  ["a worker cut off right after a block under the kill silence still stops (reply allowance, one tick) before it may be reaped", (t) =>
    t.killSilence + t.replyAllowance + t.heartbeatInterval < t.staleAfter],
  ["a supervisor kills its own silent worker (at its next check) before another host may reap it", (t) => t.killWithin < t.staleAfter],
  ["the kill comes one check after the silence, no later", (t) => t.killWithin === t.killSilence + t.heartbeatInterval],
  ["a worker still loading is given at least the kill silence to become ready", (t) => t.readyWithin >= t.killSilence],
];

describe("liveness timings", () => {
  for (const checkInterval of CHECK_INTERVALS) {
    const t = liveness(checkInterval);
    for (const [rule, holds] of rules) {
      test(`check interval ${checkInterval} ms: ${rule}`, () => assert.ok(holds(t), JSON.stringify(t)));
    }
    test(`check interval ${checkInterval} ms: every lease outlasts what a worker can hold its task`, () => {
      for (const timeout of TIMEOUTS) {
        const lease = leaseFor(timeout, t);
        const grace = graceFor(timeout);
        // Timeout, a grace to give up on a task ignoring its signal, a second
        // for the worker to exit, and a block at the last moment killed by the supervisor.
        assert.ok(lease > timeout + 2 * grace + t.killWithin, `timeout ${timeout}: lease ${lease}`);
        // The worker's own exit deadline for an overdue task comes after it is overdue, and leaves the kill time before the lease ends.
        const claimedAt = 0;
        const exitBy = overdueExitBy(claimedAt + lease, t);
        assert.ok(exitBy > claimedAt + timeout + grace, `timeout ${timeout}: exit by ${exitBy} is after the task is overdue`);
        assert.ok(exitBy + t.killWithin < claimedAt + lease, `timeout ${timeout}: a block at the exit deadline is killed before the lease ends`);
      }
    });
  }

  test("the grace period is half the timeout, from 1 to 15 s", () => {
    assert.deepEqual([1, 1_000, 2_000, 10_000, 30_000, 3_600_000].map(graceFor), [1_000, 1_000, 1_000, 5_000, 15_000, 15_000]);
  });

  test("the default check interval gives the documented timings", () => {
    assert.deepEqual(liveness(1_000), {
      heartbeatInterval: 1_000, killSilence: 10_000, killWithin: 11_000, readyWithin: 60_000, staleAfter: 20_000, selfStopAfter: 8_000, replyAllowance: 5_000,
    });
  });

  test("refuses a check interval that is not a positive number", () => {
    for (const bad of [0, -1, Number.NaN]) assert.throws(() => liveness(bad), /check interval must be a positive number/);
  });
});
