/**
 * The admin API as an application calls it: getTask, listTasks (filters and
 * keyset pages), cancel (by id and by dedup key), retry and status, on a
 * real database; the CLI and the dashboard call the same functions
 * (tests/admin.test.ts, tests/dashboard.test.ts).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { cancel, countTasks, defineTask, drain, enqueue, enqueueMany, getTask, InvalidOptionsError, listTasks, migrate, retry, status } from "../mod.ts";
import { run } from "../lib/statements.ts";
import { Kysely, PostgresDialect } from "kysely";
import pg from "pg";
import { createTestDatabase } from "./harness.ts";
import { patience, until } from "./service-harness.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const mail = defineTask({ name: "mail", schema: v.object({ n: v.number() }), run() {} });
const report = defineTask({ name: "report", schema: v.object({ n: v.number() }), run() {} });
const WORKER = "00000000-0000-0000-0000-0000000000aa";

/** Makes tasks `ids` look as a worker leaves them: failed, or running under WORKER. */
async function fail(ids: string[]): Promise<void> {
  await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), attempts = 1, last_error = '{"name":"Error","message":"boom"}' WHERE id IN ${sql(ids)}`;
}
async function claim(ids: string[]): Promise<void> {
  await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = lease_token + 1, worker_id = ${WORKER}, lease_expires_at = now() + interval '1 hour'
    WHERE id IN ${sql(ids)}`;
}

