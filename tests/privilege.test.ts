/**
 * pgbg under least-privilege roles. The schema is migrated by the admin;
 * then one role that may only use pgbg's tables runs `pgbg serve
 * --no-migrate`, and another that may only add tasks enqueues them. Neither
 * can create anything, nor read or write any other table. Roles are
 * cluster-wide: their names carry this file's database name, and they are
 * dropped when the file ends.
 */
import assert from "node:assert/strict";
import { randomBytes, randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, describe, test } from "node:test";
import postgres from "postgres";
import { type ClaimedTask, claimTasks } from "../lib/claim.ts";
import { silentLogger } from "../lib/log.ts";
import { releaseWorkerTasks } from "../lib/maintenance/dead-worker-releaser.ts";
import { FlowKeeper } from "../lib/maintenance/flow-keeper.ts";
import { rotateHistory } from "../lib/maintenance/history-rotator.ts";
import { rescueExpiredLeases } from "../lib/maintenance/lease-rescuer.ts";
import { OutcomeWriter } from "../lib/outcomes.ts";
import { enqueue, enqueueBatch, enqueueFlow, enqueueMany, flowTask, getTask, LATEST_SCHEMA_VERSION, migrate, schemaVersion, setQueueRateLimit } from "../mod.ts";
import { completesInTx, fails, noop, waitsForSignal } from "./fixtures/pgbg-only.ts";
import { clientOptions, createTestDatabase, serverUrl } from "./harness.ts";
import { patience, serviceTestbed, stopService, until } from "./service-harness.ts";

const { db, sql, serve, remaining, taskRow } = await serviceTestbed(createTestDatabase, migrate);
const pgbgOnly = fileURLToPath(new URL("./fixtures/pgbg-only.ts", import.meta.url));
const password = randomBytes(12).toString("hex");
/** The service's role, and a role of an application that only enqueues. */
const roles = { serve: `${db.name}_serve`, enqueue: `${db.name}_enqueue` };

