import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, test } from "node:test";
import * as v from "valibot";
import { claimTasks, type ClaimScope } from "../lib/claim.ts";
import { GroupRotation } from "../lib/groups.ts";
import { leaseFor, liveness } from "../lib/liveness.ts";
import { silentLogger } from "../lib/log.ts";
import { handBackWorkerTasks, releaseWorkerTasks } from "../lib/maintenance/dead-worker-releaser.ts";
import { reapStaleWorkers } from "../lib/maintenance/worker-reaper.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { retryDelayFor } from "../lib/worker.ts";
import { defineTask, enqueue, LeaseLostError, migrate } from "../mod.ts";
import type { QueryName } from "../lib/generated/sql.ts";
import { run } from "../lib/statements.ts";
import { createTestDatabase } from "./harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
// In a group, so that its claim is row by row and gives it a lease token:
// the lease that every outcome but a success from a claim row is written
// under (tests/claim-rows.test.ts fences claim rows).
const task = defineTask({ name: "fenced", schema: v.any(), group: () => "fenced", run() {} });
const scope = (workerId: string): ClaimScope => ({
  workerId, queues: null, names: ["fenced"], leaseMs: [leaseFor(1000, liveness(1000))], groups: new GroupRotation(),
});
const row = async (id: string) => (await sql`SELECT state, attempts, lease_token, worker_id FROM pgbg.task WHERE id = ${id}`)[0];

describe("leases", () => {
  test("a worker whose lease was lost can neither complete nor fail the task", async () => {
    const id = await enqueue(sql, task, 1);
    const first = randomUUID();
    const [stale] = await claimTasks(sql, "pgbg", scope(first), 10);
    assert.equal(stale.id, id);
    // The first worker is taken for dead; another worker claims the task.
    await releaseWorkerTasks(sql, "pgbg", [first], 25, { message: "gone" });
    const second = randomUUID();
    const [fresh] = await claimTasks(sql, "pgbg", scope(second), 10);
    assert.equal(fresh.id, id);
    assert.notEqual(fresh.leaseToken, stale.leaseToken);

    const writer = new OutcomeWriter(sql, "pgbg", 25, silentLogger);
    writer.complete({ id, leaseToken: stale.leaseToken });
    writer.fail({ id, leaseToken: stale.leaseToken, delay: 0, error: { message: "late" }, permanent: true });
    await writer.flush();
    assert.deepEqual(await row(id), { state: "running", attempts: 2, lease_token: fresh.leaseToken, worker_id: second });

    const lost = await sql.begin((tx) => run(tx, "pgbg", "CompleteTaskInTransaction", [id, stale.leaseToken]));
    assert.equal(lost.length, 0, "ctx.complete's fenced delete matched nothing");
    assert.equal((await row(id)).state, "running");

    writer.complete({ id, leaseToken: fresh.leaseToken });
    await writer.flush();
    assert.equal(await row(id), undefined, "the current lease holder completes it");
  });

  test("a batch that holds one task twice, under a stale and the current token, in either order, writes the current attempt's outcome", async () => {
    for (const order of ["stale first", "current first"]) {
      const id = await enqueue(sql, task, 1);
      const first = randomUUID();
      const [stale] = await claimTasks(sql, "pgbg", scope(first), 10);
      await releaseWorkerTasks(sql, "pgbg", [first], 25, { message: "gone" });
      const [fresh] = await claimTasks(sql, "pgbg", scope(randomUUID()), 10);
      const tokens = order === "stale first" ? [stale.leaseToken, fresh.leaseToken] : [fresh.leaseToken, stale.leaseToken];
      // A snooze: the write-back with no second chance in the writer (it is not rechecked).
      const written = await run(sql, "pgbg", "SnoozeTasks", [[id, id], tokens, [60_000, 60_000]]);
      assert.deepEqual(written.map((r) => String(r.id)), [id], order);
      assert.deepEqual(await row(id), { state: "queued", attempts: 1, lease_token: fresh.leaseToken, worker_id: null }, order);
      await sql`DELETE FROM pgbg.task WHERE id = ${id}`;
    }
  });

  // The write-backs find each task by primary key, then write it by row
  // address. A write-back that read the row just before another worker took
  // the task over waits on that worker's lock, then meets the new version of
  // the row: its stale token must still fence it out, on every PostgreSQL
  // version (whether a TID scan rechecks the row address then differs by
  // minor release).
  const writeBacks: [QueryName, (id: string, token: number) => unknown[]][] = [
    ["CompleteTasks", (id, token) => [[id], [token]]],
    ["FailTasks", (id, token) => [[id], [token], [0], [JSON.stringify({ message: "late" })], [1], 25]],
    ["HandBackTasks", (id, token) => [[id], [token]]],
  ];
  for (const [name, params] of writeBacks) {
    test(`${name} that waited while the task changed hands changes nothing`, async () => {
      const id = await enqueue(sql, task, name);
      const first = randomUUID();
      const [stale] = await claimTasks(sql, "pgbg", scope(first), 10);
      assert.equal(stale.id, id);
      const waiter = db.connect({ max: 1 });
      const [{ pid }] = await waiter`SELECT pg_backend_pid() AS pid`;
      const second = randomUUID();
      let fresh: Awaited<ReturnType<typeof claimTasks>>[number] | undefined;
      let pending: Promise<unknown[]> | undefined;
      let settled = false;
      let waited = false;
      await sql.begin(async (tx) => {
        // The first worker is taken for dead and a second claims the task,
        // not yet committed; the stale write-back starts meanwhile.
        await releaseWorkerTasks(tx, "pgbg", [first], 25, { message: "gone" });
        [fresh] = await claimTasks(tx, "pgbg", scope(second), 10);
        pending = run(waiter, "pgbg", name, params(id, stale.leaseToken)).finally(() => (settled = true));
        while (!settled && !waited) {
          const [{ n }] = await sql`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${pid} AND wait_event_type = 'Lock'`;
          waited = n > 0;
          if (!waited) await new Promise((resolve) => setTimeout(resolve, 10));
        }
      });
      const written = await pending!;
      await waiter.end();
      assert.ok(waited, `${name} waited for the lock of the worker that took the task over`);
      assert.equal(fresh?.id, id);
      assert.equal(written.length, 0, `${name} with the stale token wrote nothing`);
      assert.deepEqual(await row(id), { state: "running", attempts: 2, lease_token: fresh?.leaseToken, worker_id: second });
    });
  }

  test("LeaseLostError carries a stable code", () => {
    assert.equal(new LeaseLostError("7").code, "PGBG_LEASE_LOST");
  });

  test("no two claimers get the same task", async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 200; i++) ids.add(await enqueue(sql, task, i));
    const clients = Array.from({ length: 8 }, () => db.connect({ max: 1 }));
    const claimed: string[] = [];
    await Promise.all(clients.map(async (client) => {
      for (;;) {
        const batch = await claimTasks(client, "pgbg", scope(randomUUID()), 7);
        if (!batch.length) return;
        claimed.push(...batch.map((t) => t.id));
      }
    }));
    const mine = claimed.filter((id) => ids.has(id));
    assert.equal(mine.length, 200);
    assert.equal(new Set(mine).size, 200);
  });
});

