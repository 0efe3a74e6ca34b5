/**
 * A worker whose outcome writes fall behind stops claiming: the tasks it
 * finished hold their leases until their outcomes are written, and without
 * a bound a worker of fast handlers claimed the whole queue while its
 * writes waited, then wrote it back in one ever larger statement. Here the
 * writes are held by a real lock: a trigger on the task table's deletes
 * waits for an advisory lock the test holds, so the claims go on and the
 * completions wait. So too a worker whose claim of a limited queue came
 * back short for its unwritten outcomes: it waits for their write, and
 * claims again, rather than go idle with tasks queued.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import * as v from "valibot";
import { unwrittenLimit } from "../lib/worker.ts";
import { type AnyTask, createWorker, defineTask, enqueueMany, migrate, setQueueConcurrency, status } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, until, untilWaitingForLock } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

const quick = defineTask({ name: "quick", schema: v.object({}), run() {} });
await sql`CREATE FUNCTION wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN OLD; END $$`;
await sql`CREATE TRIGGER held_deletes BEFORE DELETE ON pgbg.task FOR EACH ROW EXECUTE FUNCTION wait_for_the_test()`;
/**
 * The running and queued tasks of `name` as pgbg reads them (status): a
 * task a claim row holds is running, though its row is queued.
 */
async function counts(name: string): Promise<{ running: number; queued: number }> {
  const row = (await status(sql)).tasks.find((t) => t.name === name);
  return { running: row?.running ?? 0, queued: row?.queued ?? 0 };
}

/** Whether the worker's debug lines say its claims wait for the outcomes' write. */
const waiting = (lines: string[]) => lines.some((m) => /^claims wait for the writes: \d+ outcomes not written yet$/.test(m));

/**
 * Starts a worker of `concurrency` slots, its debug lines kept, while a
 * transaction holds the outcomes' writes; runs `held` with those lines,
 * then releases the writes and waits for every task to complete.
 */
async function withWritesHeld(concurrency: number, held: (lines: string[]) => Promise<void>, tasks: AnyTask[] = [quick]): Promise<void> {
  const holder = db.connect({ max: 1 });
  const lines: string[] = [];
  const keep = (message: string) => void lines.push(message);
  const worker = createWorker(sql, { tasks, concurrency, checkInterval: 200, logger: { debug: keep, info: keep, warn: keep, error: keep } });
  try {
    await holder.begin(async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(4242)`;
      await worker.start();
      await held(lines);
    });
    await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, (n) => n === 0, patience, "every task to complete");
  } finally {
    await worker.stop();
    await holder.end();
  }
}

test("with its writes held, a worker claims no more than a bounded backlog; once they go through, every task completes", async () => {
  const concurrency = 4;
  const total = 2 * unwrittenLimit(concurrency);
  await enqueueMany(sql, quick, Array.from({ length: total }, () => ({})));
  await withWritesHeld(concurrency, async (lines) => {
    // Until the claims wait, or (what the bound prevents) every task was claimed.
    await until(async () => lines, (l) => waiting(l) || l.filter((m) => /started$/.test(m)).length === total, patience, "the claims to wait");
    assert.ok(waiting(lines), "the claims waited for the writes");
    // Claimed and not written: the statement in flight, the outcomes
    // waiting for it, and nothing else; the rest of the queue untouched.
    const { running, queued } = await counts("quick");
    // The bound and the last claim that passed it, the slots running, and
    // the statement held in flight (what waited when it started: a slot's
    // worth or two); far from the whole queue.
    assert.ok(running <= unwrittenLimit(concurrency) + 4 * concurrency, `${running} tasks claimed with their writes held`);
    assert.equal(queued, total - running);
  });
});

test("a worker whose claim of a limited queue came back short for its unwritten outcomes, the write in flight's included, claims again once they are written, without going idle", async () => {
  // A limit no worker can reach: the claim counts nothing, so it takes the
  // worker's unwritten outcomes, whose tasks keep their leases, off its slots.
  await setQueueConcurrency(sql, "default", 1_000);
  const opens: (() => void)[] = [];
  const gates = [0, 1].map(() => new Promise<void>((resolve) => opens.push(resolve)));
  const gated = defineTask({ name: "gated", schema: v.object({ gate: v.number() }), run: ({ gate }) => gates[gate] });
  const concurrency = 2;
  const total = 4 * concurrency;
  // The first claim takes the first two, each waiting at its gate.
  await enqueueMany(sql, gated, Array.from({ length: total }, (_, i) => ({ gate: i < 2 ? i : -1 })));
  try {
    await withWritesHeld(concurrency, async (lines) => {
      await until(async () => (await counts("gated")).running, (n) => n === 2, patience, "the first claim");
      // The first task ends: its outcome's write, held here, is in flight
      // when the claim for its slot runs. That claim finds the slot taken
      // by the outcome not written yet; one that took the write in flight's
      // outcome as written would lease a task more than the worker has
      // slots, and going idle (its flag up) would leave the queue's other
      // tasks to the idle sleep's back-off.
      opens[0]();
      await untilWaitingForLock(sql, "the first outcome's write to wait for the test's lock");
      const idle = async () => (await sql`SELECT bool_or(idle) AS idle FROM pgbg.worker`)[0].idle as boolean;
      await until(async () => waiting(lines) || await idle(), Boolean, patience, "the claims to wait for the writes, or the worker to go idle");
      assert.ok(waiting(lines), "the claims wait for the writes");
      assert.equal(await idle(), false, "the worker is not idle with tasks queued");
      const { running, queued } = await counts("gated");
      assert.equal(running, concurrency, "the first claim's tasks alone are leased");
      assert.equal(queued, total - concurrency);
      opens[1]();
    }, [gated]);
  } finally {
    await setQueueConcurrency(sql, "default", null);
  }
});
