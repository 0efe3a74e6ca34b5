/**
 * A queue's rate limit: at most N of its tasks start in any interval,
 * across supervisors and in-process hosts, measured by a ledger of claims
 * that a trigger writes by the database's clock; a task over the limit
 * waits queued and uses no attempt; the limit is reached, not merely kept;
 * bad limits are refused. The same for a rate limit per group.
 */
// Connections at its peak: 50 (two supervisors with their workers, and this file's clients; 47 measured alone: tests/run.ts).
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import * as v from "valibot";
import { createWorker, defineTask, drain, enqueueMany, InvalidOptionsError, migrate, queueSettings, setGroupRateLimit, setQueueRateLimit } from "../mod.ts";
import { pruneTaskCounts } from "../lib/maintenance/count-pruner.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, async (sql) => {
  await migrate(sql);
  await sql`CREATE TABLE claim_ledger (task_id bigint NOT NULL, queue text NOT NULL, attempts integer NOT NULL, at timestamptz NOT NULL, group_name text)`;
  // A start is a row claim (the task's row turns running) or a task a
  // claim row takes (its row left queued: one entry per task of the claim's
  // stretch as the claim writes its row). A task a claim row took that is
  // then given a lease of its own for its outcome (LeaseClaimedTasks) turns
  // running with the attempt its claim row already logged: not a start.
  await sql.unsafe(`
    CREATE FUNCTION record_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NOT EXISTS (SELECT FROM claim_ledger WHERE task_id = NEW.id AND attempts = NEW.attempts) THEN
        INSERT INTO claim_ledger VALUES (NEW.id, NEW.queue, NEW.attempts, clock_timestamp(), NEW.group_name);
      END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER record_claim AFTER UPDATE OF state ON pgbg.task
      FOR EACH ROW WHEN (NEW.state = 'running' AND OLD.state <> 'running') EXECUTE FUNCTION record_claim();
    CREATE FUNCTION record_claim_row() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO claim_ledger
      SELECT t.id, t.queue, t.attempts + 1, clock_timestamp(), t.group_name FROM pgbg.task t
      WHERE t.queue = NEW.queue AND t.name = NEW.name AND t.priority = NEW.priority AND t.state = 'queued'
        AND (t.staged_xact, t.id) > (NEW.after_xact, NEW.after_id) AND (t.staged_xact, t.id) <= (NEW.last_xact, NEW.last_id)
        AND pg_visible_in_snapshot(t.staged_xact, NEW.upto) AND (NEW.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, NEW.since));
      RETURN NULL;
    END $$;
    CREATE TRIGGER record_claim_row AFTER INSERT ON pgbg.claim
      FOR EACH ROW WHEN (NEW.worker_id IS NOT NULL) EXECUTE FUNCTION record_claim_row();`);
});
const { sql } = testbed.db;
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const work = defineTask({ name: "work", schema: v.object({ ms: v.optional(v.number(), 0), failUntil: v.optional(v.number(), 0) }), run() {} });

/** The fixture's tenant-work task (tests/fixtures/tasks.ts): its group is its input's tenant. */
const tenantWork = defineTask({
  name: "tenant-work",
  schema: v.object({ tenant: v.string(), ms: v.optional(v.number(), 0), gather: v.optional(v.number(), 0) }),
  group: (input) => input.tenant,
  run() {},
});

/** The queue's claims by the database's clock, oldest first, in epoch microseconds. */
async function claims(queue: string): Promise<{ at: number; attempts: number; group: string | null }[]> {
  return (await sql`SELECT (extract(epoch FROM at) * 1000000)::bigint AS at, attempts, group_name FROM claim_ledger WHERE queue = ${queue} ORDER BY at`)
    .map((r) => ({ at: Number(r.at), attempts: r.attempts, group: r.group_name }));
}

/** The most claims in any window of `ms` (each window starting at a claim: the busiest always does). */
function mostWithin(at: number[], ms: number): number {
  let most = 0;
  for (let i = 0, j = 0; i < at.length; i++) {
    while (j < at.length && at[j] < at[i] + ms * 1000) j++;
    most = Math.max(most, j - i);
  }
  return most;
}

