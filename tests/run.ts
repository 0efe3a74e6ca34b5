/**
 * Runs the test suite on a real PostgreSQL: the one in DATABASE_URL when set,
 * otherwise an embedded server that this script starts in a temporary folder
 * and removes afterwards. Test files run in parallel, each in its own
 * database (see harness.ts).
 *
 * Usage: tsx tests/run.ts [test files…]
 */
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { startEmbeddedPostgres } from "../cli/embedded.ts";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const files = args.length ? args : readdirSync(here).filter((f) => f.endsWith(".test.ts")).sort().map((f) => join(here, f));

let stop: (() => Promise<void>) | undefined;
if (!process.env.DATABASE_URL) {
  const server = await startEmbeddedPostgres();
  process.env.DATABASE_URL = server.url;
  stop = server.stop;
  console.log(`tests: started embedded PostgreSQL ${server.version} on port ${server.port}`);
} else {
  console.log(`tests: using DATABASE_URL (${new URL(process.env.DATABASE_URL).host})`);
}

// Most service tests wait on the product's own clocks (stale times, kill
// silences, the 60 s ready time), not on the CPU, so more files at once
// overlap their waits: six by default. A service test holds about 25
// connections at its peak (two supervisors with their workers), so a server
// gets one file per 25 of the connections it allows ordinary roles
// (max_connections less superuser_reserved_connections): the machine's
// default of 100 allows three (four once ran it out of connections).
// PGBG_TEST_CONCURRENCY overrides it.
const concurrency = Number(process.env.PGBG_TEST_CONCURRENCY ?? Math.max(1, Math.min(6, Math.floor((await connectionSlots()) / 25))));

/** The connections the server allows roles that are not superusers. */
async function connectionSlots(): Promise<number> {
  const sql = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
  try {
    const [{ max, reserved }] = await sql`
      SELECT current_setting('max_connections')::int AS max, current_setting('superuser_reserved_connections')::int AS reserved`;
    return max - reserved;
  } finally {
    await sql.end();
  }
}

console.log(`tests: ${files.length} files, ${concurrency} at a time`);
// PGBG_TEST_TIMES=path also writes the TAP report there: its top-level
// entries are the files, each with its duration (how the suite's time was measured).
const times = process.env.PGBG_TEST_TIMES ? ["--test-reporter=tap", `--test-reporter-destination=${process.env.PGBG_TEST_TIMES}`] : [];
const child = spawn(
  process.execPath,
  ["--import", "tsx", "--test", "--test-reporter=spec", "--test-reporter-destination=stdout", ...times, `--test-concurrency=${concurrency}`, ...files],
  { stdio: "inherit", env: process.env },
);
const code: number = await new Promise((resolve) => child.on("exit", (c, s) => resolve(c ?? (s ? 1 : 0))));
await stop?.();
process.exit(code);
