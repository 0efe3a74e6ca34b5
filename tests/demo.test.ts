/**
 * The README's main job, `npm start` (examples/demo.ts), as a newcomer runs
 * it: no DATABASE_URL, a folder of their own. It must start an embedded
 * PostgreSQL, say so, serve every example task through `pgbg serve`, and
 * exit 0 only when every task ran.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { embeddedDataDir } from "../cli/database.ts";
import { patience, within } from "./service-harness.ts";

const demo = fileURLToPath(new URL("../examples/demo.ts", import.meta.url));

test("npm start: without DATABASE_URL it starts an embedded PostgreSQL, says so, and serves every example task", async () => {
  // mkdtemp makes a folder closed to other users: under root this is the
  // case of a clone in /root, where the server's data must go elsewhere.
  const cwd = mkdtempSync(join(tmpdir(), "pgbg-demo-"));
  const dataDir = embeddedDataDir(cwd);
  try {
    const env = { ...process.env };
    delete env.DATABASE_URL;
    // The loader by absolute URL: the folder has no node_modules of its own.
    const child = spawn(process.execPath, ["--import", import.meta.resolve("tsx"), demo], { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (c) => (out += c));
    child.stderr.on("data", (c) => (out += c));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const code = await within(exited, 4 * patience, "npm start to finish").catch(async (error) => {
      // SIGTERM: the demo stops its service and its embedded server.
      child.kill("SIGTERM");
      await within(exited, patience, "npm start to stop").catch(() => child.kill("SIGKILL"));
      throw error;
    });
    assert.equal(code, 0, out.slice(-3000));
    const started = /DATABASE_URL is not set: started an embedded PostgreSQL \d+ on port \d+ with data in (\S+);/.exec(out);
    assert.ok(started, `the demo says it started an embedded server:\n${out.slice(0, 2000)}`);
    assert.equal(started[1], dataDir);
    assert.match(out, /DATABASE_URL is not set: using the embedded PostgreSQL already running on port \d+/, "pgbg serve says it fell back to it");
    assert.match(out, /enqueued 20000 "add" and 500 "send-email" tasks; starting pgbg serve/);
    assert.match(out, /queued 0 {2}scheduled \(retries\) 0 {2}running 0 {2}failed 0 /, "the progress ends with nothing left");
    assert.match(out, /pgbg serve stopped \(exit code 0\); every task ran/);
  } finally {
    rmSync(cwd, { recursive: true, force: true });
    if (!dataDir.startsWith(cwd)) rmSync(dirname(dataDir), { recursive: true, force: true });
  }
});