describe("a queue's rate limit", () => {
  test("two supervisors start at most 10 a second, and 300 in any 30 s, using one attempt each; the rate is reached", async () => {
    await setQueueRateLimit(sql, "rated", { limit: 10, interval: "1s" });
    await enqueueMany(sql, work, Array.from({ length: 340 }, () => ({})), { queue: "rated" });
    // 10 slots a worker: a claim takes a whole second's 10 in one statement,
    // so the rate is reached however a busy machine spreads the claims.
    testbed.serve(["--workers", "2", "--concurrency", "10"]);
    testbed.serve(["--workers", "2", "--concurrency", "10"]);
    // 320 starts take at least 31 s: long enough for a 30 s window.
    await until(async () => (await claims("rated")).length, (n) => n >= 320, patience, "320 starts");
    const ledger = await claims("rated");
    const at = ledger.map((c) => c.at);
    assert.ok(mostWithin(at, 30_000) <= 300, `${mostWithin(at, 30_000)} starts within 30 s under 10/s`);
    assert.equal(mostWithin(at, 1_000), 10, "at most 10, and 10, within a second");
    assert.deepEqual(ledger.filter((c) => c.attempts !== 1), [], "waiting used no attempt");
  });

  test("in process: three hosts keep 5 per 300 ms", async () => {
    await setQueueRateLimit(sql, "burst", { limit: 5, interval: 300 });
    await enqueueMany(sql, work, Array.from({ length: 30 }, () => ({})), { queue: "burst" });
    const hosts = [0, 1, 2].map(() => createWorker(testbed.db.connect({ max: 4 }), { tasks: [work], concurrency: 5, logger: quiet, checkInterval: 200 }));
    await Promise.all(hosts.map((h) => h.start()));
    try {
      await until(async () => (await claims("burst")).length, (n) => n === 30, patience, "30 starts");
    } finally {
      await Promise.all(hosts.map((h) => h.stop()));
    }
    assert.equal(mostWithin((await claims("burst")).map((c) => c.at), 300), 5);
  });

  test("drain() waits for the rate's room (with maxWait) and runs every task within it", async () => {
    await setQueueRateLimit(sql, "drained", { limit: 5, interval: 300 });
    await enqueueMany(sql, work, Array.from({ length: 12 }, () => ({})), { queue: "drained" });
    const result = await drain(sql, { tasks: [work], queues: ["drained"], logger: quiet, maxWait: 60_000 });
    assert.equal(result.ran, 12);
    assert.equal(mostWithin((await claims("drained")).map((c) => c.at), 300), 5);
  });

  test("rate limits are listed with their recent starts, removed with null, and bad ones refused naming the value", async () => {
    await setQueueRateLimit(sql, "shown", { limit: 7, interval: "1m" });
    assert.deepEqual((await queueSettings(sql)).find((q) => q.queue === "shown"), {
      queue: "shown", pausedAt: null, concurrency: null, groupConcurrency: null, rate: { limit: 7, intervalMs: 60_000, recentStarts: 0 }, groupRate: null,
    });
    assert.deepEqual(await setQueueRateLimit(sql, "shown", null), { queue: "shown", pausedAt: null, concurrency: null, groupConcurrency: null, rate: null, groupRate: null });
    assert.equal((await queueSettings(sql)).some((q) => q.queue === "shown"), false);
    for (const limit of [0, -1, 1.5, 10_001, "3"]) {
      await assert.rejects(setQueueRateLimit(sql, "shown", { limit: limit as number, interval: 1000 }), (e: unknown) => e instanceof InvalidOptionsError && /limit must be/.test(e.message));
    }
    for (const interval of [0, "soon", 1.5, 8 * 86_400_000]) {
      await assert.rejects(setQueueRateLimit(sql, "shown", { limit: 1, interval }), (e: unknown) => e instanceof InvalidOptionsError && /interval must be/.test(e.message));
    }
    await assert.rejects(setQueueRateLimit(sql, "bad name", { limit: 1, interval: 1000 }), InvalidOptionsError);
  });
});