// What the README tells operators to grant, statement for statement.
await sql.unsafe(`REVOKE ALL ON DATABASE "${db.name}" FROM PUBLIC`);
await sql.unsafe(`REVOKE ALL ON SCHEMA public FROM PUBLIC`);
for (const role of Object.values(roles)) {
  await sql.unsafe(`CREATE ROLE "${role}" LOGIN PASSWORD '${password}'`);
  await sql.unsafe(`GRANT CONNECT ON DATABASE "${db.name}" TO "${role}"`);
  await sql.unsafe(`GRANT USAGE ON SCHEMA pgbg TO "${role}"`);
}
await sql.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON pgbg.task, pgbg.worker, pgbg.task_count TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, INSERT, DELETE ON pgbg.task_depth TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT ON pgbg.migration TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, INSERT ON pgbg.history TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, UPDATE ON pgbg.history_rotation TO "${roles.serve}"`);
await sql.unsafe(`GRANT TRUNCATE ON ${[0, 1, 2, 3, 4, 5, 6, 7].map((n) => `pgbg.history_${n}`).join(", ")} TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, DELETE ON pgbg.result_waiter TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, UPDATE, DELETE ON pgbg.task_key TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, UPDATE (rate_starts) ON pgbg.queue TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, INSERT, UPDATE ON pgbg.schedule TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON pgbg.group_rate TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON pgbg.claim TO "${roles.serve}"`);
await sql.unsafe(`GRANT SELECT, DELETE ON pgbg.flow, pgbg.task_dependency TO "${roles.serve}"`);
// The insert trigger reads pgbg.worker to decide whether to wake a worker.
await sql.unsafe(`GRANT SELECT, INSERT ON pgbg.task TO "${roles.enqueue}"`);
await sql.unsafe(`GRANT SELECT ON pgbg.worker TO "${roles.enqueue}"`);

after(async () => {
  await Promise.all([asServe.end({ timeout: 5 }), asEnqueue.end({ timeout: 5 })]);
  const names = Object.values(roles).map((r) => `"${r}"`).join(", ");
  // Revokes the grants in this database (if the harness has not dropped it yet), so the roles can go.
  await sql.unsafe(`DROP OWNED BY ${names}`).catch(() => {});
  const admin = postgres(serverUrl(), { ...clientOptions, max: 1 });
  await admin.unsafe(`DROP ROLE IF EXISTS ${names}`);
  await admin.end();
});

/** The URL of this database for `role`. */
function urlAs(role: string): string {
  const url = new URL(db.url);
  url.username = role;
  url.password = password;
  return url.toString();
}
const asServe = postgres(urlAs(roles.serve), { ...clientOptions, max: 2 });
const asEnqueue = postgres(urlAs(roles.enqueue), { ...clientOptions, max: 2 });

/** The SQLSTATE and message a call is refused with. */
const refusal = (call: Promise<unknown>) =>
  call.then(() => undefined, (e: { code?: string; message: string }) => [e.code, e.message]);

/**
 * An outcome writer of the service's role for the worker `workerId`, told
 * of `tasks` it claimed: a claim row's task is fenced by its claim, held by
 * that worker.
 */
function claimedBy(workerId: string, tasks: ClaimedTask[]): OutcomeWriter {
  const writer = new OutcomeWriter(asServe, "pgbg", 25, silentLogger, undefined, workerId);
  writer.claimed(tasks);
  return writer;
}

describe("least-privilege roles", () => {
  test("neither role is superuser or may create anything, in the database or any schema", async () => {
    const flags = await sql`SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname IN ${sql(Object.values(roles))} ORDER BY rolname`;
    for (const f of flags) assert.deepEqual([f.rolsuper, f.rolcreatedb, f.rolcreaterole, f.rolbypassrls], [false, false, false, false], f.rolname);
    for (const client of [asServe, asEnqueue]) {
      assert.deepEqual(await refusal(client`CREATE SCHEMA nope`), ["42501", `permission denied for database ${db.name}`]);
      assert.deepEqual(await refusal(client`CREATE TABLE public.nope (i int)`), ["42501", "permission denied for schema public"]);
      assert.deepEqual(await refusal(client`CREATE TABLE pgbg.nope (i int)`), ["42501", "permission denied for schema pgbg"]);
      assert.deepEqual(await refusal(client`SELECT * FROM public.execution`), ["42501", "permission denied for schema public"]);
    }
    assert.deepEqual(await refusal(migrate(asServe, { schema: "elsewhere" })), ["42501", `permission denied for database ${db.name}`]);
  });

  test("the service's role may run migrate on an up-to-date schema: it changes nothing and needs no DDL right", async () => {
    assert.deepEqual(await migrate(asServe), { schema: "pgbg", from: LATEST_SCHEMA_VERSION, to: LATEST_SCHEMA_VERSION });
    assert.equal(await schemaVersion(asServe), LATEST_SCHEMA_VERSION);
  });

  test("a role that may only insert tasks enqueues, one at a time, in batches and with a key, and can change nothing else", async () => {
    const id = await enqueue(asEnqueue, noop, {}, { key: "once" });
    assert.equal(await enqueue(asEnqueue, noop, {}, { key: "once" }), id, "the duplicate found the pending task");
    assert.equal((await enqueueMany(asEnqueue, noop, [{}, {}, {}])).length, 3);
    assert.equal(await remaining([id]), 1);
    assert.deepEqual(await refusal(asEnqueue`DELETE FROM pgbg.task`), ["42501", "permission denied for table task"]);
    assert.deepEqual(await refusal(asEnqueue`UPDATE pgbg.task SET priority = 1`), ["42501", "permission denied for table task"]);
    assert.deepEqual(await refusal(asEnqueue`DELETE FROM pgbg.worker`), ["42501", "permission denied for table worker"]);
  });

  test("the service's role keeps results and rotates the history with the grants above: completes a kept task, empties an expired slot", async () => {
    const id = await enqueue(asEnqueue, noop, {});
    const workerId = randomUUID();
    const [claimed] = await claimTasks(asServe, "pgbg", { workerId, queues: null, names: ["noop"], leaseMs: [60_000] }, 1);
    assert.equal(claimed.id, id);
    const writer = claimedBy(workerId, [claimed]);
    writer.complete({ id, leaseToken: claimed.leaseToken, claimId: claimed.claimId, keep: 60_000, result: "42" });
    await writer.flush();
    assert.deepEqual((await sql`SELECT state, result FROM pgbg.history WHERE id = ${id}`).map((r) => ({ ...r })), [{ state: "completed", result: 42 }]);
    await sql`INSERT INTO pgbg.history (id, slot, state, queue, name, attempts, enqueued_at, finished_at, expires_at, payload)
      VALUES (1, 6, 'completed', 'default', 'noop', 1, now(), now(), now() - interval '1 second', '{}')`;
    assert.ok((await rotateHistory(asServe, "pgbg", 0)).emptied.includes(6));
  });

  test("without the grant on pgbg.claim, the service's role still rescues expired leases and releases dead workers' tasks", async () => {
    await sql.unsafe(`REVOKE ALL ON pgbg.claim FROM "${roles.serve}"`);
    try {
      const [expired, orphaned] = [await enqueue(asEnqueue, noop, {}), await enqueue(asEnqueue, noop, {})];
      const dead = randomUUID();
      await sql`UPDATE pgbg.task SET state = 'running', attempts = 1, lease_token = 1, worker_id = ${dead},
        lease_expires_at = CASE WHEN id = ${expired} THEN now() - interval '1 second' ELSE now() + interval '1 hour' END
        WHERE id IN ${sql([expired, orphaned])}`;
      assert.deepEqual((await rescueExpiredLeases(asServe, "pgbg", 25)).map((r) => r.id), [expired]);
      assert.deepEqual((await releaseWorkerTasks(asServe, "pgbg", [dead], 25, { message: "died" })).map((r) => r.id), [orphaned]);
      assert.deepEqual(await refusal(asServe`SELECT FROM pgbg.claim`), ["42501", "permission denied for table claim"], "the grant was gone");
    } finally {
      await sql.unsafe(`GRANT SELECT, INSERT, UPDATE, DELETE ON pgbg.claim TO "${roles.serve}"`);
      await sql`DELETE FROM pgbg.task WHERE name = 'noop'`;
    }
  });

  test("the service's role completes a task whose key holds after its finish, and the key's hold starts (the trigger's update)", async () => {
    const id = await enqueue(sql, noop, {}, { key: "after-finish", keyWindow: { ms: 60_000, from: "finish" } });
    const workerId = randomUUID();
    const [claimed] = await claimTasks(asServe, "pgbg", { workerId, queues: null, names: ["noop"], leaseMs: [60_000] }, 1);
    assert.equal(claimed.id, id);
    const writer = claimedBy(workerId, [claimed]);
    writer.complete({ id, leaseToken: claimed.leaseToken, claimId: claimed.claimId });
    await writer.flush();
    assert.equal(await remaining([id]), 0);
    const [{ held }] = await sql`SELECT held_until > now() AS held FROM pgbg.task_key WHERE key = 'after-finish'`;
    assert.equal(held, true);
  });

  test("the service's role completes a flow's parent, releasing its dependant, fails one, failing its dependant, and looks after flows", async () => {
    // What the README gives an application that enqueues flows.
    await sql.unsafe(`GRANT USAGE ON SEQUENCE pgbg.task_id_seq TO "${roles.enqueue}"`);
    await sql.unsafe(`GRANT SELECT, INSERT ON pgbg.flow, pgbg.task_dependency TO "${roles.enqueue}"`);
    const flow = await enqueueFlow(asEnqueue, {
      a: flowTask(noop, {}), b: flowTask(noop, {}, { dependsOn: ["a"] }),
      c: flowTask(fails, {}, { maxAttempts: 1 }), d: flowTask(noop, {}, { dependsOn: ["c"] }),
    });
    // A write the role may not make is retried for ever: its first warning ends the test instead.
    let refused!: (warning: string) => void;
    const refusal = new Promise<string>((resolve) => (refused = resolve));
    const workerId = randomUUID();
    const writer = new OutcomeWriter(asServe, "pgbg", 25, { ...silentLogger, warn: (m: string, f?: { error?: string }) => refused(`${m}: ${f?.error}`) }, undefined, workerId);
    const claimed = await claimTasks(asServe, "pgbg", { workerId, queues: null, names: ["noop", "fails"], leaseMs: [60_000, 60_000] }, 10);
    writer.claimed(claimed);
    assert.deepEqual(claimed.map((c) => c.id).sort(), [flow.tasks.a, flow.tasks.c].sort(), "the parents, not their dependants");
    const [a, c] = [flow.tasks.a, flow.tasks.c].map((id) => claimed.find((t) => t.id === id)!);
    writer.complete({ id: a.id, leaseToken: a.leaseToken, claimId: a.claimId });
    writer.fail({ id: c.id, leaseToken: c.leaseToken, claimId: c.claimId, delay: 0, error: { name: "Error", message: "planned" }, permanent: true });
    assert.equal(await Promise.race([writer.flush().then(() => "written"), refusal]), "written");
    assert.deepEqual(await Promise.all([flow.tasks.b, flow.tasks.d].map(async (id) => (await taskRow(id))?.state)), ["queued", "failed"]);
    // The flow keeper: batches' completion tasks left uncounted, and flows older than a day pruned.
    await sql`UPDATE pgbg.flow SET created_at = now() - interval '2 days'`;
    await sql`DELETE FROM pgbg.task WHERE flow_id = ${flow.id}`;
    await new FlowKeeper(asServe, "pgbg", 60_000, silentLogger).runOnce();
    assert.equal((await sql`SELECT count(*)::int AS n FROM pgbg.flow WHERE id = ${flow.id}`)[0].n, 0, "pruned");
    // A batch, enqueued with the flows' grants alone; its members' successes count it down under the service's role.
    const batch = await enqueueBatch(asEnqueue, noop, [{}, {}], { then: flowTask(noop, {}) });
    const members = await claimTasks(asServe, "pgbg", { workerId, queues: null, names: ["noop"], leaseMs: [60_000] }, 10);
    writer.claimed(members);
    assert.deepEqual(members.map((m) => m.id).sort(), [...batch.members].sort());
    for (const m of members) writer.complete({ id: m.id, leaseToken: m.leaseToken, claimId: m.claimId, batch: true });
    assert.equal(await Promise.race([writer.flush().then(() => "written"), refusal]), "written");
    assert.equal((await taskRow(batch.then))?.state, "queued", "the batch's completion task is released");
    await sql`DELETE FROM pgbg.task WHERE flow_id = ${batch.id}`;
    // And for a dependency on an existing task: the mark it is depended on.
    await sql.unsafe(`GRANT UPDATE (dependants) ON pgbg.task TO "${roles.enqueue}"`);
    const existing = await enqueue(asEnqueue, noop, {});
    const after = await enqueueFlow(asEnqueue, { next: flowTask(noop, {}, { dependsOn: [{ id: existing }] }) });
    assert.equal((await taskRow(after.tasks.next))?.state, "waiting", "a dependency on an existing task");
    await sql`DELETE FROM pgbg.task WHERE id IN ${sql([existing, after.tasks.next])}`;
  });

  test("pgbg serve --no-migrate under the service's role runs, fails, completes in a transaction and hands back tasks", async () => {
    const done = await enqueueMany(asEnqueue, noop, Array.from({ length: 20 }, () => ({})));
    const inTx = await enqueue(asEnqueue, completesInTx, {});
    const failing = await enqueue(asEnqueue, fails, {});
    const service = serve(["--no-migrate", "--workers", "2", "--shutdown-timeout", "300ms"], pgbgOnly, { DATABASE_URL: urlAs(roles.serve) });
    await service.waitForLog((l) => /^worker \d ready/.test(l.message), patience);
    await until(() => remaining([...done, inTx]), (n) => n === 0, patience, "the tasks to run");
    await until(() => taskRow(failing), (r) => r?.state === "failed", patience, "the failing task to fail");
    const handedBack = await enqueue(asEnqueue, waitsForSignal, {});
    // Read as pgbg reads a task: a claim row's task is running though its row is queued.
    await until(() => getTask(sql, handedBack), (t) => t?.state === "running", patience, "the long task to start");
    // Enqueued while the service is idle: the wake-up works under these roles too.
    const late = await enqueue(asEnqueue, noop, {});
    await until(() => remaining([late]), (n) => n === 0, patience, "a task enqueued while idle to run");
    // A rate-limited queue: the limited claim logs its starts in pgbg.queue.
    await setQueueRateLimit(sql, "rated", { limit: 2, interval: "1h" });
    const rated = await enqueueMany(asEnqueue, noop, [{}, {}, {}], { queue: "rated" });
    await until(() => remaining(rated), (n) => n === 1, patience, "two of the rate-limited queue's tasks to run");
    assert.equal((await sql`SELECT cardinality(rate_starts) AS n FROM pgbg.queue WHERE name = 'rated'`)[0].n, 2);
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
    const failed = await taskRow(failing);
    assert.deepEqual([failed.attempts, failed.last_error.message], [2, "planned failure"]);
    const back = await taskRow(handedBack);
    const lines = [...service.logs.map((l) => JSON.stringify(l)), ...service.other];
    assert.deepEqual([back.state, back.attempts], ["queued", 0], `handed back at shutdown, uncounted; the service said:\n${lines.join("\n")}`);
    assert.deepEqual(lines.filter((l) => /permission denied/.test(l)), [], "no statement was refused");
    assert.deepEqual(lines.filter((l) => l.includes(password)), [], "no line shows the password");
    assert.ok(service.logs.some((l) => l.message === `database ${roles.serve}@${new URL(db.url).host}/${db.name}`));
  });
});
