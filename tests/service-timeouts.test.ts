/**
 * Time limits and leases under `pgbg serve`: a task that honours its signal
 * fails at its timeout, one that ignores it retires its worker, an expired
 * lease is rescued, a stale worker of another supervisor is reaped, and a
 * worker whose hand-back is not written by its stop's bound leaves it to
 * its supervisor.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, enqueueMany, migrate } from "../mod.ts";
import { cooperative, hang, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { serviceTestbed, stopService, until, patience } from "./service-harness.ts";

const { sql, serve, remaining, executions, taskRow } = await serviceTestbed(createTestDatabase, migrate);

describe("timeouts and leases", () => {
  test("a task that honours its signal times out, counts as a failed attempt, and fails after max attempts", async () => {
    const id = await enqueue(sql, cooperative, {});
    const service = serve([]);
    await until(() => taskRow(id), (r) => r?.state === "failed", patience, "the task to fail");
    await stopService(service);
    const row = await taskRow(id);
    const runs = await executions([id]);
    // On failure, say what else happened to the workers (a kill, an exit).
    const events = service.logs.filter((l) => l.level === "warn" || l.level === "error").map((l) => `${l.component}: ${l.message}`).join("\n");
    assert.deepEqual([row.attempts, row.last_error.name, row.last_error.timedOut, runs.length], [2, "TaskTimeoutError", true, 2], events);
    assert.ok(runs.every((r) => r.ended_at !== null), `the handler stopped when aborted; warnings and errors:\n${events}`);
  });

  test("a task that ignores its signal: its worker retires and is replaced, other tasks keep flowing", async () => {
    const stuck = await enqueue(sql, hang, {});
    const service = serve(["--workers", "1", "--concurrency", "4"]);
    await until(() => executions([stuck]), (runs) => runs.length === 1, patience, "the hanging task to start");
    const normal = await enqueueMany(sql, work, Array.from({ length: 20 }, () => ({ ms: 10 })));
    await service.waitForLog((l) => /ignored its abort signal/.test(l.message));
    await service.waitForLog((l) => /worker 1 exited with code 4: a task ignored its abort signal past its timeout; restarting/.test(l.message));
    await until(() => remaining(normal), (n) => n === 0, patience, "the normal tasks to finish");
    // maxAttempts 1: released by the supervisor as the dead worker's task, it ends as failed.
    await until(() => taskRow(stuck), (r) => r?.state === "failed", patience, "the stuck task to be failed");
    assert.equal((await taskRow(stuck)).last_error.name, "WorkerDied");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("a supervisor releases the tasks of another supervisor's worker whose heartbeat stopped", async () => {
    // The state a machine that lost power leaves behind: a worker row with an
    // old heartbeat, holding a task on a lease that has an hour left.
    const worker = "00000000-0000-4000-8000-000000000001";
    await sql`INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, tasks, heartbeat_at)
      VALUES (${worker}, ${worker}, 1, 1, 'gone', 'node', '{work}', now() - interval '1 hour')`;
    const [{ id }] = await sql`INSERT INTO pgbg.task (queue, name, payload, state, attempts, lease_token, worker_id, lease_expires_at)
      VALUES ('default', 'work', '{}', 'running', 1, 1, ${worker}, now() + interval '1 hour') RETURNING id::text`;
    const service = serve([]);
    await until(() => remaining([id]), (n) => n === 0, patience, "the orphaned task to run");
    await stopService(service);
    assert.deepEqual((await executions([id])).map((r) => r.attempt), [2]);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker WHERE id = ${worker}`)[0].n, 0);
  });

  test("a worker past its stop's bound before its hand-back is written leaves the task to its supervisor, which hands it back uncounted", async () => {
    const id = await enqueue(sql, work, { ms: 600_000 });
    const service = serve(["--workers", "1", "--shutdown-timeout", "300ms", "--timeout", "10m"]);
    await until(() => executions([id]), (runs) => runs.length === 1, patience, "the task to start");
    const [{ pid }] = await sql`SELECT pid FROM pgbg.worker`;
    // The task's row locked: the worker's hand-back waits past its bound
    // (the shutdown timeout plus 1 s), as a write on a starved server may.
    await sql.begin(async (tx) => {
      await tx`SELECT FROM pgbg.task WHERE id = ${id} FOR UPDATE`;
      process.kill(pid as number, "SIGTERM");
      await service.waitForLog((l) => /exiting now, its supervisor to hand back what it holds, uncounted/.test(l.message), patience);
    });
    await service.waitForLog((l) => /worker 1 exited with code 7; restarting/.test(l.message), patience);
    // The worker started in its place runs it again, as its first attempt still.
    const runs = await until(() => executions([id]), (r) => r.length === 2, patience, "the task to run again");
    assert.deepEqual(runs.map((r) => r.attempt), [1, 1], service.logs.map((l) => l.message).join("\n"));
    await stopService(service);
  });

  test("a task whose lease expired is claimable again", async () => {
    const [{ id }] = await sql`INSERT INTO pgbg.task (queue, name, payload, state, attempts, lease_token, worker_id, lease_expires_at)
      VALUES ('default', 'work', '{}', 'running', 1, 1, '00000000-0000-4000-8000-000000000002', now() - interval '1 second')
      RETURNING id::text`;
    const service = serve([]);
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to run");
    await stopService(service);
    assert.deepEqual((await executions([id])).map((r) => r.attempt), [2]);
  });
});
