/**
 * After an outage of the database, the service resumes as soon as the
 * database answers again: workers that failed on it (their start, or their
 * heartbeat) wait out a growing back-off, but the supervisor probes the
 * database meanwhile and starts them at its first answer. The outage is a
 * real one as the service sees it: its connections go through a proxy that
 * resets them, and every new one, until healed.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import { describe, test } from "node:test";
import { enqueue, migrate } from "../mod.ts";
import { CutProxy } from "./chaos/proxy.ts";
import { work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until, within } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, (sql) => migrate(sql));
const { sql } = testbed.db;

/** Runs `fn` with a proxy to the test database, and the database's URL through it. */
async function behindProxy(fn: (proxy: CutProxy, url: string) => Promise<void>): Promise<void> {
  const url = new URL(testbed.db.url);
  const proxy = new CutProxy({ host: url.hostname, port: Number(url.port || 5432) });
  await proxy.start();
  try {
    url.host = `127.0.0.1:${proxy.port}`;
    await fn(proxy, url.href);
  } finally {
    await proxy.close();
  }
}

describe("an outage of the database", () => {
  test("workers waiting out their back-off start as soon as the database answers again, and tasks run", async () => {
    await behindProxy(async (proxy, url) => {
      const service = testbed.serve(["--workers", "1", "--no-migrate"], undefined, { DATABASE_URL: url });
      await service.waitForLog((l) => /^worker 1 ready/.test(l.message), patience);
      proxy.refuse();
      // Down long enough for the back-off to grow past what the probe needs.
      const waiting = await service.waitForLog((l) => /^worker 1 (exited|was killed).*; restarting in 4000 ms$/.test(l.message), patience);
      proxy.heal();
      const back = await service.waitForLog((l) => l.message === "the database answers again: starting worker 1 now", patience);
      assert.ok(service.logs.indexOf(back) > service.logs.indexOf(waiting));
      const ready = await service.waitForLog((l) => /^worker 1 ready/.test(l.message) && service.logs.indexOf(l) > service.logs.indexOf(back), patience);
      assert.ok(ready);
      const id = await enqueue(sql, work, {});
      await until(() => testbed.remaining([id]), (n) => n === 0, patience, "a task enqueued after the outage to run");
    });
  });

  /**
   * A database that takes connections and never answers (the proxy's cut):
   * every statement of the service hangs, and new connections wait out
   * their connect timeout (30 s). The bounds are checked at 2 and 3 × their
   * goal, generous for a busy machine (both are timers; measured at 0.9 and
   * 0.7 × here), and tight enough that waiting for the database fails them
   * (7.5 s and 10 s without the bounds of cli/serve.ts and cli/worker.ts).
   */
  test("SIGTERM while the database hangs: pgbg serve exits within the shutdown timeout plus 2 s", async () => {
    await behindProxy(async (proxy, url) => {
      const service = testbed.serve(["--workers", "2", "--no-migrate", "--shutdown-timeout", "1s"], undefined, { DATABASE_URL: url });
      await service.waitForLog((l) => /^worker 2 ready/.test(l.message), patience);
      proxy.cut();
      const t0 = Date.now();
      service.child.kill("SIGTERM");
      const exit = await within(service.exited, 2 * (1_000 + 2_000), "pgbg serve to exit after SIGTERM with its database hanging");
      console.log(`  exited ${Date.now() - t0} ms after SIGTERM (goal: 3,000 ms)`);
      assert.equal(exit.signal, null);
    });
  });

  test("a supervisor SIGKILLed while the database hangs: its workers exit within the shutdown timeout plus 1 s", async () => {
    await behindProxy(async (proxy, url) => {
      const service = testbed.serve(["--workers", "2", "--no-migrate", "--shutdown-timeout", "1s", "--check-interval", "1s"], undefined, { DATABASE_URL: url });
      const rows = await until(() => sql`SELECT pid FROM pgbg.worker`, (r) => r.length === 2, patience, "both workers to register");
      const pids = rows.map((r) => r.pid as number);
      proxy.cut();
      const t0 = Date.now();
      service.child.kill("SIGKILL");
      // Exited: gone, or a zombie its new parent has not reaped yet.
      const alive = () => pids.filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
        } catch {
          return false;
        }
      });
      const bound = 1_000 + 1_000;
      await until(async () => alive(), (left) => left.length === 0, 3 * bound, "the orphaned workers to exit");
      console.log(`  orphaned workers gone ${Date.now() - t0} ms after their supervisor (bound: ${bound} ms)`);
    });
  });

  test("SIGTERM while the service waits for a database that takes connections and never answers: it exits 0 within the bound", async () => {
    const silent = createServer((socket) => {
      socket.on("error", () => {});
      socket.resume();
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", () => resolve()));
    try {
      const url = new URL(testbed.db.url);
      url.host = `127.0.0.1:${(silent.address() as AddressInfo).port}`;
      const service = testbed.serve(["--no-migrate", "--shutdown-timeout", "1s"], undefined, { DATABASE_URL: url.href });
      // Its first try to connect is under way, and would wait out the 30 s connect timeout.
      await service.waitForLog((l) => /^database /.test(l.message), patience);
      const t0 = Date.now();
      service.child.kill("SIGTERM");
      const exit = await within(service.exited, 2 * (1_000 + 2_000), "pgbg serve to exit after SIGTERM while it waits for the database");
      console.log(`  exited ${Date.now() - t0} ms after SIGTERM (goal: 3,000 ms)`);
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(service.logs.filter((l) => /cannot reach the database/.test(l.message)).length, 0, "no line about a connect the stop itself closed");
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  });
});
