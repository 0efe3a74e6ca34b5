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

const concurrency = Number(process.env.PGBG_TEST_CONCURRENCY ?? 4);
const child = spawn(
  process.execPath,
  ["--import", "tsx", "--test", "--test-reporter=spec", `--test-concurrency=${concurrency}`, ...files],
  { stdio: "inherit", env: process.env },
);
const code: number = await new Promise((resolve) => child.on("exit", (c, s) => resolve(c ?? (s ? 1 : 0))));
await stop?.();
process.exit(code);
