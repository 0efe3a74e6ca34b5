import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, startService, stopService, until, within } from "./service-harness.ts";

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
  const result = spawnSync(process.execPath, ["--import", "tsx", file], { env: { ...process.env, DATABASE_URL: db.url }, encoding: "utf8", timeout: 60_000 });
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
  const enqueued = spawnSync(process.execPath, ["--import", "tsx", cli, "enqueue", "charge-order", '{"orderId":7}', "--tasks", file, "--json"], {
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

test("the README's in-process worker example runs as written, runs its task, and stops cleanly on SIGTERM", async () => {
  const { file } = exampleFile("## Run workers in your own process", "in-process");
  await migrate(db.sql);
  const child = spawn(process.execPath, ["--import", "tsx", file], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ["ignore", "pipe", "pipe"] });
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
