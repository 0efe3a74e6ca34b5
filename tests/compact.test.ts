/**
 * Index compaction: the task table's indexes keep their largest size after
 * a deep queue drained (vacuum empties B-tree pages but never shrinks the
 * files), so the supervisor rebuilds them with REINDEX CONCURRENTLY, one
 * supervisor at a time, as the table's owner only.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, describe, test } from "node:test";
import postgres from "postgres";
import { bloatLimits, compactIndexes, type CompactOptions, isBloated, readTaskIndexes } from "../lib/compact.ts";
import { enqueue, enqueueMany, migrate } from "../mod.ts";
import { alwaysFails, work } from "./fixtures/tasks.ts";
import { clientOptions, createTestDatabase, serverUrl } from "./harness.ts";
import { claimOrder, patience, serviceTestbed, stopService, until, within } from "./service-harness.ts";

const { db, sql, serve, remaining, executions, taskRow } = await serviceTestbed(createTestDatabase, migrate);
const KiB = 1024;
const MiB = 1024 * KiB;
/** The task table has eight indexes; with a few rows each fits in its metapage and one leaf page. */
const nearEmpty = 8 * 2 * 8 * KiB;

/**
 * Bytes of the task table's indexes, measured apart from the code under
 * test as it measures them: the main forks of the valid indexes.
 * pg_indexes_size also counts free-space maps, which a vacuum may add at
 * any moment (a CI run failed on 48 KiB of them), and invalid indexes.
 */
const indexesSize = async () =>
  Number((await sql`SELECT coalesce(sum(pg_relation_size(x.indexrelid)), 0)::float8 AS bytes FROM pg_index x
    WHERE x.indrelid = 'pgbg.task'::regclass AND x.indisvalid`)[0].bytes);

/**
 * `n` tasks pass through the table as they do under a drain: inserted,
 * claimed (a new row version in every index) and deleted.
 */
