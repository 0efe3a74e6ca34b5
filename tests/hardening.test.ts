/**
 * Bad inputs on the service's side, against real `pgbg serve` processes:
 * tasks modules that cannot be registered, rows written by hand, handlers
 * that misbehave, and databases that are unreachable or at the wrong schema
 * version. Each gets a clear error naming the problem, nothing already
 * queued is lost, and a running service keeps serving.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import { liveness } from "../lib/liveness.ts";
import type { WorkerSettings } from "../lib/worker.ts";
import { enqueue, enqueueMany, LATEST_SCHEMA_VERSION, migrate } from "../mod.ts";
import { exitsMidTask, rejectsLate, throwsValue } from "./fixtures/hostile-tasks.ts";
import { work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { fixtureTasks, patience, type Service, serviceTestbed, stopService, until, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const { db, sql, serve, remaining, executions, taskRow } = await serviceTestbed(createTestDatabase, migrate);
const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
const hostileTasks = fixture("hostile-tasks.ts");

/** Enqueues a `work` task and waits until it ran: proof that the service still claims and runs tasks. */
async function stillServing(): Promise<string> {
  const id = await enqueue(sql, work, {});
  await until(() => remaining([id]), (n) => n === 0, patience, "a task enqueued afterwards to run");
  return id;
}

/** Every line the service wrote, JSON or not. */
const output = (service: Service) => [...service.logs.map((l) => JSON.stringify(l)), ...service.other];

describe("tasks modules that cannot be registered", () => {
  const cases: [string, string, string][] = [
    ["throws on import", fixture("throws-on-import.ts"),
      `tasks module ${fixture("throws-on-import.ts")} failed to load: this tasks module is broken on purpose`],
    ["exports no task", fixture("exports-nothing.ts"),
      `tasks module ${fixture("exports-nothing.ts")} exports no tasks (export the results of defineTask)`],
    ["defines a task name twice", `${fixtureTasks},${fixture("duplicate-name.ts")}`,
      `task name "work" is defined twice: in ${fixtureTasks} (export work) and in ${fixture("duplicate-name.ts")} (export work)`],
    ["exports a task whose name is not a valid task name", fixture("malformed-task.ts"),
      `${fixture("malformed-task.ts")} (export badName): task "has space": name must be 1-128 characters of A-Z a-z 0-9 _ . : / -, starting with a letter or digit`],
  ];
  for (const [label, tasks, message] of cases) {
    test(`a module that ${label}: the worker exits naming the problem, is restarted with back-off, and the queue is untouched`, async () => {
      const queued = await enqueue(sql, work, {});
      // A worker is killed after 10 check intervals without a word: give a
      // slow start (tsx compiling under load) 20 s before that.
      const service = serve(["--workers", "1", "--check-interval", "2s"], tasks);
      const line = await service.waitForLog((l) => /^worker 1 exited/.test(l.message), patience);
      // The back-off grows with each failed start, and a loaded machine may fail one before this.
      assert.match(line.message, /; restarting in \d+ ms$/);
      assert.equal(line.message.replace(/; restarting in \d+ ms$/, ""), `worker 1 exited with code 3: ${message}`);
      assert.equal(line.level, "error");
      assert.deepEqual(await stopService(service), { code: 0, signal: null });
      const row = await taskRow(queued);
      assert.deepEqual([row.state, row.attempts, row.last_error], ["queued", 0, null], "the queued task was not touched");
      assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 0, "no worker registered");
    });
  }

  test("--tasks given twice registers the tasks of both modules", async () => {
    const mine = await enqueue(sql, throwsValue, { kind: "number" });
    const service = serve(["--tasks", hostileTasks]);
    await until(() => taskRow(mine), (r) => r?.state === "failed", patience, "the task of the second module to run");
    await stillServing();
    await stopService(service);
  });
});

