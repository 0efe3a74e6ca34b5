/**
 * Input versions at the edges: an upgrade that throws fails only the
 * attempt (retried), one that throws PermanentError fails the task for
 * good, an async upgrade works, and an input newer than the worker's
 * definition is retried for a newer worker rather than failed for good.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, enqueue, getTask, migrate, PermanentError } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

test("upgrade failures, async upgrades and inputs from a newer definition", async () => {
  const v1 = defineTask({ name: "evolving", schema: v.object({ n: v.number() }), run() {} });
  const v3 = defineTask({ name: "evolving", version: 3, schema: v.object({ n: v.number(), unit: v.string() }), run() {} });
  const ran: unknown[] = [];
  const v2 = defineTask({
    name: "evolving",
    version: 2,
    retryDelay: 0,
    schema: v.object({ total: v.number() }),
    async upgrade(input, from) {
      const n = (input as { n: number }).n;
      if (n === 13) throw new Error("cannot upgrade 13 yet");
      if (n === 666) throw new PermanentError("never upgradable");
      await new Promise((r) => setTimeout(r, 1));
      return { total: n * from };
    },
    run(input) {
      ran.push(input);
    },
  });
  const fine = await enqueue(sql, v1, { n: 21 });
  const flaky = await enqueue(sql, v1, { n: 13 });
  const doomed = await enqueue(sql, v1, { n: 666 });
  const newer = await enqueue(sql, v3, { n: 1, unit: "kg" });
  // The rows were enqueued by version 1, which set no maxAttempts: the worker's applies.
  const worker = createWorker(sql, { tasks: [v2], maxAttempts: 3, checkInterval: 200, logger: quiet });
  await worker.start();
  try {
    await until(() => getTask(sql, fine), (t) => t === null, patience, "the upgradable task to run");
    assert.deepEqual(ran, [{ total: 21 }], "upgraded from version 1, asynchronously, then validated by version 2's schema");
    const f = await until(() => getTask(sql, flaky), (t) => t?.state === "failed", patience, "the flaky upgrade to use its attempts");
    assert.deepEqual([f!.attempts, f!.lastError?.message], [3, "cannot upgrade 13 yet"], "a throw fails the attempt, retried up to maxAttempts");
    const d = await until(() => getTask(sql, doomed), (t) => t?.state === "failed", patience, "the PermanentError upgrade to fail");
    assert.deepEqual([d!.attempts, d!.lastError?.code], [1, "PGBG_PERMANENT"]);
    const n = await until(() => getTask(sql, newer), (t) => (t?.attempts ?? 0) >= 1 && t?.state !== "running", patience, "the newer input to be tried");
    assert.equal(n!.lastError?.code, "PGBG_INPUT_VERSION");
    assert.match(n!.lastError!.message!, /enqueued for version 3 of the task, newer than this worker's \(version 2\)/);
    assert.ok(n!.state === "queued" || n!.attempts === 3, "retried, not failed for good at once");
    assert.equal(n!.inputVersion, 3);
  } finally {
    await worker.stop();
  }
});
