/**
 * Pausing a queue: no worker claims from it until it is resumed, tasks
 * running at the pause finish, queued ones stay queued, enqueues still
 * work, and a resume wakes sleeping workers at once.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, drain, enqueue, InvalidOptionsError, migrate, pausedQueues, pauseQueue, resumeQueue, status } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { within } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

let release: () => void = () => {};
let started: () => void = () => {};
const ran: string[] = [];
const work = defineTask({
  name: "work",
  schema: v.object({ n: v.number(), hold: v.optional(v.boolean()) }),
  async run(input, ctx) {
    if (input.hold) {
      started();
      await new Promise<void>((resolve) => (release = resolve));
    }
    ran.push(`${ctx.queue}:${input.n}`);
  },
});

const states = async (queue: string) =>
  (await sql`SELECT state::text, count(*)::int AS n FROM pgbg.task WHERE queue = ${queue} GROUP BY 1 ORDER BY 1`).map((r) => `${r.state}=${r.n}`);

describe("pause and resume", () => {
  test("a paused queue keeps its tasks and takes enqueues; other queues run; resume runs them", async () => {
    ran.length = 0;
    await enqueue(sql, work, { n: 1 }, { queue: "mail" });
    const paused = await pauseQueue(sql, "mail");
    assert.deepEqual(paused.map((p) => p.queue), ["mail"]);
    await enqueue(sql, work, { n: 2 }, { queue: "mail" });
    await enqueue(sql, work, { n: 3 }, { queue: "other" });
    const result = await drain(sql, { tasks: [work], logger: quiet });
    assert.equal(result.succeeded, 1, "only the other queue's task ran");
    assert.deepEqual(ran, ["other:3"]);
    assert.deepEqual(await states("mail"), ["queued=2"]);
    assert.deepEqual((await pausedQueues(sql)).map((p) => p.queue), ["mail"]);
    assert.deepEqual((await status(sql)).queues.map((p) => p.queue), ["mail"]);
    assert.deepEqual(await resumeQueue(sql, "mail"), ["mail"]);
    assert.deepEqual(await resumeQueue(sql, "mail"), [], "not paused any more");
    await drain(sql, { tasks: [work], logger: quiet });
    assert.deepEqual(ran.sort(), ["mail:1", "mail:2", "other:3"]);
  });

  test("a running task finishes after the pause; a sleeping worker is woken by the resume", async () => {
    ran.length = 0;
    // A long idle sleep: only the resume's wake-up can start the task soon.
    const worker = createWorker(sql, { tasks: [work], concurrency: 4, idleSleep: 600_000, logger: quiet });
    const completed: string[] = [];
    worker.on("completed", (e) => void completed.push(e.id));
    await worker.start();
    try {
      const holding = new Promise<void>((resolve) => (started = resolve));
      const running = await enqueue(sql, work, { n: 1, hold: true }, { queue: "jobs" });
      await within(holding, 30_000, "the held task to start");
      await pauseQueue(sql, "jobs");
      const queued = await enqueue(sql, work, { n: 2 }, { queue: "jobs" });
      release();
      await within(new Promise<void>((resolve) => {
        const off = worker.on("completed", (e) => e.id === running && (off(), resolve()));
        if (completed.includes(running)) resolve();
      }), 30_000, "the running task to complete");
      // The worker claims again after each completion: the queued task is
      // due, so only the pause keeps it queued.
      assert.deepEqual(await states("jobs"), ["queued=1"]);
      assert.deepEqual(ran, ["jobs:1"]);
      const done = new Promise<void>((resolve) => worker.on("completed", (e) => e.id === queued && resolve()));
      await resumeQueue(sql, ["jobs"]);
      await within(done, 30_000, "the resumed queue's task to run (woken, not after the idle sleep)");
      assert.deepEqual(ran, ["jobs:1", "jobs:2"]);
    } finally {
      await worker.stop();
    }
  });

  test("bad queue names are refused with the rule, and nothing is paused", async () => {
    await assert.rejects(pauseQueue(sql, ""), (e: unknown) => e instanceof InvalidOptionsError && /queue name/.test(e.message));
    await assert.rejects(pauseQueue(sql, ["ok", "bad name"]), InvalidOptionsError);
    await assert.rejects(resumeQueue(sql, [] as string[]), InvalidOptionsError);
    assert.deepEqual(await pausedQueues(sql), []);
  });
});
