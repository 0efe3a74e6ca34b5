import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { serveSettings } from "../cli/config.ts";
import { fixtureTasks } from "./service-harness.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));

function pgbg(args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(process.execPath, ["--import", "tsx", cli, ...args], {
    env: { ...process.env, DATABASE_URL: "postgres://someone:s3cret-pw@127.0.0.1:1/nowhere", ...env },
    encoding: "utf8",
    timeout: 30_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

describe("pgbg serve flags", () => {
  test("--help documents every flag with its default and variable", () => {
    const { code, stdout, stderr } = pgbg(["serve", "--help"]);
    assert.equal(code, 0, stderr);
    for (const [flag, setting] of Object.entries(serveSettings)) {
      assert.match(stdout, new RegExp(`--${flag}`), `--help lists --${flag}`);
      assert.ok(stdout.includes(`env ${setting.env}`), `--help names ${setting.env}`);
      assert.ok(stdout.includes(`default: ${setting.shown}`), `--help shows the default of --${flag}`);
    }
  });

  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--workers", "0"], {}, /^pgbg: --workers \(PGBG_WORKERS\) must be a whole number from 1 to 256, got "0"$/],
    [["--workers", "-3"], {}, /--workers \(PGBG_WORKERS\) must be a whole number/],
    [["--workers", "two"], {}, /--workers \(PGBG_WORKERS\)/],
    [["--concurrency", "1.5"], {}, /--concurrency \(PGBG_CONCURRENCY\) must be a whole number from 1 to 10000/],
    [["--concurrency", "100000"], {}, /--concurrency/],
    [["--timeout", "0"], {}, /--timeout \(PGBG_TIMEOUT\) must be a duration.*at least 1 ms, got "0"/],
    [["--timeout", "soon"], {}, /--timeout \(PGBG_TIMEOUT\) must be a duration such as 500ms, 30s, 5m/],
    [["--retry-delay", "-5s"], {}, /--retry-delay \(PGBG_RETRY_DELAY\)/],
    [["--check-interval", "1ms"], {}, /--check-interval \(PGBG_CHECK_INTERVAL\) must be .*at least 10 ms/],
    [["--idle-sleep", "30 days"], {}, /--idle-sleep \(PGBG_IDLE_SLEEP\)/],
    [["--max-attempts", "0"], {}, /--max-attempts \(PGBG_MAX_ATTEMPTS\) must be a whole number from 1/],
    [["--shutdown-timeout", "forever"], {}, /--shutdown-timeout \(PGBG_SHUTDOWN_TIMEOUT\)/],
    [["--queues", "a b"], {}, /--queues \(PGBG_QUEUES\) must be a list of queue names/],
    [["--schema", "Bad-Name"], {}, /--schema \(PGBG_SCHEMA\): invalid schema name/],
    [["--log-level", "loud"], {}, /--log-level \(PGBG_LOG_LEVEL\) must be error, warn, info or debug/],
    [[], { PGBG_WORKERS: "many" }, /--workers \(PGBG_WORKERS\) must be a whole number.*got "many"/],
    [[], { PGBG_TIMEOUT: "-1" }, /--timeout \(PGBG_TIMEOUT\)/],
    [[], { DATABASE_URL: "mysql://root:hunter2@db/x" }, /--database-url \(DATABASE_URL\) must be a postgres:\/\/ or postgresql:\/\/ URL/],
  ];
  for (const [args, env, message] of cases) {
    test(`exits 2 with one line for ${[...args, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(" ")}`, () => {
      const { code, stderr } = pgbg(["serve", "--tasks", fixtureTasks, ...args], env);
      assert.equal(code, 2, stderr);
      const lines = stderr.trim().split("\n");
      assert.equal(lines.length, 1, stderr);
      assert.match(lines[0], message);
      assert.ok(!stderr.includes("hunter2") && !stderr.includes("s3cret-pw"), "no password in the output");
    });
  }

  test("--tasks is required", () => {
    const { code, stderr } = pgbg(["serve"]);
    assert.equal(code, 2);
    assert.match(stderr.trim(), /^pgbg: --tasks \(PGBG_TASKS\) is required/);
  });

  test("a wrong password exits 1 with a clear line that does not show the password", async () => {
    const url = new URL(process.env.DATABASE_URL!);
    url.username = "pgbg_no_such_role";
    url.password = "s3cret-pw";
    const { code, stderr } = pgbg(["serve", "--tasks", fixtureTasks, "--log-format", "json"], { DATABASE_URL: url.toString() });
    assert.equal(code, 1, stderr);
    assert.match(stderr, /pgbg_no_such_role/);
    assert.ok(!stderr.includes("s3cret-pw"), "no password in the output");
  });
});

describe("pgbg migrate", () => {
  test("migrates, reports the status, and exits 2 on a bad schema name", () => {
    const url = process.env.DATABASE_URL!;
    const schema = `cli_${process.pid}`;
    const first = pgbg(["migrate", "--schema", schema], { DATABASE_URL: url });
    assert.equal(first.code, 0, first.stderr);
    assert.match(first.stdout, new RegExp(`schema ${schema} migrated from version 0 to \\d+`));
    const status = pgbg(["migrate", "--schema", schema, "--status"], { DATABASE_URL: url });
    assert.match(status.stdout, /applied version (\d+), available \1/);
    const bad = pgbg(["migrate", "--schema", "Nope!"], { DATABASE_URL: url });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr.trim(), /^pgbg: invalid schema name "Nope!"/);
    // Clean up the schema this test made on the shared server.
    const drop = spawnSync(process.execPath, ["--import", "tsx", "-e",
      `import postgres from "postgres"; const s = postgres(process.env.DATABASE_URL, { onnotice() {} }); await s.unsafe('DROP SCHEMA "${schema}" CASCADE'); await s.end();`,
    ], { env: { ...process.env, DATABASE_URL: url }, encoding: "utf8" });
    assert.equal(drop.status, 0, drop.stderr);
  });
});