describe("retry delay", () => {
  const base = { name: "r", schema: v.any(), run() {} };
  test("fixed: the task's delay, else the service's", () => {
    assert.equal(retryDelayFor({ ...base, retryDelay: 700 }, 5, 5000), 700);
    assert.equal(retryDelayFor(base, 5, 5000), 5000);
  });
  test("exponential: doubles per attempt up to its cap", () => {
    const t = { ...base, retryDelay: 1000, retryBackoff: "exponential" as const, retryDelayMax: 10_000 };
    assert.deepEqual([1, 2, 3, 4, 5, 6].map((a) => retryDelayFor(t, a, 5000)), [1000, 2000, 4000, 8000, 10_000, 10_000]);
  });
  test("a function: given the attempt and its error; one that throws or returns a bad value falls back to the delay, logged", () => {
    const seen: unknown[] = [];
    const t = { ...base, retryDelay: 900, retryBackoff: (attempt: number, error: unknown) => (seen.push(error), attempt * 1234) };
    const error = new Error("smtp down");
    assert.equal(retryDelayFor(t, 3, 5000, error), 3702);
    assert.deepEqual(seen, [error]);
    const warnings: string[] = [];
    const log = { ...silentLogger, warn: (message: string) => void warnings.push(message) };
    for (const bad of [() => -1, () => 1.5, () => Number.NaN, () => "10" as unknown as number, () => 8 * 24 * 3_600_000, () => { throw new Error("oops"); }]) {
      assert.equal(retryDelayFor({ ...base, retryDelay: 900, retryBackoff: bad }, 1, 5000, error, log), 900);
    }
    assert.equal(warnings.length, 6);
    assert.match(warnings[0], /task "r": retryBackoff returned -1, not a whole number of ms/);
    assert.match(warnings[5], /retryBackoff threw/);
  });
  test("jitter shortens the wait by up to its fraction of it", () => {
    const t = { ...base, retryDelay: 1000, retryJitter: 0.25 };
    assert.equal(retryDelayFor(t, 1, 5000, undefined, undefined, () => 0), 1000);
    assert.equal(retryDelayFor(t, 1, 5000, undefined, undefined, () => 0.999999), 750);
    assert.equal(retryDelayFor(t, 1, 5000, undefined, undefined, () => 0.5), 875);
    assert.throws(() => defineTask({ ...base, retryJitter: 1.5 }), /retryJitter must be a number from 0 to 1/);
    assert.throws(() => defineTask({ ...base, retryBackoff: "linear" as "fixed" }), /retryBackoff must be "fixed", "exponential" or a function/);
  });
});

