import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { cancel, enqueue, migrate, pauseQueue, resumeQueue, setGroupConcurrency, setGroupRateLimit, setQueueConcurrency, setQueueRateLimit } from "../mod.ts";
import { readTaskStatus } from "../lib/admin.ts";
import { TaskStats } from "../lib/stats.ts";
import { alwaysFails, tenantWork, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { serviceTestbed, stopService, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql } = testbed;

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus' text format strictly: every sample belongs to a family announced by HELP and TYPE. */
function parse(text: string): { samples: Sample[]; types: Map<string, string> } {
  const types = new Map<string, string>();
  const helps = new Set<string>();
  const samples: Sample[] = [];
  assert.ok(text.endsWith("\n"), "the exposition ends with a newline");
  for (const line of text.trimEnd().split("\n")) {
    let m = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (m) {
      if (m[1] === "HELP") helps.add(m[2]);
      else types.set(m[2], m[3]);
      continue;
    }
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[k] = v.replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
    const value = m[3] === "+Inf" ? Infinity : Number(m[3]);
    assert.ok(!Number.isNaN(value), `a number: ${line}`);
    const family = m[1].replace(/_(bucket|sum|count)$/, "");
    const known = types.has(m[1]) ? m[1] : family;
    assert.ok(types.has(known) && helps.has(known), `${m[1]} has HELP and TYPE`);
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types };
}

async function scrape(port: number) {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  return parse(await res.text());
}

const value = (samples: Sample[], name: string, labels: Record<string, string>) =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

describe("pgbg serve --metrics-port", () => {
  test("serves counters, gauges and histograms in Prometheus' text format", async () => {
    const service = testbed.serve(["--workers", "1", "--concurrency", "4", "--metrics-port", "0", "--metrics-host", "127.0.0.1"]);
    const port = (await service.waitForLog((l) => /^metrics at /.test(l.message), 120_000)).metricsPort as number;
    assert.ok(port > 0);
    for (let i = 0; i < 3; i++) await enqueue(sql, work, {}, { queue: "q1" });
    await enqueue(sql, alwaysFails, {});
    await enqueue(sql, work, {}, { delay: 3_600_000, queue: "q1" });
    // Two long tasks the worker's death ends: one on its last attempt (failed for good), one with attempts left (retried).
    const last = await enqueue(sql, work, { ms: 120_000 }, { queue: "q1", maxAttempts: 1 });
    const long = await enqueue(sql, work, { ms: 120_000 }, { queue: "q1" });
    await until(async () => (await sql`SELECT count(*)::int AS n FROM execution WHERE task_id IN (${last}, ${long})`)[0].n, (n) => n === 2, 120_000, "the long tasks to start");

    // The counters come from the workers' reports, the depth from the table:
    // a failure is counted before its write commits, so wait for both.
    const { samples, types } = await until(() => scrape(port), ({ samples }) =>
      value(samples, "pgbg_tasks_completed_total", { queue: "q1", task: "work" }) === 3 &&
      value(samples, "pgbg_tasks_failed_total", { task: "always-fails" }) === 1 &&
      value(samples, "pgbg_queue_depth", { task: "always-fails", state: "failed" }) === 1 &&
      value(samples, "pgbg_tasks_running", { queue: "q1", task: "work" }) === 2, 120_000, "the counts to reach the scrape");
    assert.equal(types.get("pgbg_tasks_completed_total"), "counter");
    assert.equal(types.get("pgbg_tasks_running"), "gauge");
    assert.equal(types.get("pgbg_task_duration_seconds"), "histogram");
    assert.equal(types.get("pgbg_task_lag_seconds"), "histogram");
    assert.equal(value(samples, "pgbg_tasks_retried_total", { task: "always-fails" }), 2);
    assert.equal(value(samples, "pgbg_tasks_failed_total", { queue: "q1", task: "work" }), 0);
    assert.equal(value(samples, "pgbg_tasks_retried_total", { queue: "q1", task: "work" }), 0);
    assert.equal(value(samples, "pgbg_queue_depth", { queue: "q1", task: "work", state: "scheduled" }), 1);
    assert.equal(value(samples, "pgbg_queue_depth", { queue: "q1", task: "work", state: "running" }), 2);
    assert.equal(value(samples, "pgbg_queue_depth", { task: "always-fails", state: "failed" }), 1);
    assert.equal(value(samples, "pgbg_worker_restarts_total", {}), 0);
    assert.equal(value(samples, "pgbg_queue_paused", { queue: "q9" }), undefined, "no queue paused yet");
    await pauseQueue(sql, "q9");
    await sql`INSERT INTO pgbg.schedule (name, task, cron, timezone, last_tick, next_tick) VALUES ('nightly', 'work', '0 3 * * *', 'UTC', '2026-01-01T03:00:00Z', '2026-01-02T03:00:00Z')`;
    const controls = (await scrape(port)).samples;
    assert.equal(value(controls, "pgbg_queue_paused", { queue: "q9" }), 1);
    assert.equal(value(controls, "pgbg_schedule_last_tick_seconds", { schedule: "nightly" }), Date.parse("2026-01-01T03:00:00Z") / 1000);
    assert.equal(value(controls, "pgbg_schedule_next_tick_seconds", { schedule: "nightly" }), Date.parse("2026-01-02T03:00:00Z") / 1000);
    await resumeQueue(sql, "q9");
    await setQueueConcurrency(sql, "q9", 4);
    assert.equal(value((await scrape(port)).samples, "pgbg_queue_concurrency_limit", { queue: "q9" }), 4);
    await setQueueConcurrency(sql, "q9", null);
    // A rate of 1 an hour: the first of two tasks starts, the second waits on the limit.
    await setQueueRateLimit(sql, "q9", { limit: 1, interval: "1h" });
    for (let i = 0; i < 2; i++) await enqueue(sql, work, {}, { queue: "q9" });
    const rated = (await until(() => scrape(port), ({ samples }) =>
      value(samples, "pgbg_queue_rate_starts", { queue: "q9" }) === 1 && value(samples, "pgbg_queue_limit_waiting", { queue: "q9" }) === 1,
      120_000, "the rate's start and waiting task to reach the scrape")).samples;
    assert.equal(value(rated, "pgbg_queue_rate_limit", { queue: "q9" }), 1);
    assert.equal(value(rated, "pgbg_queue_rate_interval_seconds", { queue: "q9" }), 3600);
    await setQueueRateLimit(sql, "q9", null);
    // A limit of 1 per group: of tenant a's three long tasks one runs, two wait on it; tenant b's runs.
    await setGroupConcurrency(sql, "q9", 1);
    const tenants = [];
    for (const tenant of ["a", "a", "a", "b"]) tenants.push(await enqueue(sql, tenantWork, { tenant, ms: tenant === "a" ? 120_000 : 0 }, { queue: "q9" }));
    await until(() => scrape(port), ({ samples }) => value(samples, "pgbg_queue_limit_waiting", { queue: "q9" }) === 2 &&
      value(samples, "pgbg_queue_depth", { queue: "q9", task: "tenant-work", state: "running" }) === 1 &&
      value(samples, "pgbg_queue_depth", { queue: "q9", task: "tenant-work", state: "queued" }) === 2,
    120_000, "tenant a's waiting tasks to reach the scrape");
    await setGroupConcurrency(sql, "q9", null);
    await cancel(sql, tenants);
    // A rate of 1 an hour per group: of tenant c's two tasks one starts, one waits on its group's rate; tenant d's starts.
    await setGroupRateLimit(sql, "q9", { limit: 1, interval: "1h" });
    const rateTenants = [];
    for (const tenant of ["c", "c", "d"]) rateTenants.push(await enqueue(sql, tenantWork, { tenant }, { queue: "q9" }));
    const groupRated = (await until(() => scrape(port), ({ samples }) => value(samples, "pgbg_queue_limit_waiting", { queue: "q9" }) === 1 &&
      value(samples, "pgbg_queue_depth", { queue: "q9", task: "tenant-work", state: "queued" }) === 1,
    120_000, "tenant c's waiting task to reach the scrape")).samples;
    assert.equal(value(groupRated, "pgbg_queue_group_rate_limit", { queue: "q9" }), 1);
    assert.equal(value(groupRated, "pgbg_queue_group_rate_interval_seconds", { queue: "q9" }), 3600);
    await setGroupRateLimit(sql, "q9", null);
    await cancel(sql, rateTenants);

    for (const metric of ["pgbg_task_duration_seconds", "pgbg_task_lag_seconds"]) {
      const buckets = samples.filter((s) => s.name === `${metric}_bucket` && s.labels.task === "always-fails");
      assert.ok(buckets.length > 2);
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i].value >= buckets[i - 1].value, `${metric} buckets are cumulative`);
      assert.equal(buckets.at(-1)!.labels.le, "+Inf");
      assert.equal(buckets.at(-1)!.value, 3, `${metric}: three attempts`);
      assert.equal(value(samples, `${metric}_count`, { task: "always-fails" }), 3);
      assert.ok(value(samples, `${metric}_sum`, { task: "always-fails" })! >= 0);
    }
    // The lag counts started attempts (5 of work in q1), the duration ended ones (3).
    assert.equal(value(samples, "pgbg_task_lag_seconds_count", { queue: "q1", task: "work" }), 5);
    assert.equal(value(samples, "pgbg_task_duration_seconds_count", { queue: "q1", task: "work" }), 3);

    // A worker killed from outside is restarted, and counted; the attempts
    // its death ended count as its handlers' failures would: in the
    // metrics and in `pgbg status`.
    const [{ pid }] = await sql`SELECT pid FROM pgbg.worker`;
    process.kill(pid, "SIGKILL");
    const after = await until(() => scrape(port), ({ samples }) => value(samples, "pgbg_worker_restarts_total", {}) === 1 &&
      value(samples, "pgbg_tasks_failed_total", { queue: "q1", task: "work" }) === 1, 120_000, "the restart and the failure to be counted");
    assert.equal(value(after.samples, "pgbg_tasks_retried_total", { queue: "q1", task: "work" }), 1);
    assert.deepEqual((await sql`SELECT state FROM pgbg.task WHERE id = ${last}`).map((r) => r.state), ["failed"]);
    const status = (await readTaskStatus(sql, "pgbg")).find((t) => t.queue === "q1" && t.name === "work")!;
    assert.equal(status.failedLastMinute, 1, "pgbg status: FAILED/1M");
    assert.equal(status.retriedLastMinute, 1, "pgbg status: RETRIED/1M");
    const notFound = await fetch(`http://127.0.0.1:${port}/other`);
    assert.equal(notFound.status, 404);
    await notFound.text();
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("a port that cannot be bound exits 1 with one line", async () => {
    const { createServer } = await import("node:net");
    const blocker = createServer().listen(0, "127.0.0.1");
    await new Promise((r) => blocker.once("listening", r));
    const port = (blocker.address() as { port: number }).port;
    const service = testbed.serve(["--metrics-port", String(port), "--metrics-host", "127.0.0.1"]);
    const exit = await service.exited;
    blocker.close();
    assert.equal(exit.code, 1);
    assert.match(service.other.join("\n"), new RegExp(`pgbg: cannot serve metrics on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
  });
});

test("a worker's counts are kept per queue and task name: one name in two queues is two series, each found again by its pair", () => {
  const stats = new TaskStats();
  const mail = stats.series("mail", "send");
  const bulk = stats.series("bulk", "send");
  assert.notEqual(mail, bulk);
  assert.equal(stats.series("mail", "send"), mail);
  assert.notEqual(stats.series("mail", "other"), mail);
  mail.completed += 2;
  bulk.failed += 1;
  assert.deepEqual(stats.take().map((s) => [s.queue, s.name, s.completed, s.failed]).sort(), [["bulk", "send", 0, 1], ["mail", "send", 2, 0]]);
  assert.deepEqual(stats.take(), [], "taken counts are zeroed");
});
