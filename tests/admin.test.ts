import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { renderUsage } from "citty";
import { enqueue, migrate } from "../mod.ts";
import { alwaysFails, measured, work } from "./fixtures/tasks.ts";
import { type AdminCommandName, adminCommands, runAdmin } from "../cli/admin.ts";
import { type CommandArgs, type Flags, parseArgs } from "../cli/args.ts";
import { commandArgs } from "../cli/args-table.ts";
import { dashboardCommand } from "../cli/dashboard.ts";
import { exitCodeOf } from "../cli/exit.ts";
import { createTestDatabase } from "./harness.ts";
import { fixtureTasks, patience, serviceTestbed, until, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql, db } = testbed;

/** Runs the real `pgbg args…` against the test database without blocking the event loop (services write logs meanwhile). */
function spawned(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...typeScript, cli, ...args], {
      env: { ...process.env, DATABASE_URL: db.url, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    child.on("exit", (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Runs `pgbg command args…` in this process, through the parsing and the run
 * the binary calls (runAdmin): a spawned `pgbg` costs about 0.7 s of CPU,
 * which made this file the suite's slowest. `spawned` checks the binary itself.
 */
function pgbg([command, ...args]: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return within(runAdmin(command as AdminCommandName, args, { ...process.env, DATABASE_URL: db.url, ...env }), patience, `pgbg ${command}`);
}

async function pgbgJson<T = any>(args: string[]): Promise<T> {
  const { code, stdout, stderr } = await pgbg([...args, "--json"]);
  assert.equal(code, 0, stderr);
  return JSON.parse(stdout);
}

const status = () => pgbgJson(["status"]);
const row = async (id: string) => (await sql`SELECT * FROM pgbg.task WHERE id = ${id}`)[0];
const runsOf = async (id: string) => (await sql`SELECT * FROM execution WHERE task_id = ${id} ORDER BY id`);

describe("pgbg status", () => {
  test("counts tasks per queue and name, the last minute's outcomes, unregistered names and live workers", async () => {
    const scheduled = await enqueue(sql, work, {}, { delay: 3_600_000, queue: "mail" });
    const running = await enqueue(sql, work, { ms: 120_000 }, { queue: "mail" });
    await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'nobody-knows-me', '{}')`;
    // A 10 min timeout: on a loaded machine the test may take longer than the default 30 s, and the long task must not be retried meanwhile.
    testbed.serve(["--workers", "2", "--concurrency", "4", "--timeout", "10m"]);
    await until(async () => (await runsOf(running)).length, (n) => n === 1, 120_000, "the long task to start");
    await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, (n) => n === 2, 120_000, "both workers");
    // Enqueued once the service runs, so that their outcomes are surely of the last minute when status is read.
    const done = await Promise.all(Array.from({ length: 5 }, () => enqueue(sql, work, {}, { queue: "mail" })));
    const failing = await enqueue(sql, alwaysFails, {});
    const s = await until(status, (s) => {
      const mail = s.tasks.find((t: any) => t.queue === "mail" && t.name === "work");
      const fails = s.tasks.find((t: any) => t.name === "always-fails");
      // Each worker reports its counts after its own heartbeat: the retries
      // counted by one may arrive after the failure counted by the other.
      // And status() reads the tasks and the workers in statements of their
      // own, in parallel, each with its snapshot: the workers' may be taken
      // while a task the counts already show as done was still running.
      return mail?.completedLastMinute === 5 && fails?.failedLastMinute === 1 && fails?.retriedLastMinute >= 2 && s.workers.length === 2 &&
        s.workers.reduce((n: number, w: any) => n + w.running, 0) === 1;
    }, 120_000, "the outcomes to be counted");
    const mail = s.tasks.find((t: any) => t.queue === "mail" && t.name === "work");
    assert.deepEqual({ ...mail, oldestQueuedMs: null }, {
      queue: "mail", name: "work", queued: 0, scheduled: 1, running: 1, failed: 0, oldestQueuedMs: null,
      completedLastMinute: 5, failedLastMinute: 0, retriedLastMinute: 0,
    });
    const fails = s.tasks.find((t: any) => t.name === "always-fails");
    assert.deepEqual([fails.failed, fails.failedLastMinute, fails.retriedLastMinute], [1, 1, 2], "3 attempts: 2 retried, then failed");
    const unknown = s.tasks.find((t: any) => t.name === "nobody-knows-me");
    assert.equal(unknown.queued, 1);
    assert.ok(unknown.oldestQueuedMs >= 0);
    assert.deepEqual(s.unregistered, [{ queue: "default", name: "nobody-knows-me", tasks: 1 }]);
    assert.equal(s.workers.reduce((n: number, w: any) => n + w.running, 0), 1);
    for (const w of s.workers) {
      assert.ok(w.tasks.includes("work") && w.pid > 0 && w.heartbeatAgeMs >= 0, JSON.stringify(w));
    }
    assert.ok(done.length === 5 && scheduled && failing);

    // The binary itself: its text on stdout and exit 0.
    const text = await spawned(["status"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /QUEUE\s+TASK\s+QUEUED\s+SCHEDULED\s+RUNNING\s+FAILED\s+OLDEST QUEUED\s+DONE\/1M/);
    assert.match(text.stdout, /^mail\s+work\s+0\s+1\s+1\s+0\s+-\s+5\s+0\s+0$/m);
    assert.match(text.stdout, /no live worker registered:\n.*\ndefault\s+nobody-knows-me\s+1/);
    assert.match(text.stdout, /2 live worker\(s\)/);
  });
});

describe("pgbg list, retry, cancel, enqueue", () => {
  test("list --state failed shows the attempts and the last error", async () => {
    const id = await enqueue(sql, alwaysFails, {});
    await enqueue(sql, work, {}, { delay: 3_600_000 });
    await enqueue(sql, work, {}, { delay: 3_600_000 });
    testbed.serve(["--workers", "1"]);
    await until(() => row(id), (r) => r.state === "failed", 120_000, "the task to fail");
    const { tasks } = await pgbgJson(["list", "--state", "failed"]);
    assert.equal(tasks.length, 1);
    assert.equal(tasks[0].id, id);
    assert.equal(tasks[0].attempts, 3);
    assert.match(tasks[0].lastError.message, /non-Error value thrown: a plain string/);
    const scheduled = await pgbgJson(["list", "--state", "scheduled", "--task", "work", "--limit", "5"]);
    assert.equal(scheduled.tasks.length, 2);
    const limited = await pgbgJson(["list", "--state", "scheduled", "--task", "work", "--limit", "1"]);
    assert.deepEqual(limited.tasks.map((t: { id: string }) => t.id), [scheduled.tasks[0].id]);
    assert.equal((await pgbgJson(["list", "--state", "queued"])).tasks.length, 0);
    const text = await pgbg(["list", "--state", "failed"]);
    assert.match(text.stdout, new RegExp(`^${id}\\s+failed\\s+always-fails\\s+default\\s+3/3\\s.*NonError: non-Error value thrown: a plain string`, "m"));
  });

  test("list --state completed shows the completed tasks kept in the history, with their results, as text and --json", async () => {
    const id = await enqueue(sql, measured, {});
    testbed.serve(["--workers", "1"]);
    await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.history WHERE id = ${id}`)[0].n, (n) => n === 1, 120_000, "the task to complete");
    const { tasks } = await pgbgJson(["list", "--state", "completed", "--task", "measured"]);
    assert.deepEqual(tasks.map((t: { id: string; state: string; result: { attempt: number } }) => [t.id, t.state, t.result.attempt]), [[id, "completed", 1]]);
    assert.ok(!Number.isNaN(Date.parse(tasks[0].finishedAt)) && !Number.isNaN(Date.parse(tasks[0].expiresAt)));
    const text = await pgbg(["list", "--state", "completed"]);
    assert.match(text.stdout, /^ID\s+STATE\s+TASK\s+QUEUE\s+ATTEMPTS\s+FINISHED AT\s+RESULT/m);
    assert.match(text.stdout, new RegExp(`^${id}\\s+completed\\s+measured\\s+default\\s+1\\s+\\S+\\s+\\{"pid":\\d+,"attempt":1\\}`, "m"));
    assert.equal((await pgbgJson(["list", "--state", "cancelled"])).tasks.length, 0);
    const { completed } = await status();
    assert.deepEqual(completed.map((t: { id: string; result: { attempt: number } }) => [t.id, t.result.attempt]), [[id, 1]], "status shows the newest completed tasks kept");
    const statusText = (await pgbg(["status"])).stdout;
    assert.match(statusText, new RegExp(`newest completed tasks kept[^\\n]*\\nID\\s+TASK\\s+QUEUE\\s+FINISHED AT\\s+RESULT\\n${id}\\s+measured\\s+default\\s+\\S+\\s+\\{"pid":\\d+,"attempt":1\\}`));
  });

  test("retry queues failed tasks again and the service runs them; --all-failed --task picks by name", async () => {
    const workId = await enqueue(sql, work, { failUntil: 99 }, { maxAttempts: 1 });
    const otherId = await enqueue(sql, alwaysFails, {}, { maxAttempts: 1 });
    testbed.serve(["--workers", "1"]);
    await until(async () => [(await row(workId)).state, (await row(otherId)).state], (s) => s.join() === "failed,failed", 120_000, "both to fail");
    const byId = await pgbgJson(["retry", workId]);
    assert.deepEqual(byId, { retried: [workId], notRetried: [] });
    await until(() => runsOf(workId), (r) => r.length === 2 && r[1].ended_at !== null, 120_000, "the retried task to run again");
    await until(() => row(workId), (r) => r.state === "failed", 120_000, "the retried task to fail again");
    assert.equal((await row(workId)).attempts, 1, "the retry started from attempt 1 again");
    const byName = await pgbgJson(["retry", "--all-failed", "--task", "work"]);
    assert.deepEqual(byName.retried, [workId]);
    await until(() => runsOf(workId), (r) => r.length === 3, 120_000, "a third run");
    assert.equal((await runsOf(otherId)).length, 1, "the other task was not retried");
    const notFailed = await pgbg(["retry", "999999"]);
    assert.equal(notFailed.code, 1);
    assert.match(notFailed.stderr.trim(), /^pgbg: not retried .*: 999999$/);
    assert.equal((await pgbg(["retry"])).code, 2);
    assert.equal((await pgbg(["retry", "1", "--all-failed"])).code, 2);
  });

  test("cancel deletes queued and failed tasks at once, and aborts a running task through its worker", async () => {
    const running = await enqueue(sql, work, { ms: 120_000 });
    const failed = await enqueue(sql, alwaysFails, {}, { maxAttempts: 1 });
    const service = testbed.serve(["--workers", "1"]);
    await until(async () => [(await runsOf(running)).length, (await row(failed))?.state], (v) => v[0] === 1 && v[1] === "failed", 120_000, "the long task to run");
    const queued = await enqueue(sql, work, {}, { delay: 3_600_000 });
    const result = await pgbgJson(["cancel", running, failed, queued]);
    assert.deepEqual(result, { deleted: [failed, queued].sort(), signalled: [running], notFound: [] });
    assert.equal(await row(queued), undefined);
    await until(() => row(running), (r) => r === undefined, 120_000, "the running task to be deleted");
    const [run] = await runsOf(running);
    assert.notEqual(run.ended_at, null, "the attempt ended: its signal was aborted");
    await service.waitForLog((l) => l.id === running && /cancelled/.test(l.message));
    const missing = await pgbg(["cancel", running]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr.trim(), new RegExp(`^pgbg: no such task: ${running}$`));
  });

  test("a cancelled task that left running before its worker noticed is deleted by the supervisor, and never claimed", async () => {
    const id = await enqueue(sql, work, {});
    // The state a failed or handed-back attempt leaves when its cancel came late.
    await sql`UPDATE pgbg.task SET cancel_requested_at = now() WHERE id = ${id}`;
    testbed.serve(["--workers", "1"]);
    await until(() => row(id), (r) => r === undefined, 120_000, "the supervisor to delete it");
    assert.equal((await runsOf(id)).length, 0);
  });

  test("enqueue validates the input with the task's schema and the service runs the task", async () => {
    // Delayed, so that nothing claims it while it is checked.
    const delayed = await pgbgJson(["enqueue", "work", '{"ms":1}', "--tasks", fixtureTasks, "--queue", "cli", "--priority", "3", "--delay", "1h"]);
    const r = await row(delayed.id);
    assert.deepEqual([r.name, r.queue, r.priority, r.payload], ["work", "cli", 3, { ms: 1 }]);
    assert.ok(r.run_at.getTime() > Date.now() + 3_000_000);
    const ok = await pgbgJson(["enqueue", "work", "{}", "--tasks", fixtureTasks]);
    testbed.serve(["--workers", "1"]);
    await until(() => row(ok.id), (r) => r === undefined, 120_000, "the task to run");
    assert.equal((await runsOf(ok.id)).length, 1);
    // Refusals of the command's run (the input, the task, enqueue()'s options); the parser's are checked in process below.
    const cases: [string[], RegExp][] = [
      [["work", '{"ms":"x"}', "--tasks", fixtureTasks], /^pgbg: invalid input for task "work": ms: /],
      [["work", "{nope", "--tasks", fixtureTasks], /^pgbg: the input is not valid JSON/],
      [["nope", "{}", "--tasks", fixtureTasks], /^pgbg: no task named "nope"/],
      [["work", "{}", "--tasks", fixtureTasks, "--priority", "99999"], /^pgbg: enqueue\(\): option "priority" must be a whole number from -32768 to 32767, got 99999$/],
      [["work", "{}", "--tasks", fixtureTasks, "--key", ""], /^pgbg: enqueue\(\): option "key" must be a string of 1-512 characters, got ""$/],
    ];
    for (const [args, message] of cases) {
      const { code, stderr } = await pgbg(["enqueue", ...args]);
      assert.equal(code, 2, `enqueue ${args.join(" ")}: ${stderr}`);
      assert.equal(stderr.trim().split("\n").length, 1, stderr);
      assert.match(stderr.trim(), message);
    }
  });
});

describe("pgbg compact", () => {
  test("says when the indexes are not bloated, rebuilds them with --force, and prints JSON", async () => {
    const text = await pgbg(["compact"]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /^the indexes of pgbg\.task are not bloated \([\d.]+ (B|KiB|MiB) for ~\d+ live rows\); nothing rebuilt \(--force rebuilds them anyway\)\n$/);
    const forced = await pgbgJson(["compact", "--force"]);
    assert.deepEqual([forced.schema, forced.outcome, forced.dropped], ["pgbg", "compacted", []]);
    assert.ok(forced.after.indexBytes > 0 && forced.after.indexes.every((i: { valid: boolean }) => i.valid), JSON.stringify(forced.after));
    const missing = await pgbg(["compact", "--schema", "not_migrated"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^pgbg: the pgbg schema "not_migrated" is missing/);
  });
});

describe("the operators' commands", () => {
  const commands = ["migrate", "status", "list", "retry", "cancel", "enqueue", "dashboard"] as const;
  /** Parses `pgbg command args…` in process, as the binary does before it connects: the line it prints and its exit code, or undefined. */
  const refusal = (command: keyof typeof commandArgs, args: string[]) => {
    try {
      parseArgs(args, commandArgs[command] as CommandArgs<Flags>, { DATABASE_URL: db.url });
      return undefined;
    } catch (error) {
      return { code: exitCodeOf(error), line: `pgbg: ${(error as Error).message}` };
    }
  };
  const commandDefs: Record<string, Parameters<typeof renderUsage>[0]> = { ...adminCommands, dashboard: dashboardCommand };
  for (const command of commands) {
    test(`${command} --help documents --database-url, --schema and --json`, async () => {
      const stdout = await renderUsage(commandDefs[command]);
      for (const flag of ["--database-url", "DATABASE_URL", "--schema", "PGBG_SCHEMA", "default: pgbg", "--json"]) assert.ok(stdout.includes(flag), `${command} --help: ${flag}`);
    });
  }

  test("an unknown command or flag, a repeated flag, a flag without its value or a stray argument exits 2 with one line", async () => {
    // The real binary: its unknown command, and one refusal of the parser.
    for (const [args, message] of [[["nope"], /^pgbg: unknown command "nope" \(see pgbg --help\)$/], [["status", "--bogus"], /^pgbg: unknown flag --bogus \(see pgbg status --help\)$/]] as const) {
      const { code, stderr } = await spawned([...args]);
      assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
      assert.match(stderr.trim(), message);
      assert.equal(stderr.trim().split("\n").length, 1);
    }
    // The rest in process, through the parser the binary runs first.
    const cases: [keyof typeof commandArgs, string[], RegExp][] = [
      ["status", ["extra"], /^pgbg: unexpected argument "extra"/],
      ["retry", ["--all-failed", "--all-faild"], /^pgbg: unknown flag --all-faild/],
      ["list", ["--limit", "5", "--limit", "6"], /^pgbg: --limit is given twice/],
      ["list", ["--state"], /^pgbg: --state needs a value$/],
      ["cancel", [], /^pgbg: give the ids of the tasks to cancel$/],
      ["cancel", ["5", "-1"], /^pgbg: unexpected argument "-1": pgbg has no short flags, and no negative ids \(see pgbg cancel --help\)$/],
      ["retry", ["7", "-3"], /^pgbg: unexpected argument "-3": pgbg has no short flags, and no negative ids \(see pgbg retry --help\)$/],
      ["retry", ["abc"], /^pgbg: task ids are whole numbers, got "abc"$/],
      ["retry", [], /^pgbg: give the ids of failed tasks, or --all-failed$/],
      ["retry", ["1", "--all-failed"], /^pgbg: give the ids of failed tasks, or --all-failed$/],
      ["retry", ["1", "--task", "work"], /^pgbg: --task goes with --all-failed$/],
      ["cancel", ["0"], /^pgbg: task ids are whole numbers, got "0"$/],
      ["cancel", ["99999999999999999999"], /^pgbg: task ids are whole numbers, got "99999999999999999999"$/],
      ["list", ["--limit", "0"], /^pgbg: --limit must be a whole number from 1 to 10000, got "0"$/],
      ["list", ["--limit", "-3"], /^pgbg: --limit must be a whole number from 1 to 10000, got "-3"$/],
      ["list", ["--limit", "10001"], /^pgbg: --limit must be a whole number from 1 to 10000, got "10001"$/],
      ["list", ["--limit", "many"], /^pgbg: --limit must be a whole number from 1 to 10000, got "many"$/],
      ["list", ["--state", "done"], /^pgbg: --state must be one of queued, scheduled, waiting, running, failed, completed, cancelled, got "done"$/],
      ["enqueue", ["work"], /^pgbg: give the task's name and its input as JSON/],
      ["enqueue", ["work", "{}"], /^pgbg: --tasks \(PGBG_TASKS\) is required/],
      ["enqueue", ["work", "{}", "--tasks", fixtureTasks, "--delay", "soon"], /^pgbg: --delay must be a duration such as 500ms, 30s, 5m, got "soon"$/],
      ["enqueue", ["work", "{}", "--tasks", fixtureTasks, "--delay", "-5s"], /^pgbg: --delay must be a duration such as 500ms, 30s, 5m, got "-5s"$/],
    ];
    for (const [command, args, message] of cases) {
      const got = refusal(command, args);
      assert.equal(got?.code, 2, `${command} ${args.join(" ")}: ${got?.line}`);
      assert.match(got.line, message);
    }
  });

  test("the README's operations examples use real commands and flags", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    // Up to the section on PgBouncer, whose example is `pgbg serve`'s (tests/cli.test.ts checks its flags).
    const section = readme.slice(readme.indexOf("## Operations"), readme.indexOf("### Behind PgBouncer in transaction mode"));
    const lines = [...section.matchAll(/^(?:PGBG_\w+=(?:\$\([^)]*\)|\S+) )?pgbg ([\w-]+)(.*)$/gm)];
    assert.deepEqual([...new Set(lines.map((l) => l[1]))].sort(), ["cancel", "compact", "dashboard", "enqueue", "limit", "list", "migrate", "pause", "rate", "resume", "retry", "run-schedule", "status"]);
    for (const [, name, rest] of lines) {
      // Words of the example up to its comment; a quoted argument is one word, unquoted as the shell would.
      const words = [...rest.replace(/\s+#.*$/, "").matchAll(/'[^']*'|\S+/g)].map((m) => m[0].replace(/^'(.*)'$/, "$1"));
      assert.ok(Object.hasOwn(commandArgs, name), `pgbg ${name} exists`);
      // The dashboard's token comes from the variable its example sets.
      assert.equal(refusal(name as keyof typeof commandArgs, name === "dashboard" ? [...words, "--token", "x".repeat(16)] : words), undefined, `pgbg ${name}${rest}`);
    }
  });

  test("exit 2 without a database URL or with a bad schema name; exit 1 when the database is unreachable, without the password", async () => {
    const none = await pgbg(["status"], { DATABASE_URL: undefined });
    assert.deepEqual([none.code, none.stderr], [2, "pgbg: --database-url (DATABASE_URL) is required\n"]);
    const schema = await pgbg(["status", "--schema", "Bad-Name"]);
    assert.equal(schema.code, 2);
    assert.match(schema.stderr, /^pgbg: invalid schema name "Bad-Name"/);
    // The binary itself: exit 1, one line, no password.
    const down = await spawned(["status"], { DATABASE_URL: "postgres://someone:s3cret-pw@127.0.0.1:1/nowhere" });
    assert.equal(down.code, 1);
    assert.equal(down.stderr.trim().split("\n").length, 1, down.stderr);
    assert.ok(!down.stderr.includes("s3cret-pw"));
    const missing = await pgbg(["status", "--schema", "not_migrated"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^pgbg: the pgbg schema "not_migrated" is missing/);
  });
});
