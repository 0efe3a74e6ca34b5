/**
 * Heartbeats across processes: a worker that cannot heartbeat stops itself
 * before others may release its tasks, supervisors with different check
 * intervals judge each other's workers by the workers' own stale time, and
 * the heartbeat has a connection of its own.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, getTask, migrate } from "../mod.ts";
import { work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const { sql, serve, executions } = await serviceTestbed(createTestDatabase, migrate);

describe("heartbeats and leases", () => {
  test("a worker whose heartbeat cannot get through stops itself and its task before any supervisor may release them", async () => {
    const id = await enqueue(sql, work, { ms: 120_000 });
    const service = serve(["--workers", "1", "--concurrency", "2", "--timeout", "5m"]);
    const [first] = await until(() => executions([id]), (r) => r.length === 1, patience, "the task to start");
    // The worker's row held locked: its heartbeat waits, as when the database
    // is out of its reach while other supervisors still reach it.
    const blocker = await sql.reserve();
    try {
      await blocker`BEGIN`;
      await blocker`SELECT 1 FROM pgbg.worker WHERE pid = ${first.pid} FOR UPDATE`;
      await service.waitForLog((l) =>
        /^this worker stops at once: its heartbeat has not succeeded for \d+ ms \(other hosts may take it for dead after 20000 ms\)\. Its 1 running attempt\(s\) are aborted/
          .test(l.message) && l.pid === first.pid, patience);
      await service.waitForLog((l) => /^worker 1 exited with code 5: lost: its heartbeat has not succeeded/.test(l.message), patience);
      assert.throws(() => process.kill(first.pid, 0), { code: "ESRCH" }, "the worker process is gone while its row is still locked");
    } finally {
      await blocker`ROLLBACK`.catch(() => {});
      blocker.release();
    }
    // Its supervisor hands the task back, the attempt uncounted (the task did
    // not fail: its worker lost the database), and a new worker takes it.
    const runs = await until(() => executions([id]), (r) => r.length === 2, patience, "the task to run again");
    assert.equal(runs[1].attempt, 1, "the interrupted attempt was not counted");
    assert.notEqual(runs[1].pid, first.pid);
  });

  test("supervisors with different check intervals do not take each other's live workers for dead", async () => {
    const id = await enqueue(sql, work, { ms: 300_000 }, { queue: "slow" });
    // Heartbeats every 2 minutes; the other supervisor's own threshold is 20 s.
    const slow = serve(["--workers", "1", "--queues", "slow", "--check-interval", "120s", "--timeout", "10m"]);
    const [run] = await until(() => executions([id]), (r) => r.length === 1, patience, "the slow supervisor's task to start");
    const fast = serve(["--workers", "1", "--queues", "other"]);
    await fast.waitForLog((l) => /^worker 1 ready/.test(l.message), patience);
    const fastReady = performance.now();
    // The case this test is about: the fast supervisor has reached the
    // database for over its own 20 s threshold (plus a few of its 200 ms
    // checks), and the slow worker's heartbeat is older than 20 s.
    await until(async () => {
      const [w] = await sql`SELECT extract(epoch FROM now() - heartbeat_at)::float8 AS age FROM pgbg.worker WHERE pid = ${run.pid}`;
      return performance.now() - fastReady > 21_000 && (w?.age ?? 0) > 21;
    }, (past) => past, 3 * patience, "both to be past the fast supervisor's threshold");
    // As pgbg reads a task: a claim row's task is running in its first attempt though its row is queued.
    const task = await getTask(sql, id);
    assert.deepEqual([task?.state, task?.attempts], ["running", 1], "the task still runs in its first attempt, never released");
    assert.equal((await executions([id])).length, 1);
    for (const l of [...fast.logs, ...slow.logs]) {
      assert.doesNotMatch(l.message, /released \d+ task\(s\) of workers whose heartbeat stopped|stops at once/);
    }
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 2, "both workers are still registered");
  });

  test("the heartbeat runs on a connection of its own, apart from the pool that claims and writes back", async () => {
    serve(["--workers", "1"]);
    const [beat] = await until(
      () => sql`SELECT query FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgbg worker 1 heartbeat'`,
      (rows) => rows.some((r) => /^UPDATE "?pgbg"?\.worker SET heartbeat_at/.test(r.query)),
      patience,
      "a heartbeat on the worker's heartbeat connection",
    );
    assert.match(beat.query, /^UPDATE "?pgbg"?\.worker SET heartbeat_at/);
  });

});
