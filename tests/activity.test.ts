/**
 * activity(): what the queue did per minute, as the dashboard's charts draw
 * it. Outcomes and start latencies come from the workers' reports (a real
 * in-process worker runs the tasks), depth from the sampler; both are kept
 * 24 hours (tests/maintenance.test.ts prunes them).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { sampleTaskDepth } from "../lib/maintenance/depth-sampler.ts";
import { bucketQuantile, HISTOGRAM_BUCKETS } from "../lib/stats.ts";
import { activity, type ActivityMinute, createWorker, defineTask, enqueue, migrate, PermanentError, waitForResult } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const charted = defineTask({
  name: "charted",
  queue: "charts",
  schema: v.object({ outcome: v.picklist(["done", "fail", "retry"]) }),
  result: v.number(),
  maxAttempts: 2,
  run(input, ctx) {
    if (input.outcome === "fail") throw new PermanentError("fails for good");
    if (input.outcome === "retry" && ctx.attempt === 1) throw new Error("once");
    return ctx.attempt;
  },
});
const other = defineTask({ name: "other", queue: "charts", schema: v.object({}), run() {} });

const total = (minutes: ActivityMinute[], field: "completed" | "failed" | "retried" | "started") => minutes.reduce((n, m) => n + m[field], 0);

describe("activity", () => {
  test("adds up the outcomes and starts a worker reported, per queue and task name, with each minute's start latency", async () => {
    const outcomes = [...Array(5).fill("done"), ...Array(2).fill("fail"), ...Array(3).fill("retry")] as ("done" | "fail" | "retry")[];
    const ids = [];
    for (const outcome of outcomes) ids.push(await enqueue(sql, charted, { outcome }));
    await enqueue(sql, other, {});
    const worker = createWorker(sql, { tasks: [charted, other], concurrency: 4, checkInterval: 200, retryDelay: 0, logger: quiet });
    await worker.start();
    try {
      for (const [i, id] of ids.entries()) await waitForResult(sql, id).catch((e) => assert.equal(outcomes[i], "fail", String(e)));
      // The counts arrive with the worker's next heartbeat.
      await until(() => activity(sql, { queue: "charts", name: "charted" }), (m) => total(m, "completed") === 8 && total(m, "failed") === 2, patience, "the counts");
    } finally {
      await worker.stop();
    }
    const minutes = await activity(sql, { queue: "charts", name: "charted" });
    assert.equal(minutes.length, 60, "an hour by default, every minute");
    assert.deepEqual(["completed", "failed", "retried", "started"].map((f) => total(minutes, f as "started")), [8, 2, 3, 13]);
    const all = await activity(sql, { minutes: 5 });
    assert.equal(all.length, 5);
    assert.deepEqual([total(all, "completed"), total(all, "started")], [9, 14], "every queue and name: the other task too");
    assert.equal(total(await activity(sql, { queue: "nothing-here" }), "started"), 0);
    const busy = minutes.filter((m) => m.started > 0);
    assert.ok(busy.length >= 1);
    for (const m of busy) {
      assert.ok(m.latencyP50Ms !== null && m.latencyP95Ms !== null && m.latencyP50Ms >= 0 && m.latencyP95Ms >= m.latencyP50Ms, JSON.stringify(m));
    }
    assert.ok(minutes.filter((m) => m.started === 0).every((m) => m.latencyP50Ms === null));
    assert.ok(minutes.every((m, i) => i === 0 || Date.parse(m.minute) - Date.parse(minutes[i - 1].minute) === 60_000), "one minute apart, oldest first");
  });

  test("depth: one sample a minute, by the first host to take it, in all and per queue and task name; a minute nobody sampled is null", async () => {
    await sql`DELETE FROM pgbg.task_depth`;
    assert.deepEqual((await activity(sql, { minutes: 1 }))[0].queued, null, "not sampled yet");
    for (let i = 0; i < 3; i++) await enqueue(sql, other, {}, { queue: "depth" });
    await enqueue(sql, other, {}, { queue: "depth", delay: 3_600_000 });
    await sampleTaskDepth(sql, "pgbg");
    const [first] = await sql`SELECT minute FROM pgbg.task_depth WHERE queue = 'depth'`;
    await enqueue(sql, other, {}, { queue: "depth" });
    await sampleTaskDepth(sql, "pgbg");
    const rows = await sql`SELECT queued, scheduled, running FROM pgbg.task_depth WHERE queue = 'depth' AND minute = ${first.minute}`;
    assert.deepEqual(rows.map((r) => ({ ...r })), [{ queued: 3, scheduled: 1, running: 0 }], "the second sample of the minute wrote nothing");
    const sampled = (await activity(sql, { queue: "depth", minutes: 5 })).find((m) => m.minute === first.minute.toISOString());
    assert.deepEqual([sampled?.queued, sampled?.scheduled, sampled?.running], [3, 1, 0]);
    const [totals] = await sql`SELECT queued FROM pgbg.task_depth WHERE queue = '' AND minute = ${first.minute}`;
    assert.ok(totals.queued >= 3, "the totals' row counts every queue");
  });

  test("names a bad option", async () => {
    await assert.rejects(activity(sql, { minutes: 0 }), /activity\(\).*minutes/);
    await assert.rejects(activity(sql, { minutes: 1441 }), /minutes/);
    await assert.rejects(activity(sql, { queue: "" }), /queue/);
  });
});

describe("bucketQuantile", () => {
  test("reads a quantile off the buckets, linear within the bucket it falls in", () => {
    assert.equal(bucketQuantile(new Array(HISTOGRAM_BUCKETS.length + 1).fill(0), 0.5), null);
    const counts = new Array(HISTOGRAM_BUCKETS.length + 1).fill(0);
    counts[0] = 10; // 10 waits of at most 5 ms
    counts[3] = 10; // 10 between 25 and 50 ms
    const near = (value: number | null, expected: number) => assert.ok(value !== null && Math.abs(value - expected) < 1e-9, `${value} is not ${expected}`);
    near(bucketQuantile(counts, 0.25), 2.5);
    near(bucketQuantile(counts, 0.75), 37.5);
    counts[HISTOGRAM_BUCKETS.length] = 100; // above every bound
    assert.equal(bucketQuantile(counts, 0.95), HISTOGRAM_BUCKETS.at(-1)! * 1000);
  });
});
