/**
 * Upgrades roll: the previous release (tests/previous-release.txt, packed
 * with `npm pack` and installed from its tarball) serves
 * while this release migrates the schema under it. Its running service
 * keeps claiming and completing, tasks in every state (queued, running,
 * failed) come through, nothing is lost or run twice, and a previous-release
 * service started after the migration stops with one clear line.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as v from "valibot";
import { createWorker, defineTask, enqueueMany, getTask, LATEST_SCHEMA_VERSION, migrate, retry, schemaVersion } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, startService, stopService, until } from "./service-harness.ts";

const root = fileURLToPath(new URL("..", import.meta.url));
const git = (...args: string[]) => execFileSync("git", args, { cwd: root, encoding: "utf8" }).trim();

/** The previous release (tests/previous-release.txt) and the schema version it migrates to (its number of migrations). */
function previousRelease(): { commit: string; version: number } {
  const text = readFileSync(join(root, "tests/previous-release.txt"), "utf8");
  const commit = text.split("\n").find((line) => /^[0-9a-f]{40}$/.test(line.trim()))!.trim();
  const version = git("ls-tree", "--name-only", commit, "sql/migrations/").split("\n").filter((f) => f.endsWith(".sql")).length;
  return { commit, version };
}

/**
 * The previous release built at its commit, packed, and installed from the
 * tarball into a directory of its own (cached by commit in node_modules/.cache).
 * Its dependencies are this checkout's (the same versions: no network).
 */
function installPrevious(commit: string): string {
  const cache = join(root, "node_modules/.cache/pgbg-previous", commit);
  const installed = join(cache, "app/node_modules/pgbg");
  if (existsSync(join(installed, "dist/cli/main.js"))) return join(cache, "app");
  rmSync(cache, { recursive: true, force: true });
  const source = join(cache, "source");
  mkdirSync(source, { recursive: true });
  execFileSync("sh", ["-c", `git -C "${root}" archive ${commit} | tar -x -C "${source}"`]);
  symlinkSync(join(root, "node_modules"), join(source, "node_modules"));
  execFileSync("npm", ["run", "build"], { cwd: source, stdio: "ignore" });
  const tarball = execFileSync("npm", ["pack", "--ignore-scripts", "--pack-destination", cache], { cwd: source, encoding: "utf8" }).trim().split("\n").at(-1)!;
  mkdirSync(installed, { recursive: true });
  execFileSync("tar", ["-x", "-z", "-f", join(cache, tarball), "-C", installed, "--strip-components", "1"]);
  for (const dep of ["postgres", "valibot", "citty", "consola"]) symlinkSync(join(root, "node_modules", dep), join(cache, "app/node_modules", dep));
  return join(cache, "app");
}

