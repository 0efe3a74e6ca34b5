/**
 * A task that blocks its worker's event loop: it keeps its lease until its
 * supervisor has killed that worker, even when the block begins while the
 * worker waits out its other tasks or the service is shutting down; a block
 * shorter than the kill's silence is not taken for a lost database.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, migrate } from "../mod.ts";
import { block, blockLate, spin, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const { sql, serve, remaining, executions, taskRow } = await serviceTestbed(createTestDatabase, migrate);

describe("a task that blocks the event loop", () => {
  test("a task that blocks its worker's event loop past a short timeout does not run again before that worker is killed", async () => {
    const id = await enqueue(sql, spin, {});
    // A 1 s timeout alone would lease it for 8 s, and the supervisor kills a
    // silent worker only after 10 s: the lease must outlast that.
    const service = serve(["--workers", "2", "--concurrency", "1", "--timeout", "1s"]);
    const killed = await service.waitForLog((l) => /^worker \d was killed by SIGKILL; restarting/.test(l.message), patience);
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to run again and finish");
    const runs = await executions([id]);
    assert.deepEqual(runs.map((r) => r.attempt), [1, 2]);
    assert.ok(
      runs[1].started_at.getTime() >= Date.parse(killed.time as string),
      `attempt 2 started at ${runs[1].started_at.toISOString()}, after the spinning worker was killed at ${killed.time}`,
    );
    assert.ok(!service.logs.some((l) => /whose lease expired/.test(l.message)), "the lease did not expire");
    assert.equal(await taskRow(id), undefined);
  });

  test("a worker that waits for its other tasks after one ignored its timeout exits in time for a block at the last moment to be killed before the lease ends", async () => {
    // The 1 s timeout leases block-late for 18.2 s: 1 s, two 1 s graces, the
    // supervisor's 10.2 s kill time (10 s of silence and a 200 ms check) and
    // 5 s. It blocks the event loop 6 s before that ends. Waiting for the
    // other task, its worker must give up 12.2 s before the lease ends (the
    // kill time and 2 s), before the block: a worker that waited until 2 s
    // before the end would be blocked there, and killed 4 s past it, after
    // the expired lease let another worker start the task.
    const late = await enqueue(sql, blockLate, { beforeLeaseEnd: 6_000 });
    const other = await enqueue(sql, work, { ms: 120_000 });
    const first = serve(["--workers", "1", "--concurrency", "2"]);
    const [run] = await until(() => executions([late, other]), (r) => r.length === 2, patience, "both tasks to start in the one worker");
    // A second supervisor's worker, free to take the task once released.
    serve(["--workers", "1"]);
    const ended = await first.waitForLog((l) => /^worker 1 (exited with code|was killed by)/.test(l.message), patience);
    const runs = await until(() => executions([late]), (r) => r.length === 2, patience, "block-late to run again");
    assert.equal(runs[0].pid, run.pid);
    assert.ok(
      runs[1].started_at.getTime() >= Date.parse(ended.time as string),
      `attempt 2 started at ${runs[1].started_at.toISOString()}, before the first worker ended at ${ended.time} (${ended.message})`,
    );
  });

  test("a task that blocks the event loop for less than the kill's silence: the late heartbeat is sent and given time to come back, not taken for a lost database", async () => {
    // 8.6 s: past 40 % of the 20 s stale time, under the 10 s silence.
    const id = await enqueue(sql, block, { ms: 8_600 });
    const service = serve(["--workers", "1", "--concurrency", "1"]);
    const [run] = await until(() => executions([id]), (r) => r.length === 1, patience, "the blocking task to start");
    // The heartbeat sent when the block ends is held up for about 1 s, as a
    // busy server may hold it: more than a tick (200 ms), less than the 5 s
    // it is given to come back. Timed from the block's start as the database
    // recorded it, not from when this test saw it (which on a loaded machine
    // can be seconds later, and would hold the heartbeat that much longer).
    const untilMs = async (offset: number) =>
      Number((await sql`SELECT (extract(epoch FROM ${run.started_at}::timestamptz + ${offset} * interval '1 ms' - clock_timestamp()) * 1000)::float8 AS ms`)[0].ms);
    const blocker = await sql.reserve();
    try {
      const first = await untilMs(4_000);
      await new Promise((r) => setTimeout(r, Math.max(0, first)));
      await blocker`BEGIN`;
      await blocker`SELECT 1 FROM pgbg.worker WHERE pid = ${run.pid} FOR UPDATE`;
      const release = await untilMs(9_600);
      await new Promise((r) => setTimeout(r, Math.max(0, release)));
    } finally {
      await blocker`ROLLBACK`.catch(() => {});
      blocker.release();
    }
    await until(() => remaining([id]), (n) => n === 0, patience, "the task to finish");
    const runs = await executions([id]);
    assert.deepEqual(runs.map((r) => [r.attempt, r.ended_at !== null]), [[1, true]], "one attempt, finished");
    for (const l of service.logs) assert.doesNotMatch(l.message, /stops at once|has not answered|exited with code/);
  });

  test("during a graceful shutdown a worker whose event loop is blocked is still killed after the silence, not after the shutdown timeout", async () => {
    const id = await enqueue(sql, spin, {});
    const service = serve(["--workers", "1", "--concurrency", "1", "--shutdown-timeout", "10m"]);
    await until(() => executions([id]), (r) => r.length === 1, patience, "the spinning task to start");
    service.child.kill("SIGTERM");
    await service.waitForLog((l) => /^worker 1 \(pid \d+\) has not answered for 10000 ms; killing it$/.test(l.message), patience);
    assert.deepEqual(await service.exited, { code: 0, signal: null });
    const row = await taskRow(id);
    assert.deepEqual([row.state, row.worker_id, row.attempts], ["queued", null, 1], "its task was released, the attempt counted");
  });
});
