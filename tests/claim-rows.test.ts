/**
 * Claim rows (migration 026): the claim of a lane by a pair of snapshots
 * takes each committed task exactly once, however its enqueue's commit is
 * ordered against the claims; a claim that fills its batch leaves the rest
 * of its pair to the next; and a completion deletes a task only while it
 * is still its claim's and the claim is held by the completing worker.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, test } from "node:test";
import postgres from "postgres";
import * as v from "valibot";
import { defineTask, enqueue, enqueueBatch, enqueueMany, flowTask, migrate } from "../mod.ts";
import { claimTasks } from "../lib/claim.ts";
import { run } from "../lib/statements.ts";
import { clientOptions, createTestDatabase } from "./harness.ts";
import { patience, until, within } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const lane = defineTask({ name: "lane", schema: v.object({ n: v.number() }), async run() {} });

/** One claim of the lane `lane` by `worker`, of up to `wanted` tasks. */
const claimLane = (worker: string, wanted: number, client: typeof sql = sql) =>
  client`SELECT id::text, claim_id::text, attempts FROM pgbg.claim_lane('default', 'lane', 0::smallint, ${worker}::uuid, interval '1 minute', ${wanted})`;

/**
 * Completes `ids` of claims `claims` as `worker`; returns the ids deleted:
 * all those sent when CompleteClaimedTasks counts as many, else those it
 * lists.
 */
const complete = async (worker: string, ids: string[], claims: string[]) => {
  const [row] = await run<{ completed: number; ids: string | null }>(sql, "pgbg", "CompleteClaimedTasks", [ids, [...new Set(claims)], worker]);
  return (row.completed === ids.length ? ids : row.ids?.split(",") ?? []).map(String).sort();
};

const clean = () => sql`TRUNCATE pgbg.task, pgbg.claim`;

/** A client whose statements' plans, nested ones too, auto_explain sends it as notices once `explain()` ran. */
interface Explained {
  sql: typeof sql;
  plans: string[];
  /**
   * Turns auto_explain on; on generic plans (as a function's cached
   * statements run after a few calls) unless `generic` is false, which
   * leaves the choice to the server and the function's own settings.
   */
  explain(generic?: boolean): Promise<void>;
}

