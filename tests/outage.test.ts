/**
 * After an outage of the database, the service resumes as soon as the
 * database answers again: workers that failed on it (their start, or their
 * heartbeat) wait out a growing back-off, but the supervisor probes the
 * database meanwhile and starts them at its first answer. The outage is a
 * real one as the service sees it: its connections go through a proxy that
 * resets them, and every new one, until healed.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { enqueue, migrate } from "../mod.ts";
import { CutProxy } from "./chaos/proxy.ts";
import { work } from "./fixtures/tasks.ts";
import { createTestDatabase } from "./harness.ts";
import { patience, serviceTestbed, until } from "./service-harness.ts";

const testbed = await serviceTestbed(createTestDatabase, (sql) => migrate(sql));
const { sql } = testbed.db;

describe("an outage of the database", () => {
  test("workers waiting out their back-off start as soon as the database answers again, and tasks run", async () => {
    const url = new URL(testbed.db.url);
    const proxy = new CutProxy({ host: url.hostname, port: Number(url.port || 5432) });
    await proxy.start();
    try {
      url.host = `127.0.0.1:${proxy.port}`;
      const service = testbed.serve(["--workers", "1", "--no-migrate"], undefined, { DATABASE_URL: url.href });
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
    } finally {
      await proxy.close();
    }
  });
});
