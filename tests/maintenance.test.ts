/**
 * The maintenance duties, each tested as River tests its rescuer: rows are
 * written straight into the tables in the state a crash leaves behind, with
 * old timestamps, and the duty's `runOnce()` is called. No process dies
 * here; tests/service-faults.test.ts and the chaos suite kill real ones.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import postgres from "postgres";
import type { Logger } from "../lib/log.ts";
import { Maintenance, type MaintenanceService } from "../lib/maintenance.ts";
import { CancelSweeper } from "../lib/maintenance/cancel-sweeper.ts";
import { CountPruner } from "../lib/maintenance/count-pruner.ts";
import { DeadWorkerReleaser } from "../lib/maintenance/dead-worker-releaser.ts";
import { FailedPruner } from "../lib/maintenance/failed-pruner.ts";
import { HistoryRotator, rotateHistory } from "../lib/maintenance/history-rotator.ts";
import { IndexCompactor } from "../lib/maintenance/index-compactor.ts";
import { LeaseRescuer } from "../lib/maintenance/lease-rescuer.ts";
import { readVacuumState, TableVacuumer, VACUUM_MIN_DEAD_ROWS, vacuumDue, type VacuumState } from "../lib/maintenance/table-vacuumer.ts";
import { WorkerReaper } from "../lib/maintenance/worker-reaper.ts";
import { migrate } from "../mod.ts";
import { clientOptions, createTestDatabase, databaseUrl } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

/** A logger that keeps its lines, for the duties' reports. */
function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (message: string) => void lines.push(message);
  return { lines, debug: keep, info: keep, warn: keep, error: keep };
}