/** Runs `body` while another session holds a snapshot (its transaction has an id), with an Explained client. */
async function besideHeldSnapshot(body: (explained: Explained) => Promise<void>): Promise<void> {
  const holder = postgres(db.url, { ...clientOptions, max: 1 });
  let release = () => {};
  let holds!: () => void;
  const holdsSnapshot = new Promise<void>((resolve) => (holds = resolve));
  const holding = holder.begin(async (tx) => {
    await tx`SELECT txid_current()`;
    holds();
    await new Promise<void>((resolve) => (release = resolve));
  });
  const plans: string[] = [];
  const explained = postgres(db.url, { ...clientOptions, max: 1, onnotice: (n) => plans.push(n.message) });
  try {
    await within(holdsSnapshot, patience, "the held snapshot");
    await body({
      sql: explained,
      plans,
      async explain(generic = true) {
        await explained.unsafe(`LOAD 'auto_explain'`);
        await explained.unsafe(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; SET auto_explain.log_level = notice;
          SET client_min_messages = notice; SET plan_cache_mode = ${generic ? "force_generic_plan" : "auto"}`);
      },
    });
  } finally {
    release();
    await holding.catch(() => {});
    await holder.end();
    await explained.end();
  }
}

describe("claim rows", () => {
  test("a task whose enqueue commits after a later one was claimed is taken by the next claim", async () => {
    await clean();
    const worker = randomUUID();
    const late = postgres(db.url, { ...clientOptions, max: 1 });
    let releaseLate!: () => void;
    const lateHeld = new Promise<void>((resolve) => (releaseLate = resolve));
    let lateId!: string;
    let enqueued!: () => void;
    const lateEnqueued = new Promise<void>((resolve) => (enqueued = resolve));
    const lateDone = late.begin(async (tx) => {
      lateId = await enqueue(tx, lane, { n: 1 });
      enqueued();
      await lateHeld;
    });
    try {
      await within(Promise.race([lateEnqueued, lateDone]), patience, "the late enqueue, uncommitted");
      const early = await enqueue(sql, lane, { n: 2 });
      const first = await claimLane(worker, 10);
      assert.deepEqual(first.map((r) => r.id), [early], "only the committed task");
      releaseLate();
      await lateDone;
      assert.ok(BigInt(lateId) < BigInt(early), "the late task has the lower id");
      const second = await claimLane(worker, 10);
      assert.deepEqual(second.map((r) => r.id), [lateId], "the late task, in the next pair");
      assert.equal((await claimLane(worker, 10)).length, 0, "nothing twice");
      assert.equal(first[0].attempts, 1);
    } finally {
      releaseLate();
      await lateDone.catch(() => {});
      await late.end();
    }
  });

  test("a claim that fills its batch leaves the rest of its pair to the next, in lane order", async () => {
    await clean();
    const worker = randomUUID();
    const ids = await enqueueMany(sql, lane, Array.from({ length: 10 }, (_, n) => ({ n })));
    const claims = [await claimLane(worker, 4), await claimLane(worker, 4), await claimLane(worker, 4)];
    assert.deepEqual(claims.map((c) => c.map((r) => r.id).sort((a, b) => Number(a) - Number(b))), [ids.slice(0, 4), ids.slice(4, 8), ids.slice(8)]);
    const rows = await sql`SELECT whole, since IS NULL AS first, upto::text FROM pgbg.claim ORDER BY id`;
    assert.deepEqual(rows.map((r) => r.whole), [false, false, true]);
    assert.equal(new Set(rows.map((r) => r.upto)).size, 1, "one pair");
  });

  test("a claim's stretch starts just before the first task it took, not at the lane's head: its end reads none of the lane's earlier tasks", async () => {
    await clean();
    const worker = randomUUID();
    // Earlier pairs, their tasks completed: entries that only vacuum removes.
    for (let round = 0; round < 3; round++) {
      await enqueueMany(sql, lane, [{ n: round }, { n: round }]);
      const taken = await claimLane(worker, 10);
      assert.equal((await complete(worker, taken.map((r) => r.id), taken.map((r) => r.claim_id))).length, 2);
    }
    const ids = await enqueueMany(sql, lane, Array.from({ length: 5 }, (_, n) => ({ n })));
    const first = await claimLane(worker, 2);
    const next = await claimLane(worker, 2);
    const rows = await sql`SELECT c.id::text, c.after_xact::text, c.after_id::text, t.staged_xact::text AS first_xact
      FROM pgbg.claim c JOIN pgbg.task t ON t.id = c.after_id + 1 WHERE c.id IN ${sql([first[0].claim_id, next[0].claim_id])} ORDER BY c.id`;
    assert.deepEqual(rows.map((r) => r.after_id), [String(BigInt(ids[0]) - 1n), String(BigInt(ids[2]) - 1n)], "each stretch starts before its own first task");
    assert.ok(rows.every((r) => r.after_xact === r.first_xact), "at its first task's staging transaction");
    assert.deepEqual(first.map((r) => r.id).sort(), ids.slice(0, 2).sort());
  });

  test("a claim stages the lane's due tasks that have no staging transaction, and leaves those not yet due", async () => {
    await clean();
    const worker = randomUUID();
    // As tasks queued before migration 025, or delayed ones now due: no staging transaction.
    const unstaged = (await sql`INSERT INTO pgbg.task (queue, name, payload, staged_xact)
      SELECT 'default', 'lane', '{"n":1}', NULL FROM generate_series(1, 3) RETURNING id::text`).map((r) => r.id).sort();
    const later = await enqueue(sql, lane, { n: 2 }, { delay: 3_600_000 });
    // Staged by the first claim's transaction, which its own pair counts in progress: the next claim's.
    assert.equal((await claimLane(worker, 10)).length, 0, "not by the claim that staged them");
    assert.deepEqual((await claimLane(worker, 10)).map((r) => r.id).sort(), unstaged);
    assert.equal((await claimLane(worker, 10)).length, 0);
    const [row] = await sql`SELECT staged_xact FROM pgbg.task WHERE id = ${later}`;
    assert.equal(row.staged_xact, null, "not yet due: not staged");
  });

  test("a claim passes over a task whose cancel was asked, or whose attempts or lease token are at the integer limit (an outcome's lease would overflow)", async () => {
    await clean();
    const worker = randomUUID();
    const passed = await sql`INSERT INTO pgbg.task (queue, name, payload, attempts, lease_token, cancel_requested_at)
      VALUES ('default', 'lane', '{"n":1}', 2147483647, 0, NULL), ('default', 'lane', '{"n":2}', 0, 2147483647, NULL),
        ('default', 'lane', '{"n":3}', 0, 0, now()) RETURNING id::text`;
    const taken = await enqueue(sql, lane, { n: 4 });
    assert.deepEqual((await claimLane(worker, 10)).map((r) => r.id), [taken]);
    assert.equal((await claimLane(worker, 10)).length, 0, "nor does a later claim take them");
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(passed.map((r) => r.id))} AND state = 'queued'`)[0].n, 3);
  });

  test("a claim restages the tasks it passes over inside its stretch, which then holds what it returned alone; a stretch of such tasks alone moves the lane on, held by nobody", async () => {
    await clean();
    const worker = randomUUID();
    const [a, b, c] = await enqueueMany(sql, lane, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    await sql`UPDATE pgbg.task SET cancel_requested_at = now() WHERE id = ${b}`;
    const taken = await claimLane(worker, 10);
    assert.deepEqual(taken.map((r) => r.id), [a, c]);
    const inStretch = async (claim: string) => (await sql`SELECT t.id::text FROM pgbg.task t, pgbg.claim c WHERE c.id = ${claim}
      AND t.state = 'queued' AND (t.staged_xact, t.id) > (c.after_xact, c.after_id) AND (t.staged_xact, t.id) <= (c.last_xact, c.last_id)
      AND pg_visible_in_snapshot(t.staged_xact, c.upto) AND (c.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, c.since))
      ORDER BY t.id`).map((r) => r.id);
    assert.deepEqual(await inStretch(taken[0].claim_id), [a, c], "the passed task is restaged out of the claim's pair");
    // Its next pair holds it alone: that claim returns nothing and ends its row at once, the lane moving on past it.
    assert.equal((await claimLane(worker, 10)).length, 0);
    const [newest] = await sql`SELECT id::text, worker_id FROM pgbg.claim ORDER BY id DESC LIMIT 1`;
    assert.ok(newest.id !== taken[0].claim_id && newest.worker_id === null, "a row held by nobody");
    assert.deepEqual(await inStretch(newest.id), [], "b restaged again, out of that pair too");
    assert.equal((await sql`SELECT state::text FROM pgbg.task WHERE id = ${b}`)[0].state, "queued");
  });

  test("the end of a claim reads its stretch and restages what is left in it, unless the worker says every outcome of it was written (settled)", async () => {
    await clean();
    const worker = randomUUID();
    const end = async (claim: string, settled: string[]) => (await run<{ claims: string; tasks: string }>(sql, "pgbg", "EndClaims", [[claim], worker, settled]))[0];
    const [, left] = await enqueueMany(sql, lane, [{ n: 1 }, { n: 2 }]);
    const taken = await claimLane(worker, 10);
    assert.equal((await complete(worker, [taken[0].id], [taken[0].claim_id])).length, 1);
    const ended = await end(taken[0].claim_id, []);
    assert.deepEqual([Number(ended.claims), Number(ended.tasks)], [1, 1], "the task left in it is moved out");
    assert.deepEqual((await claimLane(worker, 10)).map((r) => r.id), [left], "and a later claim takes it");
    // Said settled (the worker says so only when every task of the claim was deleted or given a lease of its own), its stretch is not read.
    await clean();
    await enqueueMany(sql, lane, [{ n: 1 }, { n: 2 }]);
    const again = await claimLane(worker, 10);
    assert.equal((await complete(worker, [again[0].id], [again[0].claim_id])).length, 1);
    const settled = await end(again[0].claim_id, [again[0].claim_id]);
    assert.deepEqual([Number(settled.claims), Number(settled.tasks)], [1, 0], "settled: ended without reading its stretch");
  });

  test("a row claim of a release before claim rows fails on a task a claim row holds, changing nothing, and waits for a claim in flight (task_claim_guard)", async () => {
    await clean();
    const worker = randomUUID();
    /** A row claim as an earlier release's ClaimTasks writes it, which does not say it knows claim rows. */
    const rowClaim = (client: typeof sql, ids: string[]) => client`UPDATE pgbg.task SET state = 'running', attempts = attempts + 1,
      lease_token = lease_token + 1, worker_id = ${randomUUID()}::uuid, lease_expires_at = now() + interval '1 minute'
      WHERE id IN ${client(ids)} RETURNING id::text`;
    const [held, free] = await enqueueMany(sql, lane, [{ n: 1 }, { n: 2 }]);
    assert.deepEqual((await claimLane(worker, 1)).map((r) => r.id), [held]);
    const refused = /task \d+ is running, held by a claim row of a newer pgbg: this claim is of an earlier release, which does not read claim rows; upgrade this worker/;
    await assert.rejects(rowClaim(sql, [held, free]), refused);
    assert.deepEqual((await sql`SELECT state::text FROM pgbg.task WHERE id IN ${sql([held, free])}`).map((r) => r.state), ["queued", "queued"], "nothing changed");
    assert.deepEqual((await rowClaim(sql, [free])).map((r) => r.id), [free], "a task no claim row holds is claimed");
    assert.equal((await claimLane(worker, 10)).length, 0, "the rest of the first claim's pair was the task row-claimed");
    // A claim in flight: its transaction holds the lane's lock, its claim row not yet committed.
    const [late] = await enqueueMany(sql, lane, [{ n: 3 }]);
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let claimed!: () => void;
    const inFlight = new Promise<void>((r) => (claimed = r));
    const claiming = sql.begin(async (tx) => {
      assert.deepEqual((await claimLane(worker, 10, tx as unknown as typeof sql)).map((r) => r.id), [late]);
      claimed();
      await released;
    });
    await inFlight;
    const other = postgres(db.url, { ...clientOptions, max: 1 });
    try {
      const [{ pid }] = await other`SELECT pg_backend_pid() AS pid`;
      // Its refusal handled from the start: it may come back before the claim's commit does.
      const waiting = assert.rejects(rowClaim(other, [late]).execute(), refused, "it reads the claim row once the claim commits");
      await until(async () => (await sql`SELECT wait_event_type FROM pg_stat_activity WHERE pid = ${pid}`)[0]?.wait_event_type, (w) => w === "Lock", patience, "the row claim to wait for the lane's lock");
      release();
      await claiming;
      await waiting;
    } finally {
      release();
      await other.end();
    }
    // This release's own writes say they know claim rows: a held task given a lease of its own for its outcome.
    const leased = await run(sql, "pgbg", "LeaseClaimedTasks", [[late], [(await sql`SELECT max(id)::text AS id FROM pgbg.claim`)[0].id], worker]);
    assert.equal(leased.length, 1);
  });

  test("two claims of a lane in one transaction, with a later transaction ended between: what the transaction staged is claimed once it commits", async () => {
    await clean();
    const worker = randomUUID();
    const unstaged = (n: number, tx: typeof sql) => tx`INSERT INTO pgbg.task (queue, name, payload, staged_xact)
      SELECT 'default', 'lane', '{"n":1}', NULL FROM generate_series(1, ${n}) RETURNING id::text`.then((rows) => rows.map((r) => r.id));
    const ids = await sql.begin(async (tx) => {
      await tx`SELECT pg_current_xact_id()`;
      await enqueue(sql, lane, { n: 0 }); // a later transaction, ended: this one's id is now below the snapshots' xmax
      const first = await unstaged(2, tx as unknown as typeof sql);
      const a = await claimLane(worker, 10, tx as unknown as typeof sql);
      const second = await unstaged(2, tx as unknown as typeof sql);
      const b = await claimLane(worker, 10, tx as unknown as typeof sql);
      return { staged: [...first, ...second], inside: [...a, ...b].map((r) => r.id) };
    });
    const after = [...await claimLane(worker, 10), ...await claimLane(worker, 10)].map((r) => r.id);
    const all = [...ids.inside, ...after];
    for (const id of ids.staged) assert.equal(all.filter((x) => x === id).length, 1, `task ${id} claimed once (inside: ${ids.inside}; after: ${after})`);
  });

  test("a completion refuses a task restaged by a transaction older than its claim, which a later claim took", async () => {
    await clean();
    const [first, second] = [randomUUID(), randomUUID()];
    const restager = postgres(db.url, { ...clientOptions, max: 1 });
    let restage!: (id: string) => void;
    const restageOf = new Promise<string>((resolve) => (restage = resolve));
    let begun!: () => void;
    const hasId = new Promise<void>((resolve) => (begun = resolve));
    const restaging = restager.begin(async (tx) => {
      await tx`SELECT pg_current_xact_id()`; // its id is drawn before the claim's tasks are enqueued
      begun();
      await tx`UPDATE pgbg.task SET staged_xact = pg_current_xact_id() WHERE id = ${await restageOf}`;
    });
    try {
      await within(hasId, patience, "the restaging transaction's id");
      const [task] = await enqueueMany(sql, lane, [{ n: 1 }]);
      const held = await claimLane(first, 5);
      assert.deepEqual(held.map((r) => r.id), [task]);
      restage(task);
      await restaging;
      const taken = await claimLane(second, 5);
      assert.deepEqual(taken.map((r) => r.id), [task], "restaged, it is the next claim's");
      assert.deepEqual(await complete(first, [task], [held[0].claim_id]), [], "not the first claim's any more");
      assert.deepEqual(await complete(second, [task], [taken[0].claim_id]), [task]);
    } finally {
      restage("0");
      await restaging.catch(() => {});
      await restager.end();
    }
  });

  test("a completion deletes a task only while it is its claim's and the claim is this worker's", async () => {
    await clean();
    const [worker, other] = [randomUUID(), randomUUID()];
    await enqueueMany(sql, lane, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    const claimed = await claimLane(worker, 3);
    const ids = claimed.map((r) => r.id).sort();
    const claims = claimed.map((r) => r.claim_id);
    assert.deepEqual(await complete(other, ids, claims), [], "not by another worker");
    assert.deepEqual(await complete(worker, ids, ["0"]), [], "not by another claim");
    await sql`UPDATE pgbg.task SET staged_xact = pg_current_xact_id() WHERE id = ${ids[0]}`;
    assert.deepEqual(await complete(worker, ids, claims), ids.slice(1), "a task restaged since is no longer the claim's");
    assert.deepEqual((await claimLane(other, 3)).map((r) => r.id), [ids[0]], "it is the next claim's");
    await sql`UPDATE pgbg.claim SET worker_id = NULL, lease_expires_at = NULL`;
    assert.deepEqual(await complete(other, [ids[0]], (await sql`SELECT max(id)::text AS id FROM pgbg.claim`).map((r) => r.id)), [],
      "not once the claim was ended");
  });

  test("a claim reads its lane's newest claim row from claim_lane_idx's end of the lane, on the generic plan, beside many deleted claim rows, for a lane never claimed too", async () => {
    await clean();
    const worker = randomUUID();
    // Deleted claim rows a held snapshot keeps, all of the lane `lane`, and
    // statistics that see only the few live ones: the table then looks
    // small to the planner, and the lane the whole of it.
    await besideHeldSnapshot(async ({ sql: explained, plans, explain }) => {
      // As many claims as a few seconds of small ones make, ended, all but
      // a few deleted (written directly, to be quick), then real ones.
      await sql`INSERT INTO pgbg.claim (upto, after_xact, after_id, last_xact, last_id, priority, whole, queue, name)
        SELECT pg_current_snapshot(), '0', 0, '0', 0, 0, true, 'default', 'lane' FROM generate_series(1, 10000)`;
      await sql`DELETE FROM pgbg.claim WHERE id % 250 <> 0`;
      for (let round = 0; round < 20; round++) {
        await enqueue(sql, lane, { n: round });
        const taken = await claimLane(worker, 10);
        await complete(worker, taken.map((r) => r.id), taken.map((r) => r.claim_id));
        await run(sql, "pgbg", "EndClaims", [taken.map((r) => r.claim_id), worker, []]);
      }
      await sql`ANALYZE pgbg.claim`;
      await explain();
      await enqueue(sql, lane, { n: -1 });
      for (const name of ["never-claimed", "lane"]) {
        plans.length = 0;
        await explained`SELECT * FROM pgbg.claim_lane('default', ${name}, 0::smallint, ${worker}::uuid, interval '1 minute', 10)`;
        const newest = plans.find((p) => /Query Text: SELECT \*\s+FROM "pgbg"\.claim c/.test(p));
        assert.ok(newest, `the read of the lane's newest claim row, for ${name}: ${plans.join("\n")}`);
        assert.match(newest, /Index Scan Backward using claim_lane_idx/, `for ${name}`);
        assert.doesNotMatch(newest, /Bitmap|claim_pkey|Sort/, `for ${name}`);
      }
      // Under the pressure bench's hold the planner chose a bitmap of the
      // whole lane and a sort for the same read, on statistics this test
      // does not reproduce: the function keeps bitmaps off (and, since
      // migration 032, plans its statements once and never compiles them).
      const [{ config }] = await sql`SELECT proconfig AS config FROM pg_proc WHERE oid = 'pgbg.claim_lane'::regproc`;
      assert.deepEqual(config, ["enable_bitmapscan=off", "plan_cache_mode=force_generic_plan", "enable_seqscan=off", "jit=off"]);
    });
  });

  test("a new pair probes a transaction its since saw in progress by the lane index, on the generic plan, when the statistics see one staging transaction", async () => {
    await clean();
    const worker = randomUUID();
    // A backfill: every task staged by one transaction, and statistics
    // that see it. `staged_xact = x` then matches the whole table to the
    // planner, and an ordered read of task_pkey filtering it looked
    // cheaper than the lane index: each claim that opened a pair read
    // the whole table once per transaction its since saw in progress
    // (33-88 ms a claim with 50,000 tasks, an empty lane too).
    await besideHeldSnapshot(async ({ sql: explained, plans, explain }) => {
      await enqueueMany(sql, lane, Array.from({ length: 2_000 }, (_, n) => ({ n })));
      await sql`ANALYZE pgbg.task`;
      // The lane's first pair, whole: the next claim opens a pair whose
      // since holds the held transaction in progress.
      assert.equal((await claimLane(worker, 5_000)).length, 2_000);
      await explain();
      await explained`SELECT * FROM pgbg.claim_lane('default', 'lane', 0::smallint, ${worker}::uuid, interval '1 minute', 10)`;
      const read = plans.find((p) => /Query Text: WITH found AS MATERIALIZED/.test(p));
      assert.ok(read, `the claim's read of the lane: ${plans.join("\n")}`);
      assert.match(read, /Function Scan on pg_snapshot_xip/, "the probe ran");
      assert.doesNotMatch(read, /task_pkey on task t\s/, "no probe reads task_pkey");
      assert.match(read, /Index Scan using task_lane_idx on task t\s/);
    });
  });

  test("a claim plans its read of the lane once for any lane, not at every call: from the first call on, the plan is the generic one", async () => {
    await clean();
    const worker = randomUUID();
    // Left to itself, PL/pgSQL planned this read with the call's values at
    // every call (its estimate for any values never beat theirs): about
    // 0.9 ms a call, once per lane a worker runs at every claim, and under
    // a held horizon a plan made for some statistics read the lane's dead
    // entries (migration 032).
    await besideHeldSnapshot(async ({ sql: explained, plans, explain }) => {
      await enqueueMany(sql, lane, Array.from({ length: 200 }, (_, n) => ({ n })));
      await sql`ANALYZE pgbg.task`;
      await explain(false);
      for (const wanted of [10, 20]) {
        plans.length = 0;
        assert.equal((await claimLane(worker, wanted, explained)).length, wanted);
        const read = plans.find((p) => /Query Text: WITH found AS MATERIALIZED/.test(p));
        assert.ok(read, `the claim's read of the lane: ${plans.join("\n")}`);
        // The key's equality in the index condition (pgbg.lane_key inlined):
        // with the call's values it reads `= '<the key>'::bigint`.
        assert.match(read, /'0'::bigint\) = \$\d+\)/, `the lane's key as a parameter, for ${wanted}: ${read}`);
        assert.doesNotMatch(read, /'0'::bigint\) = '-?\d+'::bigint/, `for ${wanted}`);
      }
    });
  });

  test("a claim's statements, planned once on an empty table, read their indexes once the table fills", async () => {
    await clean();
    const worker = randomUUID();
    // A session's first claim plans each statement for the rest of the
    // session (migration 032), here on empty tables; the next claim, on a
    // full task table and a claim table of deleted rows a held snapshot
    // keeps, runs those plans.
    await besideHeldSnapshot(async ({ sql: explained, plans, explain }) => {
      await sql`ANALYZE pgbg.task, pgbg.claim`;
      await explain(false);
      assert.equal((await claimLane(worker, 10, explained)).length, 0);
      await enqueueMany(sql, lane, Array.from({ length: 20_000 }, (_, n) => ({ n })));
      await sql`INSERT INTO pgbg.claim (upto, after_xact, after_id, last_xact, last_id, priority, whole, queue, name)
        SELECT pg_current_snapshot(), '0', 0, '0', 0, 0, true, 'default', 'other' FROM generate_series(1, 5000)`;
      await sql`DELETE FROM pgbg.claim`;
      plans.length = 0;
      assert.equal((await claimLane(worker, 10, explained)).length, 10);
      const nested = plans.filter((p) => /Query Text: (?!SELECT id::text)/.test(p));
      assert.ok(nested.length >= 3, `the claim's statements: ${plans.join("\n")}`);
      for (const plan of nested) assert.doesNotMatch(plan, /Seq Scan on (task|claim)\b/, plan);
    });
  });

  test("the count of the tasks claim rows hold (count_held_by_claims, under a limited queue's lock) reads each held claim's stretch by the lane index, not the table", async () => {
    await clean();
    const worker = randomUUID();
    await besideHeldSnapshot(async ({ sql: explained, plans, explain }) => {
      await enqueueMany(sql, lane, Array.from({ length: 2_000 }, (_, n) => ({ n })));
      await sql`ANALYZE pgbg.task`;
      assert.equal((await claimLane(worker, 10)).length, 10);
      await explain();
      const [{ held }] = await explained`SELECT pgbg.count_held_by_claims('default') AS held`;
      assert.equal(Number(held), 10);
      const count = plans.find((p) => /Query Text: \(SELECT count\(\*\) FROM "pgbg"\.claim c/.test(p));
      assert.ok(count, `the count's plan: ${plans.join("\n")}`);
      assert.match(count, /task_lane_idx on task t\s/);
      assert.doesNotMatch(count, /Seq Scan on task t\s/);
    });
  });

  test("a claim refuses to run under REPEATABLE READ", async () => {
    await assert.rejects(
      sql.begin("ISOLATION LEVEL REPEATABLE READ", (tx) => claimLane(randomUUID(), 1, tx as unknown as typeof sql)),
      /the claim of a lane needs READ COMMITTED, not repeatable read/,
    );
  });

  test("the lanes of one priority share a claim by claim_lanes, after the lanes of a higher one; what one lane lacks goes to the others", async () => {
    await clean();
    const other = defineTask({ name: "other", schema: v.object({ n: v.number() }), async run() {} });
    await enqueueMany(sql, lane, Array.from({ length: 5 }, (_, n) => ({ n })), { priority: -1 });
    await enqueueMany(sql, lane, Array.from({ length: 30 }, (_, n) => ({ n })));
    await enqueueMany(sql, other, Array.from({ length: 30 }, (_, n) => ({ n })));
    const claimLanes = async (wanted: number) => {
      const rows = await sql`SELECT name, priority FROM pgbg.claim_lanes(ARRAY['default', 'default', 'default'], ARRAY['lane', 'lane', 'other'],
        ARRAY[-1, 0, 0]::smallint[], ARRAY[60000, 60000, 60000], ${randomUUID()}::uuid, ${wanted})`;
      const counts: Record<string, number> = {};
      for (const r of rows) counts[`${r.name} ${r.priority}`] = (counts[`${r.name} ${r.priority}`] ?? 0) + 1;
      return counts;
    };
    assert.deepEqual(await claimLanes(25), { "lane -1": 5, "lane 0": 10, "other 0": 10 });
    assert.deepEqual(await claimLanes(45), { "lane 0": 20, "other 0": 20 }, "each lane asks for half, and has 20 left");
    await enqueueMany(sql, lane, Array.from({ length: 30 }, (_, n) => ({ n })));
    await enqueueMany(sql, other, Array.from({ length: 3 }, (_, n) => ({ n })));
    assert.deepEqual(await claimLanes(20), { "lane 0": 17, "other 0": 3 }, "what `other` lacks goes to `lane`, which filled its share");
  });

  test("the ordinary claim reads claim_lanes_lean's seven columns into the tasks claim_lanes' fourteen give: each claim row's lane, the rare columns when set", async () => {
    await clean();
    const other = defineTask({ name: "other", schema: v.object({ n: v.number() }), async run() {} });
    const done = defineTask({ name: "done", schema: v.object({}), async run() {} });
    await enqueueMany(sql, lane, Array.from({ length: 6 }, (_, n) => ({ n })), { priority: -1 });
    await enqueueMany(sql, lane, Array.from({ length: 5 }, (_, n) => ({ n })), { maxAttempts: 7 });
    await enqueueMany(sql, other, Array.from({ length: 5 }, (_, n) => ({ n })), { queue: "q2" });
    await enqueueBatch(sql, other, [{ n: 90 }, { n: 91 }], { queue: "q2", then: flowTask(done, {}) });
    // Columns only a worker's outcomes or a newer definition set: written here.
    await sql`UPDATE pgbg.task SET snoozes = 2 WHERE id = (SELECT min(id) FROM pgbg.task WHERE priority = -1)`;
    await sql`UPDATE pgbg.task SET input_version = 3 WHERE id = (SELECT max(id) FROM pgbg.task WHERE priority = -1)`;
    await sql`UPDATE pgbg.task SET trace_context = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
      WHERE id = (SELECT min(id) FROM pgbg.task WHERE queue = 'q2')`;
    const worker = randomUUID();
    const scope = { workerId: worker, queues: ["default", "q2"], names: ["lane", "other"], leaseMs: [60_000, 60_000] };
    // claim_lanes' rows for the same tasks, in a transaction rolled back.
    const full = await sql.begin(async (tx) => {
      const rows = await tx`SELECT c.*, c.id::text AS id, c.batch_then::text AS batch_then, c.run_at_us::text AS run_at_us
        FROM pgbg.claim_lanes(ARRAY['default', 'default', 'q2'], ARRAY['lane', 'lane', 'other'], ARRAY[-1, 0, 0]::smallint[],
          ARRAY[60000, 60000, 60000], ${worker}::uuid, 100) c`;
      throw Object.assign(new Error("rolled back"), { rows });
    }).catch((error) => error.rows as Record<string, unknown>[]);
    assert.equal(full.length, 18);
    const [{ before }] = await sql`SELECT extract(epoch FROM clock_timestamp()) * 1000 AS before`;
    const tasks = await claimTasks(sql, "pgbg", scope, 100);
    const [{ after }] = await sql`SELECT extract(epoch FROM clock_timestamp()) * 1000 AS after`;
    const claims = await sql`SELECT id::text, queue, name, priority FROM pgbg.claim WHERE worker_id = ${worker}`;
    assert.equal(claims.length, 3, "a claim row a lane");
    const byId = new Map(full.map((r) => [r.id, r]));
    assert.deepEqual(tasks.map((t) => t.id).sort(), [...byId.keys()].sort());
    for (const t of tasks) {
      const r = byId.get(t.id)!;
      const seen = { name: t.name, queue: t.queue, priority: t.priority, group: t.group, payload: t.payload, attempt: t.attempt, maxAttempts: t.maxAttempts,
        leaseToken: t.leaseToken, snoozes: t.snoozes, inputVersion: t.inputVersion, traceContext: t.traceContext, batchThen: t.batchThen, runAtUs: t.runAtUs };
      assert.deepEqual(seen, {
        name: r.name, queue: r.queue, priority: r.priority, group: null, payload: r.payload, attempt: r.attempts, maxAttempts: r.max_attempts, leaseToken: 0,
        snoozes: r.snoozes, inputVersion: r.input_version, traceContext: r.trace_context, batchThen: r.batch_then, runAtUs: r.run_at_us,
      }, `task ${t.id}`);
      const claim = claims.find((c) => c.queue === t.queue && c.name === t.name && c.priority === t.priority);
      assert.equal(t.claimId, claim?.id, `task ${t.id}'s claim row`);
      assert.ok(t.claimedAtMs >= Number(before) - 1 && t.claimedAtMs <= Number(after) + 1, `claimed at ${t.claimedAtMs}, between ${before} and ${after}`);
      assert.ok(Math.abs(t.lagMs - (t.claimedAtMs - Number(t.runAtUs) / 1000)) < 0.01, `task ${t.id}'s lag`);
    }
    const rare = tasks.filter((t) => t.snoozes || t.inputVersion !== 1 || t.maxAttempts !== null || t.batchThen !== null || t.traceContext !== null);
    assert.equal(rare.length, 1 + 1 + 5 + 2 + 1, "the tasks with a rare column set: snoozed, a newer input, max attempts, a batch's members, a trace");
  });

  for (const held of [false, true]) {
    test(`enqueues committing out of order, in savepoints and rolled back: each committed task claimed once${held ? ", beside a held snapshot" : ""}`, { timeout: 3 * patience }, async () => {
      await clean();
      await checkExactlyOnce(held);
    });
  }
});