describe("reaping workers whose heartbeat stopped", () => {
  test("by each worker's own stale time (the reaper's for rows without one), only once the reaper has reached the database that long, never its own", async () => {
    const reaper = randomUUID();
    const other = randomUUID();
    const worker = async (supervisor: string, staleAfterMs: number | null, heartbeatAgoMs: number) => {
      const id = randomUUID();
      await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, stale_after_ms, heartbeat_at)
        VALUES (${id}, ${supervisor}, 1, 1, 'test', 'node', '{fenced}', ${staleAfterMs}, now() - ${heartbeatAgoMs} * interval '1 ms')`;
      return id;
    };
    const oldRow = await worker(other, null, 30_000); // a worker of an older pgbg: the reaper's 20 s apply
    const patient = await worker(other, 600_000, 30_000); // 10 minutes of its own: alive
    const quick = await worker(other, 10_000, 15_000); // 10 s of its own: stale
    const own = await worker(reaper, 10_000, 15_000); // the reaper's own: watched directly, never reaped
    const id = await enqueue(sql, task, 1);
    await claimTasks(sql, "pgbg", scope(quick), 10);
    const reap = async (reachableFor: number) => {
      const released = await reapStaleWorkers(sql, "pgbg", { staleAfter: 20_000, maxAttempts: 25, hostId: reaper }, reachableFor);
      const left = (await sql`SELECT id FROM pgbg.worker`).map((r) => r.id as string);
      return { released: released.map((t) => t.id), left: new Set(left) };
    };
    const early = await reap(5_000);
    assert.deepEqual(early.released, [], "after 5 s of reach nobody is judged");
    assert.equal(early.left.size, 4);
    const middle = await reap(12_000);
    assert.deepEqual(middle.released, [id], "the quick worker's task is released");
    assert.deepEqual([...middle.left].sort(), [oldRow, patient, own].sort(), "12 s of reach judge the 10 s worker only");
    const late = await reap(25_000);
    assert.deepEqual([...late.left].sort(), [patient, own].sort(), "20 s of reach judge the old row by the reaper's threshold");
    assert.deepEqual(await row(id), { state: "queued", attempts: 1, lease_token: 1, worker_id: null });
    await sql`DELETE FROM pgbg.worker`;
    await sql`DELETE FROM pgbg.task`;
  });
});

describe("handing back a worker's tasks uncounted", () => {
  test("only while the worker's row exists: a reaped worker's tasks are its reaper's to release, counted", async () => {
    const register = async (id: string) =>
      sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, stale_after_ms) VALUES (${id}, ${randomUUID()}, 1, 1, 'test', 'node', '{fenced}', 20000)`;
    const kept = randomUUID();
    const reaped = randomUUID();
    await register(kept);
    await register(reaped);
    const keptTask = await enqueue(sql, task, 1);
    await claimTasks(sql, "pgbg", scope(kept), 1);
    const reapedTask = await enqueue(sql, task, 2);
    await claimTasks(sql, "pgbg", scope(reaped), 1);
    // What a reaper's ReapStaleWorkers did, before its release of the tasks.
    await sql`DELETE FROM pgbg.worker WHERE id = ${reaped}`;
    const handed = await handBackWorkerTasks(sql, "pgbg", [kept, reaped]);
    assert.deepEqual(handed.map((t) => t.id), [keptTask]);
    assert.deepEqual(await row(keptTask), { state: "queued", attempts: 0, lease_token: 1, worker_id: null }, "uncounted");
    assert.deepEqual(await row(reapedTask), { state: "running", attempts: 1, lease_token: 1, worker_id: reaped }, "left to the reaper");
    await sql`DELETE FROM pgbg.worker`;
    await sql`DELETE FROM pgbg.task`;
  });
});
