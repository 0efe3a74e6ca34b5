/**
 * `pgbg dashboard` when the server ends its connections (a failover, a
 * restart, `pg_terminate_backend`, an idle-session timeout): postgres.js
 * 3.4.9 can then throw where nothing catches it (porsager/postgres#1154),
 * which ended the dashboard with status 1 twice in CI. It must keep
 * serving, from a new pool, and stop with status 0.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { migrate } from "../mod.ts";
import { createTestDatabase, type TestDatabase } from "./harness.ts";
import { patience, until, within } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const token = "a-dashboard-token-for-tests-only";
const db: TestDatabase = await createTestDatabase();
await migrate(db.sql);

/** Ends every session of the dashboard on the test's database; resolves with how many it ended. */
async function endDashboardSessions(): Promise<number> {
  const [{ n }] = await db.sql`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
    WHERE datname = current_database() AND application_name = 'pgbg dashboard'`;
  return n;
}

test("pgbg dashboard keeps serving while the server ends its connections under its statements, and stops with status 0", async () => {
  const child = spawn(process.execPath, [...typeScript, cli, "dashboard", "--port", "0"], {
    env: { ...process.env, DATABASE_URL: db.url, PGBG_DASHBOARD_TOKEN: token },
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    let out = "";
    child.stdout!.on("data", (c) => (out += c));
    child.stderr!.on("data", (c) => (out += c));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    let alive = true;
    void exited.then(() => (alive = false));
    const url = await within(new Promise<string>((resolve, reject) => {
      child.stdout!.on("data", () => {
        const m = /dashboard at (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      void exited.then((code) => reject(new Error(`pgbg dashboard exited with ${code}: ${out}`)));
    }), patience, "the dashboard to listen");
    const status = async () => {
      const res = await fetch(`${url}api/status`, { headers: { authorization: `Bearer ${token}` } });
      await res.arrayBuffer();
      return res.status;
    };
    // Four pages asking again and again, so that statements are in flight at every termination.
    let terminating = true;
    let answered = 0;
    let refused = 0;
    const ask = async () => {
      while (terminating && alive) {
        const code = await status().catch(() => 0);
        if (code === 200) answered++;
        else refused++;
      }
    };
    const askers = Array.from({ length: 4 }, ask);
    let ended = 0;
    for (let round = 0; round < 150 && alive; round++) {
      // Each round once a page was answered or refused since the last: the
      // dashboard has sent statements on its connections again.
      const seen = answered + refused;
      await until(async () => answered + refused, (n) => n > seen || !alive, patience, "a page answered between terminations");
      ended += await endDashboardSessions();
    }
    terminating = false;
    await Promise.all(askers);
    assert.ok(alive, `the dashboard still runs after ${ended} of its sessions were ended; it wrote:\n${out}`);
    assert.ok(ended > 0, `its sessions were ended (${ended} in 150 rounds)`);
    assert.ok(answered > 0, "pages were answered between the terminations");
    // The fault struck (it did within a few terminations, before the mend), and was met.
    assert.match(out, /serving from new connections/, out);
    // Serving again once the terminations stop: a page asked now is answered.
    assert.equal(await within(status(), patience, "a page after the terminations"), 200, out);
    child.kill("SIGTERM");
    assert.equal(await exited, 0, `the dashboard stops with status 0 on SIGTERM; it wrote:\n${out}`);
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
});