describe("the admin API", () => {
  test("getTask: a task's state, attempts, times, last error and input; null for an id the queue does not hold", async () => {
    const due = await enqueue(sql, mail, { n: 1 }, { key: "k-1", priority: 3 });
    const later = await enqueue(sql, mail, { n: 2 }, { delay: 3_600_000 });
    const failed = await enqueue(sql, report, { n: 3 }, { queue: "reports" });
    await fail([failed]);
    const t = await getTask(sql, due);
    assert.ok(t);
    assert.deepEqual({ ...t, runAt: undefined, enqueuedAt: undefined }, {
      id: due, queue: "default", name: "mail", state: "queued", attempts: 0, snoozes: 0, maxAttempts: null, priority: 3, key: "k-1", group: null, flowId: null, inputVersion: 1,
      runAt: undefined, enqueuedAt: undefined, failedAt: null, workerId: null, cancelRequestedAt: null, lastError: null, payload: { n: 1 },
      finishedAt: null, expiresAt: null, result: null, errors: [], schedule: null,
    });
    assert.ok(t.runAt instanceof Date && t.enqueuedAt instanceof Date);
    assert.equal((await getTask(sql, later))?.state, "scheduled");
    const f = await getTask(sql, failed);
    assert.deepEqual([f?.state, f?.queue, f?.lastError?.message, f?.failedAt instanceof Date], ["failed", "reports", "boom", true]);
    assert.equal(await getTask(sql, "999999999"), null);
    await assert.rejects(getTask(sql, "12abc"), (e) => e instanceof InvalidOptionsError && /"12abc" is not a task id/.test(e.message));
    await assert.rejects(getTask(sql, due, { shema: "x" } as object), /unknown option "shema"/);
    await sql`DELETE FROM pgbg.task`;
  });

  test("getTask: a task kept in the history keeps its failed attempts' errors, completed by the worker or in the handler's transaction, or cancelled", async () => {
    const failedOnce = (name: string, complete: boolean) => defineTask({
      name, schema: v.object({}), result: v.number(), retryDelay: 0,
      async run(_input, ctx) {
        if (ctx.attempt === 1) throw new Error(`${name} failed once`);
        if (complete) await sql.begin((tx) => ctx.complete(tx, ctx.attempt));
        return ctx.attempt;
      },
    });
    const byWorker = failedOnce("kept-by-worker", false);
    const inTransaction = failedOnce("kept-in-transaction", true);
    const ids = [await enqueue(sql, byWorker, {}), await enqueue(sql, inTransaction, {})];
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    await drain(sql, { tasks: [byWorker, inTransaction], logger: quiet, maxWait: 60_000 });
    for (const [i, name] of ["kept-by-worker", "kept-in-transaction"].entries()) {
      const t = await getTask(sql, ids[i]);
      assert.equal(t?.state, "completed", name);
      assert.deepEqual(t?.errors?.map((e) => [e.attempt, e.message]), [[1, `${name} failed once`]], name);
      assert.match(String(t?.errors?.[0].worker), /^[0-9a-f-]{36}$/);
    }
    // Cancelled after a failed attempt, and kept for its retention.
    const logged = defineTask({ name: "kept-cancelled", schema: v.object({}), retention: { completed: 60_000 }, run() {} });
    const id = await enqueue(sql, logged, {});
    await claim([id]);
    const [{ token }] = await sql`SELECT lease_token AS token FROM pgbg.task WHERE id = ${id}`;
    await run(sql, "pgbg", "FailTasks", [[id], [token], [3_600_000], [JSON.stringify({ message: "first try" })], [0], 25]);
    assert.deepEqual((await cancel(sql, [id])).deleted, [id]);
    const cancelled = await getTask(sql, id);
    assert.deepEqual([cancelled?.state, cancelled?.errors?.map((e) => e.message)], ["cancelled", ["first try"]]);
    // Nothing left for the tests below, which count what they enqueue.
    await sql`DELETE FROM pgbg.task`;
    await sql`DELETE FROM pgbg.history`;
    await sql`DELETE FROM pgbg.task_count`;
  });

  test("getTask: each failed attempt's error, oldest first, with its worker, attempt, start and end; a release's too; the last 20", async () => {
    let n = 0;
    const flaky = defineTask({
      name: "flaky", schema: v.object({}), maxAttempts: 3, retryDelay: 0,
      run() {
        throw new Error(`failure ${++n}`);
      },
    });
    const id = await enqueue(sql, flaky, {}, { maxAttempts: 2 });
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    await drain(sql, { tasks: [flaky], logger: quiet, maxWait: 60_000 });
    const t = await getTask(sql, id);
    assert.equal(t?.state, "failed");
    assert.deepEqual(t?.errors?.map((e) => [e.attempt, e.message]), [[1, "failure 1"], [2, "failure 2"]]);
    for (const e of t!.errors!) {
      assert.match(String(e.worker), /^[0-9a-f-]{36}$/, "the worker that ran it");
      assert.ok(Date.parse(String(e.startedAt)) <= Date.parse(String(e.at)), "started before it ended");
      assert.match(String(e.stack), /failure \d/);
    }
    assert.deepEqual(t?.lastError?.message, "failure 2");
    // A release (the worker died) adds its error, with the worker it took the task from.
    await retry(sql, id);
    await claim([id]);
    await sql`UPDATE pgbg.task SET attempts = 1 WHERE id = ${id}`;
    await run(sql, "pgbg", "ReleaseWorkerTasks", [25, JSON.stringify({ name: "WorkerDiedError", message: "worker died" }), [WORKER]]);
    const released = await getTask(sql, id);
    assert.deepEqual(released?.errors?.map((e) => [e.attempt, e.message, e.worker]).at(-1), [1, "worker died", WORKER]);
    assert.ok(Date.parse(String(released?.errors?.at(-1)?.at)) >= Date.parse(String(t!.errors![1].at)), "a release's error says when it ended the attempt");
    // A worker's error keeps its own end.
    await claim([id]);
    const [{ token }] = await sql`SELECT lease_token AS token FROM pgbg.task WHERE id = ${id}`;
    await run(sql, "pgbg", "FailTasks", [[id], [token], [0], [JSON.stringify({ message: "old", at: "2000-01-01T00:00:00.000Z" })], [0], 25]);
    assert.equal((await getTask(sql, id))?.errors?.at(-1)?.at, "2000-01-01T00:00:00.000Z");
    assert.equal(released?.errors?.length, 3, "the earlier ones stay (retry resets the attempts, not the errors)");
    // At most the last 20.
    await sql`UPDATE pgbg.task SET errors = (SELECT jsonb_agg(jsonb_build_object('attempt', i)) FROM generate_series(1, 20) i) WHERE id = ${id}`;
    await claim([id]);
    await run(sql, "pgbg", "ReleaseWorkerTasks", [25, JSON.stringify({ message: "worker died" }), [WORKER]]);
    const errors = (await getTask(sql, id))?.errors ?? [];
    assert.deepEqual([errors.length, errors[0].attempt, errors.at(-1)?.message], [20, 2, "worker died"]);
    assert.equal((await listTasks(sql, { name: "flaky" })).tasks[0].errors, undefined, "lists leave the errors out");
    await sql`DELETE FROM pgbg.task`;
    // The outcomes its attempts counted, which the status test below would see.
    await sql`DELETE FROM pgbg.task_count WHERE name = 'flaky'`;
  });

  test("listTasks: pages by keyset through every task once, in enqueue order, with tasks enqueued meanwhile", async () => {
    const ids = await enqueueMany(sql, mail, Array.from({ length: 1_050 }, (_, n) => ({ n })));
    const seen: string[] = [];
    let after: string | undefined;
    let pages = 0;
    for (;;) {
      const page = await listTasks(sql, { name: "mail", limit: 100, after });
      seen.push(...page.tasks.map((t) => t.id));
      pages++;
      // One enqueued after the first page comes in a later page, as the ids grow.
      if (pages === 1) ids.push(await enqueue(sql, mail, { n: -1 }));
      if (!page.next) break;
      assert.equal(page.next, page.tasks.at(-1)!.id);
      after = page.next;
    }
    assert.equal(pages, 11);
    assert.deepEqual(seen, ids, "every task once, in id order");
    // The last page is short, so it says there is no next one; an exact multiple ends with an empty page.
    assert.deepEqual(await listTasks(sql, { after: ids.at(-1) }), { tasks: [], next: null });
    await sql`DELETE FROM pgbg.task`;
  });

  test("listTasks: filters by state, queue, name, key and enqueue time, and refuses a bad filter by name", async () => {
    const [a, b, c] = await enqueueMany(sql, mail, [{ n: 1 }, { n: 2 }, { n: 3 }], { key: (i) => `m-${i.n}` });
    const r = await enqueue(sql, report, { n: 4 }, { queue: "reports" });
    const s = await enqueue(sql, report, { n: 5 }, { queue: "reports", delay: 3_600_000 });
    await fail([b]);
    await claim([c]);
    const idsOf = async (o: Parameters<typeof listTasks>[1]) => (await listTasks(sql, o)).tasks.map((t) => t.id);
    assert.deepEqual(await idsOf({ state: "queued" }), [a, r]);
    assert.deepEqual(await idsOf({ state: "scheduled" }), [s]);
    assert.deepEqual(await idsOf({ state: "failed" }), [b]);
    assert.deepEqual(await idsOf({ state: "running" }), [c]);
    assert.deepEqual(await idsOf({ queue: "reports" }), [r, s]);
    assert.deepEqual(await idsOf({ name: "mail" }), [a, b, c]);
    assert.deepEqual(await idsOf({ key: "m-2" }), [b]);
    const [{ t }] = await sql`SELECT enqueued_at AS t FROM pgbg.task WHERE id = ${r}`;
    await sql`UPDATE pgbg.task SET enqueued_at = enqueued_at - interval '1 day' WHERE id IN (${a}, ${b})`;
    assert.deepEqual(await idsOf({ to: new Date(Date.now() - 3_600_000) }), [a, b]);
    assert.deepEqual(await idsOf({ from: t, name: "report" }), [r, s]);
    assert.deepEqual(await idsOf({ namePrefix: "rep" }), [r, s]);
    assert.deepEqual(await idsOf({ namePrefix: "ma", state: "failed" }), [b]);
    assert.deepEqual(await idsOf({ namePrefix: "%" }), [], "a prefix is a string, not a pattern");
    await assert.rejects(listTasks(sql, { state: "done" as "failed" }), /option "state" must be one of queued, scheduled, waiting, running, failed/);
    await assert.rejects(listTasks(sql, { limit: 0 }), /option "limit" must be a whole number from 1 to 10000/);
    await assert.rejects(listTasks(sql, { from: new Date("nope") }), /option "from" must be a valid Date/);
    await assert.rejects(listTasks(sql, { namePrefix: "" }), /option "namePrefix" must be the start of a task name/);
    await sql`DELETE FROM pgbg.task`;
  });

  test("countTasks: counts what listTasks lists over all its pages, up to its cap", async () => {
    const ids = await enqueueMany(sql, mail, Array.from({ length: 250 }, (_, n) => ({ n })));
    await enqueue(sql, report, { n: 0 }, { queue: "reports" });
    await fail(ids.slice(0, 30));
    assert.deepEqual(await countTasks(sql), { count: 251, capped: false });
    assert.deepEqual(await countTasks(sql, { state: "failed" }), { count: 30, capped: false });
    assert.deepEqual(await countTasks(sql, { namePrefix: "ma", state: "queued" }), { count: 220, capped: false });
    assert.deepEqual(await countTasks(sql, { queue: "reports" }), { count: 1, capped: false });
    assert.deepEqual(await countTasks(sql, { cap: 100 }), { count: 100, capped: true });
    assert.deepEqual(await countTasks(sql, { state: "failed", after: ids[9] }), { count: 20, capped: false });
    assert.deepEqual(await countTasks(sql, { state: "completed" }), { count: 0, capped: false });
    await assert.rejects(countTasks(sql, { cap: 0 }), /option "cap" must be a whole number from 1 to 1000000/);
    await assert.rejects(countTasks(sql, { limit: 5 } as object), /unknown option "limit"/);
    await sql`DELETE FROM pgbg.task`;
  });

  test("cancel: by ids (queued and failed deleted, running signalled, unknown named) and by the pending task's dedup key", async () => {
    const [q, f, run, byKey, runningByKey] = await enqueueMany(sql, mail, [1, 2, 3, 4, 5].map((n) => ({ n })), { key: (i) => (i.n >= 4 ? `c-${i.n}` : undefined) });
    await fail([f]);
    await claim([run, runningByKey]);
    assert.deepEqual(await cancel(sql, [q, f, run, "987654321"]), { deleted: [q, f], signalled: [run], notFound: ["987654321"] });
    assert.deepEqual(await cancel(sql, { key: "c-4" }), { deleted: [byKey], signalled: [], notFound: [] });
    assert.deepEqual(await cancel(sql, { key: "c-5" }), { deleted: [], signalled: [runningByKey], notFound: [] });
    assert.deepEqual(await cancel(sql, { key: "no-such-key" }), { deleted: [], signalled: [], notFound: [] });
    assert.equal(await getTask(sql, q), null);
    assert.ok((await getTask(sql, run))?.cancelRequestedAt instanceof Date, "the running one is marked for its worker");
    await assert.rejects(cancel(sql, { id: q } as unknown as string), /cancel\(\): give a task id, an array of them, or \{ key \}/);
    await sql`DELETE FROM pgbg.task`;
  });

  test("retry: failed tasks by id, or all of one name, queued again with their attempts reset; others left alone", async () => {
    const [m1, m2, queued] = await enqueueMany(sql, mail, [{ n: 1 }, { n: 2 }, { n: 3 }]);
    const [r1] = await enqueueMany(sql, report, [{ n: 4 }]);
    await fail([m1, m2, r1]);
    assert.deepEqual(await retry(sql, [m1, queued]), [m1]);
    assert.deepEqual(await getTask(sql, m1).then((t) => [t?.state, t?.attempts]), ["queued", 0]);
    assert.deepEqual(await retry(sql, { allFailed: true, name: "report" }), [r1]);
    assert.deepEqual(await retry(sql, m2), [m2]);
    assert.deepEqual(await retry(sql, { allFailed: true }), []);
    await sql`DELETE FROM pgbg.task`;
  });

  test("status: per queue and name, as pgbg status shows it", async () => {
    await enqueueMany(sql, mail, [{ n: 1 }, { n: 2 }]);
    const s = await status(sql);
    assert.deepEqual(s.tasks.map((t) => [t.queue, t.name, t.queued, t.failed]), [["default", "mail", 2, 0]]);
    assert.deepEqual(s.workers, []);
    assert.deepEqual(s.completed, [], "nothing kept in the history");
    await assert.rejects(status(sql, { schema: "Bad Name" }), /invalid schema name/);
    await sql`DELETE FROM pgbg.task`;
  });

  const clients = {
    "postgres.js": () => ({ db: sql as Parameters<typeof status>[0], end: async () => {} }),
    "a node-postgres Pool": () => {
      const pool = new pg.Pool({ connectionString: db.url, max: 4 });
      return { db: pool, end: () => pool.end() };
    },
    "Kysely": () => {
      const kysely = new Kysely<unknown>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: db.url, max: 4 }) }) });
      return { db: kysely as unknown as Parameters<typeof status>[0], end: () => kysely.destroy() };
    },
  };
  for (const [client, make] of Object.entries(clients)) {
    test(`status through ${client}: every figure from one snapshot, a commit between its statements seen by none of them`, async () => {
      const { db: db2, end } = make();
      const holder = await sql.reserve();
      let read: Promise<unknown> | undefined;
      try {
        // The holder locks the worker table, which the unregistered tasks'
        // statement reads and the tasks' statement does not, and enqueues a
        // task no worker registered; status() then starts, and its statement
        // on the worker table waits for the holder's commit.
        await holder`BEGIN`;
        await holder`LOCK TABLE pgbg.worker IN ACCESS EXCLUSIVE MODE`;
        await enqueue(holder as unknown as typeof sql, report, { n: 1 }, { queue: "snapshot" });
        const reading = status(db2);
        read = reading;
        await until(
          async () => (await sql`SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'pgbg.worker'::regclass
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)[0].n as number,
          (n) => n > 0, patience, "status() to wait for the worker table",
        );
        await holder`COMMIT`;
        const figures = (s: Awaited<typeof reading>) => ({
          counted: s.tasks.some((t) => t.queue === "snapshot" && t.queued > 0),
          unregistered: s.unregistered.some((u) => u.queue === "snapshot"),
        });
        // Its snapshot was taken before the commit (by the statements that
        // did not wait), so no figure has the task: separate snapshots list
        // it as unregistered and do not count it.
        assert.deepEqual(figures(await reading), { counted: false, unregistered: false });
        assert.deepEqual(figures(await status(db2)), { counted: true, unregistered: true }, "the next status() sees the commit");
      } finally {
        await read?.catch(() => {});
        await holder`ROLLBACK`.catch(() => {});
        holder.release();
        await end();
        await sql`DELETE FROM pgbg.task`;
      }
    });
  }

  test("status inside the caller's transaction reads in it: what the transaction wrote, with no BEGIN of its own", async () => {
    const inTx = await sql.begin(async (tx) => {
      await enqueue(tx, report, { n: 1 }, { queue: "mine" });
      return await status(tx);
    });
    assert.ok(inTx.tasks.some((t) => t.queue === "mine" && t.queued === 1), "its own uncommitted task counted");
    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    try {
      await client.query("BEGIN");
      await client.query("LOCK TABLE pgbg.task IN SHARE MODE");
      const s = await status(client);
      assert.ok(s.tasks.some((t) => t.queue === "mine"));
      // Still the caller's transaction: its lock is held until it ends.
      const held = await sql`SELECT count(*)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.relation = 'pgbg.task'::regclass AND l.mode = 'ShareLock' AND a.datname = current_database()`;
      assert.equal(held[0].n, 1);
      await client.query("COMMIT");
    } finally {
      await client.end();
      await sql`DELETE FROM pgbg.task`;
    }
  });
});