describe("rows written by hand", () => {
  test("payloads the schema refuses fail their task for good, naming the problem; rows no claim can advance are left alone; the rest runs", async () => {
    const strict = async (payload: string) =>
      (await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'strict', ${payload}::text::jsonb) RETURNING id::text`)[0].id as string;
    const refused: [string, string][] = [
      [await strict("null"), `invalid input for task "strict": Invalid type: Expected Object but received null`],
      [await strict('"text"'), `invalid input for task "strict": Invalid type: Expected Object but received "text"`],
      [await strict("[]"), `invalid input for task "strict": count: Invalid key: Expected "count" but received undefined`],
      [await strict('{"count": "x"}'), `invalid input for task "strict": count: Invalid type: Expected number but received "x"`],
      [await strict('{"count": {"nested": [1, 2, {"deep": null}]}}'), `invalid input for task "strict": count: Invalid type: Expected number but received Object`],
    ];
    // Claimed, these would overflow an integer: ahead of everything else in
    // the default lane, they must not block the tasks behind them.
    const [{ id: maxAttempts }] = await sql`INSERT INTO pgbg.task (queue, name, payload, attempts, run_at)
      VALUES ('default', 'work', '{}', 2147483647, now() - interval '1 hour') RETURNING id::text`;
    const [{ id: maxToken }] = await sql`INSERT INTO pgbg.task (queue, name, payload, lease_token, run_at)
      VALUES ('default', 'work', '{}', 2147483647, now() - interval '1 hour') RETURNING id::text`;
    // A name no task can have (defineTask refuses it), so no worker registers it.
    const [{ id: oddName }] = await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'has space', '{}') RETURNING id::text`;
    const service = serve(["--workers", "1"]);
    await service.waitForLog((l) => /^worker 1 ready/.test(l.message), patience);
    for (const [id] of refused) await until(() => taskRow(id), (r) => r?.state === "failed", patience, `task ${id} to fail`);
    const normal = await enqueueMany(sql, work, Array.from({ length: 5 }, () => ({})));
    await until(() => remaining(normal), (n) => n === 0, patience, "the tasks behind the hand-written rows to run");
    await stopService(service);
    for (const [id, message] of refused) {
      const row = await taskRow(id);
      assert.equal(row.attempts, 1);
      assert.deepEqual([row.last_error.name, row.last_error.code, row.last_error.message], ["InvalidInputError", "PGBG_INVALID_INPUT", message]);
    }
    assert.equal((await executions(refused.map(([id]) => id))).length, 0, "the handler never ran");
    assert.deepEqual([...await sql`SELECT id::text, state, attempts, lease_token FROM pgbg.task WHERE id IN ${sql([maxAttempts, maxToken, oddName])} ORDER BY id`], [
      { id: maxAttempts, state: "queued", attempts: 2147483647, lease_token: 0 },
      { id: maxToken, state: "queued", attempts: 0, lease_token: 2147483647 },
      { id: oddName, state: "queued", attempts: 0, lease_token: 0 },
    ]);
    assert.equal(service.logs.filter((l) => /claim failed/.test(l.message)).length, 0, "no claim failed");
  });
});

