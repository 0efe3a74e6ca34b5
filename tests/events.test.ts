/**
 * An in-process worker's lifecycle events, each told once the database has
 * the outcome: started, completed, retrying, failed, snoozed, cancelled,
 * and leaseLost for an outcome the lease's fence refused.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as v from "valibot";
import { cancel, createWorker, defineTask, enqueue, InvalidOptionsError, migrate, type TaskEventName } from "../mod.ts";
import { TaskEventEmitter } from "../lib/events.ts";
import { silentLogger } from "../lib/log.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

test("each attempt's events, in order, told after the write; a listener that throws changes nothing", async () => {
  const errors: string[] = [];
  const logger = { debug() {}, info() {}, warn() {}, error: (m: string) => void errors.push(m) };
  const task = defineTask({
    name: "eventful",
    schema: v.object({ kind: v.string() }),
    maxAttempts: 2,
    retryDelay: 0,
    async run(input, ctx) {
      if (input.kind === "fail") throw new Error(`boom ${ctx.attempt}`);
      if (input.kind === "flaky" && ctx.attempt === 1) throw new Error("once");
      if (input.kind === "snooze" && ctx.snoozes === 0) ctx.retryAfter(0);
      // Another lease took the task (as a rescue would): this attempt's completion is refused. A lease
      // of its own, the next token, whether the attempt's was one or a claim row's (whose fence is the
      // task's row still queued in its claim).
      // It says it knows claim rows, as pgbg's rescue does: migration 028's guard fails a write that does not.
      if (input.kind === "stolen") {
        await sql.begin(async (tx) => {
          await tx`SELECT set_config('pgbg_claim.known', 'on', true)`;
          await tx`UPDATE pgbg.task SET state = 'running', lease_token = lease_token + 1, worker_id = (SELECT id FROM pgbg.worker LIMIT 1),
            lease_expires_at = now() + interval '1 hour' WHERE id = ${ctx.id}`;
        });
      }
      if (input.kind === "self") await sql.begin((tx) => ctx.complete(tx));
      if (input.kind === "hang") await new Promise((_, reject) => ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)));
    },
  });
  const worker = createWorker(sql, { tasks: [task], concurrency: 8, checkInterval: 200, logger });
  const seen: string[] = [];
  const names: TaskEventName[] = ["started", "completed", "retrying", "failed", "snoozed", "cancelled", "leaseLost"];
  const ids = new Map<string, string>();
  for (const name of names) {
    worker.on(name, (e) => {
      const extra = "error" in e ? ` ${e.error.message}` : "delayMs" in e ? ` ${e.delayMs}` : "";
      seen.push(`${ids.get(e.id)} ${name} ${e.attempt}${extra}`);
    });
  }
  worker.on("completed", () => {
    throw new Error("a bad listener");
  });
  assert.throws(() => worker.on("finished" as TaskEventName, () => {}), (e) => e instanceof InvalidOptionsError && /unknown event "finished"/.test(e.message));
  await worker.start();
  try {
    // In one transaction, so that every id is known before any task can start.
    await sql.begin(async (tx) => {
      for (const kind of ["ok", "flaky", "fail", "snooze", "stolen", "self", "hang"]) ids.set(await enqueue(tx, task, { kind }), kind);
    });
    const hang = [...ids].find(([, k]) => k === "hang")![0];
    await until(async () => seen.includes("hang started 1"), Boolean, patience, "the hanging task to start");
    await cancel(sql, hang);
    const expected = [
      "ok started 1", "ok completed 1",
      "flaky started 1", "flaky retrying 1 once", "flaky started 2", "flaky completed 2",
      "fail started 1", "fail retrying 1 boom 1", "fail started 2", "fail failed 2 boom 2",
      "snooze started 1", "snooze snoozed 1 0", "snooze started 1", "snooze completed 1",
      "stolen started 1", "stolen leaseLost 1",
      // Completed in its own transaction (ctx.complete): completed, though the worker's completion finds no row.
      "self started 1", "self completed 1",
      "hang started 1", "hang cancelled 1",
    ];
    await until(async () => seen.length, (n) => n >= expected.length, patience, "every event");
    // Per task: the same events, and the last one the end. Tasks interleave, and a retry's or
    // snooze's event may come after the next attempt's start (another connection claimed it).
    for (const kind of ids.values()) {
      const got = seen.filter((s) => s.startsWith(`${kind} `));
      const want = expected.filter((s) => s.startsWith(`${kind} `));
      assert.deepEqual([...got].sort(), [...want].sort(), kind);
      assert.equal(got.at(-1), want.at(-1), `${kind} ends with its outcome`);
    }
    assert.equal(seen.length, expected.length);
    assert.ok(errors.some((m) => /a "completed" listener threw: a bad listener/.test(m)), errors.join("\n"));
  } finally {
    await worker.stop();
  }
});

test("listening: true while any event has a listener; a listener added twice is one, and removing it twice removes it once", () => {
  const emitter = new TaskEventEmitter(silentLogger);
  assert.equal(emitter.listening, false);
  const listener = () => {};
  const off = emitter.on("completed", listener);
  const offAgain = emitter.on("completed", listener);
  assert.equal(emitter.listening, true);
  off();
  assert.equal(emitter.listening, false, "the one listener is gone");
  offAgain();
  const offOther = emitter.on("failed", () => {});
  assert.equal(emitter.listening, true, "a second removal did not count below none");
  offOther();
  assert.equal(emitter.listening, false);
});