/**
 * Six connections enqueue 1-4 tasks a transaction, holding each open up to
 * a few ms (one in eight up to 60 ms), one in three with a task in a
 * savepoint, one in six with a savepoint rolled back, one in ten rolled
 * back whole, while two workers claim 25 and 3 at a time and complete
 * what they took; then the workers claim until the lane is empty.
 */
async function checkExactlyOnce(held: boolean): Promise<void> {
  const committed = new Set<string>();
  const claimedTimes = new Map<string, number>();
  const holder = postgres(db.url, { ...clientOptions, max: 1 });
  let release = () => {};
  let holds!: () => void;
  const holdsSnapshot = new Promise<void>((resolve) => (holds = resolve));
  const holding = held ? holder.begin(async (tx) => {
    await tx`SELECT txid_current()`;
    const released = new Promise<void>((resolve) => (release = resolve));
    holds();
    await released;
  }) : (holds(), Promise.resolve());
  await within(Promise.race([holdsSnapshot, holding]), patience, "the held snapshot");
  const enqueuers = postgres(db.url, { ...clientOptions, max: 6 });
  let enqueuing = true;
  let failed = false;
  const enqueueLoop = async (seed: number) => {
    for (let i = 0; i < 60 && !failed; i++) {
      const r = (seed * 7919 + i * 104729) % 1000;
      const ids: string[] = [];
      await enqueuers.begin(async (tx) => {
        ids.push(...await enqueueMany(tx, lane, Array.from({ length: 1 + (r % 4) }, (_, n) => ({ n }))));
        if (r % 3 === 0) ids.push(...await tx.savepoint((sp) => enqueueMany(sp, lane, [{ n: 9 }])));
        if (r % 6 === 1) await tx.savepoint(async (sp) => { await enqueue(sp, lane, { n: 8 }); throw new Error("rolled back"); }).catch(() => {});
        await sleep(r % 8 === 0 ? r % 60 : r % 4);
        if (r % 10 === 5) throw new Error("rolled back whole");
      }).then(() => ids.forEach((id) => committed.add(id)), () => {});
    }
  };
  const claimLoop = async (wanted: number) => {
    const worker = randomUUID();
    while (!failed) {
      const rows = await claimLane(worker, wanted);
      for (const r of rows) claimedTimes.set(r.id, (claimedTimes.get(r.id) ?? 0) + 1);
      if (rows.length) assert.equal((await complete(worker, rows.map((r) => r.id), rows.map((r) => r.claim_id))).length, rows.length, "each claimed task completed");
      if (!rows.length && !enqueuing) {
        const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task`;
        if (n === 0) return;
      }
    }
  };
  // A claim inside a pair, at the start: 3 of 10.
  const opening = await enqueueMany(sql, lane, Array.from({ length: 10 }, (_, n) => ({ n })));
  opening.forEach((id) => committed.add(id));
  const openingWorker = randomUUID();
  const openingClaim = await claimLane(openingWorker, 3);
  openingClaim.forEach((r) => claimedTimes.set(r.id, 1));
  assert.equal((await complete(openingWorker, openingClaim.map((r) => r.id), openingClaim.map((r) => r.claim_id))).length, 3);
  try {
    // One claimer's failure stops the other, which would wait for tasks it left.
    const claimers = [claimLoop(25), claimLoop(3)].map((c) => c.catch((error) => { failed = true; throw error; }));
    await Promise.all(Array.from({ length: 6 }, (_, seed) => enqueueLoop(seed + 1)));
    enqueuing = false;
    await within(Promise.all(claimers), patience, "the claimers to empty the lane");
  } finally {
    failed = true; // stops claimers still looping after a timeout
    release();
    await holding;
    await holder.end();
    await enqueuers.end();
  }
  assert.ok(committed.size > 100, `${committed.size} committed`);
  const twice = [...claimedTimes].filter(([, times]) => times > 1);
  assert.deepEqual(twice, [], "no task claimed twice");
  const notCommitted = [...claimedTimes.keys()].filter((id) => !committed.has(id));
  assert.deepEqual(notCommitted, [], "nothing claimed that was not committed");
  assert.equal(claimedTimes.size, committed.size, "every committed task claimed");
  const [{ goneOn }] = await sql`SELECT count(*) FILTER (WHERE NOT whole)::int AS "goneOn" FROM pgbg.claim`;
  assert.ok(goneOn > 0, "some claim stopped inside its pair");
}