describe("handlers that misbehave", () => {
  test("a thrown non-Error value is recorded as the task's last error, even one that cannot be printed; the worker keeps running", async () => {
    const expected: Record<string, [string, string]> = {
      undefined: ["NonError", "non-Error value thrown: undefined"],
      null: ["NonError", "non-Error value thrown: null"],
      number: ["NonError", "non-Error value thrown: 42"],
      symbol: ["NonError", "non-Error value thrown: Symbol(boom)"],
      object: ["NonError", 'non-Error value thrown: {"reason":"plain object"}'],
      unprintable: ["UnreadableError", "a thrown value that cannot be read (its properties, toJSON or toString threw)"],
      "unreadable-error": ["UnreadableError", "a thrown value that cannot be read (its properties, toJSON or toString threw)"],
    };
    const ids = new Map<string, string>();
    for (const kind of Object.keys(expected)) ids.set(kind, await enqueue(sql, throwsValue, { kind } as never));
    const service = serve(["--workers", "1", "--concurrency", "4"], `${fixtureTasks},${hostileTasks}`);
    for (const [kind, id] of ids) await until(() => taskRow(id), (r) => r?.state === "failed", patience, `the ${kind} task to fail`);
    const after = await stillServing();
    await stopService(service);
    for (const [kind, id] of ids) {
      const { last_error: error } = await taskRow(id);
      assert.deepEqual([error.name, error.message, error.timedOut], [...expected[kind], false], kind);
    }
    const pids = new Set((await executions([...ids.values(), after])).map((r) => r.pid));
    assert.equal(pids.size, 1, "one worker process ran every task: none crashed");
    assert.equal(service.logs.filter((l) => /exited/.test(l.message)).length, 0);
  });

  test("a handler that rejects after its timeout: the attempt fails as timed out, once, and the worker is neither retired nor crashed", async () => {
    const id = await enqueue(sql, rejectsLate, {});
    const service = serve(["--workers", "1"], `${fixtureTasks},${hostileTasks}`);
    await until(() => taskRow(id), (r) => r?.state === "failed", patience, "the task to fail");
    const after = await stillServing();
    await stopService(service);
    const row = await taskRow(id);
    assert.equal(row.attempts, 1);
    assert.deepEqual([row.last_error.name, row.last_error.message, row.last_error.timedOut],
      ["TaskTimeoutError", "the task did not finish within its timeout of 300 ms", true]);
    const runs = await executions([id, after]);
    assert.equal(runs.length, 2);
    assert.ok(runs[0].ended_at !== null, "the handler settled");
    assert.equal(runs[1].pid, runs[0].pid, "the same worker ran the next task");
    assert.equal(service.logs.filter((l) => /ignored its abort signal|exited/.test(l.message)).length, 0);
  });

  test("a handler that calls process.exit(0): the worker is replaced, and its task and every other task it was running run again", async () => {
    const others = await enqueueMany(sql, work, [{ ms: 3000 }, { ms: 3000 }]);
    const service = serve(["--workers", "1", "--concurrency", "4"], `${fixtureTasks},${hostileTasks}`);
    const [first] = await until(() => executions(others), (runs) => runs.length === 2, patience, "the other tasks to start");
    const exits = await enqueue(sql, exitsMidTask, {});
    const line = await service.waitForLog((l) => /^worker 1 exited/.test(l.message), patience);
    assert.match(line.message, /^worker 1 exited with code 0; restarting( in \d+ ms)?$/);
    await until(() => remaining([...others, exits]), (n) => n === 0, patience, "every task to finish in the new worker");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    const runs = await executions([...others, exits]);
    assert.deepEqual(runs.filter((r) => r.task_id === exits).map((r) => [r.attempt, r.ended_at === null]), [[1, true], [2, false]]);
    for (const id of others) {
      const done = runs.filter((r) => r.task_id === id && r.ended_at !== null);
      assert.equal(done.length, 1, `task ${id} completed once`);
      assert.notEqual(done[0].pid, first.pid, `task ${id} ran again in the new worker`);
    }
  });
});

