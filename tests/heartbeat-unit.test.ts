/**
 * The heartbeat's judgement of its own worker, in this process, with short
 * timings: a worker stops itself only when heartbeats it sent did not get
 * through, not when its own event loop was stalled while one was answered.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import { Heartbeat, type LostCause } from "../lib/heartbeat.ts";
import type { Liveness } from "../lib/liveness.ts";
import { migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
await migrate(db.sql);

/** Short timings with the shape liveness() gives them. */
const timings: Liveness = {
  heartbeatInterval: 50, killSilence: 500, killWithin: 550, readyWithin: 500, staleAfter: 1_000, selfStopAfter: 400, replyAllowance: 250,
};

async function registered(onLost: (cause: LostCause, reason: string) => void): Promise<Heartbeat> {
  const heartbeat = new Heartbeat({ sql: db.sql, schema: "pgbg", timings, log: { debug() {}, info() {}, warn() {}, error() {} }, onCancel() {}, onLost, afterBeat: async () => {} });
  await heartbeat.register({ workerId: randomUUID(), hostId: randomUUID(), pid: 1, concurrency: 1, hostname: "test", runtime: "node", queues: null, names: ["t"] });
  return heartbeat;
}

/** Blocks this process's event loop for `ms`, as a task that computes would. */
function block(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end);
}

describe("the heartbeat's self-stop", () => {
  test("a heartbeat answered while the event loop was blocked is not taken for a lost database", async () => {
    const lost: string[] = [];
    const heartbeat = await registered((cause) => lost.push(cause));
    const inFlight = heartbeat.beat(); // sent; its reply arrives during the block below
    block(600); // past the self-stop time (400 ms) and the reply allowance (250 ms)
    // The first tick after the block runs before the reply is read.
    const tick = heartbeat.beat();
    await Promise.all([inFlight, tick]);
    assert.deepEqual(lost, []);
    await heartbeat.beat();
    assert.deepEqual(lost, [], "the next beat got through");
    await heartbeat.remove();
  });

  test("heartbeats that do not get through stop the worker once past the self-stop time and the reply allowance", async () => {
    const lost: string[] = [];
    const heartbeat = await registered((cause) => lost.push(cause));
    const blocker = await db.sql.reserve();
    try {
      await blocker`BEGIN`;
      await blocker`SELECT 1 FROM pgbg.worker FOR UPDATE`;
      const stuck = heartbeat.beat(); // waits on the locked row
      const started = performance.now();
      while (!lost.length) {
        await new Promise((r) => setTimeout(r, timings.heartbeatInterval));
        await Promise.race([heartbeat.beat(), new Promise((r) => setTimeout(r, 10))]);
        assert.ok(performance.now() - started < 60_000, "it stopped itself");
      }
      assert.deepEqual(lost, ["unreachable"]);
      assert.ok(performance.now() - started >= timings.replyAllowance, "not before the reply allowance");
      await blocker`ROLLBACK`;
      await stuck;
    } finally {
      blocker.release();
    }
  });
});
