/**
 * Workers that fail to start under `pgbg serve`: a tasks module that throws
 * on import (restarted with a growing back-off) and one that never finishes
 * loading (killed after the ready time).
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";
import { serviceTestbed, stopService, within, patience } from "./service-harness.ts";

const { serve } = await serviceTestbed(createTestDatabase, migrate);

describe("start-up", () => {
  test("a worker that crashes at start-up is restarted with a growing back-off, logged once per step", async () => {
    const broken = fileURLToPath(new URL("./fixtures/throws-on-import.ts", import.meta.url));
    const service = serve(["--workers", "1"], broken);
    const delays: number[] = [];
    for (let i = 0; i < 3; i++) {
      const line = await service.waitForLog((l) => /worker 1 exited with code 3/.test(l.message) && l.failures === i + 1, patience);
      assert.match(line.message, /this tasks module is broken on purpose/);
      delays.push(Number(/restarting in (\d+) ms/.exec(line.message)?.[1]));
    }
    assert.deepEqual(delays, [1000, 2000, 4000]);
    assert.deepEqual(await stopService(service), { code: 0, signal: null });
  });

  test("a worker whose tasks module never finishes loading is killed after 60 s and restarted; SIGTERM stops it at once", async () => {
    const never = fileURLToPath(new URL("./fixtures/never-loads.ts", import.meta.url));
    const service = serve(["--workers", "1", "--shutdown-timeout", "10m"], never);
    const line = await service.waitForLog((l) => /^worker 1 \(pid \d+\) is not ready within 60000 ms \(its tasks modules did not finish loading\); killing it$/.test(l.message), 120_000);
    assert.equal(line.level, "error");
    await service.waitForLog((l) => /^worker 1 was killed by SIGKILL: not ready within 60000 ms .*; restarting in 1000 ms$/.test(l.message), patience);
    // A 10 min shutdown timeout: only a worker that stops at once while still loading lets this end within the wait.
    assert.deepEqual(await within(stopService(service), patience, "the service to stop"), { code: 0, signal: null });
  });

});