describe("the supervisor", () => {
  test("dies while a worker is still loading: the worker stops by itself and claims nothing", async () => {
    const queued = await enqueue(sql, work, {});
    const settings: WorkerSettings = { schema: "pgbg", queues: null, concurrency: 2, timeout: 30_000, retryDelay: 1000, maxAttempts: 25, idleSleep: 1000, shutdownTimeout: 1000, timings: liveness(200) };
    const spec = { settings, tasks: [fixtureTasks], cwd: process.cwd(), workerId: randomUUID(), supervisorId: randomUUID(), index: 1, logLevel: "debug", logFormat: "json" };
    const worker = spawn(process.execPath, [...typeScript, fileURLToPath(new URL("../cli/worker.ts", import.meta.url))], {
      stdio: ["ignore", "ignore", "ignore", "ipc"],
      env: { ...process.env, DATABASE_URL: db.url, PGBG_WORKER: JSON.stringify(spec) },
    });
    const exited = new Promise<number | null>((resolve) => worker.on("exit", (code) => resolve(code)));
    // What a supervisor's death does to the channel, long before the worker's own code has loaded.
    worker.disconnect();
    try {
      assert.equal(await within(exited, patience, "the orphaned worker to exit"), 0);
    } finally {
      worker.kill("SIGKILL");
    }
    const row = await taskRow(queued);
    assert.deepEqual([row.state, row.attempts], ["queued", 0], "the orphan claimed nothing");
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.worker`)[0].n, 0, "and left no worker row");
  });
});

describe("the database", () => {
  test("unreachable: the service says so without the password, keeps trying, and stops cleanly on SIGTERM", async () => {
    const service = serve([], fixtureTasks, { DATABASE_URL: "postgres://pgbg_user:s3cret-pw@127.0.0.1:1/pgbg" });
    await service.waitForLog((l) => l.message === "cannot reach the database (connect ECONNREFUSED 127.0.0.1:1); retrying in 1000 ms", patience);
    service.child.kill("SIGTERM");
    assert.deepEqual(await within(service.exited, patience, "the service to stop"), { code: 0, signal: null });
    const messages = service.logs.map((l) => l.message);
    assert.deepEqual(messages.slice(0, 3), [
      "database pgbg_user@127.0.0.1:1/pgbg",
      "cannot reach the database (connect ECONNREFUSED 127.0.0.1:1); retrying in 500 ms",
      "cannot reach the database (connect ECONNREFUSED 127.0.0.1:1); retrying in 1000 ms",
    ]);
    // A slow machine may fit another attempt in before the signal lands.
    for (const m of messages.slice(3, -1)) assert.match(m, /^cannot reach the database \(connect ECONNREFUSED 127\.0\.0\.1:1\); retrying in \d+ ms$/);
    assert.equal(messages.at(-1), "SIGTERM before the service started; stopping");
    assert.deepEqual(output(service).filter((line) => line.includes("s3cret-pw")), [], "no line shows the password");
  });

  test("full (no connection slot for its role): the service waits with back-off, then starts once a slot frees, and serves", async () => {
    const role = `${db.name}_full`;
    const password = randomUUID().replaceAll("-", "");
    await sql.unsafe(`CREATE ROLE "${role}" LOGIN PASSWORD '${password}' CONNECTION LIMIT 0`);
    after(async () => {
      await sql.unsafe(`DROP SCHEMA IF EXISTS full_test CASCADE; DROP OWNED BY "${role}"; DROP ROLE IF EXISTS "${role}"`);
    });
    await sql.unsafe(`GRANT CONNECT, CREATE ON DATABASE "${db.name}" TO "${role}"; GRANT SELECT, INSERT, UPDATE ON execution TO "${role}"`);
    await sql.unsafe(`GRANT USAGE ON SEQUENCE execution_id_seq TO "${role}"`);
    const url = new URL(db.url);
    [url.username, url.password] = [role, password];
    const service = serve(["--workers", "1", "--schema", "full_test"], fixtureTasks, { DATABASE_URL: url.toString() });
    const full = `cannot reach the database (too many connections for role "${role}"); retrying in 1000 ms`;
    await service.waitForLog((l) => l.message === full, patience);
    assert.equal(service.child.exitCode, null, "the service is still up");
    await sql.unsafe(`ALTER ROLE "${role}" CONNECTION LIMIT -1`);
    await service.waitForLog((l) => l.message.startsWith("serving:"), patience);
    const id = await enqueue(sql, work, {}, { schema: "full_test" });
    await until(async () => (await sql`SELECT count(*)::int AS n FROM full_test.task WHERE id = ${id}`)[0].n, (n) => n === 0, patience, "a task to run");
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  const neverMigrated = `schema "never_migrated" is at version 0, this pgbg needs ${LATEST_SCHEMA_VERSION}: run migrate(sql) or \`pgbg migrate\``;
  test("without the schema, --no-migrate exits 1 naming the fix, and creates nothing", async () => {
    const service = serve(["--schema", "never_migrated", "--no-migrate"]);
    assert.deepEqual(await within(service.exited, patience, "the service to exit"), { code: 1, signal: null });
    assert.deepEqual(service.other, [`pgbg: ${neverMigrated}`]);
    assert.equal((await sql`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'never_migrated'`)[0].n, 0);
  });

  test("a schema migrated by a newer pgbg: the service exits 1 with or without migrating, and the tasks in it are untouched", async () => {
    await migrate(sql, { schema: "future" });
    const queued = await enqueue(sql, work, {}, { schema: "future" });
    await sql`INSERT INTO future.migration (version, name) VALUES (${LATEST_SCHEMA_VERSION + 1}, 'from_the_future')`;
    const tooNew = `schema "future" is at version ${LATEST_SCHEMA_VERSION + 1}, newer than this pgbg knows (${LATEST_SCHEMA_VERSION}): upgrade pgbg`;
    for (const args of [["--schema", "future"], ["--schema", "future", "--no-migrate"]]) {
      const service = serve(args);
      assert.deepEqual(await within(service.exited, patience, "the service to exit"), { code: 1, signal: null }, args.join(" "));
      assert.deepEqual(service.other, [`pgbg: ${tooNew}`]);
    }
    assert.deepEqual([...await sql`SELECT state, attempts FROM future.task WHERE id = ${queued}`], [{ state: "queued", attempts: 0 }]);
    assert.equal((await sql`SELECT max(version) AS v FROM future.migration`)[0].v, LATEST_SCHEMA_VERSION + 1, "nothing was migrated");
  });
});