describe("a rate limit per group", () => {
  test("two supervisors start at most 4 of each group in any 500 ms, and 4, with the groups side by side, using one attempt each", async () => {
    await setGroupRateLimit(sql, "tenants", { limit: 4, interval: 500 });
    const tenants = ["a", "b", "c"];
    await enqueueMany(sql, tenantWork, Array.from({ length: 16 }, () => tenants.map((tenant) => ({ tenant }))).flat(), { queue: "tenants" });
    // 12 slots a worker: the first claim takes each group's 4 in one
    // statement, so the limit is reached however a busy machine spreads the
    // claims after it (4 slots spread a group's first 4 over workers that
    // start at different times, and left 3 in a window beside a busy neighbour).
    testbed.serve(["--workers", "2", "--concurrency", "12", "--check-interval", "200ms"]);
    testbed.serve(["--workers", "2", "--concurrency", "12", "--check-interval", "200ms"]);
    await until(async () => (await claims("tenants")).length, (n) => n === 48, patience, "48 starts");
    const ledger = await claims("tenants");
    for (const tenant of tenants) {
      assert.equal(mostWithin(ledger.filter((c) => c.group === tenant).map((c) => c.at), 500), 4, `tenant ${tenant}: at most 4, and 4, within 500 ms`);
    }
    assert.ok(mostWithin(ledger.map((c) => c.at), 500) > 4, "the limit is each group's, not the queue's");
    assert.deepEqual(ledger.filter((c) => c.attempts !== 1), [], "waiting used no attempt");
  });

  test("in process: a group over its rate waits, scheduled, while other groups and tasks without a group run", async () => {
    await setGroupRateLimit(sql, "hourly", { limit: 1, interval: "1h" });
    await enqueueMany(sql, tenantWork, [{ tenant: "a" }, { tenant: "a" }, { tenant: "b" }], { queue: "hourly" });
    await enqueueMany(sql, work, Array.from({ length: 5 }, () => ({})), { queue: "hourly" });
    // drain() without maxWait runs what is claimable now: a's first, b's, the five without a group.
    const result = await drain(sql, { tasks: [tenantWork, work], queues: ["hourly"], logger: quiet });
    assert.deepEqual(result, { ran: 7, succeeded: 7, failed: 0, scheduled: 1 });
    const [waiting] = await sql`SELECT group_name, attempts FROM pgbg.task WHERE queue = 'hourly'`;
    assert.deepEqual({ ...waiting }, { group_name: "a", attempts: 0 });
    await setGroupRateLimit(sql, "hourly", null);
    assert.equal((await drain(sql, { tasks: [tenantWork], queues: ["hourly"], logger: quiet })).ran, 1, "without the limit it runs");
  });

  test("group rate limits are listed, removed with null (their logs with them), pruned once they count nothing, and bad ones refused", async () => {
    const settings = await setGroupRateLimit(sql, "shown-groups", { limit: 3, interval: "1m" });
    assert.deepEqual(settings, {
      queue: "shown-groups", pausedAt: null, concurrency: null, groupConcurrency: null, rate: null, groupRate: { limit: 3, intervalMs: 60_000 },
    });
    assert.deepEqual((await queueSettings(sql)).find((q) => q.queue === "shown-groups"), settings);
    // A log whose starts are all older than the interval counts nothing and is pruned; a recent one stays.
    await sql`INSERT INTO pgbg.group_rate (queue, group_name, starts) VALUES
      ('shown-groups', 'old', ARRAY[now() - interval '2 minutes']), ('shown-groups', 'new', ARRAY[now() - interval '2 minutes', now()])`;
    await pruneTaskCounts(sql, "pgbg");
    assert.deepEqual((await sql`SELECT group_name FROM pgbg.group_rate WHERE queue = 'shown-groups'`).map((r) => r.group_name), ["new"]);
    assert.equal((await setGroupRateLimit(sql, "shown-groups", null)).groupRate, null);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.group_rate WHERE queue = 'shown-groups'`)[0].n, 0, "its logs are gone");
    assert.equal((await queueSettings(sql)).some((q) => q.queue === "shown-groups"), false);
    for (const limit of [0, 10_001, "3"]) {
      await assert.rejects(setGroupRateLimit(sql, "shown-groups", { limit: limit as number, interval: 1000 }), (e: unknown) => e instanceof InvalidOptionsError && /^setGroupRateLimit\(\): limit must be/.test(e.message));
    }
    await assert.rejects(setGroupRateLimit(sql, "shown-groups", { limit: 1, interval: "soon" }), (e: unknown) => e instanceof InvalidOptionsError && /interval must be/.test(e.message));
    await assert.rejects(setGroupRateLimit(sql, "bad name", { limit: 1, interval: 1000 }), InvalidOptionsError);
  });
});