/** A worker's row: `heartbeatAgoMs` since its last heartbeat, with its own stale time. */
async function workerRow(host: string, heartbeatAgoMs = 0, staleAfterMs = 20_000): Promise<string> {
  const id = randomUUID();
  await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, stale_after_ms, heartbeat_at)
    VALUES (${id}, ${host}, 1, 1, 'test', 'node', '{t}', ${staleAfterMs}, now() - ${heartbeatAgoMs} * interval '1 ms')`;
  return id;
}

/** A task as its worker's crash left it: running, leased to `workerId` until `leaseEndsInMs` from now (negative: expired). */
async function runningTask(workerId: string, leaseEndsInMs: number, attempts = 1, maxAttempts: number | null = null): Promise<string> {
  const [{ id }] = await sql`INSERT INTO pgbg.task (state, worker_id, lease_expires_at, attempts, max_attempts, lease_token, queue, name, payload)
    VALUES ('running', ${workerId}, now() + ${leaseEndsInMs} * interval '1 ms', ${attempts}, ${maxAttempts}, ${attempts}, 'default', 't', '{}')
    RETURNING id::text`;
  return id as string;
}

const taskRow = async (id: string) =>
  (await sql`SELECT state::text, attempts, worker_id, last_error->>'name' AS error FROM pgbg.task WHERE id = ${id}`)[0];

/** Runs `fn` with a client of a new role that may read pgbg's tables but owns none, then drops the role. */
// deno-lint-ignore no-explicit-any
async function asOtherRole(fn: (asRole: postgres.Sql<any>) => Promise<void>): Promise<void> {
  const role = `pgbg_maint_${randomUUID().slice(0, 8)}`;
  // A password: the embedded server checks them.
  const password = randomUUID().replaceAll("-", "");
  await sql.unsafe(`CREATE ROLE "${role}" LOGIN PASSWORD '${password}'`);
  await sql.unsafe(`GRANT USAGE ON SCHEMA pgbg TO "${role}"; GRANT SELECT ON ALL TABLES IN SCHEMA pgbg TO "${role}"`);
  const url = new URL(db.url);
  url.username = role;
  url.password = password;
  const asRole = postgres(url.toString(), { max: 2, onnotice: () => {} });
  try {
    await fn(asRole);
  } finally {
    await asRole.end();
    await sql.unsafe(`DROP OWNED BY "${role}"; DROP ROLE "${role}"`);
  }
}

async function clean(): Promise<void> {
  await sql`DELETE FROM pgbg.task`;
  await sql`DELETE FROM pgbg.worker`;
  await sql`DELETE FROM pgbg.task_count`;
}

describe("the lease rescuer", () => {
  test("queues tasks whose lease expired, counted, fails those out of attempts, and leaves live leases alone", async () => {
    await clean();
    const dead = randomUUID();
    const expired = await runningTask(dead, -1_000, 1);
    const lastAttempt = await runningTask(dead, -1_000, 3, 3);
    const live = await runningTask(dead, 60_000, 1);
    const rescued = await new LeaseRescuer(sql, "pgbg", 25, 1_000, recorder()).rescue();
    assert.deepEqual(rescued.map((t) => [t.id, t.state]).sort(), [[expired, "queued"], [lastAttempt, "failed"]].sort());
    assert.deepEqual(await taskRow(expired), { state: "queued", attempts: 1, worker_id: null, error: "LeaseExpired" });
    assert.deepEqual(await taskRow(lastAttempt), { state: "failed", attempts: 3, worker_id: null, error: "LeaseExpired" });
    assert.equal((await taskRow(live)).state, "running");
    assert.deepEqual(await new LeaseRescuer(sql, "pgbg", 25, 1_000, recorder()).rescue(), [], "a second run finds nothing");
  });
});

describe("the worker reaper", () => {
  test("reaps other hosts' workers past their own stale time, once it has reached the database that long, never its own", async () => {
    await clean();
    const me = randomUUID();
    const other = randomUUID();
    const stale = await workerRow(other, 5_000, 100);
    const fresh = await workerRow(other, 0, 600_000);
    const own = await workerRow(me, 5_000, 100);
    const staleTask = await runningTask(stale, 60_000);
    const ownTask = await runningTask(own, 60_000);
    const reaper = new WorkerReaper(sql, "pgbg", { hostId: me, maxAttempts: 25, staleAfter: 20_000, interval: 1_000 }, recorder());
    assert.deepEqual(await reaper.reap(), [], "just started: it has not reached the database for 100 ms yet");
    // The reach is measured on the clock; this waits until it covers the stale time.
    await new Promise((r) => setTimeout(r, 150));
    assert.deepEqual((await reaper.reap()).map((t) => t.id), [staleTask]);
    assert.deepEqual(await taskRow(staleTask), { state: "queued", attempts: 1, worker_id: null, error: "WorkerLost" });
    assert.equal((await taskRow(ownTask)).state, "running", "its own worker's task");
    const left = (await sql`SELECT id FROM pgbg.worker ORDER BY id`).map((r) => r.id);
    assert.deepEqual(left, [fresh, own].sort());
  });

  test("after a failed run it judges nobody until it has reached the database for a stale time again", async () => {
    await clean();
    const stale = await workerRow(randomUUID(), 5_000, 100);
    const task = await runningTask(stale, 60_000);
    const broken = postgres(db.url, { max: 1, onnotice: () => {} });
    const reaper = new WorkerReaper(broken, "pgbg", { hostId: randomUUID(), maxAttempts: 25, staleAfter: 20_000, interval: 1_000 }, recorder());
    await new Promise((r) => setTimeout(r, 150));
    await broken.end();
    await assert.rejects(reaper.reap(), "the closed client fails the run");
    Object.assign(reaper, { db: sql }); // the same reaper, its database back
    assert.deepEqual(await reaper.reap(), [], "its reach starts again at the first run that got through");
    assert.equal((await taskRow(task)).state, "running");
    await new Promise((r) => setTimeout(r, 150));
    assert.deepEqual((await reaper.reap()).map((t) => t.id), [task]);
  });
});

describe("the dead-worker releaser", () => {
  test("releases a dead worker's tasks counted, hands back uncounted those of a worker that lost the database, and removes both rows", async () => {
    await clean();
    const host = randomUUID();
    const crashed = await workerRow(host);
    const cutOff = await workerRow(host);
    const crashedTask = await runningTask(crashed, 60_000, 2);
    const cutOffTask = await runningTask(cutOff, 60_000, 2);
    const releaser = new DeadWorkerReleaser(sql, "pgbg", 25, 1_000, recorder());
    releaser.add(crashed, true);
    releaser.add(cutOff, false);
    releaser.add(cutOff, true); // a later mark does not change the first
    await releaser.runOnce();
    assert.deepEqual(await taskRow(crashedTask), { state: "queued", attempts: 2, worker_id: null, error: "WorkerDied" });
    assert.deepEqual(await taskRow(cutOffTask), { state: "queued", attempts: 1, worker_id: null, error: null });
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 0);
    assert.equal(releaser.pending, 0);
  });

  test("keeps the dead workers for its next run when the database cannot be reached", async () => {
    await clean();
    const dead = await workerRow(randomUUID());
    const task = await runningTask(dead, 60_000);
    const broken = postgres(db.url, { max: 1, onnotice: () => {} });
    await broken.end();
    const releaser = new DeadWorkerReleaser(broken, "pgbg", 25, 1_000, recorder());
    releaser.add(dead, true);
    await assert.rejects(releaser.runOnce());
    assert.equal(releaser.pending, 1);
    Object.assign(releaser, { db: sql });
    await releaser.runOnce();
    assert.equal((await taskRow(task)).state, "queued");
    assert.equal(releaser.pending, 0);
  });
});

describe("the cancel sweeper", () => {
  test("deletes cancelled tasks that left running before their worker could, and leaves running ones to their worker", async () => {
    await clean();
    const [{ id: left }] = await sql`INSERT INTO pgbg.task (queue, name, payload, cancel_requested_at) VALUES ('default', 't', '{}', now()) RETURNING id::text`;
    const running = await runningTask(randomUUID(), 60_000);
    await sql`UPDATE pgbg.task SET cancel_requested_at = now() WHERE id = ${running}`;
    const log = recorder();
    await new CancelSweeper(sql, "pgbg", 1_000, log).runOnce();
    assert.equal(await taskRow(left), undefined);
    assert.equal((await taskRow(running)).state, "running");
    assert.deepEqual(log.lines, ["deleted 1 cancelled task(s) whose attempt had ended"]);
  });
});

describe("the count pruner", () => {
  test("drops outcome counts and depth samples older than 24 hours and keeps the rest", async () => {
    await clean();
    await sql`DELETE FROM pgbg.task_depth`;
    await sql`INSERT INTO pgbg.task_count (period, queue, name, completed) VALUES
      (now() - interval '24 hours 1 minute', 'default', 't', 1), (now() - interval '23 hours 59 minutes', 'default', 't', 2)`;
    await sql`INSERT INTO pgbg.task_depth (minute, queue, name, queued, scheduled, running) VALUES
      (now() - interval '24 hours 1 minute', '', '', 1, 0, 0), (now() - interval '23 hours 59 minutes', '', '', 2, 0, 0)`;
    await new CountPruner(sql, "pgbg", 60_000).runOnce();
    assert.deepEqual((await sql`SELECT completed::int FROM pgbg.task_count`).map((r) => r.completed), [2]);
    assert.deepEqual((await sql`SELECT queued FROM pgbg.task_depth`).map((r) => r.queued), [2]);
  });
});

describe("the history's rotation", () => {
  /** Rows in slot `slot` that expire `expiresInMs` from now (negative: expired). */
  const kept = async (slot: number, n: number, expiresInMs: number) => {
    await sql`INSERT INTO pgbg.history (id, slot, state, queue, name, attempts, enqueued_at, finished_at, expires_at, payload)
      SELECT nextval('history_test_ids'), ${slot}, 'completed', 'default', 't', 1, now(), now(), now() + ${expiresInMs} * interval '1 ms', '{}'
      FROM generate_series(1, ${n})`;
  };
  const counts = async () =>
    Object.fromEntries((await sql`SELECT slot, count(*)::int AS n FROM pgbg.history GROUP BY slot`).map((r) => [r.slot, r.n]));
  const current = async () => (await sql`SELECT slot FROM pgbg.history_rotation`)[0].slot as number;

  test("empties a slot by TRUNCATE only once every row in it expired, never the current one, and moves on only to an empty slot", async () => {
    await sql`CREATE SEQUENCE IF NOT EXISTS history_test_ids`;
    await sql`TRUNCATE pgbg.history`;
    await sql`UPDATE pgbg.history_rotation SET slot = 0, since = now()`;
    await kept(0, 3, -1_000);
    await kept(1, 2, -1_000);
    await kept(2, 2, -1_000);
    await kept(2, 1, 60_000);
    assert.deepEqual(await rotateHistory(sql, "pgbg", 60_000), { emptied: [1] }, "slot 2 holds a live row; slot 0 is current; too young to rotate");
    assert.deepEqual(await counts(), { 0: 3, 2: 3 });
    assert.deepEqual(await rotateHistory(sql, "pgbg", 0), { emptied: [], rotatedTo: 1 }, "slot 1 is empty now: the rotation moves there");
    assert.deepEqual(await rotateHistory(sql, "pgbg", 0), { emptied: [0], rotatedTo: 3 }, "slot 2, next, holds a live row: skipped");
    assert.equal(await current(), 3);
    assert.deepEqual(await counts(), { 2: 3 });
    for (const slot of [4, 5, 6, 7, 0, 1]) await kept(slot, 1, 60_000);
    assert.deepEqual(await rotateHistory(sql, "pgbg", 0), { emptied: [] }, "no slot empty: it stays");
    assert.equal(await current(), 3);
    await sql`TRUNCATE pgbg.history`;
    const [{ dead }] = await sql`SELECT n_dead_tup::int AS dead FROM pg_stat_user_tables WHERE relname = 'history_0'`;
    assert.equal(dead, 0, "emptied without dead rows");
  });

  test("skips a slot another session is reading, and empties it at the next turn", async () => {
    await sql`TRUNCATE pgbg.history`;
    await sql`UPDATE pgbg.history_rotation SET slot = 0, since = now()`;
    await kept(3, 1, -1_000);
    const reader = await sql.reserve();
    try {
      await reader`BEGIN`;
      await reader`SELECT count(*) FROM pgbg.history_3`;
      assert.deepEqual(await rotateHistory(sql, "pgbg", 60_000), { emptied: [] });
      await reader`COMMIT`;
    } finally {
      reader.release();
    }
    assert.deepEqual(await rotateHistory(sql, "pgbg", 60_000), { emptied: [3] });
  });

  test("forgets waiters older than a day, and key holds that ended", async () => {
    await sql`INSERT INTO pgbg.result_waiter (task_id, channel, since) VALUES (1, 'c', now() - interval '25 hours'), (2, 'c', now())`;
    await sql`INSERT INTO pgbg.task_key (key, held_until) VALUES ('ended', now() - interval '1 second'), ('held', now() + interval '1 hour'), ('pending', NULL)`;
    await rotateHistory(sql, "pgbg", 60_000);
    assert.deepEqual((await sql`SELECT task_id::int FROM pgbg.result_waiter`).map((r) => r.task_id), [2]);
    assert.deepEqual((await sql`SELECT key FROM pgbg.task_key ORDER BY key`).map((r) => r.key), ["held", "pending"]);
    await sql`DELETE FROM pgbg.result_waiter`;
    await sql`DELETE FROM pgbg.task_key`;
  });

  test("stops for good, saying why once, when the role may not rotate", async () => {
    await asOtherRole(async (asRole) => {
      const log = recorder();
      const rotator = new HistoryRotator(asRole, "pgbg", 60_000, log);
      await rotator.runOnce();
      assert.equal(rotator.interval, 0, "not again");
      assert.match(log.lines.join("\n"), /cannot rotate pgbg\.history: .* Not trying again\./);
    });
  });
});

describe("the failed-task pruner", () => {
  test("deletes failed tasks past their own retention, else past the host's, and keeps the rest", async () => {
    await clean();
    const failed = async (agoMs: number, keepMs: number | null) =>
      (await sql`INSERT INTO pgbg.task (queue, name, payload, state, failed_at, keep_failed)
        VALUES ('default', 't', '{}', 'failed', now() - ${agoMs} * interval '1 ms', ${keepMs} * interval '1 ms') RETURNING id::text`)[0].id as string;
    const ownExpired = await failed(10_000, 5_000);
    const ownKept = await failed(10_000, 60_000);
    const defaultExpired = await failed(120_000, null);
    const defaultKept = await failed(10_000, null);
    const queued = (await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 't', '{}') RETURNING id::text`)[0].id as string;
    const ids = async () => (await sql`SELECT id::text FROM pgbg.task ORDER BY id`).map((r) => r.id);
    await new FailedPruner(sql, "pgbg", Number.POSITIVE_INFINITY, 60_000, recorder()).runOnce();
    assert.deepEqual(await ids(), [ownKept, defaultExpired, defaultKept, queued], "the host's default keeps them for ever");
    const log = recorder();
    await new FailedPruner(sql, "pgbg", 60_000, 60_000, log).runOnce();
    assert.deepEqual(await ids(), [ownKept, defaultKept, queued]);
    assert.deepEqual(log.lines, ["deleted 1 failed task(s) past their retention"]);
    void ownExpired;
  });
});

