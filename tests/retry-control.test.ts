/**
 * Retry control from inside `run`, in-process and under `pgbg serve` alike:
 * PermanentError fails a task for good at once, a retryBackoff function
 * decides the wait from the attempt and its error, and ctx.retryAfter
 * snoozes a task without counting an attempt, up to its maxSnoozes.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createWorker, enqueue, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql } = testbed;
process.env.DATABASE_URL = testbed.db.url;
const { backoff, giveUp, snoozer } = await import("./fixtures/tasks.ts");
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const row = (id: string) =>
  sql`SELECT state::text, attempts, last_error, run_at > now() + interval '115 minutes' AND run_at <= now() + interval '121 minutes' AS in_two_hours
    FROM pgbg.task WHERE id = ${id}`.then((rows) => rows[0]);

/** Enqueues the cases, waits until each has failed its first attempt, and checks what became of them. */
async function checkRetryControl(): Promise<void> {
  const permanent = await enqueue(sql, giveUp, {});
  const foreign = await enqueue(sql, giveUp, { foreign: true });
  const later = await enqueue(sql, backoff, { message: "try later" });
  const other = await enqueue(sql, backoff, { message: "broken" });
  for (const id of [permanent, foreign]) {
    const failed = await until(() => row(id), (r) => r?.state === "failed", patience, `task ${id} to fail`);
    assert.equal(failed.attempts, 1, "failed for good at its first attempt, with 4 left");
    assert.equal(failed.last_error.name, "PermanentError");
    assert.equal(failed.last_error.code, "PGBG_PERMANENT");
  }
  const waiting = await until(() => row(later), (r) => r?.attempts === 1 && r.state === "queued", patience, "the backoff task to fail once");
  assert.equal(waiting.in_two_hours, true, "the function's wait for attempt 1 and its error");
  const short = await until(() => row(other), (r) => r?.attempts === 1 && r.state === "queued", patience, "the other backoff task to fail once");
  assert.equal(short.in_two_hours, false, "another error, another wait");
  const [{ n }] = await sql`SELECT count(*)::int AS n FROM execution WHERE task_id IN (${permanent}, ${foreign})`;
  assert.equal(n, 2, "neither permanent failure ran again");
  await checkSnoozes();
}

const attemptsOf = async (id: string) => (await sql`SELECT attempt FROM execution WHERE task_id = ${id} ORDER BY id`).map((r) => r.attempt as number);

/** Snoozes: free up to maxSnoozes (2), then counted; a long one waits its time with no attempt counted. */
async function checkSnoozes(): Promise<void> {
  const twice = await enqueue(sql, snoozer, { times: 2, ms: 0 });
  const forever = await enqueue(sql, snoozer, { times: 1_000, ms: 0 });
  const long = await enqueue(sql, snoozer, { times: 1, ms: 3_600_000 });
  await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${twice}`)[0].n, (n) => n === 0, patience, "the twice-snoozed task to succeed");
  assert.deepEqual(await attemptsOf(twice), [1, 1, 1], "two free snoozes, then success, all on attempt 1");
  const failed = await until(() => sql`SELECT state::text, attempts, snoozes, last_error FROM pgbg.task WHERE id = ${forever}`.then((r) => r[0]),
    (r) => r?.state === "failed", patience, "the endless snoozer to fail");
  assert.deepEqual([failed.attempts, failed.snoozes, failed.last_error.name], [2, 2, "SnoozeLimitError"]);
  assert.deepEqual(await attemptsOf(forever), [1, 1, 1, 2], "2 free snoozes, then each snooze counts until the attempts run out");
  const waiting = await until(() => sql`SELECT state::text, attempts, snoozes,
      run_at > now() + interval '59 minutes' AND run_at <= now() + interval '61 minutes' AS in_an_hour FROM pgbg.task WHERE id = ${long}`.then((r) => r[0]),
    (r) => r?.snoozes === 1, patience, "the long snooze");
  assert.deepEqual({ ...waiting }, { state: "queued", attempts: 0, snoozes: 1, in_an_hour: true });
}

describe("retry control", () => {
  test("in-process: PermanentError fails at once; a backoff function picks the wait; snoozes count from maxSnoozes on", async () => {
    const worker = createWorker(sql, { tasks: [giveUp, backoff, snoozer], concurrency: 4, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      await checkRetryControl();
    } finally {
      await worker.stop();
    }
    await sql`DELETE FROM pgbg.task`;
  });

  test("under pgbg serve: the same", async () => {
    const service = testbed.serve(["--workers", "1", "--concurrency", "4"]);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    await checkRetryControl();
  });
});
