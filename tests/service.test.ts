import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, enqueueMany, migrate } from "../mod.ts";
import { alwaysFails, strict, unstorableError, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { claimOrder, patience, type Service, serviceTestbed, stopService, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql, remaining, executions, taskRow, sentinel } = testbed;
function serve(...args: string[]): Service {
  return testbed.serve(args);
}


describe("pgbg serve", () => {
  test("runs every task once and deletes it; stops with exit code 0 on SIGTERM", async () => {
    const ids = await enqueueMany(sql, work, Array.from({ length: 300 }, () => ({})));
    const service = serve("--workers", "2", "--concurrency", "5");
    await until(() => remaining(ids), (n) => n === 0, patience, "all tasks to finish");
    const runs = await executions(ids);
    assert.equal(runs.length, 300);
    assert.equal(new Set(runs.map((r) => r.task_id)).size, 300);
    assert.equal(new Set(runs.map((r) => r.pid)).size, 2, "both workers took part");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.worker`;
    assert.equal(n, 0, "workers removed their rows");
  });

  test("never runs more than workers × concurrency tasks at once", async () => {
    const ids = await enqueueMany(sql, work, Array.from({ length: 40 }, () => ({ ms: 100 })));
    const service = serve("--workers", "2", "--concurrency", "3");
    await until(() => remaining(ids), (n) => n === 0, patience, "all tasks to finish");
    await stopService(service);
    const runs = await executions(ids);
    let peak = 0;
    for (const r of runs) {
      const overlapping = runs.filter((o) => o.started_at <= r.started_at && o.ended_at > r.started_at).length;
      peak = Math.max(peak, overlapping);
    }
    assert.ok(peak <= 6, `peak concurrency ${peak} exceeds 2 × 3`);
    assert.ok(peak >= 2, `tasks did run concurrently (peak ${peak})`);
  });

  test("claims by priority, then run_at, then enqueue order, and not before run_at", async () => {
    const service = serve("--workers", "1", "--concurrency", "1");
    await until(async () => (await sql`SELECT bool_and(idle) AS idle FROM pgbg.worker`)[0].idle, (idle) => idle === true, patience, "the worker to be idle");
    // One transaction: the worker sees all five at once, however slow its start was.
    const [order, delayed] = await sql.begin(async (tx) => {
      const order: string[] = [];
      order.push(await enqueue(tx, work, {}, { priority: 5 })); // 3rd
      order.push(await enqueue(tx, work, {}, { priority: -1 })); // 1st
      order.push(await enqueue(tx, work, {}, { priority: 5, runAt: new Date(Date.now() - 60_000) })); // 2nd (earlier run_at)
      order.push(await enqueue(tx, work, {}, { priority: 5 })); // 4th
      return [order, await enqueue(tx, work, {}, { delay: 1_500, priority: -5 })] as const;
    });
    const runAt: Date = (await taskRow(delayed)).run_at;
    await until(() => remaining([...order, delayed]), (n) => n === 0, patience, "all tasks to finish");
    await stopService(service);
    const runs = await executions([...order, delayed]);
    // The delayed task may run anywhere once due (on a busy machine the four
    // can take longer than its delay): what it must not do is start early.
    assert.deepEqual(runs.filter((r) => r.task_id !== delayed).map((r) => r.task_id), claimOrder(order));
    const late = runs.find((r) => r.task_id === delayed)!;
    assert.ok(late.started_at >= runAt, `the delayed task started at ${late.started_at.toISOString()}, before its run_at ${runAt.toISOString()}`);
  });

  test("an idle worker starts a new task on NOTIFY, long before its idle sleep ends", async () => {
    const service = serve("--workers", "1", "--concurrency", "2", "--idle-sleep", "5m");
    await service.waitForLog((l) => /ready/.test(l.message));
    // Let the worker find the queue empty and go to sleep.
    await until(async () => (await sql`SELECT bool_and(idle) AS idle FROM pgbg.worker`)[0].idle, (idle) => idle === true, patience, "the worker to be idle");
    const id = await enqueue(sql, work, {});
    // Without a wake-up the task would wait the five-minute idle sleep.
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to run after NOTIFY");
    await stopService(service);
  });

  test("retries a failing task after its retry delay, then succeeds", async () => {
    const id = await enqueue(sql, work, { failUntil: 2 });
    // Workers that look for work every 20 ms: a retry that ignored the
    // 200 ms delay would start well inside it.
    const service = serve("--workers", "2", "--concurrency", "2", "--idle-sleep", "20ms");
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to succeed");
    await stopService(service);
    const runs = await executions([id]);
    assert.deepEqual(runs.map((r) => r.attempt), [1, 2, 3]);
    for (let i = 1; i < runs.length; i++) {
      const gap = runs[i].started_at.getTime() - runs[i - 1].ended_at.getTime();
      assert.ok(gap >= 200 - 5, `retry ${i} came ${gap} ms after the failure, before the 200 ms retry delay`);
    }
  });

  test("after max attempts a task is kept as failed with its last error, and not claimed again", async () => {
    const id = await enqueue(sql, alwaysFails, {});
    const service = serve("--workers", "1", "--concurrency", "2");
    await until(() => taskRow(id), (r) => r?.state === "failed", patience, "the task to fail");
    await sentinel();
    await stopService(service);
    const row = await taskRow(id);
    assert.equal(row.attempts, 3);
    assert.ok(row.failed_at instanceof Date);
    assert.equal(row.last_error.name, "NonError");
    assert.match(row.last_error.message, /a plain string/);
    assert.equal((await executions([id])).length, 3);
  });

  test("an error message jsonb cannot hold is still recorded, and blocks no other result", async () => {
    const bad = await enqueue(sql, unstorableError, {});
    const good = await enqueue(sql, work, { failUntil: 1 });
    const service = serve();
    await until(() => taskRow(bad), (r) => r?.state === "failed", patience, "the task to fail");
    await until(() => remaining([good]), (n) => n === 0, patience, "the other task to finish");
    await stopService(service);
    assert.match((await taskRow(bad)).last_error.message, /^bad\\u0000byte and half an emoji/);
  });

  test("the service's --max-attempts applies to tasks that set none", async () => {
    const id = await enqueue(sql, work, { failUntil: 99 });
    const service = serve("--max-attempts", "2");
    await until(() => taskRow(id), (r) => r?.state === "failed", patience, "the task to fail");
    await stopService(service);
    assert.equal((await taskRow(id)).attempts, 2);
  });

  test("input that no longer matches the schema fails the task for good, without retries", async () => {
    const [{ id }] = await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'strict', '{"count": "not a number"}') RETURNING id::text`;
    const service = serve();
    await until(() => taskRow(id), (r) => r?.state === "failed", patience, "the task to fail");
    await stopService(service);
    const row = await taskRow(id);
    assert.equal(row.attempts, 1);
    assert.equal(row.last_error.code, "PGBG_INVALID_INPUT");
    assert.match(row.last_error.message, /count: Invalid type/);
    assert.equal((await executions([id])).length, 0, "the handler never ran");
    void strict;
  });

});