test("the previous release serves on while this one migrates under it; queued, running and failed tasks all come through", { timeout: 600_000 }, async () => {
  const { commit, version } = previousRelease();
  const app = installPrevious(commit);
  const db = await createTestDatabase();
  const { sql } = db;
  // The previous release's tasks: each records its run in `upgrade_run`.
  await sql`CREATE TABLE upgrade_run (task_id bigint NOT NULL, pid integer NOT NULL, release text NOT NULL)`;
  const tasks = join(app, `tasks-${process.pid}.mjs`);
  writeFileSync(tasks, `
import postgres from "postgres";
import * as v from "valibot";
import { defineTask } from "pgbg";
const sql = postgres(process.env.DATABASE_URL, { max: 2 });
export const step = defineTask({
  name: "upgrade-step", schema: v.object({ ms: v.number(), fail: v.boolean() }), maxAttempts: 1,
  async run(input, ctx) {
    await sql\`INSERT INTO upgrade_run VALUES (\${ctx.id}, \${process.pid}, \${process.env.RELEASE})\`;
    await new Promise((r) => setTimeout(r, input.ms));
    if (input.fail) throw new Error("failed under the previous release");
  },
});
`);
  after(() => rmSync(tasks, { force: true }));
  const oldCli = [join(app, "node_modules/pgbg/dist/cli/main.js")];
  const oldEnv = { RELEASE: "previous" };

  // The previous release migrates and serves; this release's tasks queue behind it.
  const old = startService(db.url, ["--tasks", tasks, "--workers", "1", "--concurrency", "4", "--check-interval", "200ms"], oldEnv, oldCli);
  try {
    await old.waitForLog((l) => /^serving/.test(l.message), patience);
    const before = await schemaVersion(sql);
    assert.equal(before, version, `the previous release (${commit.slice(0, 10)}) migrated to its own version`);
    assert.ok(before < LATEST_SCHEMA_VERSION, "this release has migrations to apply under it");
    // Enqueued by the previous release's library, as the app running beside it would.
    const previous = await import(pathToFileURL(join(app, "node_modules/pgbg/dist/mod.js")).href);
    const oldStep = previous.defineTask({ name: "upgrade-step", schema: v.object({ ms: v.number(), fail: v.boolean() }), maxAttempts: 1, run() {} });
    const [failed, running] = await previous.enqueueMany(sql, oldStep, [{ ms: 0, fail: true }, { ms: 3_000, fail: false }]);
    // Read by hand: this release's statements name the newest migration's column (a schema migrates before the code that needs it).
    const stateOf = async (id: string) => (await sql`SELECT state::text FROM pgbg.task WHERE id = ${id}`)[0]?.state as string | undefined;
    await until(() => stateOf(failed), (s) => s === "failed", patience, "a task to fail under the previous release");
    await until(() => stateOf(running), (s) => s === "running", patience, "a task to run under the previous release");
    // Queued while the service is busy: enqueued in one transaction with the migration, so they are queued as it commits.
    let queued: string[] = [];
    await sql.begin(async (tx) => {
      queued = await previous.enqueueMany(tx, oldStep, Array.from({ length: 40 }, () => ({ ms: 20, fail: false })));
      await migrate(tx);
    });
    assert.equal(await schemaVersion(sql), LATEST_SCHEMA_VERSION);
    // And then by this release's, on the migrated schema.
    const step = defineTask({ name: "upgrade-step", schema: v.object({ ms: v.number(), fail: v.boolean() }), maxAttempts: 1, run() {} });
    const later = await enqueueMany(sql, step, Array.from({ length: 40 }, () => ({ ms: 0, fail: false })));

    // The previous release's service, running on, completes all of them.
    const all = [running, ...queued, ...later];
    await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(all)}`)[0].n, (n) => n === 0, patience, "every task to complete");
    const runs = await sql`SELECT task_id::text AS id, release, count(*)::int AS n FROM upgrade_run GROUP BY 1, 2`;
    assert.deepEqual(runs.filter((r) => r.n !== 1), [], "no task ran twice");
    assert.deepEqual(new Set(runs.map((r) => r.id)), new Set([failed, ...all]), "every task ran");
    assert.ok(runs.every((r) => r.release === "previous"), "all of them under the previous release");

    // A previous-release service started now stops at once, with one line saying why.
    const late = startService(db.url, ["--tasks", tasks, "--check-interval", "200ms"], oldEnv, oldCli);
    const exit = await late.exited;
    assert.notEqual(exit.code, 0);
    const said = [...late.logs.map((l) => l.message), ...late.other].filter((m) => /newer than this pgbg knows/.test(m));
    assert.equal(said.length, 1, JSON.stringify([...late.logs, ...late.other]));
    assert.deepEqual(await stopService(old), { code: 0, signal: null });
  } finally {
    old.child.kill("SIGKILL");
  }

  // This release takes the failed task over: retried (its input mended), it runs here.
  const here = defineTask({ name: "upgrade-step", schema: v.object({ ms: v.number(), fail: v.boolean() }), maxAttempts: 1, run() {} });
  const [failedId] = (await sql`SELECT id::text FROM pgbg.task WHERE state = 'failed'`).map((r) => r.id as string);
  assert.deepEqual((await getTask(sql, failedId))?.snoozes, 0, "the new column, filled in for the old row");
  await sql`UPDATE pgbg.task SET payload = '{"ms":0,"fail":false}' WHERE id = ${failedId}`;
  assert.deepEqual(await retry(sql, failedId), [failedId]);
  const worker = createWorker(sql, { tasks: [here], checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
  await worker.start();
  try {
    await until(() => getTask(sql, failedId), (t) => t === null, patience, "the retried task to complete under this release");
  } finally {
    await worker.stop();
  }
});

test("beside this release's workers claiming by claim rows, the previous release's row claims pass over the tasks claim rows hold: each task runs once", { timeout: 600_000 }, async () => {
  const { commit } = previousRelease();
  const app = installPrevious(commit);
  const db = await createTestDatabase();
  const { sql } = db;
  await sql`CREATE TABLE upgrade_run (task_id bigint NOT NULL, pid integer NOT NULL, release text NOT NULL)`;
  const tasks = join(app, `tasks-beside-${process.pid}.mjs`);
  writeFileSync(tasks, `
import postgres from "postgres";
import * as v from "valibot";
import { defineTask } from "pgbg";
const sql = postgres(process.env.DATABASE_URL, { max: 2 });
export const step = defineTask({
  name: "upgrade-step", schema: v.object({ ms: v.number() }),
  async run(input, ctx) {
    await sql\`INSERT INTO upgrade_run VALUES (\${ctx.id}, \${process.pid}, 'previous')\`;
    await new Promise((r) => setTimeout(r, input.ms));
  },
});
`);
  after(() => rmSync(tasks, { force: true }));
  const old = startService(db.url, ["--tasks", tasks, "--workers", "1", "--concurrency", "4", "--check-interval", "200ms"], {}, [join(app, "node_modules/pgbg/dist/cli/main.js")]);
  try {
    await old.waitForLog((l) => /^serving/.test(l.message), patience);
    await migrate(sql);
    // On the migrated schema, the previous release's service alone runs what is queued.
    const first = await enqueueMany(sql, defineTask({ name: "upgrade-step", schema: v.object({ ms: v.number() }), run() {} }), Array.from({ length: 20 }, () => ({ ms: 0 })));
    await until(async () => (await sql`SELECT count(*)::int AS n FROM upgrade_run WHERE task_id IN ${sql(first)} AND release = 'previous'`)[0].n, (n) => n === first.length, patience, "the previous release to run them");
    const step = defineTask({
      name: "upgrade-step", schema: v.object({ ms: v.number() }),
      async run(input, ctx) {
        await sql`INSERT INTO upgrade_run VALUES (${ctx.id}, ${process.pid}, 'this')`;
        await new Promise((r) => setTimeout(r, input.ms));
      },
    });
    // This release's worker claims by claim rows, each claim's tasks left queued in their rows.
    const worker = createWorker(sql, { tasks: [step], concurrency: 4, checkInterval: 200, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    await worker.start();
    try {
      // The previous release's service claims on beside it: its claims that
      // meet a task a claim row holds fail (task_claim_guard) and are made
      // again; which release runs how many is the machine's to say.
      const ids = await enqueueMany(sql, step, Array.from({ length: 300 }, (_, i) => ({ ms: i % 10 })));
      await until(async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n, (n) => n === 0, patience, "every task to complete");
      const runs = await sql`SELECT task_id::text AS id, count(*)::int AS n, array_agg(release) AS releases FROM upgrade_run GROUP BY 1`;
      assert.deepEqual(runs.filter((r) => r.n !== 1), [], "no task ran twice");
      assert.equal(runs.length, first.length + ids.length, "every task ran");
      assert.ok(runs.some((r) => r.releases[0] === "this"), "this release ran tasks");
      assert.equal((await sql`SELECT is_called FROM pgbg.claim_id_seq`)[0].is_called, true, "this release's by claim rows");
    } finally {
      await worker.stop();
    }
    assert.deepEqual(await stopService(old), { code: 0, signal: null });
  } finally {
    old.child.kill("SIGKILL");
  }
});
