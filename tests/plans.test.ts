import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { QueryName } from "../lib/generated/sql.ts";
import { run, statement } from "../lib/statements.ts";
import { listTasks, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
/** The failed list's own database (see "listTasks' pages of failed tasks"). */
const failedList = await createTestDatabase();
const WORKER = "00000000-0000-0000-0000-000000000001";
await migrate(db.sql);

/**
 * The supervisor runs its upkeep statements every check interval, from the
 * moment it starts: usually on an empty table, which then fills, and is not
 * analyzed until autovacuum gets to it. Without statistics the planner took
 * `cancel_requested_at IS NOT NULL` to match nearly every row, and
 * DeleteCancelledTasks scanned the whole table once a second (58 ms per call
 * with 200,000 tasks queued).
 */
describe("the upkeep statements of the supervisor and the heartbeat", () => {
  const upkeep: [QueryName, unknown[], string][] = [
    ["DeleteCancelledTasks", [], "task_cancel_idx"],
    ["RescueExpiredLeases", [25, JSON.stringify({ message: "lease expired" })], "task_lease_idx"],
    ["HeartbeatWorker", [WORKER], "task_lease_idx"],
    ["ReleaseWorkerTasks", [25, JSON.stringify({ message: "worker died" }), [WORKER]], "task_lease_idx"],
    // The limited claim's count of the queue's running tasks.
    ["QueueFreeSlots", ["default"], "task_lease_idx"],
  ];
  for (const [name, params, index] of upkeep) {
    test(`${name} reads ${index}, not the whole table, on a full table never analyzed (and first run empty)`, async () => {
      const sql = db.connect({ max: 1 });
      const rollback = new Error("rollback");
      let counted: { tableScans: number; indexScans: number } | undefined;
      await sql.begin(async (tx) => {
        // A live worker, so that HeartbeatWorker's look for its cancelled tasks runs.
        // Able to run more than the queue's limit, so that QueueFreeSlots counts its running tasks.
        await tx`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks)
          VALUES (${WORKER}, ${WORKER}, 1, 10, 'test', 'node', '{grown}')`;
        await tx`INSERT INTO pgbg.queue (name, concurrency) VALUES ('default', 5)`;
        // Enough runs on the empty table for a prepared statement to settle on a cached plan.
        for (let i = 0; i < 8; i++) await run(tx, "pgbg", name, params);
        await tx`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'grown', '{}'::jsonb FROM generate_series(1, 50000)`;
        const before = await scans(tx, index);
        await run(tx, "pgbg", name, params);
        const after = await scans(tx, index);
        counted = { tableScans: after.table - before.table, indexScans: after.index - before.index };
        throw rollback;
      }).catch((error) => {
        if (error !== rollback) throw error;
      });
      assert.deepEqual(counted, { tableScans: 0, indexScans: 1 });
      await sql.end();
    });
  }
});

/**
 * A limit the registered workers cannot reach (they may run no more in all)
 * is not counted against: QueueFreeSlots then reads none of the task
 * table, which under a held-back vacuum would mean stepping over an entry
 * for every task that ran since.
 */
test("QueueFreeSlots counts no running task under a limit the registered workers cannot reach", async () => {
  const sql = db.connect({ max: 1 });
  const rollback = new Error("rollback");
  let seen: { free: number; tableScans: number; indexScans: number } | undefined;
  await sql.begin(async (tx) => {
    await tx`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks)
      VALUES (${WORKER}, ${WORKER}, 1, 4, 'test', 'node', '{grown}')`;
    await tx`INSERT INTO pgbg.queue (name, concurrency) VALUES ('roomy', 5)`;
    await tx`INSERT INTO pgbg.task (queue, name, payload, state, worker_id, lease_expires_at)
      SELECT 'roomy', 'grown', '{}'::jsonb, 'running', ${WORKER}, now() + interval '1 minute' FROM generate_series(1, 3)`;
    const before = await scans(tx, "task_lease_idx");
    const [{ free }] = await run(tx, "pgbg", "QueueFreeSlots", ["roomy"]);
    const after = await scans(tx, "task_lease_idx");
    seen = { free, tableScans: after.table - before.table, indexScans: after.index - before.index };
    throw rollback;
  }).catch((error) => {
    if (error !== rollback) throw error;
  });
  assert.deepEqual(seen, { free: 5, tableScans: 0, indexScans: 0 });
  await sql.end();
});

/**
 * The limited claim (after its lock and its count of the queue's room) reads
 * only its queue's lanes, through the lane index, however big the table.
 */
test("ClaimLimitedRowTasks claims what it is asked through task_lane_idx, on a full table never analyzed", async () => {
  const seen = await claimBeside(STAGED("limited"), "task_lane_idx", true, async (tx, fill) => {
    await tx`INSERT INTO pgbg.queue (name, concurrency) VALUES ('limited', 3)`;
    const claim = () => run(tx, "pgbg", "ClaimLimitedRowTasks", [WORKER, ["limited"], ["grown"], [60_000], 3]);
    for (let i = 0; i < 8; i++) await claim();
    await fill();
    return claim();
  });
  assert.deepEqual(seen, { claimed: 3, tableScans: 0, indexRead: true });
});

/** 50,000 queued tasks of `queue` without a group, staged by their insert as an enqueue stages them. */
const STAGED = (queue: string) =>
  `INSERT INTO pgbg.task (queue, name, payload, staged_xact) SELECT '${queue}', 'grown', '{}'::jsonb, pg_current_xact_id() FROM generate_series(1, 50000)`;

/**
 * Runs `claim` in a transaction that is rolled back, given `fill`, which
 * writes `tasks`: committed from another session when `committed` (a
 * claim by claim rows takes no task its own transaction staged), and
 * deleted after; else in the claim's transaction. Counts the scans of the
 * task table and of `index` around what `claim` runs after `fill`.
 */
async function claimBeside(
  tasks: string, index: string, committed: boolean,
  // deno-lint-ignore no-explicit-any
  claim: (tx: any, fill: () => Promise<void>) => Promise<unknown[]>,
): Promise<{ claimed: number; tableScans: number; indexRead: boolean } | undefined> {
  const sql = db.connect({ max: 1 });
  const rollback = new Error("rollback");
  let seen: { claimed: number; tableScans: number; indexRead: boolean } | undefined;
  try {
    await sql.begin(async (tx) => {
      let before = { table: 0, index: 0 };
      const fill = async () => {
        await (committed ? db.sql : tx).unsafe(tasks);
        before = await scans(tx, index);
      };
      const claimed = (await claim(tx, fill)).length;
      const after = await scans(tx, index);
      seen = { claimed, tableScans: after.table - before.table, indexRead: after.index > before.index };
      throw rollback;
    }).catch((error) => {
      if (error !== rollback) throw error;
    });
  } finally {
    await db.sql`DELETE FROM pgbg.task WHERE name = 'grown'`;
    await sql.end();
  }
  return seen;
}

/** Every row every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan handled: rows out times loops, and those its filters removed. */
function rowsHandled(node: Record<string, unknown>): number {
  const own = Number(node["Actual Rows"] ?? 0) * Number(node["Actual Loops"] ?? 1) +
    Number(node["Rows Removed by Filter"] ?? 0) + Number(node["Rows Removed by Join Filter"] ?? 0);
  return own + ((node.Plans as Record<string, unknown>[] | undefined) ?? []).reduce((n, child) => n + rowsHandled(child), 0);
}

/**
 * A write-back's work must grow with its batch, not with the batch's
 * square. On a prepared statement's generic plan (its sixth run on), which
 * expects 10 rows from any unnest, a join of the batch to the rows found
 * ran as a nested loop that scanned the batch once per row: 1,000 rows
 * handled a million times (170 ms), 4,000 sixteen million (2.9 s), and a
 * worker whose writes fell behind never caught up. Counted by EXPLAIN
 * ANALYZE, so the check does not depend on the machine's speed.
 */
describe("the write-backs on their generic plans", () => {
  const BATCH = 2000;
  const statements: [QueryName, string, (ids: string[]) => unknown[]][] = [
    ["CompleteTasks", "bigint[], int[]", (ids) => [ids, ids.map(() => 1)]],
    ["CompleteBatchTasks", "bigint[], int[]", (ids) => [ids, ids.map(() => 1)]],
    ["CompleteKeptTasks", "bigint[], int[], text[], float8[], float8[]", (ids) => [ids, ids.map(() => 1), ids.map(() => "7"), ids.map(() => 60_000), ids.map(() => Date.now())]],
    ["FailTasks", "bigint[], int[], float8[], text[], smallint[], int", (ids) => [ids, ids.map(() => 1), ids.map(() => 1000), ids.map(() => JSON.stringify({ message: "boom" })), ids.map(() => 0), 25]],
    ["SnoozeTasks", "bigint[], int[], float8[]", (ids) => [ids, ids.map(() => 1), ids.map(() => 1000)]],
    ["HandBackTasks", "bigint[], int[]", (ids) => [ids, ids.map(() => 1)]],
  ];
  for (const [name, types, params] of statements) {
    test(`${name} of ${BATCH} handles each of its rows a bounded number of times`, async () => {
      const sql = db.connect({ max: 1 });
      const rollback = new Error("rollback");
      let handled = 0;
      let written = 0;
      await sql.begin(async (tx) => {
        // A queue analyzed while full and idle, then a batch of it claimed (the drain's state).
        await tx`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'grown', '{}'::jsonb FROM generate_series(1, 50000)`;
        await tx`ANALYZE pgbg.task`;
        await tx`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = ${WORKER}::uuid, lease_expires_at = now() + interval '1 hour'
          WHERE id IN (SELECT id FROM pgbg.task ORDER BY id LIMIT ${BATCH})`;
        await tx`SELECT set_config('plan_cache_mode', 'force_generic_plan', true)`;
        await tx.unsafe(`PREPARE write_back (${types}) AS ${statement("pgbg", name)}`).simple();
        const ids = (await tx`SELECT id::text FROM pgbg.task WHERE state = 'running' ORDER BY id`).map((r) => r.id as string);
        const args = params(ids);
        // EXPLAIN EXECUTE takes no bind parameters: each argument as a literal the server quotes.
        const literals: string[] = [];
        for (const [i, type] of types.split(", ").entries()) {
          literals.push(`${(await tx.unsafe(`SELECT quote_literal($1::${type}::text) AS l`, [args[i] as never]))[0].l}::${type}`);
        }
        const [{ "QUERY PLAN": [plan] }] = await tx.unsafe(`EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE write_back (${literals.join(", ")})`);
        handled = rowsHandled(plan.Plan);
        written = (await tx`SELECT count(*)::int AS n FROM pgbg.task WHERE state = 'running'`)[0].n;
        throw rollback;
      }).catch((error) => {
        if (error !== rollback) throw error;
      });
      assert.equal(written, 0, "every task written");
      assert.ok(handled < 20 * BATCH, `${handled} rows handled for a batch of ${BATCH}`);
      await sql.end();
    });
  }
});

/**
 * The write-backs of a batch of attempts. The statistics rarely see running
 * tasks (a drain claims and deletes them between two analyzes), and a join
 * of a batch of 1,000 to the table then read every running task through
 * task_lease_idx, dead entries included, and hashed them: with a million
 * tasks queued, completions ran for minutes. Each must look its tasks up by
 * primary key, whatever the statistics say.
 */
describe("the statements that write back a batch of attempts", () => {
  const BATCH = 1000;
  const writeBacks: [QueryName, (ids: string[]) => unknown[]][] = [
    ["CompleteTasks", (ids) => [ids, ids.map(() => 1)]],
    ["FailTasks", (ids) => [ids, ids.map(() => 1), ids.map(() => 1000), ids.map(() => JSON.stringify({ message: "boom" })), ids.map(() => 0), 25]],
    ["HandBackTasks", (ids) => [ids, ids.map(() => 1)]],
  ];
  // A prepared statement runs its first five executions on plans made for
  // their parameters (here: a batch of 1,000), then on one generic plan.
  const modes = [["its first (custom) plans", "force_custom_plan"], ["its generic plan", "force_generic_plan"]] as const;
  for (const [name, params] of writeBacks) for (const [plans, mode] of modes) {
    test(`${name} of ${BATCH} on ${plans} reads task_pkey, not task_lease_idx or the table, when the statistics saw no running task`, async () => {
      const sql = db.connect({ max: 1 });
      const rollback = new Error("rollback");
      let outcome: { written: number; tableScans: number; leaseScans: number } | undefined;
      await sql.begin(async (tx) => {
        await tx`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'grown', '{}'::jsonb FROM generate_series(1, 50000)`;
        await tx`ANALYZE pgbg.task`;
        await tx`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        const absent = Array.from({ length: BATCH }, (_, i) => String(-1 - i));
        for (let i = 0; i < 8; i++) await run(tx, "pgbg", name, params(absent));
        await tx`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = ${WORKER}::uuid,
          lease_expires_at = now() + interval '1 hour'`;
        const ids = (await tx`SELECT id::text FROM pgbg.task ORDER BY id LIMIT ${BATCH}`).map((r) => r.id as string);
        const before = await scans(tx, "task_lease_idx");
        const written = await run(tx, "pgbg", name, params(ids));
        const after = await scans(tx, "task_lease_idx");
        outcome = { written: written.length, tableScans: after.table - before.table, leaseScans: after.index - before.index };
        throw rollback;
      }).catch((error) => {
        if (error !== rollback) throw error;
      });
      assert.deepEqual(outcome, { written: BATCH, tableScans: 0, leaseScans: 0 });
      await sql.end();
    });
  }
});

/**
 * Every claim reads its index and stops at the batch, however deep the
 * queue, on the custom plans of its first runs as on its generic plan.
 * The group claims update their candidates by id, a join that could be
 * planned as a scan of the table; none is. The claims by claim rows
 * (tasks without a group) read their lanes through task_lane_idx: found by
 * a skip scan, or given from the cursor's lanes. Besides the plain claims:
 * the limited claims from their cursors, and the claims that take their
 * own slots in the statement (whose LIMIT the planner cannot know), each
 * under a limit that lets it take 1000.
 */
describe("the claims", () => {
  const grouped = "INSERT INTO pgbg.task (queue, name, payload, group_name) SELECT 'default', 'grown', '{}'::jsonb, 'g' || (i % 100) FROM generate_series(1, 50000) i";
  const limited = "INSERT INTO pgbg.queue (name, concurrency) VALUES ('default', 5000)";
  const known = [["default"], ["grown"], [0]];
  // Name, the parameters after the first five, the index, the tasks, the queue's limit.
  const claims: [QueryName, unknown[], string, string, string | null][] = [
    ["ClaimRowTasks", [], "task_lane_idx", STAGED("default"), null],
    ["ClaimRowTasksFrom", known, "task_lane_idx", STAGED("default"), null],
    ["ClaimGroupTasks", ["", ""], "task_group_idx", grouped, null],
    // 10 slots for each of the 100 groups.
    ["ClaimPerGroupTasks", [null], "task_group_idx", grouped, "INSERT INTO pgbg.queue (name, group_concurrency) VALUES ('default', 10)"],
    ["ClaimSlotRowTasks", [0], "task_lane_idx", STAGED("default"), limited],
    ["ClaimSlotRowTasksFrom", [...known, 0], "task_lane_idx", STAGED("default"), limited],
    ["ClaimLimitedRowTasksFrom", known, "task_lane_idx", STAGED("default"), limited],
    ["ClaimLimitedGroupTasks", ["", ""], "task_group_idx", grouped, "INSERT INTO pgbg.queue (name, concurrency, group_concurrency) VALUES ('default', 5000, 10)"],
  ];
  const modes = [["its first (custom) plans", "force_custom_plan"], ["its generic plan", "force_generic_plan"]] as const;
  for (const [plans, mode] of modes) {
    for (const [name, extra, index, fill, limit] of claims) test(`${name} of 1000 on ${plans} reads ${index}, not the table, beside 50,000 tasks never analyzed`, async () => {
      const seen = await claimBeside(fill, index, fill !== grouped, async (tx, filled) => {
        await tx`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        if (limit) await tx.unsafe(limit);
        const queues = name === "ClaimRowTasks" || name === "ClaimRowTasksFrom" || name === "ClaimGroupTasks" ? null : ["default"];
        const params = [WORKER, queues, ["grown"], [60_000], 1000, ...extra];
        for (let i = 0; i < 8; i++) await run(tx, "pgbg", name, params);
        await filled();
        return run(tx, "pgbg", name, params);
      });
      assert.deepEqual(seen, { claimed: 1000, tableScans: 0, indexRead: true });
    });
  }
});

/**
 * A page of listTasks starts where the previous one ended: a deep page reads
 * a page's worth of task_pkey, on the custom plans of its first runs as on
 * its generic plan (`$8 IS NULL OR id > $8` read every page from the start),
 * and on a table whose ids no longer follow its physical order: vacuumed
 * free space, reused by the new tasks (the filters' `$n IS NULL OR` made
 * the generic plan expect one row, and sort a sequential scan there).
 */
describe("listTasks' pages", () => {
  for (const mode of ["force_custom_plan", "force_generic_plan"]) {
    test(`a page deep in 50,000 tasks reads a page of task_pkey (${mode}), in a table with free space`, async (t) => {
      const sql = db.connect({ max: 1 });
      await sql`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'churned', '{}'::jsonb FROM generate_series(1, 100000)`;
      await sql`DELETE FROM pgbg.task WHERE name = 'churned' AND id % 3 <> 0`;
      await sql`VACUUM pgbg.task`;
      t.after(() => db.sql`DELETE FROM pgbg.task WHERE name = 'churned'`);
      const rollback = new Error("rollback");
      let outcome: { listed: number; tableScans: number; pkeyRead: number } | undefined;
      await sql.begin(async (tx) => {
        await tx`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        const params = (after: string | null) => [null, null, 100, null, null, null, null, after, null];
        for (let i = 0; i < 8; i++) await run(tx, "pgbg", "ListTasks", params(i % 2 ? "1" : null));
        await tx`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'grown', '{}'::jsonb FROM generate_series(1, 50000)`;
        await tx`ANALYZE pgbg.task`;
        const [{ after }] = await tx`SELECT (max(id) - 150)::text AS after FROM pgbg.task`;
        const read = async () => (await tx`SELECT pg_stat_get_xact_tuples_returned('pgbg.task_pkey'::regclass)::int AS n`)[0].n as number;
        const before = await scans(tx, "task_pkey");
        const read0 = await read();
        const listed = await run(tx, "pgbg", "ListTasks", params(after));
        const after1 = await scans(tx, "task_pkey");
        outcome = { listed: listed.length, tableScans: after1.table - before.table, pkeyRead: (await read()) - read0 };
        throw rollback;
      }).catch((error) => {
        if (error !== rollback) throw error;
      });
      assert.equal(outcome!.listed, 100);
      assert.equal(outcome!.tableScans, 0);
      assert.ok(outcome!.pkeyRead <= 101, `read ${outcome!.pkeyRead} entries of task_pkey`);
      await sql.end();
    });
  }
});

/**
 * The dashboard's failed list: 100,000 failed tasks enqueued after a
 * million queued ones. Paged in id order through task_failed_list_idx, the
 * first page reads what the last does (through the primary key, filtering
 * each row, the first read a million entries). Its own database, with
 * committed rows: the rolled-back inserts of the tests above leave dead
 * entries that a first page would step over.
 */
describe("listTasks' pages of failed tasks", () => {
  let filled: Promise<{ own: typeof failedList; last: string }> | undefined;
  const fill = () => filled ??= (async () => {
    const own = failedList;
    await migrate(own.sql);
    await own.sql`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'busy', '{}'::jsonb FROM generate_series(1, 1000000)`;
    await own.sql`INSERT INTO pgbg.task (queue, name, payload, state, failed_at, attempts)
      SELECT 'default', 'failing', '{}'::jsonb, 'failed', now(), 1 FROM generate_series(1, 100000)`;
    await own.sql`VACUUM ANALYZE pgbg.task`;
    const [{ last }] = await own.sql`SELECT (max(id) - 100)::text AS last FROM pgbg.task`;
    return { own, last };
  })();
  for (const mode of ["force_custom_plan", "force_generic_plan"]) {
    test(`the first and the last page of 100,000 failed tasks after a million queued read as many buffers (${mode})`, async () => {
      const { own, last } = await fill();
      const reads: { listed: number; buffers: number; entries: number }[] = [];
      await own.sql.begin(async (tx) => {
        await tx`SELECT set_config('plan_cache_mode', ${mode}, true)`;
        const counters = async () => (await tx`SELECT (pg_stat_get_xact_tuples_returned('pgbg.task_pkey'::regclass)
            + pg_stat_get_xact_tuples_returned('pgbg.task_failed_list_idx'::regclass))::int AS entries,
          (pg_stat_get_xact_blocks_fetched('pgbg.task_pkey'::regclass) + pg_stat_get_xact_blocks_fetched('pgbg.task_failed_list_idx'::regclass)
            + pg_stat_get_xact_blocks_fetched('pgbg.task'::regclass))::int AS buffers`)[0];
        for (const after of [null, last]) {
          const before = await counters();
          const page = await listTasks(tx, { state: "failed", after: after ?? undefined, limit: 100 });
          const now = await counters();
          reads.push({ listed: page.tasks.length, buffers: now.buffers - before.buffers, entries: now.entries - before.entries });
        }
      });
      const [first, lastPage] = reads;
      assert.deepEqual([first.listed, lastPage.listed], [100, 100]);
      assert.ok(first.entries <= 101 && lastPage.entries <= 101, `index entries read: ${first.entries}, ${lastPage.entries}`);
      assert.ok(first.buffers <= 20 && lastPage.buffers <= 20, `buffers read by the first page ${first.buffers}, by the last ${lastPage.buffers}`);
    });
  }
});

/** Sequential scans of the task table and scans of `index` in this transaction so far. */
// deno-lint-ignore no-explicit-any
async function scans(tx: any, index: string): Promise<{ table: number; index: number }> {
  const [row] = await tx`SELECT pg_stat_get_xact_numscans('pgbg.task'::regclass)::int AS "table",
    pg_stat_get_xact_numscans(${`pgbg.${index}`}::regclass)::int AS "index"`;
  return row;
}
