/**
 * `pgbg serve` and what a task's writes share with its completion
 * (`ctx.complete(tx)`), and the scope of its claims: queues, unregistered
 * names, and several supervisors on one queue.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { defineTask, enqueue, enqueueMany, getTask, migrate } from "../mod.ts";
import { exactlyOnce, work } from "./fixtures/tasks.ts";
import { releaseWorkerTasks } from "../lib/maintenance/dead-worker-releaser.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, type Service, serviceTestbed, stopService, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql, remaining, executions, taskRow, sentinel } = testbed;
function serve(...args: string[]): Service {
  return testbed.serve(args);
}


describe("pgbg serve: ctx.complete and several supervisors", () => {
  test("a task whose name no worker registered is left alone", async () => {
    const unknown = defineTask({ name: "nobody-runs-this", schema: v.object({}), run() {} });
    const id = await enqueue(sql, unknown, {});
    const service = serve();
    await sentinel();
    await stopService(service);
    const row = await taskRow(id);
    assert.equal(row.state, "queued");
    assert.equal(row.attempts, 0);
  });

  test("--queues limits the queues a worker claims from", async () => {
    const other = await enqueue(sql, work, {}, { queue: "elsewhere" });
    const mine = await enqueue(sql, work, {}, { queue: "mine" });
    const service = serve("--queues", "mine,default");
    await until(() => remaining([mine]), (n) => n === 0, patience, "the task in a served queue");
    await sentinel();
    await stopService(service);
    assert.equal((await taskRow(other)).state, "queued");
  });

  test("ctx.complete(tx): the handler's writes and the completion commit together, once", async () => {
    const id = await enqueue(sql, exactlyOnce, { note: "committed", thenThrow: true });
    const service = serve();
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to complete");
    await sentinel();
    await stopService(service);
    assert.equal((await executions([id])).length, 1, "not retried although the handler threw after the commit");
    const notes = await sql`SELECT text FROM note WHERE text = 'committed'`;
    assert.equal(notes.length, 1);
  });

  test("ctx.complete(tx) rolled back with its transaction: the task runs again", async () => {
    const id = await enqueue(sql, exactlyOnce, { note: "rolled", rollback: true });
    const service = serve();
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to complete");
    await stopService(service);
    assert.deepEqual((await executions([id])).map((r) => r.attempt), [1, 2]);
    assert.equal((await sql`SELECT text FROM note WHERE text = 'rolled'`).length, 1);
  });

  test("ctx.complete(tx) after the lease was lost throws LeaseLostError, and the handler's writes roll back with it", async () => {
    const id = await enqueue(sql, exactlyOnce, { note: "fenced effect", waitFor: "go" });
    const service = serve("--workers", "1", "--concurrency", "2");
    await until(() => executions([id]), (r) => r.length === 1, patience, "the first attempt to start");
    // Another supervisor takes its worker for dead and releases the task;
    // the same worker's free slot claims it again as attempt 2.
    // Its worker as pgbg reads it: a claim row's task has none in its row.
    const workerId = (await getTask(sql, id))!.workerId!;
    await releaseWorkerTasks(sql, "pgbg", [workerId], 25, { name: "WorkerLost", message: "taken for dead by the test" });
    await until(() => executions([id]), (r) => r.length === 2, patience, "the second attempt to start");
    await sql`INSERT INTO note (text) VALUES ('go')`;
    await until(() => remaining([id]), (n) => n === 0, patience, "the second attempt to complete");
    const lost = await service.waitForLog((l) => l.id === id && l.attempt === 1 && (l.error as { name?: string })?.name === "LeaseLostError", patience);
    assert.match(lost.message, new RegExp(`^task ${id} failed`));
    await stopService(service);
    assert.equal((await sql`SELECT count(*)::int AS n FROM note WHERE text = 'fenced effect'`)[0].n, 1, "the effect committed once, by attempt 2");
    assert.deepEqual((await executions([id])).map((r) => [r.attempt, r.ended_at !== null]), [[1, true], [2, true]]);
  });

  test("two supervisors on one queue run no task twice", async () => {
    const a = serve("--workers", "2", "--concurrency", "8");
    const b = serve("--workers", "2", "--concurrency", "8");
    // Both ready before the tasks arrive, so that both take part.
    const workerPids = async (service: Service) => {
      const pids = new Set<number>();
      for (const index of [1, 2]) {
        const ready = await service.waitForLog((l) => l.message.startsWith(`worker ${index} ready (pid `), patience);
        pids.add(Number(/\(pid (\d+)\)/.exec(ready.message)![1]));
      }
      return pids;
    };
    const [pidsA, pidsB] = await Promise.all([workerPids(a), workerPids(b)]);
    const ids = await enqueueMany(sql, work, Array.from({ length: 1500 }, () => ({ ms: 5 })));
    await until(() => remaining(ids), (n) => n === 0, patience, "all tasks to finish");
    await Promise.all([stopService(a), stopService(b)]);
    const runs = await executions(ids);
    // On failure, say which ran twice, where, and what the services warned of.
    const seen = new Map<string, unknown[]>();
    for (const r of runs) seen.set(r.task_id, [...(seen.get(r.task_id) ?? []), { pid: r.pid, attempt: r.attempt, started: r.started_at, ended: r.ended_at }]);
    const twice = [...seen].filter(([, list]) => list.length > 1);
    const warned = [...a.logs, ...b.logs].filter((l) => l.level === "warn" || l.level === "error").map((l) => `${l.component}: ${l.message}`);
    assert.equal(runs.length, 1500, `each task ran exactly once; twice: ${JSON.stringify(twice)}; warnings: ${JSON.stringify(warned.slice(0, 20))}`);
    assert.equal(new Set(runs.map((r) => r.task_id)).size, 1500);
    assert.ok(runs.some((r) => pidsA.has(r.pid)) && runs.some((r) => pidsB.has(r.pid)), "both supervisors' workers ran tasks");
  });
});
