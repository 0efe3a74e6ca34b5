import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import { claimTasks, type ClaimScope } from "../lib/claim.ts";
import { ClaimCursor, CURSOR_MARGIN_MS, FAST_FULL_CLAIM_MS, FULL_CLAIM_EVERY_MS, FULL_CLAIM_SHARE } from "../lib/claim-cursor.ts";
import { silentLogger } from "../lib/log.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { defineTask, enqueue, enqueueMany, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const task = defineTask({ name: "cursor", schema: v.any(), run() {} });
const scope = (workerId: string): ClaimScope => ({ workerId, queues: null, names: ["cursor"], leaseMs: [60_000] });
const at = (runAtMs: number, priority = 0, queue = "default") => ({ queue, priority, runAtMs });
const SLOW = FAST_FULL_CLAIM_MS * 5;

describe("the claim cursor's choice between a full claim and a claim from the cursor", () => {
  test("the first claim is full, and so is every claim while full claims are fast", () => {
    const cursor = new ClaimCursor();
    assert.equal(cursor.next(0), null);
    cursor.record(true, FAST_FULL_CLAIM_MS - 1, [at(5_000)], 0);
    assert.equal(cursor.next(1), null);
  });

  test("after a slow full claim, claims read each lane from a margin before the latest run_at taken in it", () => {
    const cursor = new ClaimCursor();
    cursor.record(true, SLOW, [at(5_000), at(7_000), at(6_000, 3, "mail")], 0);
    const starts = cursor.next(1);
    assert.ok(starts);
    const lanes = starts.queues.map((q, i) => `${q}/${starts.priorities[i]}/${starts.after[i]}`).sort();
    assert.deepEqual(lanes, [`default/0/${7_000 - CURSOR_MARGIN_MS}`, `mail/3/${6_000 - CURSOR_MARGIN_MS}`]);
    cursor.record(false, 1, [at(9_000)], 2);
    assert.deepEqual(cursor.next(3)?.after.sort(), [6_000 - CURSOR_MARGIN_MS, 9_000 - CURSOR_MARGIN_MS]);
  });

  test("while full claims are slow, one comes round every second, or after 20 times its own duration if that is longer", () => {
    const slow = new ClaimCursor();
    slow.record(true, SLOW, [at(5_000)], 0);
    assert.ok(slow.next(FULL_CLAIM_EVERY_MS - 1));
    assert.equal(slow.next(FULL_CLAIM_EVERY_MS), null);
    const slower = new ClaimCursor();
    const long = FULL_CLAIM_EVERY_MS; // a full claim of a second: the next one 20 s later
    slower.record(true, long, [at(5_000)], 0);
    assert.ok(slower.next(FULL_CLAIM_SHARE * long - 1));
    assert.equal(slower.next(FULL_CLAIM_SHARE * long), null);
  });

  test("fullNext() makes the next claim full, and a lane no claim took from for a minute is dropped", () => {
    const cursor = new ClaimCursor();
    cursor.record(true, SLOW, [at(5_000)], 0);
    cursor.fullNext();
    assert.equal(cursor.next(1), null);
    cursor.record(true, SLOW, [at(5_000, 0, "old")], 0);
    cursor.record(false, 1, [at(5_000, 0, "new")], 59_000);
    cursor.record(true, SLOW, [], 60_500);
    assert.deepEqual(cursor.next(61_000)?.queues, ["new"]);
  });
});

describe("claims from the cursor while vacuum is held back", () => {
  test("step over a margin's worth of claimed tasks instead of every task claimed since the horizon was held", async () => {
    const holder = await sql.reserve();
    await holder`BEGIN ISOLATION LEVEL REPEATABLE READ`;
    await holder`SELECT txid_current()`;
    try {
      const worker = randomUUID();
      const writer = new OutcomeWriter(sql, "pgbg", 25, silentLogger);
      // 3,000 tasks claimed and completed: their entries stay in the claim
      // index, as no vacuum may remove them while the snapshot is held.
      await enqueueMany(sql, task, Array.from({ length: 3_000 }, (_, i) => i));
      for (;;) {
        const batch = await claimTasks(sql, "pgbg", scope(worker), 500);
        for (const t of batch) writer.complete({ id: t.id, leaseToken: t.leaseToken });
        await writer.flush();
        if (batch.length < 500) break;
      }
      // Tasks due later than the claimed ones by more than the margin.
      await sql`SELECT pg_sleep(${(CURSOR_MARGIN_MS + 100) / 1000})`;
      await enqueueMany(sql, task, [1, 2, 3]);
      const full = await claimReading(null, 1);
      const cursor = new ClaimCursor();
      cursor.record(true, SLOW, [at(full.runAtMs)], Date.now());
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

describe("a task due before its lane's cursor", () => {
  test("is left by claims from the cursor and taken by the next full claim", async () => {
    const worker = randomUUID();
    const now = Date.now();
    const late = await enqueue(sql, task, "late", { runAt: new Date(now - 60_000) });
    const cursor = new ClaimCursor();
    cursor.record(true, SLOW, [at(now)], Date.now());
    assert.deepEqual(await claimTasks(sql, "pgbg", scope(worker), 10, cursor), []);
    cursor.fullNext();
    const [taken] = await claimTasks(sql, "pgbg", scope(worker), 10, cursor);
    assert.equal(taken?.id, late);
  });
});

/**
 * Claims up to `limit` tasks in a transaction, and counts the entries of
 * task_claim_idx its scans read (dead ones included), from the
 * transaction's own statistics.
 */
async function claimReading(cursor: ClaimCursor | null, limit: number) {
  return await sql.begin(async (tx) => {
    // Counts not yet sent to the statistics collector carry over from earlier
    // transactions of this backend; none are sent inside a transaction.
    const read = async () => (await tx`SELECT pg_stat_get_xact_tuples_returned('pgbg.task_claim_idx'::regclass)::int AS n`)[0].n as number;
    const before = await read();
    const claimed = await claimTasks(tx, "pgbg", scope(randomUUID()), limit, cursor ?? undefined);
    return { claimed: claimed.length, entries: (await read()) - before, runAtMs: claimed[0]?.runAtMs ?? 0 };
  });
}
