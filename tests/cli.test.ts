import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import postgres from "postgres";
import { resolveServeConfig, serveSettings } from "../cli/config.ts";
import { fixtureTasks, patience } from "./service-harness.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));

function pgbg(args: string[], env: Record<string, string> = {}) {
  const result = spawnSync(process.execPath, ["--import", "tsx", cli, ...args], {
    env: { ...process.env, DATABASE_URL: "postgres://someone:s3cret-pw@127.0.0.1:1/nowhere", ...env },
    encoding: "utf8",
    timeout: patience,
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

  // The exact line each bad value gets, built from the rule of its kind.
  const count = (flag: string, env: string, max: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a whole number from ${flag === "metrics-port" ? 0 : 1} to ${max}, got "${got}"`;
  const duration = (flag: string, env: string, min: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a duration such as 500ms, 30s, 5m or plain milliseconds, from ${min} ms to 168h, got "${got}"`;
  const durationOrOff = (flag: string, env: string, min: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a duration such as 500ms, 30s, 5m or plain milliseconds, from ${min} ms to 168h, or 0 or off, got "${got}"`;
  const badSchema = (name: string) =>
    `pgbg: --schema (PGBG_SCHEMA): invalid schema name ${JSON.stringify(name)}: use 1-63 lower-case letters, digits or _, not starting with a digit or pg_`;
  const queueRule = "a list of queue names (1-128 characters of A-Z a-z 0-9 _ . : / -, starting with a letter or digit)";
  const badUrl = "pgbg: --database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded";
  const cases: [string[], Record<string, string>, string][] = [
    [["--tasks", ","], {}, `pgbg: --tasks (PGBG_TASKS) must be a non-empty comma-separated list, got ","`],
    [["--tasks"], {}, "pgbg: --tasks (PGBG_TASKS) needs a value"],
    [["--workers", "0"], {}, count("workers", "PGBG_WORKERS", 256, "0")],
    [["--workers", "-3"], {}, count("workers", "PGBG_WORKERS", 256, "-3")],
    [["--workers", "two"], {}, count("workers", "PGBG_WORKERS", 256, "two")],
    [["--workers", "257"], {}, count("workers", "PGBG_WORKERS", 256, "257")],
    [["--workers"], {}, "pgbg: --workers (PGBG_WORKERS) needs a value"],
    [["--workers="], {}, "pgbg: --workers (PGBG_WORKERS) needs a value"],
    [["--workers", "2", "--workers", "3"], {}, "pgbg: --workers (PGBG_WORKERS) is given twice; give it once"],
    [["--concurrency", "0"], {}, count("concurrency", "PGBG_CONCURRENCY", 10000, "0")],
    [["--concurrency", "-1"], {}, count("concurrency", "PGBG_CONCURRENCY", 10000, "-1")],
    [["--concurrency", "1.5"], {}, count("concurrency", "PGBG_CONCURRENCY", 10000, "1.5")],
    [["--concurrency", "100000"], {}, count("concurrency", "PGBG_CONCURRENCY", 10000, "100000")],
    [["--timeout", "0"], {}, duration("timeout", "PGBG_TIMEOUT", 1, "0")],
    [["--timeout", "soon"], {}, duration("timeout", "PGBG_TIMEOUT", 1, "soon")],
    [["--timeout", "200h"], {}, duration("timeout", "PGBG_TIMEOUT", 1, "200h")],
    [["--retry-delay", "-5s"], {}, duration("retry-delay", "PGBG_RETRY_DELAY", 0, "-5s")],
    [["--retry-delay", "later"], {}, duration("retry-delay", "PGBG_RETRY_DELAY", 0, "later")],
    [["--retry-delay", "169h"], {}, duration("retry-delay", "PGBG_RETRY_DELAY", 0, "169h")],
    [["--max-attempts", "0"], {}, count("max-attempts", "PGBG_MAX_ATTEMPTS", 2147483647, "0")],
    [["--max-attempts", "-1"], {}, count("max-attempts", "PGBG_MAX_ATTEMPTS", 2147483647, "-1")],
    [["--max-attempts", "many"], {}, count("max-attempts", "PGBG_MAX_ATTEMPTS", 2147483647, "many")],
    [["--max-attempts", "2147483648"], {}, count("max-attempts", "PGBG_MAX_ATTEMPTS", 2147483647, "2147483648")],
    [["--check-interval", "0"], {}, duration("check-interval", "PGBG_CHECK_INTERVAL", 10, "0")],
    [["--check-interval", "1ms"], {}, duration("check-interval", "PGBG_CHECK_INTERVAL", 10, "1ms")],
    [["--check-interval", "-1s"], {}, duration("check-interval", "PGBG_CHECK_INTERVAL", 10, "-1s")],
    [["--check-interval", "often"], {}, duration("check-interval", "PGBG_CHECK_INTERVAL", 10, "often")],
    [["--idle-sleep", "0"], {}, duration("idle-sleep", "PGBG_IDLE_SLEEP", 10, "0")],
    [["--idle-sleep", "-1"], {}, duration("idle-sleep", "PGBG_IDLE_SLEEP", 10, "-1")],
    [["--idle-sleep", "30 days"], {}, duration("idle-sleep", "PGBG_IDLE_SLEEP", 10, "30 days")],
    [["--idle-sleep", "169h"], {}, duration("idle-sleep", "PGBG_IDLE_SLEEP", 10, "169h")],
    [["--queues", "a b"], {}, `pgbg: --queues (PGBG_QUEUES) must be ${queueRule}, got "a b"`],
    [["--queues", "-leading"], {}, `pgbg: --queues (PGBG_QUEUES) must be ${queueRule}, got "-leading"`],
    [["--queues", "q".repeat(129)], {}, `pgbg: --queues (PGBG_QUEUES) must be ${queueRule}, got "${"q".repeat(129)}"`],
    [["--queues", ","], {}, `pgbg: --queues (PGBG_QUEUES) must be a non-empty comma-separated list, got ","`],
    [["--shutdown-timeout", "-1"], {}, duration("shutdown-timeout", "PGBG_SHUTDOWN_TIMEOUT", 0, "-1")],
    [["--shutdown-timeout", "forever"], {}, duration("shutdown-timeout", "PGBG_SHUTDOWN_TIMEOUT", 0, "forever")],
    [["--shutdown-timeout", "169h"], {}, duration("shutdown-timeout", "PGBG_SHUTDOWN_TIMEOUT", 0, "169h")],
    [["--compact-interval", "500ms"], {}, durationOrOff("compact-interval", "PGBG_COMPACT_INTERVAL", 1000, "500ms")],
    [["--compact-interval", "never"], {}, durationOrOff("compact-interval", "PGBG_COMPACT_INTERVAL", 1000, "never")],
    [["--compact-interval", "169h"], {}, durationOrOff("compact-interval", "PGBG_COMPACT_INTERVAL", 1000, "169h")],
    [[], { PGBG_COMPACT_INTERVAL: "-5m" }, durationOrOff("compact-interval", "PGBG_COMPACT_INTERVAL", 1000, "-5m")],
    [["--schema", "Bad-Name"], {}, badSchema("Bad-Name")],
    [["--schema", "pg_catalog"], {}, badSchema("pg_catalog")],
    [["--schema", "x".repeat(64)], {}, badSchema("x".repeat(64))],
    [["--schema", 'a"; DROP SCHEMA public; --'], {}, badSchema('a"; DROP SCHEMA public; --')],
    [["--database-url", "notaurl"], {}, badUrl],
    [["--database-url", "postgres://someone:hunter2@db:notaport/x"], {}, badUrl],
    [["--database-url", "postgres://someone:hunter2%ZZ@127.0.0.1:1/x"], {}, badUrl],
    [[], { DATABASE_URL: "mysql://root:hunter2@db/x" }, badUrl],
    [["--migrate=maybe"], {}, `pgbg: --migrate (PGBG_MIGRATE) must be true or false, got "maybe"`],
    [["--no-migrate=yes"], {}, "pgbg: --no-migrate takes no value"],
    [["--migrate", "false"], {}, `pgbg: unexpected argument "false": pgbg serve takes only --flags (see pgbg serve --help)`],
    [[], { PGBG_MIGRATE: "maybe" }, `pgbg: --migrate (PGBG_MIGRATE) must be true or false, got "maybe"`],
    [["--log-level", "loud"], {}, `pgbg: --log-level (PGBG_LOG_LEVEL) must be error, warn, info or debug, got "loud"`],
    [["--log-level"], {}, "pgbg: --log-level (PGBG_LOG_LEVEL) needs a value"],
    [["--log-format", "xml"], {}, `pgbg: --log-format (PGBG_LOG_FORMAT) must be pretty or json, got "xml"`],
    [["--metrics-port", "-1"], {}, count("metrics-port", "PGBG_METRICS_PORT", 65535, "-1")],
    [["--metrics-port", "65536"], {}, count("metrics-port", "PGBG_METRICS_PORT", 65535, "65536")],
    [["--metrics-port", "http"], {}, count("metrics-port", "PGBG_METRICS_PORT", 65535, "http")],
    [["--metrics-host"], {}, "pgbg: --metrics-host (PGBG_METRICS_HOST) needs a value"],
    [[], { PGBG_WORKERS: "many" }, count("workers", "PGBG_WORKERS", 256, "many")],
    [[], { PGBG_TIMEOUT: "-1" }, duration("timeout", "PGBG_TIMEOUT", 1, "-1")],
    [["--wrkers", "4"], {}, "pgbg: unknown flag --wrkers (see pgbg serve --help)"],
    [["extra"], {}, `pgbg: unexpected argument "extra": pgbg serve takes only --flags (see pgbg serve --help)`],
  ];
  test("the table below has a bad value for every flag", () => {
    for (const [flag, setting] of Object.entries(serveSettings)) {
      const covered = cases.some(([args, env]) => args.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`)) || setting.env in env);
      assert.ok(covered, `no case for --${flag}`);
    }
  });
  test("every flag also reads its variable: the flag's bad value, given by the variable, gets the same line", () => {
    const tasks = ["--tasks", fixtureTasks];
    for (const [flag, setting] of Object.entries(serveSettings)) {
      const byFlag = cases.find(([args, env, line]) =>
        args.length === 2 && args[0] === `--${flag}` && !Object.keys(env).length && line.includes(`--${flag} (${setting.env})`)
      );
      if (!byFlag) continue; // --migrate, a switch: its bad values are given by variable in the table
      const { code, stderr } = pgbg(["serve", ...(flag === "tasks" ? [] : tasks)], { [setting.env]: byFlag[0][1] });
      assert.deepEqual([code, stderr], [2, `${byFlag[2]}\n`], `${setting.env}=${byFlag[0][1]}`);
    }
  });
  test("the README's flag table lists every flag with its variable and default, and each variable is PGBG_ and the flag's name", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const rows = [...readme.matchAll(/^\| `--([a-z-]+)`(?: \/ `--no-[a-z-]+`)? \| `([A-Z_]+)` \| ([^|]+) \|/gm)];
    const plain = (text: string) => text.replace(/[`()]/g, "").trim();
    assert.deepEqual(rows.map((r) => r[1]), Object.keys(serveSettings), "the same flags, in --help order");
    for (const [, flag, env, shown] of rows) {
      const setting = serveSettings[flag];
      assert.equal(env, setting.env, `--${flag}'s variable`);
      assert.equal(env, flag === "database-url" ? "DATABASE_URL" : `PGBG_${flag.toUpperCase().replaceAll("-", "_")}`);
      assert.equal(plain(shown), plain(setting.shown), `--${flag}'s default`);
    }
  });
  for (const [args, env, line] of cases) {
    test(`exits 2 with one line for ${[...args, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(" ")}`, () => {
      // A case about --tasks gives its own; a good one beside it would hide the bad one.
      const tasks = args.includes("--tasks") ? [] : ["--tasks", fixtureTasks];
      const { code, stderr } = pgbg(["serve", ...tasks, ...args], env);
      assert.equal(code, 2, stderr);
      assert.equal(stderr, `${line}\n`);
      assert.ok(!stderr.includes("hunter2") && !stderr.includes("s3cret-pw"), "no password in the output");
    });
  }

  test("--compact-interval takes a duration, or 0 or off to turn compaction off", () => {
    const interval = (flags: Record<string, string>, env: Record<string, string> = {}) =>
      resolveServeConfig({ tasks: fixtureTasks, ...flags }, env, false).compactInterval;
    assert.equal(interval({}), 300_000, "default 5m");
    assert.equal(interval({ "compact-interval": "10s" }), 10_000);
    assert.equal(interval({ "compact-interval": "off" }), 0);
    assert.equal(interval({ "compact-interval": "0" }), 0);
    assert.equal(interval({}, { PGBG_COMPACT_INTERVAL: "OFF" }), 0);
    assert.equal(interval({ "compact-interval": "1m" }, { PGBG_COMPACT_INTERVAL: "off" }), 60_000, "the flag wins over its variable");
  });

  test("--tasks is required", () => {
    const { code, stderr } = pgbg(["serve"]);
    assert.equal(code, 2);
    assert.match(stderr.trim(), /^pgbg: --tasks \(PGBG_TASKS\) is required/);
  });

  test("a wrong password or an unknown role exits 1 with a clear line that does not show the password", async () => {
    const url = new URL(process.env.DATABASE_URL!);
    url.password = "s3cret-pw";
    // A server that checks passwords (the embedded one) gets the real role
    // with a wrong password; one that trusts its clients, a role it lacks.
    const probe = postgres(url.toString(), { max: 1, onnotice: () => {}, connect_timeout: 10 });
    const checksPasswords = await probe`SELECT 1`.then(() => false, (e: { code?: string }) => e.code === "28P01");
    await probe.end({ timeout: 1 });
    const expected = checksPasswords
      ? `pgbg: password authentication failed for user "${decodeURIComponent(url.username)}"`
      : `pgbg: role "pgbg_no_such_role" does not exist`;
    if (!checksPasswords) url.username = "pgbg_no_such_role";
    url.password = "s3cret-pw";
    const { code, stderr } = pgbg(["serve", "--tasks", fixtureTasks, "--log-format", "json"], { DATABASE_URL: url.toString() });
    assert.equal(code, 1, stderr);
    assert.equal(stderr.trim().split("\n").at(-1), expected);
    assert.ok(!stderr.includes("s3cret-pw"), "no password in the output");
  });

  test("a database that does not exist exits 1 naming it, without the password", () => {
    const url = new URL(process.env.DATABASE_URL!);
    url.pathname = "/pgbg_no_such_database";
    const { code, stderr } = pgbg(["serve", "--tasks", fixtureTasks, "--log-format", "json"], { DATABASE_URL: url.toString() });
    assert.equal(code, 1, stderr);
    assert.equal(stderr.trim().split("\n").at(-1), `pgbg: database "pgbg_no_such_database" does not exist`);
    if (url.password) assert.ok(!stderr.includes(url.password), "no password in the output");
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
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, /applied version (\d+), available \1/);
    const json = pgbg(["migrate", "--schema", schema, "--status", "--json"], { DATABASE_URL: url });
    const available = Number(/available (\d+)/.exec(status.stdout)![1]);
    assert.deepEqual([json.code, JSON.parse(json.stdout)], [0, { schema, applied: available, available }]);
    const again = pgbg(["migrate", "--schema", schema, "--json"], { DATABASE_URL: url });
    assert.deepEqual([again.code, JSON.parse(again.stdout)], [0, { schema, from: available, to: available }]);
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
