/**
 * Faults under `pgbg serve`: workers killed, signals, uncaught exceptions and
 * silent workers. Nothing is lost, and unfinished tasks are handed back or
 * released as each case calls for.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, enqueueMany, migrate } from "../mod.ts";
import { spin, throwsLater, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { serviceTestbed, stopService, until, within, patience } from "./service-harness.ts";

const { sql, serve, remaining, executions } = await serviceTestbed(createTestDatabase, migrate);

describe("faults", () => {
  test("SIGKILL of a worker mid-task: its tasks run again at once, none is lost", async () => {
    // A 60 s timeout gives leases of over a minute: only the supervisor's
    // release of the dead worker's tasks lets this finish within the wait.
    const ids = await enqueueMany(sql, work, Array.from({ length: 6 }, () => ({ ms: 1500 })), { maxAttempts: 5 });
    const service = serve(["--workers", "2", "--concurrency", "3", "--timeout", "60s"]);
    const [victim] = await until(() => executions(ids), (runs) => runs.length >= 1, patience, "a task to start");
    process.kill(victim.pid, "SIGKILL");
    await until(() => remaining(ids), (n) => n === 0, patience, "every task to finish after the kill");
    const runs = await executions(ids);
    const killed = runs.filter((r) => r.pid === victim.pid && r.ended_at === null);
    assert.ok(killed.length >= 1, "the killed worker was running tasks");
    for (const k of killed) {
      const rerun = runs.find((r) => r.task_id === k.task_id && r.attempt === k.attempt + 1 && r.ended_at !== null);
      assert.ok(rerun, `task ${k.task_id} ran again after its worker was killed`);
      assert.notEqual(rerun.pid, victim.pid);
    }
    assert.equal(new Set(runs.filter((r) => r.ended_at !== null).map((r) => r.task_id)).size, 6, "every task completed");
    await service.waitForLog((l) => /worker \d was killed by SIGKILL; restarting/.test(l.message));
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("SIGTERM hands unfinished tasks back at once, uncounted, and exits 0", async () => {
    const ids = await enqueueMany(sql, work, Array.from({ length: 3 }, () => ({ ms: 20_000 })));
    const service = serve(["--workers", "1", "--concurrency", "3", "--shutdown-timeout", "300ms", "--timeout", "60s"]);
    await until(() => executions(ids), (runs) => runs.length === 3, patience, "the tasks to start");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    const rows = await sql`SELECT state, attempts, worker_id, lease_expires_at FROM pgbg.task WHERE id IN ${sql(ids)}`;
    assert.equal(rows.length, 3);
    for (const row of rows) assert.deepEqual(row, { state: "queued", attempts: 0, worker_id: null, lease_expires_at: null });
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql(ids)}`;
  });

  test("a second SIGTERM stops at once: workers killed, exit code 1, their tasks handed back", async () => {
    const ids = await enqueueMany(sql, work, Array.from({ length: 2 }, () => ({ ms: 120_000 })));
    // A shutdown timeout far beyond the test's wait: only the second signal can end it in time.
    const service = serve(["--workers", "1", "--concurrency", "2", "--shutdown-timeout", "10m", "--timeout", "5m"]);
    const runs = await until(() => executions(ids), (r) => r.length === 2, patience, "the tasks to start");
    const workerPid = runs[0].pid as number;
    service.child.kill("SIGTERM");
    await service.waitForLog((l) => /SIGTERM: stopping/.test(l.message));
    service.child.kill("SIGTERM");
    assert.deepEqual(await within(service.exited, patience, "the supervisor to exit"), { code: 1, signal: null });
    await service.waitForLog((l) => /second SIGTERM: stopping now/.test(l.message));
    assert.throws(() => process.kill(workerPid, 0), { code: "ESRCH" }, "the worker process is gone");
    const rows = await sql`SELECT state, worker_id, lease_expires_at FROM pgbg.task WHERE id IN ${sql(ids)}`;
    assert.equal(rows.length, 2, "no task was lost");
    for (const row of rows) assert.deepEqual(row, { state: "queued", worker_id: null, lease_expires_at: null });
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql(ids)}`;
  });

  test("an uncaught exception exits the worker with one line saying why; it is replaced and its task runs again at once", async () => {
    const id = await enqueue(sql, throwsLater, {});
    // A 5 min timeout: only the supervisor's release of the crashed worker's task lets it run again within the wait.
    const service = serve(["--workers", "1", "--concurrency", "2", "--timeout", "5m"]);
    await service.waitForLog((l) => l.message === "uncaught error: thrown from a timer; exiting so that a fresh worker takes over" && l.level === "error");
    await service.waitForLog((l) => /^worker 1 exited with code 6: uncaught error: thrown from a timer; restarting/.test(l.message));
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to run again and succeed");
    const runs = await executions([id]);
    assert.deepEqual(runs.map((r) => [r.attempt, r.ended_at === null]), [[1, true], [2, false]]);
    assert.notEqual(runs[0].pid, runs[1].pid);
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("a worker that stops answering is killed and replaced, and its task runs again", async () => {
    const id = await enqueue(sql, spin, {});
    const service = serve(["--workers", "1", "--concurrency", "1"]);
    const [first] = await until(() => executions([id]), (r) => r.length === 1, patience, "the task to start");
    await service.waitForLog((l) => /worker 1 \(pid \d+\) has not answered for \d+ ms; killing it/.test(l.message), 40_000);
    await service.waitForLog((l) => /worker 1 was killed by SIGKILL; restarting/.test(l.message));
    // The default 30 s timeout leases the task for over a minute: it is the supervisor's release that frees it.
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to run again and finish");
    const runs = await executions([id]);
    assert.equal(runs.length, 2);
    assert.equal(runs[1].attempt, 2);
    assert.notEqual(runs[1].pid, first.pid, "a new worker ran it");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("SIGINT (as SIGTERM) stops claiming and lets running tasks finish within the shutdown timeout", async () => {
    // Long enough that the signal surely comes while both still run.
    const ids = await enqueueMany(sql, work, Array.from({ length: 2 }, () => ({ ms: 8_000 })));
    const service = serve(["--workers", "1", "--concurrency", "2", "--shutdown-timeout", "20s", "--idle-sleep", "20ms"]);
    await until(() => executions(ids), (runs) => runs.length === 2, patience, "the tasks to start");
    // Queued behind the running two: slots free while the service stops, and
    // a worker that still claimed would take these.
    const waiting = await enqueueMany(sql, work, Array.from({ length: 4 }, () => ({})));
    service.child.kill("SIGINT");
    assert.deepEqual(await service.exited, { code: 0, signal: null });
    assert.equal(await remaining(ids), 0, "both finished and were deleted before the exit");
    assert.equal((await executions(waiting)).length, 0, "nothing was claimed after the signal");
    const rows = await sql`SELECT state, attempts FROM pgbg.task WHERE id IN ${sql(waiting)}`;
    assert.deepEqual(rows.map((r) => [r.state, r.attempts]), waiting.map(() => ["queued", 0]));
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql(waiting)}`;
  });

});
