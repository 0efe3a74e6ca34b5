/**
 * An application enqueueing in its own transactions while PostgreSQL ends
 * its connections (pg_terminate_backend, as a failover or an idle-session
 * reaper does). Through postgres.js 3.4.9 the process dies: the driver
 * writes to a connection it already closed, from a setImmediate nothing
 * can catch (porsager/postgres#1154, #1208), or rejects a promise the app
 * never saw with the server's termination error. Through node-postgres, the
 * mitigation the README gives, it keeps running, and every enqueue whose
 * commit returned is in the queue.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);
const producerScript = fileURLToPath(new URL("./fixtures/producer.ts", import.meta.url));

interface Producer {
  child: ChildProcess;
  committed: string[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves once `n` more commits than now have been reported. */
  commits(n: number): Promise<void>;
  /** The last lines it wrote on stderr, for a failure's message. */
  lastErrors(): string;
}

function startProducer(driver: "postgres" | "pg", applicationName: string): Producer {
  const child = spawn(process.execPath, [...typeScript, producerScript, driver, applicationName], {
    env: { ...process.env, DATABASE_URL: db.url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  after(() => void child.kill("SIGKILL"));
  const committed: string[] = [];
  const stderr: string[] = [];
  const waiters: { at: number; resolve: () => void }[] = [];
  let rest = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) if (line.startsWith("committed ")) committed.push(line.slice(10));
    for (const w of waiters.filter((w) => committed.length >= w.at)) waiters.splice(waiters.indexOf(w), 1), w.resolve();
  });
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => void stderr.push(chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const commits = (n: number) => new Promise<void>((resolve) => waiters.push({ at: committed.length + n, resolve }));
  const lastErrors = () => stderr.join("").split("\n").slice(-5).join("\n");
  return { child, committed, stderr, exited, commits, lastErrors };
}

/** Ends every connection of `applicationName` again and again, `rounds` times or until `stop` resolves; resolves with the rounds run. */
async function terminateRepeatedly(applicationName: string, rounds: number, stop: Promise<unknown>): Promise<number> {
  let stopped = false;
  void stop.then(() => (stopped = true));
  let round = 0;
  for (; round < rounds && !stopped; round++) {
    await sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ${applicationName}`;
    // Between rounds, the producer reconnects and starts new transactions.
    await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
  }
  return round;
}

test("through postgres.js 3.4.9, a producer dies when its connections are ended under its transactions (the reproduction)", async () => {
  const name = `producer-${randomUUID().slice(0, 8)}`;
  const producer = startProducer("postgres", name);
  await within(producer.commits(20), patience, () => `the producer's first commits (its last errors: ${producer.lastErrors()})`);
  const rounds = await terminateRepeatedly(name, 2_000, producer.exited);
  const exit = await within(producer.exited, patience, "the producer to die");
  assert.notEqual(exit.code, 0, `it died after ${rounds} rounds`);
  // The driver itself throws where the app cannot catch it: the write to a
  // closed connection from a setImmediate (porsager/postgres#1154), or, as
  // CI saw on PostgreSQL 14 and 16, a rejection no promise of the app's
  // holds (the termination error, or CONNECTION_CLOSED), or, as CI saw on
  // a loaded machine, the socket's own ECONNRESET rejected to no promise of
  // the app's (the producer's only sockets are the driver's). Node's report
  // of the fatal error follows the producer's last "failed:" line.
  const report = producer.stderr.join("").split("\n").filter((l) => !l.startsWith("failed: ")).join("\n");
  assert.match(report, /^(TypeError|PostgresError|Error): .*\n\s+at .*postgres\/src\/connection\.js|^Error: read ECONNRESET\n/m, report);
});

test("through node-postgres, the same producer keeps running, and every enqueue whose commit returned is in the queue", async () => {
  const name = `producer-${randomUUID().slice(0, 8)}`;
  const producer = startProducer("pg", name);
  await within(producer.commits(20), patience, () => `the producer's first commits (its last errors: ${producer.lastErrors()})`);
  // Far more rounds than the postgres.js producer outlives (it dies within its first few here).
  const rounds = await terminateRepeatedly(name, 200, producer.exited);
  assert.equal(rounds, 200, `the producer exited: ${producer.stderr.join("")}`);
  // Still enqueueing once the connections stop dying: no transaction was left hanging.
  await within(producer.commits(50), patience, "commits after the terminations");
  producer.child.kill("SIGTERM");
  assert.deepEqual(await within(producer.exited, patience, "the producer to stop"), { code: 0, signal: null });
  const ids = [...producer.committed];
  const [{ n }] = await sql`SELECT count(*)::int AS n FROM pgbg.task WHERE id IN ${sql(ids)}`;
  assert.equal(n, ids.length, "every committed enqueue is in the queue");
});
