import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import * as v from "valibot";
import { createWorker, defineTask, enqueue, enqueueMany, migrate } from "../mod.ts";
import { type AdminCommandName, runAdmin } from "../cli/admin.ts";
import { createTestDatabase } from "./harness.ts";
import { generatePrismaClient } from "./prisma.ts";
import { patience, startService, stopService, until, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const db = await createTestDatabase();
const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

test("the README's API example runs as written and enqueues what it says", async () => {
  const section = readme.slice(readme.indexOf("## Define and enqueue tasks"));
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(example, "the README has the example");
  const mod = fileURLToPath(new URL("../mod.ts", import.meta.url));
  // Imported from this checkout instead of the published package; the client
  // is closed so the script can exit.
  const script = `${example.replace('from "pgbg"', `from ${JSON.stringify(mod)}`)}\nawait sql.end();\n`;
  const file = fileURLToPath(new URL(`./readme-example-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(file, script);
  after(() => rmSync(file, { force: true }));
  const result = spawnSync(process.execPath, [...typeScript, file], { env: { ...process.env, DATABASE_URL: db.url }, encoding: "utf8", timeout: 60_000 });
  assert.equal(result.status, 0, result.stderr);
  const rows = await db.sql`SELECT name, queue, key, priority, max_attempts, payload FROM pgbg.task ORDER BY id`;
  assert.equal(rows.length, 4);
  assert.deepEqual(rows.map((r) => r.name), ["send-email", "send-email", "send-email", "send-email"]);
  assert.deepEqual({ ...rows[0] }, {
    name: "send-email", queue: "mail", key: "welcome:42", priority: 0, max_attempts: 5, payload: { to: "ada@example.com", subject: "hi" },
  });
  assert.deepEqual(rows.slice(1).map((r) => r.payload.to), ["ada@example.com", "ada@example.com", "grace@example.com"]);
});

test("the README's exactly-once example (chargeOrder) runs under pgbg serve and commits its write with the completion", async () => {
  const section = readme.slice(readme.indexOf("## What pgbg guarantees"));
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(example?.includes("const chargeOrder = defineTask("), "the README has the example");
  const mod = fileURLToPath(new URL("../mod.ts", import.meta.url));
  // The block as written, in a tasks module with the names it takes from its context.
  const tasks = [
    `import * as v from "valibot";`,
    `import postgres from "postgres";`,
    `import { defineTask } from ${JSON.stringify(mod)};`,
    `const sql = postgres(process.env.DATABASE_URL!, { max: 2 });`,
    example,
    `export { chargeOrder };`,
  ].join("\n");
  const file = fileURLToPath(new URL(`./readme-charge-order-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(file, tasks);
  after(() => rmSync(file, { force: true }));
  await migrate(db.sql);
  await db.sql`CREATE TABLE orders (id integer PRIMARY KEY, charged boolean NOT NULL DEFAULT false)`;
  await db.sql`INSERT INTO orders (id) VALUES (7), (8)`;
  const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
  const enqueued = spawnSync(process.execPath, [...typeScript, cli, "enqueue", "charge-order", '{"orderId":7}', "--tasks", file, "--json"], {
    env: { ...process.env, DATABASE_URL: db.url }, encoding: "utf8", timeout: 60_000,
  });
  assert.equal(enqueued.status, 0, enqueued.stderr);
  const { id } = JSON.parse(enqueued.stdout);
  const service = startService(db.url, ["--tasks", file, "--check-interval", "200ms"]);
  try {
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${id}`)[0].n, (n) => n === 0, patience, "the task to complete");
  } catch (error) {
    await stopService(service);
    throw error;
  }
  assert.deepEqual(await stopService(service), { code: 0, signal: null });
  const orders = await db.sql`SELECT id, charged FROM orders ORDER BY id`;
  assert.deepEqual(orders.map((o) => [o.id, o.charged]), [[7, true], [8, false]]);
  assert.ok(service.logs.some((l) => l.id === id && /succeeded/.test(l.message)), "it ran and succeeded");
});

/** The first ts block after `heading`, written to a temporary file importing this checkout instead of the package. */
function exampleFile(heading: string, name: string): { file: string; example: string } {
  const section = readme.slice(readme.indexOf(heading));
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(example, `the README has the example under ${heading}`);
  const mod = fileURLToPath(new URL("../mod.ts", import.meta.url));
  const file = fileURLToPath(new URL(`./readme-${name}-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(file, example.replace('from "pgbg"', `from ${JSON.stringify(mod)}`));
  after(() => rmSync(file, { force: true }));
  return { file, example };
}

/** Runs a TypeScript file (through the tests' loader, tests/ts-loader) against the test database; resolves what it printed and its status. */
function runTs(file: string, ...args: string[]) {
  return spawnSync(process.execPath, [...typeScript, file, ...args], { env: { ...process.env, DATABASE_URL: db.url }, encoding: "utf8", timeout: patience });
}

/**
 * `pgbg command args…` of this checkout against the test database, run in
 * this process through the parsing and the run the binary calls (runAdmin;
 * a spawned `pgbg` costs about 0.7 s of CPU): its exit status and output.
 */
const pgbg = async (command: string, ...args: string[]) => {
  const { code, stdout, stderr } = await within(runAdmin(command as AdminCommandName, args, { ...process.env, DATABASE_URL: db.url }), patience, `pgbg ${command}`);
  return { status: code, stdout, stderr };
};

/**
 * The first two ts blocks after `heading`: a tasks module and an app that
 * imports it from "./tasks.ts", each written to a temporary file importing
 * this checkout instead of the package (the app importing the tasks file).
 */
function tasksAndApp(heading: string, name: string): { tasks: string; app: string; tasksBlock: string; appBlock: string } {
  const section = readme.slice(readme.indexOf(heading));
  const [tasksBlock, appBlock] = [...section.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(tasksBlock && appBlock?.includes('from "./tasks.ts"'), `the README has a tasks module and an app importing it under ${heading}`);
  const mod = JSON.stringify(fileURLToPath(new URL("../mod.ts", import.meta.url)));
  const tasks = fileURLToPath(new URL(`./readme-${name}-tasks-${process.pid}.tmp.ts`, import.meta.url));
  const app = fileURLToPath(new URL(`./readme-${name}-app-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(tasks, tasksBlock.replace('from "pgbg"', `from ${mod}`));
  writeFileSync(app, appBlock.replace('from "pgbg"', `from ${mod}`).replace('from "./tasks.ts"', `from ${JSON.stringify(tasks)}`));
  after(() => [tasks, app].forEach((f) => rmSync(f, { force: true })));
  return { tasks, app, tasksBlock, appBlock };
}

test("the README's in-process worker example runs as written, runs its task, and stops cleanly on SIGTERM", async () => {
  const { file } = exampleFile("## Run workers in your own process", "in-process");
  await migrate(db.sql);
  const child = spawn(process.execPath, [...typeScript, file], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const ran = new Promise<void>((resolve) => child.stdout!.on("data", (d) => (output += d) && output.includes("resizing https://example.com/cat.png, attempt 1") && resolve()));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  child.stderr!.on("data", (d) => (output += d));
  try {
    await within(ran, patience, "the task to run");
    child.kill("SIGTERM");
    assert.equal(await within(exited, patience, "the example to exit"), 0, output);
  } finally {
    child.kill("SIGKILL");
  }
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 0, "its worker row is gone");
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'resize-image'`)[0].n, 0, "its task is done");
});

test("the README's drain example passes under node --test, as written", async () => {
  const { file } = exampleFile("## Testing your tasks", "drain");
  await migrate(db.sql);
  // Without the runner's marker, the child reports as a test run of its own.
  const { NODE_TEST_CONTEXT: _, ...env } = process.env;
  const result = spawnSync(process.execPath, ["--import", "tsx", "--test", file], { env: { ...env, DATABASE_URL: db.url }, encoding: "utf8", timeout: patience });
  assert.equal(result.status, 0, result.stdout + result.stderr);
  assert.match(result.stdout, /pass 1/);
});

test("the README's retries example runs as written: PermanentError, the backoff function, and the default backoff", async () => {
  const { file } = exampleFile("### Retries", "retries");
  await migrate(db.sql);
  // A stand-in for the accounts API: gone (404), busy (429, an hour), flaky (500 once), ada (200).
  const calls: string[] = [];
  const api = createServer((req, res) => {
    const account = req.url!.split("/").at(-1)!;
    calls.push(account);
    if (account === "gone") res.writeHead(404);
    else if (account === "busy") res.writeHead(429, { "retry-after": "3600" });
    else if (account === "flaky" && calls.filter((c) => c === "flaky").length === 1) res.writeHead(500);
    else res.writeHead(200);
    res.end();
  });
  await new Promise<void>((resolve) => api.listen(0, "127.0.0.1", resolve));
  after(() => api.close());
  process.env.ACCOUNTS_API = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
  const { syncAccount } = await import(file);
  const worker = createWorker(db.sql, { tasks: [syncAccount], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
  await worker.start();
  try {
    const [gone, busy, flaky, ada] = await Promise.all(["gone", "busy", "flaky", "ada"].map((account) => enqueue(db.sql, syncAccount, { account })));
    const row = (id: string) => db.sql`SELECT state::text, attempts, last_error,
      run_at > now() + interval '47 minutes' AND run_at <= now() + interval '61 minutes' AS in_an_hour FROM pgbg.task WHERE id = ${id}`.then((r) => r[0]);
    const failed = await until(() => row(gone), (r) => r?.state === "failed", patience, "the 404 to fail");
    assert.deepEqual([failed.attempts, failed.last_error.name, failed.last_error.message], [1, "PermanentError", "no account gone"]);
    const waiting = await until(() => row(busy), (r) => r?.attempts === 1 && r.state === "queued", patience, "the 429 to fail once");
    assert.deepEqual([waiting.state, waiting.in_an_hour], ["queued", true], "waits what retry-after says, less up to 20 %");
    await until(() => Promise.all([row(flaky), row(ada)]), (rows) => rows.every((r) => r === undefined), patience, "flaky and ada to succeed");
    assert.deepEqual(calls.filter((c) => c === "flaky").length, 2, "flaky was retried once, after the backoff's first second");
  } finally {
    await worker.stop();
  }
});

test("the README's admin API example runs as written: retries every failed send-email task, page by page, and cancels by key", async () => {
  const { file } = exampleFile("## Look after tasks from your code", "admin-api");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  const sendEmail = defineTask({ name: "send-email", schema: v.object({ n: v.number() }), run() {} });
  const failed = await enqueueMany(db.sql, sendEmail, Array.from({ length: 1_203 }, (_, n) => ({ n })));
  await db.sql`UPDATE pgbg.task SET state = 'failed', failed_at = now(), attempts = 25, last_error = '{"name":"Error","message":"smtp down"}'
    WHERE id IN ${db.sql(failed)}`;
  const keyed = await enqueue(db.sql, sendEmail, { n: -1 }, { key: "welcome:42" });
  const result = runTs(file);
  assert.equal(result.status, 0, result.stderr);
  // status() also counts the last minute's outcomes of the tests before this one: any number of pairs.
  assert.match(result.stdout, /^1203 retried; [1-9]\d* queue\/task pairs, 0 live workers$/m);
  const states = await db.sql`SELECT state::text, attempts, count(*)::int AS n FROM pgbg.task GROUP BY 1, 2`;
  assert.deepEqual(states.map((r) => ({ ...r })), [{ state: "queued", attempts: 0, n: 1_203 }], "every failed task queued again, none left failed");
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${keyed}`)[0].n, 0, "the keyed task was cancelled");
  await db.sql`DELETE FROM pgbg.task`;
});

test("the README's snooze example runs as written: the task waits an hour uncounted while the ledger is open", async () => {
  const section = readme.slice(readme.indexOf("- **`ctx.retryAfter(ms)`** snoozes"));
  const example = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(example?.includes("monthlyReport"), "the README has the example");
  const mod = fileURLToPath(new URL("../mod.ts", import.meta.url));
  const file = fileURLToPath(new URL(`./readme-snooze-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(file, example!.replace('from "pgbg"', `from ${JSON.stringify(mod)}`));
  after(() => rmSync(file, { force: true }));
  await migrate(db.sql);
  process.env.LEDGER_CLOSED = "2026-10";
  const { monthlyReport } = await import(file);
  const worker = createWorker(db.sql, { tasks: [monthlyReport], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
  await worker.start();
  try {
    const [open, closed] = await Promise.all(["2026-11", "2026-10"].map((month) => enqueue(db.sql, monthlyReport, { month })));
    // A minute's slack on both sides: this read's now() may be a moment
    // earlier than the snooze's, which it sees (its transaction began
    // before the snooze committed, its snapshot after).
    const row = (id: string) => db.sql`SELECT state::text, attempts, snoozes,
      run_at BETWEEN now() + interval '59 minutes' AND now() + interval '61 minutes' AS in_an_hour FROM pgbg.task WHERE id = ${id}`.then((r) => r[0]);
    const snoozed = await until(() => row(open), (r) => r?.snoozes === 1, patience, "the open month to snooze");
    assert.deepEqual({ ...snoozed }, { state: "queued", attempts: 0, snoozes: 1, in_an_hour: true });
    await until(() => row(closed), (r) => r === undefined, patience, "the closed month to be built");
  } finally {
    await worker.stop();
  }
});

test("the README's zod example runs as written: typed, validated at enqueue, and run with the schema's output", async () => {
  const { file } = exampleFile("### Schemas: valibot, zod, arktype", "zod");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  const { invite, inviteAda } = await import(file);
  const id = await inviteAda(db.sql);
  assert.deepEqual((await db.sql`SELECT payload FROM pgbg.task WHERE id = ${id}`)[0].payload, { email: "ada@example.com" });
  await assert.rejects(enqueue(db.sql, invite, { email: "nope" }), /invalid input for task "invite": email: /);
  const seen: string[] = [];
  const log = console.log;
  console.log = (line: string) => void seen.push(line);
  try {
    const worker = createWorker(db.sql, { tasks: [invite], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    await worker.start();
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${id}`)[0].n, (n) => n === 0, patience, "the invite to run");
    await worker.stop();
  } finally {
    console.log = log;
  }
  assert.deepEqual(seen, ["inviting ada@example.com as member"], "run got the default the schema filled in");
});

test("the README's input upgrade example runs as written: tasks enqueued by version 1 run on version 2, in-process and under pgbg serve", async () => {
  const { file } = exampleFile("### Changing a task's input", "upgrade");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  // Version 1 of the definition, as the app had it when these were enqueued.
  const v1 = defineTask({ name: "send-newsletter", schema: v.object({ to: v.pipe(v.string(), v.email()), issue: v.number() }), run() {} });
  const { sendNewsletter } = await import(file);
  const [old1, old2] = await enqueueMany(db.sql, v1, [{ to: "ada@example.com", issue: 7 }, { to: "grace@example.com", issue: 8 }]);
  const fresh = await enqueue(db.sql, sendNewsletter, { to: ["alan@example.com", "edsger@example.com"], issue: 9 });
  assert.deepEqual((await db.sql`SELECT id::text, input_version FROM pgbg.task ORDER BY id`).map((r) => [r.id, r.input_version]), [[old1, 1], [old2, 1], [fresh, 2]]);

  const seen: string[] = [];
  const log = console.log;
  console.log = (line: string) => void seen.push(line);
  try {
    const worker = createWorker(db.sql, { tasks: [sendNewsletter], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    await worker.start();
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, (n) => n === 0, patience, "the tasks to run in-process");
    await worker.stop();
  } finally {
    console.log = log;
  }
  assert.ok(seen.includes("issue 7 to ada@example.com") && seen.includes("issue 8 to grace@example.com"), seen.join("\n"));
  assert.ok(seen.includes("issue 9 to alan@example.com, edsger@example.com"), seen.join("\n"));

  // Whatever is left of version 1 runs under pgbg serve, with the README's module as its tasks.
  await enqueue(db.sql, v1, { to: "barbara@example.com", issue: 10 });
  const service = startService(db.url, ["--tasks", file, "--check-interval", "200ms"]);
  try {
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, (n) => n === 0, patience, "the rest to run under pgbg serve");
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
  assert.ok(service.other.some((line) => line.includes("issue 10 to barbara@example.com")), service.other.join("\n"));
  assert.ok(!service.logs.some((l) => l.level === "error"), "no task failed");
});

test("the README's events example runs as written: a retry warning per failed attempt, and one alert when the task fails for good", async () => {
  const { file } = exampleFile("### Events: alerting, and failed tasks elsewhere", "events");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  const alerts: string[] = [];
  const hook = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      alerts.push(JSON.parse(body).text);
      res.end();
    });
  });
  await new Promise<void>((resolve) => hook.listen(0, "127.0.0.1", resolve));
  after(() => hook.close());
  process.env.ALERT_WEBHOOK = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/`;
  const warnings: string[] = [];
  const warn = console.warn;
  console.warn = (line: string) => void warnings.push(line);
  // The example connects to DATABASE_URL as it loads: this file's database.
  process.env.DATABASE_URL = db.url;
  const { chargeCard, worker } = await import(file);
  try {
    const bad = await enqueue(db.sql, chargeCard, { order: -7 });
    const good = await enqueue(db.sql, chargeCard, { order: 7 });
    await until(async () => alerts.length, (n) => n === 1, patience, "the alert");
    assert.deepEqual(alerts, [`charge-card ${bad} failed for good: card declined for order -7`]);
    assert.deepEqual(warnings.filter((w) => w.startsWith(`charge-card ${bad}:`)), [1, 2].map((a) => `charge-card ${bad}: attempt ${a} failed (card declined for order -7); again in 100 ms`));
    assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id = ${good}`)[0].n, 0, "the good one completed");
    assert.equal((await db.sql`SELECT state::text FROM pgbg.task WHERE id = ${bad}`)[0].state, "failed");
  } finally {
    console.warn = warn;
    await worker.stop();
  }
});

test("the README's onFailed example runs as written: one dead-letter row per task that failed for good", async () => {
  const { file } = exampleFile("**`onFailed`, durable.**", "on-failed");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  await db.sql`CREATE TABLE IF NOT EXISTS dead_letter (task_id bigint PRIMARY KEY, task text NOT NULL, input jsonb NOT NULL, error text)`;
  const feeds = createServer((req, res) => res.writeHead(req.url === "/ok" ? 200 : 503).end());
  await new Promise<void>((resolve) => feeds.listen(0, "127.0.0.1", resolve));
  after(() => feeds.close());
  const base = `http://127.0.0.1:${(feeds.address() as AddressInfo).port}`;
  process.env.DATABASE_URL = db.url;
  const { importFeed } = await import(file);
  const worker = createWorker(db.sql, { tasks: [importFeed], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
  await worker.start();
  try {
    const down = await enqueue(db.sql, importFeed, { url: `${base}/down` });
    const ok = await enqueue(db.sql, importFeed, { url: `${base}/ok` });
    const rows = await until(() => db.sql`SELECT task_id::text AS id, task, input, error FROM dead_letter`, (r) => r.length === 1, patience, "the dead letter");
    assert.deepEqual({ ...rows[0] }, { id: down, task: "import-feed", input: { url: `${base}/down` }, error: `${base}/down: 503` });
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE name = 'import-feed:on-failed' OR id = ${ok}`)[0].n, (n) => n === 0, patience, "the hook and the good feed to be done");
    assert.equal((await db.sql`SELECT attempts FROM pgbg.task WHERE id = ${down}`)[0].attempts, 3);
  } finally {
    await worker.stop();
  }
});

test("the README's results example runs as written: waits for the result, and getTask shows it kept a day", async () => {
  const { file } = exampleFile("## Results and history", "results");
  await migrate(db.sql);
  const result = runTs(file);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.equal(lines[0], "thumbnail https://example.com/cat.png?w=64: 65536 bytes");
  assert.match(lines[1], /^completed \d{4}-\d\d-\d\dT\S+Z {"url":"https:\/\/example\.com\/cat\.png\?w=64","bytes":65536}$/);
  const [kept] = await db.sql`SELECT extract(epoch FROM expires_at - finished_at)::int AS seconds, result FROM pgbg.history WHERE name = 'thumbnail'`;
  assert.deepEqual({ ...kept }, { seconds: 86_400, result: { url: "https://example.com/cat.png?w=64", bytes: 65536 } });
});

test("the README's throttle and debounce example runs as written: one sync, and one reindex of the last text", async () => {
  const { file } = exampleFile("### Throttle and debounce", "throttle");
  await migrate(db.sql);
  const result = runTs(file);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  assert.deepEqual(result.stdout.trim().split("\n"), ["throttled: one sync", 'one reindex, of "hello"']);
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE key IN ('sync:ada', 'reindex:d1')`)[0].n, 2);
});

test("the README's schedule and pause example runs as written, in-process and under pgbg serve with pgbg pause and resume", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("## Recurring tasks and queue controls", "schedule");
  assert.ok(tasksBlock.includes("defineSchedule(") && appBlock.includes("pauseQueue("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.ok(lines.filter((l) => l.startsWith("cleaning up what is older than ")).length >= 4, result.stdout);
  assert.ok(lines.includes("paused: 2 ticks wait"), result.stdout);
  assert.match(lines.at(-1)!, /^cleanup-every-2s: last tick \S+Z, next \S+Z$/);

  // The tasks module under pgbg serve, paused and resumed with the CLI.
  const waiting = async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'maintenance'`)[0].n;
  const ran = (service: ReturnType<typeof startService>) => service.logs.filter((l) => l.task === "cleanup" && /succeeded/.test(l.message)).length;
  const service = startService(db.url, ["--tasks", tasks, "--workers", "1"]);
  try {
    await until(async () => ran(service), (n) => n >= 2, patience, "two ticks' tasks to run under pgbg serve");
    assert.equal((await pgbg("pause", "maintenance")).status, 0);
    await until(waiting, (n) => n >= 2, patience, "two ticks to wait in the paused queue");
    const shown = JSON.parse((await pgbg("status", "--json")).stdout);
    assert.deepEqual(shown.queues.map((p: { queue: string }) => p.queue), ["maintenance"]);
    assert.equal(shown.schedules[0].name, "cleanup-every-2s");
    assert.match((await pgbg("status")).stdout, /cleanup-every-2s +cleanup +\*\/2 \* \* \* \* \* +UTC/);
    assert.equal((await pgbg("resume", "maintenance")).stdout, "resumed maintenance\n");
    await until(waiting, (n) => n === 0, patience, "the waiting ticks to run once resumed");
    assert.equal((await pgbg("run-schedule", "cleanup-every-2s")).status, 0);
    const unknown = await pgbg("run-schedule", "nope");
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /no schedule named "nope"/);
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
});

test("the README's concurrency limit example runs as written, in-process and under pgbg serve: at most 2 at once, and 2 reached; pgbg limit sets and removes a limit", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("### Concurrency limits", "limits");
  assert.ok(tasksBlock.includes("export const callPartner") && appBlock.includes("setQueueConcurrency("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.equal(lines.filter((l) => /^called the partner for \d+; at most [12] at once here$/.test(l)).length, 20, result.stdout);
  assert.equal(lines.at(-1), "at most 2 at once");

  // Under pgbg serve, the limit the app set still in force: one worker
  // process that could run 10 at once runs 2, so its own count is the
  // queue's (tests/limits.test.ts checks several supervisors against the
  // execution record).
  const { callPartner } = await import(tasks);
  await enqueueMany(db.sql, callPartner, Array.from({ length: 20 }, (_, n) => ({ n: 100 + n })));
  const service = startService(db.url, ["--tasks", tasks, "--workers", "1", "--concurrency", "10"]);
  const counts = () => service.other.map((l) => /^called the partner for 1\d\d; at most (\d+) at once here$/.exec(l)?.[1]).filter(Boolean).map(Number);
  try {
    await until(async () => counts().length, (n) => n === 20, patience, "the 20 calls to run under pgbg serve");
    assert.equal(Math.max(...counts()), 2, service.other.join("\n"));
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }

  assert.equal((await pgbg("limit", "partner-api", "3")).stdout, "queue partner-api: at most 3 running at once\n");
  assert.match((await pgbg("status")).stdout, /partner-api +running +3/);
  assert.equal((await pgbg("limit", "partner-api", "off")).stdout, "queue partner-api has no concurrency limit\n");
  const bad = await pgbg("limit", "partner-api", "0");
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /the limit must be a whole number of at least 1, or off/);
});

test("the README's rate limit example runs as written, in-process and under pgbg serve: 12 starts at 5 a second take 2 s or more; pgbg rate sets and removes it", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("### Rate limits", "rate");
  assert.ok(tasksBlock.includes("export const geocode") && appBlock.includes("setQueueRateLimit("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.equal(lines.filter((l) => /^geocoding \d+ Main St$/.test(l)).length, 12, result.stdout);
  const seconds = /^12 geocodes took (\d+\.\d) s$/.exec(lines.at(-1)!);
  assert.ok(seconds && Number(seconds[1]) >= 2, result.stdout);

  // Under pgbg serve, with the limit set by pgbg rate as the README shows.
  assert.equal((await pgbg("rate", "geocoder", "5/1s")).stdout, "queue geocoder: at most 5 starts per 1s\n");
  assert.match((await pgbg("status")).stdout, /geocoder +running +none +none +5\/1s +\d+/);
  const service = startService(db.url, ["--tasks", tasks, "--workers", "2"]);
  try {
    await service.waitForLog((l) => /^worker \d ready/.test(l.message), patience);
    const { geocode } = await import(tasks);
    const t0 = Date.now();
    await enqueueMany(db.sql, geocode, Array.from({ length: 12 }, (_, n) => ({ address: `${n} Elm St` })));
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'geocoder'`)[0].n, (n) => n === 0, patience, "the geocodes to run under pgbg serve");
    assert.ok(Date.now() - t0 >= 2_000, `12 starts at 5 a second took ${Date.now() - t0} ms`);
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
  assert.equal((await pgbg("rate", "geocoder", "off")).stdout, "queue geocoder has no rate limit\n");
  for (const bad of ["0/1s", "5", "5/0s", "10001/1s", "5/soon"]) {
    const refused = await pgbg("rate", "geocoder", bad);
    assert.equal(refused.status, 2, bad);
    assert.match(refused.stderr, /the rate must be N\/INTERVAL/);
  }
});

test("the README's group example runs as written, in-process and under pgbg serve: a small tenant's tasks run, in order, ahead of a big tenant's backlog; pgbg limit --per-group sets and removes it", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("### Groups: fair turns and a limit per tenant", "groups");
  assert.ok(tasksBlock.includes("group: (input) => input.tenant") && appBlock.includes("setGroupConcurrency("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.deepEqual(lines.filter((l) => l.startsWith("synced small")), ["synced small 1", "synced small 2"], result.stdout);
  const big = lines.filter((l) => l.startsWith("synced big")).map((l) => Number(l.split(" ")[2]));
  assert.deepEqual(big, big.toSorted((a, b) => a - b), "one at a time, in enqueue order");
  // The worker runs on until stop(), so big syncs may print after this line.
  const toGo = lines.map((l) => /^small's 2 syncs ran while big had (\d+) of 100 to go$/.exec(l)).find(Boolean);
  assert.ok(toGo && Number(toGo[1]) >= 50, result.stdout);

  // Under pgbg serve, with the limit set by pgbg limit --per-group as the README shows.
  await db.sql`DELETE FROM pgbg.task WHERE queue = 'sync'`;
  assert.equal((await pgbg("limit", "sync", "1", "--per-group")).stdout, "queue sync: at most 1 of each group running at once\n");
  assert.match((await pgbg("status")).stdout, /sync +running +none +1 +none/);
  const { syncTenant } = await import(tasks);
  await enqueueMany(db.sql, syncTenant, Array.from({ length: 200 }, (_, account) => ({ tenant: "big", account })));
  await enqueueMany(db.sql, syncTenant, [{ tenant: "small", account: 1 }, { tenant: "small", account: 2 }]);
  const left = async (tenant: string) => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'sync' AND group_name = ${tenant}`)[0].n as number;
  const service = startService(db.url, ["--tasks", tasks, "--workers", "2"]);
  try {
    await until(() => left("small"), (n) => n === 0, patience, "the small tenant's tasks to run under pgbg serve");
    assert.ok((await left("big")) >= 100, "the small tenant did not wait for the big one's backlog");
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
  assert.equal((await pgbg("limit", "sync", "off", "--per-group")).stdout, "queue sync has no group limit\n");
});

test("the README's group rate example runs as written, in-process and under pgbg serve: an account's 6 starts at 2 a second take 2 s or more while another account's run; pgbg rate --per-group sets and removes it", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("### Rate limits per group", "group-rate");
  assert.ok(tasksBlock.includes("group: (input) => input.account") && appBlock.includes("setGroupRateLimit("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.deepEqual(lines.filter((l) => l.startsWith("notified ")).toSorted(), [
    ...[1, 2, 3, 4, 5, 6].map((n) => `notified acme #${n}`), "notified globex #1", "notified globex #2",
  ], result.stdout);
  // 6 starts at 2 a second: acme's 5th cannot start until 2 s after its 1st, while globex's start at once.
  const toGo = lines.map((l) => /^globex's 2 ran while acme had (\d) of 6 to go$/.exec(l)).find(Boolean);
  assert.ok(toGo && Number(toGo[1]) >= 1, result.stdout);
  const seconds = lines.map((l) => /^acme's 6 took (\d+\.\d) s$/.exec(l)).find(Boolean);
  assert.ok(seconds && Number(seconds[1]) >= 2, result.stdout);

  // Under pgbg serve, with the limit set by pgbg rate --per-group as the README shows.
  await pgbg("rate", "notify", "off", "--per-group");
  assert.equal((await pgbg("rate", "notify", "2/1s", "--per-group")).stdout, "queue notify: at most 2 starts of each group per 1s\n");
  assert.match((await pgbg("status")).stdout, /notify +running +none +none +none +2\/1s/);
  const service = startService(db.url, ["--tasks", tasks, "--workers", "2"]);
  try {
    await service.waitForLog((l) => /^worker \d ready/.test(l.message), patience);
    const { notifyAccount } = await import(tasks);
    const t0 = Date.now();
    await enqueueMany(db.sql, notifyAccount, [1, 2, 3, 4, 5, 6].map((n) => ({ account: "acme", n })));
    await enqueueMany(db.sql, notifyAccount, [1, 2].map((n) => ({ account: "globex", n })));
    await until(async () => (await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE queue = 'notify'`)[0].n, (n) => n === 0, patience, "the notifications to run under pgbg serve");
    assert.ok(Date.now() - t0 >= 2_000, `acme's 6 starts at 2 a second took ${Date.now() - t0} ms`);
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
  assert.equal((await pgbg("rate", "notify", "off", "--per-group")).stdout, "queue notify has no group rate limit\n");
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.group_rate WHERE queue = 'notify'`)[0].n, 0, "the groups' logs are forgotten");
});

test("the README's node-postgres, Kysely, Drizzle and Prisma examples run as written: each sign-up commits its user with its task; a failed one leaves neither", async () => {
  const heading = "### Enqueue from node-postgres, Kysely or Drizzle";
  const { file } = exampleFile(heading, "clients");
  const [, prismaBlock] = [...readme.slice(readme.indexOf(heading)).matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(prismaBlock?.includes("signUpWithPrisma"), "the README has the Prisma block");
  const prismaFile = fileURLToPath(new URL(`./readme-clients-prisma-${process.pid}.tmp.ts`, import.meta.url));
  writeFileSync(prismaFile, prismaBlock.replace('from "pgbg"', `from ${JSON.stringify(fileURLToPath(new URL("../mod.ts", import.meta.url)))}`)
    .replace('from "./signup.ts"', `from ${JSON.stringify(file)}`).replace('from "./generated/prisma/client.ts"', `from ${JSON.stringify(generatePrismaClient())}`));
  after(() => rmSync(prismaFile, { force: true }));
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  // Checked at COMMIT, so a duplicate fails after the enqueue ran in the transaction.
  await db.sql`CREATE TABLE users (id int, CONSTRAINT users_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)`;
  const { pool, signUpWithPg, signUpWithKysely, signUpWithDrizzle } = await import(file);
  const { prisma, signUpWithPrisma } = await import(prismaFile);
  pool.on("error", () => {}); // idle clients ended when the test database is dropped
  try {
    await signUpWithPg(1);
    await signUpWithKysely(2);
    await signUpWithDrizzle(3);
    await signUpWithPrisma(4);
    // User 1 exists: each commit fails, and takes the enqueue with it.
    for (const signUp of [signUpWithPg, signUpWithKysely, signUpWithDrizzle, signUpWithPrisma]) {
      // (Drizzle wraps the driver's error, Prisma names the violation in its own words.)
      await assert.rejects(signUp(1), (e: Error) => /users_id|UniqueConstraintViolation/.test(`${e.message} ${(e.cause as Error | undefined)?.message}`));
    }
  } finally {
    await pool.end();
    await prisma.$disconnect();
  }
  assert.deepEqual((await db.sql`SELECT id FROM users ORDER BY id`).map((r) => r.id), [1, 2, 3, 4]);
  const tasks = await db.sql`SELECT name, payload FROM pgbg.task ORDER BY id`;
  assert.deepEqual(tasks.map((t) => [t.name, t.payload.user]), [["welcome", 1], ["welcome", 2], ["welcome", 3], ["welcome", 4]]);
});

test("the README's OpenTelemetry example runs as written: the request, the attempt and the handler's span are one trace", async () => {
  const { file } = exampleFile("### Traces (OpenTelemetry)", "tracing");
  await migrate(db.sql);
  await db.sql`DELETE FROM pgbg.task`;
  const before = process.env.DATABASE_URL;
  process.env.DATABASE_URL = db.url;
  try {
    const { exporter } = await import(file);
    const spans = exporter.getFinishedSpans() as { name: string; spanContext(): { traceId: string; spanId: string }; parentSpanContext?: { spanId: string } }[];
    const byName = (name: string) => spans.find((s) => s.name === name)!;
    const [request, attempt, own] = ["POST /upload", "process resize-image", "fetch the image"].map(byName);
    assert.ok(request && attempt && own, `the three spans: ${spans.map((s) => s.name).join(", ")}`);
    assert.equal(new Set([request, attempt, own].map((s) => s.spanContext().traceId)).size, 1, "one trace");
    assert.equal(attempt.parentSpanContext?.spanId, request.spanContext().spanId);
    assert.equal(own.parentSpanContext?.spanId, attempt.spanContext().spanId);
  } finally {
    process.env.DATABASE_URL = before;
  }
});

test("the README's flows and batches example runs as written, in-process and under pgbg serve; pgbg list --flow shows a flow", async () => {
  const { tasks, app, tasksBlock, appBlock } = tasksAndApp("## Flows and batches", "flows");
  assert.ok(tasksBlock.includes("ctx.parentResults(thumbnail)") && appBlock.includes("enqueueBatch("), "the README has both blocks");
  await migrate(db.sql);
  const result = runTs(app);
  assert.equal(result.status, 0, result.stdout + result.stderr);
  const lines = result.stdout.trim().split("\n");
  assert.ok(lines.includes("told ada: /thumbs/64/cat.png, /thumbs/512/cat.png"), result.stdout);
  assert.ok(lines.includes("rows.csv: 99 rows imported, 1 failed (1 ids)"), result.stdout);
  assert.ok(lines.includes("batch: 100 rows pending") && lines.includes("cancelled: 1"), result.stdout);
  assert.ok(!lines.some((l) => l.startsWith("told bob")), "the cancelled task never ran");
  assert.match(lines.at(-1)!, /^process-upload: completed; make-thumbnail: completed; make-thumbnail: completed; \d+: finished$/);

  // The same tasks under pgbg serve, the flow and the batch enqueued from here.
  const { importReport, importRow, notify, thumbnail, upload } = await import(tasks);
  const { enqueueBatch, enqueueFlow, flowTask } = await import("../mod.ts");
  const flow = await enqueueFlow(db.sql, {
    upload: flowTask(upload, { file: "dog.png" }),
    small: flowTask(thumbnail, { file: "dog.png", width: 64 }, { dependsOn: ["upload"] }),
    notify: flowTask(notify, { owner: "bob" }, { dependsOn: ["small"] }),
  });
  const batch = await enqueueBatch(db.sql, importRow, Array.from({ length: 20 }, (_, row) => ({ row })), { then: flowTask(importReport, { file: "more.csv" }) });
  const listed = await pgbg("list", "--flow", flow.id);
  assert.equal(listed.status, 0, listed.stderr);
  assert.match(listed.stdout, new RegExp(`^flow ${flow.id}: 3 task\\(s\\), on a parent's failure: fail`));
  assert.match(listed.stdout, new RegExp(`${flow.tasks.notify} +waiting +notify-owner +0 +${flow.tasks.small}`));
  const service = startService(db.url, ["--tasks", tasks, "--workers", "2"]);
  try {
    await until(async () => service.other.join("\n"), (out) => out.includes("told bob: /thumbs/64/dog.png") && out.includes("more.csv: 19 rows imported, 1 failed (1 ids)"), patience,
      "the flow and the batch to end under pgbg serve");
  } finally {
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  }
  assert.equal((await db.sql`SELECT count(*)::int AS n FROM pgbg.task WHERE flow_id IN (${flow.id}, ${batch.id}) AND state <> 'failed'`)[0].n, 0);
  const bad = await pgbg("list", "--flow", flow.id, "--state", "queued");
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--flow lists one flow's tasks; it does not go with --state/);
});
