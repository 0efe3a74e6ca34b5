import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, migrate } from "../mod.ts";
import { alwaysFails, work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { fixtureTasks, serviceTestbed, startService, stopService, until } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql, db } = testbed;

/**
 * Runs `pgbg serve` with `args` (its own log settings, not the harness's)
 * until its output, stdout and stderr together (consola writes info lines
 * to stdout, warnings and errors to stderr), satisfies `done`; then stops it
 * and returns the output.
 */
async function serveUntil(args: string[], done: (output: string) => boolean, env: Record<string, string> = {}): Promise<string> {
  const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
  const child = spawn(process.execPath, [...typeScript, cli, "serve", "--tasks", fixtureTasks, "--check-interval", "200ms", ...args], {
    env: { ...process.env, DATABASE_URL: db.url, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  // Colour codes (consola colours its output under CI even off a terminal)
  // are stripped, so that the lines are matched on their text.
  const plain = () => output.replace(/\x1b\[[0-9;]*m/g, "");
  const exited = new Promise((resolve) => child.on("exit", resolve));
  child.stdout.on("data", (c) => (output += c));
  child.stderr.on("data", (c) => (output += c));
  try {
    await until(async () => plain(), done, 120_000, "the expected log line");
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
  return plain();
}

describe("the service's logs", () => {
  test("one JSON object per line, with task id, name, attempt, duration and error fields, and no password", async () => {
    // The embedded test server's URL has a password; a local server that
    // trusts its clients ignores the one given here. Either is looked for.
    const url = new URL(db.url);
    const password = url.password || "pa55-not-for-logs";
    url.password = password;
    const ok = await enqueue(sql, work, {});
    const failing = await enqueue(sql, alwaysFails, {});
    const service = startService(url.toString(), ["--tasks", fixtureTasks, "--check-interval", "1s"]);
    try {
      await until(async () => (await sql`SELECT state FROM pgbg.task WHERE id = ${failing}`)[0]?.state, (s) => s === "failed", 120_000, "the task to fail");
      const succeeded = await service.waitForLog((l) => l.id === ok && /succeeded/.test(l.message));
      assert.equal(succeeded.level, "debug");
      assert.equal(succeeded.task, "work");
      assert.equal(succeeded.attempt, 1);
      assert.equal(typeof succeeded.durationMs, "number");
      assert.match(String(succeeded.component), /^worker \d+$/);
      const final = await service.waitForLog((l) => l.id === failing && l.level === "error");
      assert.equal(final.task, "always-fails");
      assert.equal(final.attempt, 3);
      assert.equal(typeof final.durationMs, "number");
      const error = final.error as { name: string; message: string; attempt: number };
      assert.deepEqual([error.name, error.message, error.attempt], ["NonError", "non-Error value thrown: a plain string", 3]);
      const retried = service.logs.filter((l) => l.id === failing && l.level === "warn");
      assert.deepEqual(retried.map((l) => l.attempt), [1, 2]);
      for (const line of service.logs) {
        assert.equal(typeof line.time, "string");
        assert.ok(["debug", "info", "warn", "error"].includes(line.level), line.level);
      }
    } finally {
      await stopService(service);
    }
    assert.deepEqual(await service.exited, { code: 0, signal: null }, service.other.join("\n"));
    assert.deepEqual(service.other, [], "every line is a JSON object");
    const all = JSON.stringify(service.logs);
    assert.ok(!all.includes(password), "no password in any line");
    assert.ok(service.logs.some((l) => /^database /.test(l.message) && String(l.message).includes(url.host)), "the database is named, without its password");
  });

  test("--log-format pretty writes readable lines tagged with the process, not JSON", async () => {
    const id = await enqueue(sql, alwaysFails, {}, { maxAttempts: 1 });
    const failure = new RegExp(`^\\[worker \\d+\\] .*task ${id} failed after 1 attempts: non-Error value thrown: a plain string$`, "m");
    // CI and NODE_ENV=test are set because they once changed the layout of
    // consola's lines (and failed this test on a CI machine).
    const output = await serveUntil(["--log-format", "pretty"], (text) => failure.test(text), { CI: "true", NODE_ENV: "test" });
    assert.match(output, /^\[supervisor\] .*serving: 2 worker\(s\) × 10 task\(s\), queues \(all\), schema pgbg$/m);
    assert.match(output, /^\[supervisor\] .*stopped$/m);
    assert.deepEqual(output.split("\n").filter((l) => l.trimStart().startsWith("{")), [], "no JSON lines");
    const lines = output.trimEnd().split("\n");
    assert.deepEqual(lines.filter((l) => !/^\[(supervisor|worker \d+)\] \d\d:\d\d:\d\d (info |warn |error|debug) \S/.test(l)), [],
      "one line per record, each [component] time level message, no blank line between them");
  });

  test("on a terminal (a real pty, through script(1)): a status line under the log, redrawn with the counts; Ctrl-C stops the service", async () => {
    const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
    const command = [process.execPath, ...typeScript, cli, "serve", "--tasks", fixtureTasks, "--workers", "1", "--check-interval", "200ms"]
      .map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
    // exec: script(1) runs the command through $SHELL, and a shell that stays
    // as the parent (dash, where SHELL is /bin/sh) takes the Ctrl-C itself and
    // ends with 130, whatever the service's own exit code was.
    const child = spawn("script", ["-qfec", `exec ${command}`, "/dev/null"], {
      env: { ...process.env, DATABASE_URL: db.url, NO_COLOR: "" }, stdio: ["pipe", "pipe", "pipe"],
    });
    let output = "";
    child.stdout.on("data", (c) => (output += c));
    child.stderr.on("data", (c) => (output += c));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    try {
      await until(async () => output, (o) => /serving: 1 worker/.test(o), 120_000, "the service to start on the terminal");
      for (let i = 0; i < 3; i++) await enqueue(sql, work, {});
      await until(async () => output, (o) => /\r\x1b\[2K1 worker\(s\) · 0 running · 3 done · 0 failed · 0 retried/.test(o), 120_000, "the status line with 3 done");
      // Pretty by default on a terminal, its level coloured; a record clears the status line before it.
      assert.match(output, /\r\x1b\[2K\[supervisor\] \d\d:\d\d:\d\d \x1b\[36minfo \x1b\[0m serving: 1 worker/);
    } finally {
      child.stdin.write("\x03");
    }
    assert.equal(await exited, 0, output);
    assert.match(output, /SIGINT: stopping/);
  });

  test("--log-level warn leaves out info and debug lines", async () => {
    await enqueue(sql, alwaysFails, {}, { maxAttempts: 1 });
    const output = await serveUntil(["--log-level", "warn"], (text) => /always-fails/.test(text));
    const lines = output.trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(lines.some((l) => l.level === "error" && l.task === "always-fails"));
    assert.deepEqual(lines.filter((l) => l.level === "info" || l.level === "debug"), []);
  });
});
