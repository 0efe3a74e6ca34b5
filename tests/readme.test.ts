import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { createTestDatabase } from "./harness.ts";

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