describe("the index compactor", () => {
  test("rebuilds the indexes when they are over its thresholds, and says so", async () => {
    await clean();
    const log = recorder();
    await new IndexCompactor(sql, "pgbg", 60_000, log, { minIndexBytes: 0, bytesPerLiveRow: 0 }).runOnce();
    assert.match(log.lines.join("\n"), /^compacted the task table's indexes: /m);
  });

  test("stops for good, saying why once, when the role does not own the table", async () => {
    await asOtherRole(async (asRole) => {
      const log = recorder();
      const compactor = new IndexCompactor(asRole, "pgbg", 60_000, log, { minIndexBytes: 0, bytesPerLiveRow: 0 });
      await compactor.runOnce();
      assert.equal(compactor.interval, 0, "not again");
      assert.match(log.lines.join("\n"), /cannot compact the task table's indexes .* Not trying again\./);
    });
  });
});

describe("the table vacuumer", () => {
  const state = (deadRows: number, horizon: string | null): VacuumState => ({ deadRows, liveRows: 0, owned: true, horizon });
  test("vacuums once the dead rows reach its threshold, again only when the horizon moved or a minute passed", () => {
    const cases: [VacuumState, { at: number; horizon: string | null } | null, number, boolean][] = [
      [state(VACUUM_MIN_DEAD_ROWS - 1, "1"), null, 0, false],
      [state(VACUUM_MIN_DEAD_ROWS, "1"), null, 0, true],
      [state(VACUUM_MIN_DEAD_ROWS, "1"), { at: 0, horizon: "1" }, 59_999, false],
      [state(VACUUM_MIN_DEAD_ROWS, "1"), { at: 0, horizon: "1" }, 60_000, true],
      [state(VACUUM_MIN_DEAD_ROWS, "2"), { at: 0, horizon: "1" }, 1, true],
      [state(VACUUM_MIN_DEAD_ROWS, null), { at: 0, horizon: null }, 1, true],
    ];
    for (const [s, last, now, due] of cases) assert.equal(vacuumDue(s, last, now), due, JSON.stringify({ s, last, now }));
  });

  test("removes the dead rows as soon as they are removable, and not again while a snapshot holds them", async () => {
    await clean();
    const vacuumer = new TableVacuumer(sql, "pgbg", 5_000, recorder());
    // A transaction of another database, begun first and open throughout:
    // every snapshot taken here carries its id as xmin, the holder's and
    // the vacuumer's own alike, though vacuum here ignores it (CI, once).
    const elsewhere = postgres(databaseUrl("postgres"), { ...clientOptions, max: 1 });
    const other = await elsewhere.reserve();
    await other`BEGIN`;
    await other`SELECT pg_current_xact_id()`;
    const holder = await sql.reserve();
    try {
      await holder`BEGIN ISOLATION LEVEL REPEATABLE READ`;
      await holder`SELECT count(*) FROM pgbg.worker`;
      await deadRows(2 * VACUUM_MIN_DEAD_ROWS);
      assert.equal(await vacuumer.vacuumIfDue(), true, "the first vacuum");
      assert.equal(await vacuumer.vacuumIfDue(), false, "nothing new is removable while the snapshot is held");
      await holder`COMMIT`;
      assert.equal(await vacuumer.vacuumIfDue(), true, "the horizon moved");
      const after = await until(() => readVacuumState(sql, "pgbg"), (s) => s.deadRows < VACUUM_MIN_DEAD_ROWS, patience, "the dead rows gone");
      assert.ok(after.deadRows < VACUUM_MIN_DEAD_ROWS);
    } finally {
      holder.release();
      await other`ROLLBACK`;
      other.release();
      await elsewhere.end();
    }
  });

  test("while a transaction holds the horizon, other sessions' snapshots that share its xmin do not make it seem to move: no vacuum again", async () => {
    await clean();
    const vacuumer = new TableVacuumer(sql, "pgbg", 5_000, recorder());
    // The readers' sessions first, as the workers' are there before a
    // hold: among sessions whose xmin ties, an earlier backend was the one
    // named.
    const readers = await Promise.all([1, 2, 3, 4].map(() => sql.reserve()));
    for (const reader of readers) await reader`SELECT 1`;
    // The pressure bench's hold: a transaction with an id of its own, idle.
    const holder = await sql.reserve();
    try {
      await holder`BEGIN`;
      await holder`SELECT pg_current_xact_id()`;
      await deadRows(2 * VACUUM_MIN_DEAD_ROWS);
      assert.equal(await vacuumer.vacuumIfDue(), true, "the first vacuum");
      const held = (await readVacuumState(sql, "pgbg")).horizon;
      // Each reader's snapshot has the holder's id as its xmin, as every
      // statement's has while the holder runs (the workers' own too).
      for (const [i, reader] of readers.entries()) {
        await reader`BEGIN ISOLATION LEVEL REPEATABLE READ`;
        await reader`SELECT count(*) FROM pgbg.worker`;
        assert.equal((await readVacuumState(sql, "pgbg")).horizon, held, `the holder is named with reader ${i + 1} open`);
        assert.equal(await vacuumer.vacuumIfDue(), false, `nothing new is removable with reader ${i + 1} open`);
        if (i % 2 === 1) await reader`COMMIT`;
      }
    } finally {
      for (const reader of readers) {
        await reader`ROLLBACK`.catch(() => {});
        reader.release();
      }
      await holder`ROLLBACK`.catch(() => {});
      holder.release();
    }
  });

  test("stops for good, saying why once, when the role does not own the table", async () => {
    await asOtherRole(async (asRole) => {
      const log = recorder();
      const vacuumer = new TableVacuumer(asRole, "pgbg", 5_000, log);
      assert.equal(await vacuumer.vacuumIfDue(), false);
      assert.equal(vacuumer.interval, 0, "not again");
      assert.match(log.lines.join("\n"), /cannot vacuum pgbg\.task: only its owner may\..* Not trying again\./);
    });
  });
});

/** Leaves `n` dead rows in the task table, and waits until the statistics count them. */
async function deadRows(n: number): Promise<void> {
  await sql`INSERT INTO pgbg.task (queue, name, payload) SELECT 'default', 'dead', '{}' FROM generate_series(1, ${n})`;
  await sql`DELETE FROM pgbg.task WHERE name = 'dead'`;
  await until(() => readVacuumState(sql, "pgbg"), (s) => s.deadRows >= n, patience, "the statistics to count the dead rows");
}

describe("the maintenance runner", () => {
  test("runs each service on its own timer: one that fails or hangs holds back no other", async () => {
    let quick = 0;
    let resolve = () => {};
    const ranTwice = new Promise<void>((r) => (resolve = r));
    const services: MaintenanceService[] = [
      { name: "failing", interval: 5, runOnce: () => Promise.reject(new Error("down")) },
      { name: "hanging", interval: 5, runOnce: () => new Promise(() => {}) },
      { name: "quick", interval: 5, firstAfter: 0, runOnce: async () => void (++quick === 2 && resolve()) },
    ];
    const log = recorder();
    const maintenance = new Maintenance(services, log);
    maintenance.start();
    await ranTwice;
    assert.equal(await maintenance.stop(50), false, "the hanging run is still in flight");
    assert.ok(log.lines.includes("failing failed; will retry"));
  });
});
