import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { parseArgs } from "../cli/args.ts";
import { dashboardArgs } from "../cli/args-table.ts";
import { exitCodeOf } from "../cli/exit.ts";
import { enqueue, enqueueFlow, flowTask, migrate, pausedQueues, setQueueRateLimit } from "../mod.ts";
import { alwaysFails, measured, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { serviceTestbed, until, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql, db } = testbed;
const token = "a-dashboard-token-for-tests-only";
/** Debian's chromium: `.ci/run` installs it when it is missing. */
const CHROMIUM = process.env.PGBG_CHROMIUM ?? "/usr/bin/chromium";
/**
 * A fresh machine may have no browser, and installing one needs root, so the
 * browser checks are skipped there, saying why; `.ci/run` sets
 * PGBG_REQUIRE_BROWSER=1, which makes a missing browser a failure instead.
 */
const noBrowser = !existsSync(CHROMIUM) && process.env.PGBG_REQUIRE_BROWSER !== "1"
  ? `no Chromium at ${CHROMIUM} (apt-get install chromium, or set PGBG_CHROMIUM): the browser checks are skipped`
  : false;

/** Starts `pgbg dashboard` on a free port and resolves with it and its URL. */
async function startDashboard(env: Record<string, string> = {}, args: string[] = ["--port", "0"]): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, [...typeScript, cli, "dashboard", ...args], {
    env: { ...process.env, DATABASE_URL: db.url, PGBG_DASHBOARD_TOKEN: token, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (c) => (out += c));
  child.stderr!.on("data", (c) => (out += c));
  const url = await within(new Promise<string>((resolve, reject) => {
    child.stdout!.on("data", () => {
      const m = /dashboard at (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on("exit", (code) => reject(new Error(`pgbg dashboard exited with ${code}: ${out}`)));
  }), 120_000, "the dashboard to listen");
  return { child, url, output: () => out };
}

async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  child.kill("SIGTERM");
  return exited;
}

/**
 * Clicks a button of a table the dashboard redraws live (every 2 s) until
 * `query` says it took effect. A redraw that replaces the button between
 * the press and the release loses the click, as it would a user's (once, on
 * CI, Pause was never seen in 2 minutes): the button is pressed again
 * while it is still there and enabled, which it is not while its own
 * action is in flight.
 */
async function clickUntil<T>(page: Page, selector: string, query: () => Promise<T>, done: (value: T) => boolean, what: string): Promise<T> {
  await page.click(selector);
  return await until(async () => {
    const value = await query();
    if (!done(value) && await page.$(`${selector}:not([disabled])`)) await page.click(selector, { timeout: 1_000 }).catch(() => {});
    return value;
  }, done, 120_000, what);
}

const row = async (id: string) => (await sql`SELECT * FROM pgbg.task WHERE id = ${id}`)[0];
const runs = async (id: string) => (await sql`SELECT count(*)::int AS n FROM execution WHERE task_id = ${id}`)[0].n as number;

/**
 * The number of distinct colours in a PNG, counted by the browser itself on
 * a blank page (no Content-Security-Policy there): a blank screenshot has one.
 */
async function distinctColours(file: string): Promise<number> {
  const page = await browser.newPage();
  try {
    return await page.evaluate(async (png) => {
      const img = new Image();
      img.src = `data:image/png;base64,${png}`;
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.width;
      canvas.height = img.height;
      const context = canvas.getContext("2d")!;
      context.drawImage(img, 0, 0);
      const data = context.getImageData(0, 0, img.width, img.height).data;
      const colours = new Set<number>();
      for (let i = 0; i < data.length; i += 4) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      return colours.size;
    }, readFileSync(file).toString("base64"));
  } finally {
    await page.close();
  }
}

/** A new page, signed in (by the cookie an earlier test's sign-in left in this profile, or now), and the script errors it meets. */
async function signedIn() {
  const page = await browser.newPage();
  const problems: string[] = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(dashboard.url);
  if (await page.$("#token")) {
    await page.fill("#token", token);
    await page.click("#sign-in");
  }
  await page.waitForSelector("#overview");
  return { page, problems };
}

let dashboard: { child: ChildProcess; url: string; output: () => string };
let browser: BrowserContext;
let profile: string;

describe("pgbg dashboard", () => {
  before(async () => {
    // The token by flag (the other tests give it by environment), no --host.
    dashboard = await startDashboard({ PGBG_DASHBOARD_TOKEN: "" }, ["--port", "0", "--token", token]);
    assert.match(dashboard.url, /^http:\/\/127\.0\.0\.1:\d+\/$/, "bound to 127.0.0.1 unless told otherwise");
    if (noBrowser) return;
    profile = mkdtempSync(join(tmpdir(), "pgbg-chromium-"));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      chromiumSandbox: false,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
    });
  });
  after(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    // Its output with it: once, on CI, it exited with status 1 midway and the next tests found nothing listening.
    if (dashboard) assert.equal(await stop(dashboard.child), 0, `the dashboard stops with status 0 on SIGTERM; it wrote:\n${dashboard.output()}`);
  });

  test("without the token the API answers 401; a wrong token and a cross-site POST are refused", async () => {
    const api = await fetch(`${dashboard.url}api/status`);
    assert.equal(api.status, 401);
    await api.text();
    const wrong = await fetch(`${dashboard.url}api/status`, { headers: { authorization: "Bearer not-the-token-at-all" } });
    assert.equal(wrong.status, 401);
    await wrong.text();
    const right = await fetch(`${dashboard.url}api/status`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(right.status, 200);
    assert.deepEqual(Object.keys(await right.json()), ["tasks", "unregistered", "workers", "completed", "queues", "schedules"]);
    const crossSite = await fetch(`${dashboard.url}api/retry`, {
      method: "POST", headers: { authorization: `Bearer ${token}`, "content-type": "text/plain" }, body: '{"all":true}',
    });
    assert.equal(crossSite.status, 415, "a POST that is not JSON (what a cross-site form can send) is refused");
    await crossSite.text();
  });

  test("an action signed in by the cookie needs the page's CSRF token; every answer carries a strict Content-Security-Policy", async () => {
    const login = await fetch(`${dashboard.url}login`, {
      method: "POST", redirect: "manual", headers: { "content-type": "application/x-www-form-urlencoded" }, body: `token=${token}`,
    });
    assert.equal(login.status, 303);
    await login.text();
    const cookie = login.headers.get("set-cookie")!.split(";")[0];
    const page = await fetch(dashboard.url, { headers: { cookie } });
    const html = await page.text();
    const csrf = /<meta name="pgbg-csrf" content="([0-9a-f]{64})">/.exec(html)?.[1];
    assert.ok(csrf, "the page carries its CSRF token");
    for (const res of [page, await fetch(`${dashboard.url}api/status`, { headers: { cookie } }), await fetch(`${dashboard.url}dashboard.js`)]) {
      const policy = res.headers.get("content-security-policy") ?? "";
      assert.match(policy, /^default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';/, res.url);
      assert.doesNotMatch(policy, /unsafe/, "no inline script or style, no eval");
      assert.match(res.headers.get("x-content-type-options") ?? "", /nosniff/);
      if (!res.bodyUsed) await res.text();
    }
    const action = (headers: Record<string, string>) => fetch(`${dashboard.url}api/pause`, {
      method: "POST", headers: { cookie, "content-type": "application/json", ...headers }, body: '{"queue":"csrf-test"}',
    });
    const without = await action({});
    assert.equal(without.status, 403);
    assert.match(await without.text(), /CSRF token \(header x-pgbg-csrf\) is missing or wrong/);
    const wrong = await action({ "x-pgbg-csrf": "0".repeat(64) });
    assert.equal(wrong.status, 403);
    await wrong.text();
    assert.deepEqual(await pausedQueues(sql), [], "nothing was paused by the refused actions");
    const right = await action({ "x-pgbg-csrf": csrf! });
    assert.equal(right.status, 200, await right.clone().text());
    await right.text();
    assert.deepEqual((await pausedQueues(sql)).map((q) => q.queue), ["csrf-test"]);
    await sql`UPDATE pgbg.queue SET paused_at = NULL WHERE name = 'csrf-test'`;
  });

  test("without the token, the page asks to sign in and refuses a wrong token", { skip: noBrowser }, async () => {
    const page = await browser.newPage();
    const response = await page.goto(dashboard.url);
    assert.equal(response?.status(), 401);
    await page.fill("#token", "wrong-token-wrong-token");
    await page.click("#sign-in");
    await page.waitForSelector("#login-error");
    assert.match(await page.textContent("#login-error") ?? "", /not the dashboard's/);
    await page.close();
  });

  test("shows the live status and failed tasks; Retry re-queues a failed task and Cancel deletes one", { skip: noBrowser }, async () => {
    const toRetry = await enqueue(sql, work, { failUntil: 99 }, { maxAttempts: 1 });
    const toCancel = await enqueue(sql, alwaysFails, {}, { maxAttempts: 1 });
    testbed.serve(["--workers", "1"]);
    await until(async () => [(await row(toRetry)).state, (await row(toCancel)).state], (s) => s.join() === "failed,failed", 120_000, "both tasks to fail");

    const page = await browser.newPage();
    const problems: string[] = [];
    page.on("pageerror", (e) => problems.push(e.message));
    await page.goto(dashboard.url);
    await page.fill("#token", token);
    await page.click("#sign-in");
    await page.waitForSelector(`#failed tr[data-id="${toRetry}"]`, { timeout: 120_000 });
    const failedRow = await page.textContent(`#failed tr[data-id="${toRetry}"]`);
    assert.match(failedRow ?? "", /planned failure on attempt 1/, "the last error is shown");
    await page.waitForSelector('#tasks tr[data-task="work"]');
    assert.match(await page.textContent("#workers tbody") ?? "", /\d+\/10/, "the live worker is listed");

    // Refreshed live: a task enqueued now shows without a reload.
    await enqueue(sql, work, {}, { delay: 3_600_000, queue: "later" });
    await page.waitForSelector('#tasks tr[data-queue="later"]', { timeout: 120_000 });

    assert.match(await page.textContent('#tasks tr[data-queue="later"]') ?? "", /^later\s*work\s*0\s*1\s*0\s*0/);

    // A completed task with a result: listed, newest first, with its result.
    const kept = await enqueue(sql, measured, {});
    await page.waitForSelector(`#completed tr[data-id="${kept}"]`, { timeout: 120_000 });
    assert.match(await page.textContent(`#completed tr[data-id="${kept}"]`) ?? "", new RegExp(`^${kept}measured\\s*default\\s*1.*\\{"pid":\\d+,"attempt":1\\}$`));
    await clickUntil(page, `#failed tr[data-id="${toRetry}"] button.retry`, () => runs(toRetry), (n) => n === 2, "the retried task to run again");
    await clickUntil(page, `#failed tr[data-id="${toCancel}"] button.cancel`, () => row(toCancel), (r) => r === undefined, "the cancelled task to be deleted");
    await page.waitForSelector(`#failed tr[data-id="${toCancel}"]`, { state: "detached", timeout: 120_000 });

    // The completed task's page: the attempt that completed it, with its worker, start and end.
    await page.fill("#search", kept);
    await page.click("#filter");
    await page.waitForSelector(`#found tr[data-id="${kept}"] button.open`, { timeout: 120_000 });
    await page.click(`#found tr[data-id="${kept}"] button.open`);
    await page.waitForFunction((id) => document.getElementById("task-title")?.textContent === `Task ${id}: measured (completed)`, kept, { timeout: 120_000 });
    const keptAttempts = await page.$$eval("#task-errors tbody tr", (rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent ?? "")));
    assert.equal(keptAttempts.length, 1, JSON.stringify(keptAttempts));
    const [number, worker, started, ended, outcome] = keptAttempts[0];
    assert.deepEqual([number, outcome], ["1", "completed"]);
    assert.match(worker, /^[0-9a-f-]{36}$/);
    assert.ok(Date.parse(started) <= Date.parse(ended), `${started} ≤ ${ended}`);

    // Pause and resume a queue.
    await clickUntil(page, '#queues tr[data-queue="later"] button.pause', () => pausedQueues(sql), (p) => p.some((q) => q.queue === "later"), "the queue to be paused");
    await page.waitForSelector('#queues tr[data-queue="later"] button.resume', { timeout: 120_000 });
    assert.match(await page.textContent('#queues tr[data-queue="later"]') ?? "", /^laterpaused since /);
    await clickUntil(page, '#queues tr[data-queue="later"] button.resume', () => pausedQueues(sql), (p) => p.length === 0, "the queue to be resumed");
    // A rate limit shows with its starts in the interval.
    await setQueueRateLimit(sql, "later", { limit: 3, interval: 1000 });
    await page.waitForFunction(() => /3 per 1000 ms\s*0/.test(document.querySelector('#queues tr[data-queue="later"]')?.textContent ?? ""), undefined, { timeout: 120_000 });
    await setQueueRateLimit(sql, "later", null);

    // A schedule, as a host declares it: shown, and Run now asks for a run.
    await sql`INSERT INTO pgbg.schedule (name, task, cron, timezone, last_tick, next_tick) VALUES ('nightly', 'work', '0 3 * * *', 'Europe/Berlin', now(), now() + interval '1 day')`;
    await page.waitForSelector('#schedules tr[data-schedule="nightly"]', { timeout: 120_000 });
    assert.match(await page.textContent('#schedules tr[data-schedule="nightly"]') ?? "", /^nightlywork0 3 \* \* \*Europe\/Berlin.*active/);
    await clickUntil(page, '#schedules tr[data-schedule="nightly"] button.run', async () => (await sql`SELECT run_requested_at FROM pgbg.schedule WHERE name = 'nightly'`)[0].run_requested_at, Boolean, "the run to be asked for");
    assert.deepEqual(problems, [], "no script errors");
    await page.close();
  });

  test("finds tasks: filters (the enqueue time's range among them) narrow the list with its count, a search finds a task by key, a task's page shows its input and last error, and Retry and Cancel act", { skip: noBrowser }, async () => {
    // Enqueued for later, so that no worker takes it before it is made to look failed.
    const failing = await enqueue(sql, alwaysFails, {}, { queue: "find", maxAttempts: 1, key: "find-me-failing", delay: 3_600_000 });
    const queued = await enqueue(sql, work, {}, { queue: "find", delay: 3_600_000, key: "find-me-queued" });
    // A key of digits, as an order number may be: found by search as a key, not taken for an id alone.
    const byNumber = await enqueue(sql, work, {}, { queue: "find-other", delay: 3_600_000, key: "4242" });
    // As a worker leaves a task that failed twice (tests/admin-api.test.ts checks that it does).
    const first = { name: "Error", message: "card expired", attempt: 1, worker: "w-1", startedAt: "2026-12-01T10:00:00Z", at: "2026-12-01T10:00:01Z" };
    const second = { name: "Error", message: "card declined", stack: "Error: card declined\n    at charge (billing.ts:12:9)", attempt: 2, worker: "w-2" };
    await sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), attempts = 2, last_error = ${sql.json(second)}, errors = ${sql.json([first, second])}
      WHERE id = ${failing}`;
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on("pageerror", (e) => problems.push(e.message));
    // Signed in by the cookie an earlier test's sign-in set in this browser profile.
    await page.goto(dashboard.url);
    await page.waitForSelector("#find");

    // The queues table sums each queue's tasks: in "find", one scheduled (the failed one is not counted there).
    await page.waitForSelector('#queues tr[data-queue="find"]', { timeout: 120_000 });
    const queueRow = await page.$$eval('#queues tr[data-queue="find"] td', (tds) => tds.map((td) => td.textContent));
    assert.deepEqual(queueRow.slice(7, 12), ["0", "1", "0", "0", "0"], "queued, scheduled, running, done and failed in the last minute");

    // A filter narrows the list, and the count says how many.
    await page.fill("#filter-queue", "find");
    await page.click("#filter");
    await page.waitForSelector(`#found tr[data-id="${queued}"]`, { timeout: 120_000 });
    assert.deepEqual(await page.$$eval("#found tbody tr", (rows) => rows.map((r) => (r as HTMLElement).dataset.id)), [failing, queued]);
    assert.equal(await page.textContent("#found-count"), "2 task(s)");
    await page.selectOption("#filter-state", "failed");
    await page.click("#filter");
    await page.waitForFunction(() => document.querySelectorAll("#found tbody tr").length === 1, undefined, { timeout: 120_000 });
    assert.equal(await page.getAttribute("#found tbody tr", "data-id"), failing);
    assert.equal(await page.textContent("#found-count"), "1 task(s)");

    // A search by dedup key, the other filters cleared.
    await page.selectOption("#filter-state", "");
    await page.fill("#filter-queue", "");
    await page.fill("#search", "find-me-queued");
    await page.click("#filter");
    await page.waitForFunction((id) => [...document.querySelectorAll("#found tbody tr")].map((r) => (r as HTMLElement).dataset.id).join() === id, queued, { timeout: 120_000 });

    await page.fill("#search", "4242");
    await page.click("#filter");
    await page.waitForFunction((id) => [...document.querySelectorAll("#found tbody tr")].map((r) => (r as HTMLElement).dataset.id).includes(id), byNumber, { timeout: 120_000 });

    // The enqueue time's range, in the browser's local time: a task enqueued
    // an hour ago is left out of the last half hour, and found before it.
    const earlier = await enqueue(sql, work, {}, { queue: "find-time", delay: 3_600_000 });
    const later = await enqueue(sql, work, {}, { queue: "find-time", delay: 3_600_000 });
    await sql`UPDATE pgbg.task SET enqueued_at = now() - interval '1 hour' WHERE id = ${earlier}`;
    const localAgo = (minutes: number) => page.evaluate((m) => {
      const at = new Date(Date.now() - m * 60_000);
      return new Date(at.getTime() - at.getTimezoneOffset() * 60_000).toISOString().slice(0, 19);
    }, minutes);
    const listed = (ids: string) => page.waitForFunction((ids) => [...document.querySelectorAll("#found tbody tr")].map((r) => (r as HTMLElement).dataset.id).join() === ids, ids, { timeout: 120_000 });
    await page.fill("#search", "");
    await page.fill("#filter-queue", "find-time");
    await page.fill("#filter-from", await localAgo(30));
    await page.click("#filter");
    await listed(later);
    assert.equal(await page.textContent("#found-count"), "1 task(s)");
    await page.fill("#filter-from", await localAgo(90));
    await page.fill("#filter-to", await localAgo(30));
    await page.click("#filter");
    await listed(earlier);
    await page.fill("#filter-from", "");
    await page.fill("#filter-to", "");
    await page.fill("#filter-queue", "");

    // The failed task's page: its input, key and last error with its stack; Retry queues it again.
    await page.fill("#search", failing);
    await page.click("#filter");
    await page.waitForSelector(`#found tr[data-id="${failing}"] button.open`, { timeout: 120_000 });
    await page.click(`#found tr[data-id="${failing}"] button.open`);
    await page.waitForSelector('#task-fields tr[data-field="stack"]');
    assert.equal(await page.textContent("#task-title"), `Task ${failing}: always-fails (failed)`);
    assert.equal(await page.textContent('#task-fields tr[data-field="dedup key"] td.value'), "find-me-failing");
    assert.equal(await page.textContent('#task-fields tr[data-field="input"] td.value'), "{}");
    assert.equal(await page.textContent('#task-fields tr[data-field="last error"] td.value'), "Error: card declined");
    assert.match(await page.textContent('#task-fields tr[data-field="stack"] td.value') ?? "", /at charge \(billing\.ts:12:9\)/);
    // Both attempts' errors, the newest first.
    assert.deepEqual(await page.$$eval("#task-errors tbody tr", (rows) => rows.map((r) => (r as HTMLElement).innerText.replace(/\s+/g, " ").trim())), [
      "2 w-2 Error: card declined Error: card declined at charge (billing.ts:12:9)",
      "1 w-1 2026-12-01T10:00:00Z 2026-12-01T10:00:01Z Error: card expired",
    ]);
    await page.click("#task-actions button.retry");
    // Queued again (or, with a worker of an earlier test still serving, run again: it never ran before).
    await until(async () => [(await row(failing))?.state, await runs(failing)], ([state, n]) => state === "queued" || (n as number) > 0, 120_000, "the retried task to be queued");
    // Cancel from the queued task's page deletes it.
    await sql`UPDATE pgbg.task SET schedule = 'nightly' WHERE id = ${queued}`;
    await page.fill("#search", queued);
    await page.click("#filter");
    await page.waitForSelector(`#found tr[data-id="${queued}"] button.open`, { timeout: 120_000 });
    await page.click(`#found tr[data-id="${queued}"] button.open`);
    await page.waitForFunction((id) => document.getElementById("task-title")?.textContent === `Task ${id}: work (scheduled)`, queued, { timeout: 120_000 });
    // Enqueued by a schedule (marked below as the scheduler marks its ticks' tasks): the page names it.
    assert.equal(await page.textContent('#task-fields tr[data-field="schedule"] td.value'), "nightly");
    await page.click("#task-actions button.cancel");
    await until(() => row(queued), (r) => r === undefined, 120_000, "the cancelled task to be deleted");
    assert.deepEqual(problems, [], "no script errors");
    await page.close();
  });

  test("charts: each chart's series add up to the run's outcomes and starts, per queue and task name; a task that failed twice shows both attempts; screenshots", { skip: noBrowser }, async () => {
    // Sampled while every pgbg serve of this test runs: one task waiting for its time in every sample.
    await sql`DELETE FROM pgbg.task_depth`;
    await enqueue(sql, work, {}, { queue: "charts", delay: 3_600_000 });
    for (let i = 0; i < 3; i++) await enqueue(sql, work, {}, { queue: "charts" });
    await enqueue(sql, work, { failUntil: 1 }, { queue: "charts", maxAttempts: 2 });
    const twice = await enqueue(sql, alwaysFails, {}, { queue: "charts", maxAttempts: 2 });
    testbed.serve(["--workers", "1", "--queues", "charts"]);
    await until(async () => [(await row(twice))?.state, (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'charts' AND state <> 'failed'`)[0].n],
      ([state, left]) => state === "failed" && left === 1, 120_000, "the chart's tasks to end");
    // Known: 4 completed (one on its second attempt), 1 failed for good after 1 retry, 1 retry of the flaky one; 7 attempts started.
    const { page, problems } = await signedIn();
    await page.setViewportSize({ width: 1400, height: 900 });
    await page.waitForSelector('#chart-queue option[value="charts"]', { state: "attached", timeout: 120_000 });
    await page.selectOption("#chart-queue", "charts");
    const drawn = () => page.$$eval(".chart path.series", (paths) => Object.fromEntries(paths.map((p) => {
      const values = (p.getAttribute("data-values") ?? "").split(",").filter((v) => v !== "").map(Number);
      return [p.getAttribute("data-series"), { sum: values.reduce((n, v) => n + v, 0), count: values.length, values }];
    })));
    /** Waits until the outcomes chart, over `minutes` minutes, shows completed, failed and retried adding up to `want`. */
    const sums = async (want: string, minutes = 60) => {
      await page.waitForFunction(([want, minutes]) => {
        // No named inner function: the test's compiler would wrap it in a helper the page lacks.
        const values = ["completed", "failed", "retried"].map((key) => (document.querySelector(`#chart-outcomes path[data-series="${key}"]`)?.getAttribute("data-values") ?? "").split(","));
        return values.every((v) => v.length === minutes) && values.map((v) => v.reduce((n, x) => n + Number(x || 0), 0)).join() === want;
      }, [want, minutes] as const, { timeout: 120_000 });
      return drawn();
    };
    let charts = await sums("4,1,2");
    assert.deepEqual([charts.completed.count, charts.failed.count], [60, 60], "a point per minute of the hour");
    // Start latency: a p50 and a p95 for each minute in which attempts started (7 of them), p95 never below p50.
    assert.ok(charts.latencyP50Ms.count >= 1 && charts.latencyP50Ms.count === charts.latencyP95Ms.count, JSON.stringify(charts.latencyP50Ms));
    const latency = await page.$$eval("#chart-latency path.series", (paths) => paths.map((p) => (p.getAttribute("data-values") ?? "").split(",")));
    assert.ok(latency[0].every((p50, i) => p50 === "" || Number(latency[1][i]) >= Number(p50)), JSON.stringify(latency));
    // Depth: minutes sampled while serving hold the waiting task; the others are gaps, not zeros.
    assert.ok(charts.scheduled.count >= 1 && charts.scheduled.values.every((v: number) => v === 1), JSON.stringify(charts.scheduled));
    // One task name: work's 4 completions and 1 retry; always-fails' failure and retry.
    await page.waitForSelector('#chart-name option[value="work"]', { state: "attached" });
    await page.selectOption("#chart-name", "work");
    await sums("4,0,1");
    await page.selectOption("#chart-name", "always-fails");
    await sums("0,1,1");
    await page.selectOption("#chart-range", "1440");
    charts = await sums("0,1,1", 1440);
    assert.equal(charts.completed.count, 1440, "a point per minute of the day");
    await page.selectOption("#chart-name", "");
    await page.selectOption("#chart-range", "60");
    await sums("4,1,2");
    const shots = process.env.PGBG_SCREENSHOTS ?? mkdtempSync(join(tmpdir(), "pgbg-screens-"));
    const overview = join(shots, "dashboard-overview.png");
    await page.screenshot({ path: overview, clip: { x: 0, y: 0, width: 1400, height: 900 } });

    // The task that failed twice: both attempts, each with its worker, start, end and error.
    await page.fill("#search", twice);
    await page.click("#filter");
    await page.click(`#found tr[data-id="${twice}"] button.open`);
    await page.waitForFunction(() => document.querySelectorAll("#task-errors tbody tr").length === 2, undefined, { timeout: 120_000 });
    const attempts = await page.$$eval("#task-errors tbody tr", (rows) => rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent ?? "")));
    assert.deepEqual(attempts.map((a) => a[0]), ["2", "1"], "newest first");
    for (const [, worker, started, ended, error] of attempts) {
      assert.match(worker, /^[0-9a-f-]{36}$/);
      assert.ok(Date.parse(started) <= Date.parse(ended), `${started} ${ended}`);
      assert.match(error, /non-Error value thrown: a plain string/);
    }
    const taskShot = join(shots, "dashboard-task.png");
    await page.locator("#task").screenshot({ path: taskShot });
    for (const shot of [overview, taskShot]) assert.ok(await distinctColours(shot) > 8, `${shot} is not blank`);
    // An action sent from the signed-in page without its CSRF token (the cookie goes with it): refused, and nothing retried.
    const refused = await page.evaluate(async (id) => {
      const res = await fetch("/api/retry", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ids: [id] }) });
      return [res.status, await res.text()];
    }, twice);
    assert.equal(refused[0], 403, String(refused[1]));
    assert.equal((await row(twice)).state, "failed");
    assert.deepEqual(problems, [], "no script errors");
    await page.close();
  });

  test("draws a flow's graph, lists its tasks with their parents, and Cancel flow cancels what has not run", { skip: noBrowser }, async () => {
    const flow = await enqueueFlow(sql, {
      root: flowTask(work, {}, { queue: "nobody-serves" }),
      left: flowTask(work, {}, { queue: "nobody-serves", dependsOn: ["root"] }),
      right: flowTask(work, {}, { queue: "nobody-serves", dependsOn: ["root"] }),
      join: flowTask(work, {}, { queue: "nobody-serves", dependsOn: ["left", "right"] }),
    });
    const { page, problems } = await signedIn();
    await page.waitForSelector(`#flows tr[data-id="${flow.id}"] button.show`, { timeout: 120_000 });
    // From the fan-in's page, which names its flow, to the flow's graph.
    await page.fill("#search", flow.tasks.join);
    await page.click("#filter");
    await page.click(`#found tr[data-id="${flow.tasks.join}"] button.open`);
    await page.waitForSelector('#task-fields tr[data-field="flow"]', { timeout: 120_000 });
    assert.equal(await page.textContent('#task-fields tr[data-field="flow"] td.value'), flow.id);
    await page.click("#task-actions button.show");
    await page.waitForSelector(`#flow-graph g[data-id="${flow.tasks.join}"]`, { timeout: 120_000 });
    // Four nodes in three columns, an arrow per dependency.
    const nodes = await page.$$eval("#flow-graph g.node", (gs) => gs.map((g) => [g.getAttribute("data-id"), g.getAttribute("class"), g.querySelector("rect")!.getAttribute("x")]));
    const x = Object.fromEntries(nodes.map(([id, , left]) => [id, Number(left)]));
    assert.equal(nodes.length, 4);
    assert.ok(x[flow.tasks.root] < x[flow.tasks.left] && x[flow.tasks.left] === x[flow.tasks.right] && x[flow.tasks.right] < x[flow.tasks.join], JSON.stringify(x));
    assert.deepEqual(nodes.find(([id]) => id === flow.tasks.join)?.[1], "node state-waiting");
    const edges = await page.$$eval("#flow-graph line.edge", (ls) => ls.map((l) => `${l.getAttribute("data-from")}>${l.getAttribute("data-to")}`).sort());
    assert.deepEqual(edges, [
      `${flow.tasks.left}>${flow.tasks.join}`, `${flow.tasks.right}>${flow.tasks.join}`, `${flow.tasks.root}>${flow.tasks.left}`, `${flow.tasks.root}>${flow.tasks.right}`,
    ].sort());
    assert.match(await page.textContent(`#flow-tasks tr[data-id="${flow.tasks.join}"]`) ?? "", new RegExp(`waiting0${flow.tasks.left}, ${flow.tasks.right}`));
    await page.click("#cancel-flow");
    await until(() => sql`SELECT count(*)::int AS n FROM pgbg.task WHERE flow_id = ${flow.id}`.then((r) => r[0].n), (n) => n === 0, 120_000, "the flow to be cancelled");
    await page.waitForSelector(`#flow-graph g[data-id="${flow.tasks.root}"].state-finished`, { timeout: 120_000 });
    assert.deepEqual(problems, [], "no script errors");
    await page.close();
  });

  test("refuses to start without a token, with a short one, or on a bad port (exit 2, one line)", () => {
    // In process, through the parser the binary runs before it connects (tests/cli.test.ts runs the binary's refusal).
    for (const [env, args, message] of [
      [{ PGBG_DASHBOARD_TOKEN: "" }, ["--port", "0"], /^pgbg: --token \(PGBG_DASHBOARD_TOKEN\) is required/],
      [{ PGBG_DASHBOARD_TOKEN: "short" }, ["--port", "0"], /at least 16 characters$/],
      [{}, ["--port", "http"], /^pgbg: --port \(PGBG_DASHBOARD_PORT\) must be a whole number from 0 to 65535, got "http"$/],
      [{}, ["--port", "70000"], /^pgbg: --port \(PGBG_DASHBOARD_PORT\) must be a whole number from 0 to 65535, got "70000"$/],
      [{}, ["--port", "0", "--host", ""], /^pgbg: --host \(PGBG_DASHBOARD_HOST\) must be an IP address or a host name such as 127.0.0.1, got ""$/],
      [{ PGBG_DASHBOARD_HOST: "not a host" }, ["--port", "0"], /^pgbg: --host \(PGBG_DASHBOARD_HOST\) must be an IP address or a host name such as 127.0.0.1, got "not a host"$/],
    ] as const) {
      const refused = () => parseArgs(args, dashboardArgs, { DATABASE_URL: db.url, PGBG_DASHBOARD_TOKEN: token, ...env });
      assert.throws(refused, (error) => exitCodeOf(error) === 2 && message.test(`pgbg: ${(error as Error).message}`), `${JSON.stringify(env)} ${args.join(" ")}`);
    }
  });
});