async function passThrough(n: number): Promise<void> {
  await sql`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'work', '{}' FROM generate_series(1, ${n}::int)`;
  await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, worker_id = gen_random_uuid(), lease_expires_at = now() + interval '1 hour'
    WHERE state = 'queued'`;
  await sql`DELETE FROM pgbg.task WHERE state = 'running'`;
}

/**
 * Stands in for autovacuum (off on some test servers): frees the dead rows,
 * truncates the heap and updates the live-row estimate, and leaves the
 * index files at their largest size.
 */
const vacuum = () => sql`VACUUM pgbg.task`;

/**
 * Waits until compaction with `options` (the service's: the defaults) would
 * judge the indexes bloated. It reads the
 * statistics' live-row count, and each backend sends its counts when it has
 * been idle a while: an insert's counts arriving after the VACUUM that the
 * delete's preceded leave the count high until the next vacuum. So each look
 * vacuums first, as autovacuum eventually does.
 */
const bloatVisible = (options?: CompactOptions) =>
  until(async () => {
    await vacuum();
    return isBloated(await readTaskIndexes(sql, "pgbg"), bloatLimits(options));
  }, (bloated) => bloated, patience, "the statistics to show the deleted rows gone");

/** The task table's rows as plain objects, in id order. */
const allTasks = async () => (await sql`SELECT * FROM pgbg.task ORDER BY id`).map((r) => ({ ...r }));

/** Names of the task table's indexes and whether each is valid. */
const taskIndexes = async () =>
  (await sql`SELECT c.relname AS name, x.indisvalid AS valid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
    WHERE x.indrelid = 'pgbg.task'::regclass ORDER BY 1`).map((r) => `${r.name}${r.valid ? "" : " (invalid)"}`);

/**
 * Opens a transaction that wrote to the task table and keeps it open until
 * `commit()`: a REINDEX CONCURRENTLY started meanwhile waits for it.
 */
async function openWriter(): Promise<{ commit: () => Promise<void> }> {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let locked!: () => void;
  const holding = new Promise<void>((resolve) => (locked = resolve));
  const done = sql.begin(async (tx) => {
    await tx`LOCK TABLE pgbg.task IN ROW EXCLUSIVE MODE`;
    locked();
    await released;
  });
  await holding;
  return { commit: () => (release(), done.then(() => {})) };
}

/** Waits until a REINDEX on this database waits for a lock. */
const reindexWaiting = () =>
  until(
    async () => (await sql`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND query LIKE 'REINDEX%' AND wait_event_type = 'Lock'`)[0].n,
    (n) => n === 1, patience, "a REINDEX to wait for the open transaction",
  );

describe("index compaction", () => {
  test("rebuilds bloated indexes to near-empty; queued tasks stay claimable in claim order, failed tasks stay", async () => {
    const failed = await enqueue(sql, alwaysFails, {});
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), attempts = 3, last_error = '{"message":"kept"}' WHERE id = ${failed}`;
    await passThrough(30_000);
    // Claim order differs from id order: priority, then run_at, then id.
    const order = await sql.begin(async (tx) => [
      await enqueue(tx, work, {}, { priority: 5 }),
      await enqueue(tx, work, {}, { priority: -1 }),
      await enqueue(tx, work, {}, { priority: 5, runAt: new Date(Date.now() - 60_000) }),
      await enqueue(tx, work, {}, { priority: 5, key: "k" }),
    ]);
    await vacuum();
    const names = await taskIndexes();
    const rows = await allTasks();
    const before = await indexesSize();
    assert.ok(before > 2 * MiB, `the indexes kept their size after the drain (${before} bytes)`);
    await bloatVisible({ minIndexBytes: 1 * MiB });

    const result = await compactIndexes(sql, { minIndexBytes: 1 * MiB });
    assert.equal(result.outcome, "compacted");
    assert.deepEqual([result.before.indexBytes, result.dropped], [before, []]);
    const afterSize = await indexesSize();
    assert.ok(afterSize <= nearEmpty, `the indexes are near-empty: ${afterSize} bytes (were ${before})`);
    assert.equal(result.after?.indexBytes, afterSize);
    assert.deepEqual(await taskIndexes(), names, "the same indexes, all valid");
    assert.deepEqual(await allTasks(), rows, "no task changed");

    const service = serve(["--workers", "1", "--concurrency", "1", "--compact-interval", "off"]);
    await until(() => remaining(order), (n) => n === 0, patience, "the queued tasks to run");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    assert.deepEqual((await executions(order)).map((r) => r.task_id), claimOrder(order));
    assert.deepEqual([(await taskRow(failed)).state, (await taskRow(failed)).last_error], ["failed", { message: "kept" }]);
  });

  test("indexes that are not bloated are left alone", async () => {
    await passThrough(30_000);
    await enqueueMany(sql, work, Array.from({ length: 10 }, () => ({})));
    await vacuum();
    const before = await indexesSize();
    // Under the default 8 MiB floor.
    const small = await compactIndexes(sql);
    assert.deepEqual([small.outcome, small.after], ["not-bloated", null]);
    // Over the floor but not over 4 × 100 bytes per live row.
    const dense = await compactIndexes(sql, { minIndexBytes: 0, bytesPerLiveRow: Math.ceil(before / 10) });
    assert.deepEqual([dense.outcome, dense.after], ["not-bloated", null]);
    assert.equal(await indexesSize(), before);
  });

  test("drops the invalid leftovers of an interrupted REINDEX CONCURRENTLY, and no other index", async () => {
    // Two tasks of one queue: a unique index on the queue fails to build and
    // stays behind invalid, as a rebuild's _ccnew/_ccold index does when interrupted.
    await enqueueMany(sql, work, [{}, {}]);
    for (const name of ["task_claim_idx_ccnew", "task_pkey_ccold1", "someone_elses_idx"]) {
      await assert.rejects(sql.unsafe(`CREATE UNIQUE INDEX CONCURRENTLY ${name} ON pgbg.task (queue)`), { code: "23505" });
    }
    assert.deepEqual((await readTaskIndexes(sql, "pgbg")).leftovers, ["task_claim_idx_ccnew", "task_pkey_ccold1"]);
    const result = await compactIndexes(sql);
    assert.deepEqual([result.outcome, result.dropped], ["not-bloated", ["task_claim_idx_ccnew", "task_pkey_ccold1"]]);
    assert.deepEqual(result.after?.leftovers, []);
    assert.deepEqual(await taskIndexes(), [
      "someone_elses_idx (invalid)", "task_cancel_idx", "task_failed_idx", "task_failed_list_idx", "task_flow_idx", "task_group_idx", "task_group_running_idx", "task_key_idx", "task_lane_idx", "task_lease_idx", "task_pkey", "task_unstaged_idx",
    ]);
    await sql`DROP INDEX pgbg.someone_elses_idx`;
  });

  test("bloated indexes are left alone while another session holds a snapshot, and rebuilt once it lets go", async () => {
    await passThrough(30_000);
    await bloatVisible({ minIndexBytes: 1 * MiB });
    const holder = await sql.reserve();
    try {
      await holder`BEGIN ISOLATION LEVEL REPEATABLE READ`;
      await holder`SELECT count(*) FROM pgbg.worker`;
      const held = await compactIndexes(sql, { minIndexBytes: 1 * MiB, heldSnapshotSeconds: 0 });
      assert.deepEqual([held.outcome, held.after], ["horizon-held", null]);
      assert.ok(held.before.snapshotAgeSeconds > 0);
      await holder`COMMIT`;
    } finally {
      holder.release();
    }
    assert.equal((await compactIndexes(sql, { minIndexBytes: 1 * MiB, heldSnapshotSeconds: 0 })).outcome, "compacted");
  });

  test("a second compaction while one holds the lock skips with locked", async () => {
    // The first rebuild waits for an open transaction, holding the lock.
    const writer = await openWriter();
    const first = compactIndexes(sql, { force: true });
    await reindexWaiting();
    const second = await compactIndexes(sql, { force: true });
    assert.equal(second.outcome, "locked");
    assert.deepEqual([second.after, second.dropped], [null, []]);
    await writer.commit();
    assert.equal((await first).outcome, "compacted");
    assert.equal((await compactIndexes(sql, { force: true })).outcome, "compacted", "the lock was released");
  });

  test("a role that does not own the table gets not-permitted, without a throw, and holds no lock after", async () => {
    const role = `${db.name}_service`;
    const password = randomBytes(12).toString("hex");
    await sql.unsafe(`CREATE ROLE "${role}" LOGIN PASSWORD '${password}'`);
    const url = new URL(db.url);
    url.username = role;
    url.password = password;
    const asService = postgres(url.toString(), { ...clientOptions, max: 2 });
    after(async () => {
      await asService.end({ timeout: 5 });
      await sql.unsafe(`DROP OWNED BY "${role}"`).catch(() => {});
      const admin = postgres(serverUrl(), { ...clientOptions, max: 1 });
      await admin.unsafe(`DROP ROLE IF EXISTS "${role}"`);
      await admin.end();
    });
    // The service role's grants from the README.
    await sql.unsafe(`GRANT CONNECT ON DATABASE "${db.name}" TO "${role}"`);
    await sql.unsafe(`GRANT USAGE ON SCHEMA pgbg TO "${role}"`);
    await sql.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON pgbg.task, pgbg.worker, pgbg.task_count TO "${role}"`);
    await sql.unsafe(`GRANT SELECT ON pgbg.migration TO "${role}"`);

    await passThrough(30_000);
    await vacuum();
    const before = await indexesSize();
    // force: the refusal must not depend on the bloat verdict, which the
    // statistics' live-row count can delay (see bloatVisible).
    const refused = await compactIndexes(asService, { force: true });
    assert.equal(refused.outcome, "not-permitted");
    // PostgreSQL 17 (with its MAINTAIN privilege) words the refusal as a missing privilege.
    // Or, first, a missing privilege on the lease that keeps compactions one at a time.
    assert.match(refused.message ?? "", /must be owner of table task|permission denied for table (task|compaction)/);
    assert.ok(refused.before.indexBytes > 1 * MiB && refused.before.indexBytes === before, `the role could read the sizes: ${refused.before.indexBytes} of ${before}`);
    // A leftover the owner's interrupted rebuild left: the role may not drop it either.
    await enqueueMany(sql, work, [{}, {}]);
    await assert.rejects(sql.unsafe(`CREATE UNIQUE INDEX CONCURRENTLY task_claim_idx_ccnew ON pgbg.task (queue)`), { code: "23505" });
    assert.equal((await compactIndexes(asService)).outcome, "not-permitted");
    const owner = await compactIndexes(sql, { force: true });
    assert.deepEqual([owner.outcome, owner.dropped], ["compacted", ["task_claim_idx_ccnew"]], "the lock was released");
  });

  test("pgbg serve compacts bloated indexes by itself and logs it once", async () => {
    // Over the service's default floor of 8 MiB.
    await passThrough(150_000);
    await vacuum();
    const before = await indexesSize();
    assert.ok(before > 8 * MiB, `the indexes kept their size after the drain (${before} bytes)`);
    await bloatVisible();
    const service = serve(["--workers", "1", "--compact-interval", "1s"]);
    const line = await service.waitForLog((l) => l.message.startsWith("compacted the task table's indexes"), patience);
    assert.equal(line.level, "info");
    assert.equal(line.component, "supervisor");
    // Not equal to `before` to the byte: autovacuum, on in some test servers, may run in between.
    assert.ok(Number(line.indexBytesBefore) > 8 * MiB, `logged the size before: ${line.indexBytesBefore}`);
    assert.ok(Number(line.indexBytesAfter) <= nearEmpty, `logged the size after: ${line.indexBytesAfter}`);
    assert.equal(typeof line.durationMs, "number");
    assert.ok(await indexesSize() <= nearEmpty);
    // The service still runs tasks, and does not compact indexes that are not bloated.
    const id = await enqueue(sql, work, {});
    await until(() => remaining([id]), (n) => n === 0, patience, "a task to run after the compaction");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    assert.equal(service.logs.filter((l) => /compact/.test(l.message)).length, 1, service.logs.map((l) => l.message).join("\n"));
  });

  test("pgbg serve stops without waiting for a compaction in flight", async () => {
    await passThrough(150_000);
    await vacuum();
    await bloatVisible();
    const writer = await openWriter();
    const service = serve(["--workers", "1", "--compact-interval", "1s"]);
    await reindexWaiting();
    // The rebuild waits for the writer, which stays open until the service has stopped.
    assert.deepEqual(await within(stopService(service), patience, "the service to stop"), { code: 0, signal: null });
    assert.deepEqual(service.logs.filter((l) => l.level !== "debug" && /compact/.test(l.message)), [], "nothing reported about it");
    await writer.commit();
    // The server finishes the rebuild (or abandons it, leaving a leftover);
    // either way the next compaction ends clean. The stopped service left
    // its lease to expire (a minute): the test moves its end forward, once
    // no REINDEX runs any more, instead of waiting that long.
    await until(async () => (await sql`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND query LIKE 'REINDEX%' AND state <> 'idle'`)[0].n, (n) => n === 0, patience, "the abandoned REINDEX to end");
    await sql`UPDATE pgbg.compaction SET until = now() - interval '1 second'`;
    assert.equal((await compactIndexes(sql, { force: true })).outcome, "compacted");
    assert.deepEqual(await taskIndexes(), ["task_cancel_idx", "task_failed_idx", "task_failed_list_idx", "task_flow_idx", "task_group_idx", "task_group_running_idx", "task_key_idx", "task_lane_idx", "task_lease_idx", "task_pkey", "task_unstaged_idx"]);
    assert.ok(await indexesSize() <= nearEmpty);
  });
});
