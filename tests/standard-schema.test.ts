/**
 * Any Standard Schema types and validates a task's input: zod 4, zod 3 and
 * arktype tasks are checked at enqueue (bad input refused, naming path and
 * message, nothing written) and again before each attempt, and their
 * handlers receive the schema's output, in-process and under pgbg serve. The
 * type tests are in tests/fixtures/standard-types.ts (tsc checks them).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { createWorker, defineTask, enqueue, enqueueMany, InvalidInputError, InvalidTaskError, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, migrate);
const { sql } = testbed;
await sql`CREATE TABLE standard_run (task_id bigint NOT NULL, input jsonb NOT NULL)`;
process.env.DATABASE_URL = testbed.db.url;
const { arkTask, zod3Task, zodTask } = await import("./fixtures/standard-tasks.ts");
const standardTasks = fileURLToPath(new URL("./fixtures/standard-tasks.ts", import.meta.url));
const quiet = { debug() {}, info() {}, warn() {}, error() {} };
const count = async () => (await sql`SELECT count(*)::int AS n FROM pgbg.task`)[0].n as number;

/** Enqueues one good input per task, waits for the runs, and checks each handler got the schema's output. */
async function runsEach(): Promise<void> {
  const ids = [
    await enqueue(sql, zodTask, { to: "ada@example.com", n: 21 }),
    ...await enqueueMany(sql, zod3Task, [{ n: 1 }, { n: 2 }]),
    await enqueue(sql, arkTask, { id: "x" }),
  ];
  const runs = await until(() => sql`SELECT task_id::text AS id, input FROM standard_run WHERE task_id IN ${sql(ids)} ORDER BY task_id`,
    (rows) => rows.length === 4, patience, "the four tasks to run");
  assert.deepEqual(runs.map((r) => r.input), [{ to: "ada@example.com", tags: [], n: 42 }, { n: 1 }, { n: 2 }, { id: "x" }]);
}

describe("Standard Schema", () => {
  test("enqueue refuses what each schema refuses, naming path and message, and writes nothing", async () => {
    await sql`DELETE FROM pgbg.task`;
    const refused = async (p: Promise<unknown>, pattern: RegExp) =>
      assert.rejects(p, (e) => e instanceof InvalidInputError && pattern.test(e.message) && e.issues.length >= 1);
    await refused(enqueue(sql, zodTask, { to: "not an address", n: 1 }), /invalid input for task "zod-task": to: /);
    await refused(enqueue(sql, zod3Task, { n: 13 }), /invalid input for task "zod3-task": n: 13 is unlucky/);
    await refused(enqueueMany(sql, zod3Task, [{ n: 1 }, { n: 1.5 }]), /invalid input for task "zod3-task" at index 1: n: /);
    await refused(enqueue(sql, arkTask, { id: 7 } as never), /invalid input for task "ark-task": id: id must be a string/);
    assert.equal(await count(), 0);
    assert.throws(() => defineTask({ name: "nope", schema: { parse() {} } as never, run() {} }),
      (e) => e instanceof InvalidTaskError && /schema must be a Standard Schema v1/.test(e.message));
  });

  test("in-process: each handler gets its schema's output; an input the schema refuses at run time fails for good", async () => {
    const worker = createWorker(sql, { tasks: [zodTask, zod3Task, arkTask], concurrency: 4, checkInterval: 200, logger: quiet });
    await worker.start();
    try {
      await runsEach();
      // A row the schema refuses (written by hand, as by an older release with another schema) fails at once.
      const [{ id }] = await sql`INSERT INTO pgbg.task (queue, name, payload) VALUES ('default', 'zod3-task', '{"n":13}') RETURNING id::text`;
      const row = await until(() => sql`SELECT state::text, attempts, last_error FROM pgbg.task WHERE id = ${id}`.then((r) => r[0]),
        (r) => r?.state === "failed", patience, "the refused row to fail");
      assert.deepEqual([row.attempts, row.last_error.code, row.last_error.message], [1, "PGBG_INVALID_INPUT", 'invalid input for task "zod3-task": n: 13 is unlucky']);
    } finally {
      await worker.stop();
    }
  });

  test("under pgbg serve: the same tasks module runs as written", async () => {
    const service = testbed.serve(["--workers", "1", "--concurrency", "4"], standardTasks);
    await service.waitForLog((l) => /^serving/.test(l.message), patience);
    await runsEach();
  });
});
