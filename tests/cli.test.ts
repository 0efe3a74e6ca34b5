/**
 * `pgbg serve`'s flags and the table behind every command's arguments
 * (cli/args-table.ts). The parsing is checked in process, through the same
 * functions the binary calls (parseServeArgs, parseArgs): a spawned `pgbg`
 * costs seconds. Real processes run only where the process is the point:
 * the line on stderr and exit 2, --help, and the failures to connect.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import postgres from "postgres";
import { cittyArgs, type CommandArgs, type Env, type Flags, parseArgs } from "../cli/args.ts";
import { commandArgs, serveArgs } from "../cli/args-table.ts";
import { parseServeArgs } from "../cli/config.ts";
import { exitCodeOf } from "../cli/exit.ts";
import { fixtureTasks, patience } from "./service-harness.ts";
import { typeScript } from "./ts-loader/flags.ts";

const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
const unreachable = "postgres://someone:s3cret-pw@127.0.0.1:1/nowhere";

/** Runs the real `pgbg args…`; the event loop stays free, so that such tests may overlap. */
function pgbg(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...typeScript, cli, ...args], {
      env: { ...process.env, DATABASE_URL: unreachable, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: patience,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** What `pgbg serve args…` prints before exiting, and its exit code, found in process: undefined when the arguments are good. */
function refusal(args: string[], env: Env = {}): { code: number; line: string } | undefined {
  try {
    parseServeArgs(args, { DATABASE_URL: unreachable, ...env }, false);
    return undefined;
  } catch (error) {
    return { code: exitCodeOf(error), line: `pgbg: ${(error as Error).message}` };
  }
}

/** A command's parsing in process: the line it prints and its exit code, or undefined when the arguments are good. */
function commandRefusal(command: keyof typeof commandArgs, args: string[], env: Env = {}): { code: number; line: string } | undefined {
  try {
    parseArgs(args, commandArgs[command] as CommandArgs<Flags>, { DATABASE_URL: unreachable, ...env });
    return undefined;
  } catch (error) {
    return { code: exitCodeOf(error), line: `pgbg: ${(error as Error).message}` };
  }
}

const serveFlags = Object.entries(serveArgs.flags);

describe("pgbg serve flags", () => {
  test("each flag's help names its variable and its default", () => {
    const help = cittyArgs(serveArgs);
    for (const [flag, setting] of serveFlags) {
      const described = (help[flag] as { description: string }).description;
      assert.ok(described.endsWith(` [env ${setting.env}] ${setting.required === undefined ? `(default: ${setting.shown})` : "(required)"}`), described);
    }
  });

  // The exact line each bad value gets, built from the rule of its kind.
  const count = (flag: string, env: string, max: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a whole number from ${flag === "metrics-port" ? 0 : 1} to ${max}, got "${got}"`;
  const duration = (flag: string, env: string, min: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a duration such as 500ms, 30s, 5m or plain milliseconds, from ${min} ms to 168h, got "${got}"`;
  const durationOrOff = (flag: string, env: string, min: number, got: string) =>
    `pgbg: --${flag} (${env}) must be a duration such as 500ms, 30s, 5m or plain milliseconds, from ${min} ms to 168h, or 0 or off, got "${got}"`;
  const retention = (flag: string, env: string, or: string, got: string) =>
    `pgbg: --${flag} (${env}) must be a duration such as 500ms, 30s, 5m, 30d or plain milliseconds, from 1000 ms to 365d${or}, got "${got}"`;
  const badSchema = (name: string) =>
    `pgbg: --schema (PGBG_SCHEMA): invalid schema name ${JSON.stringify(name)}: use 1-63 lower-case letters, digits or _, not starting with a digit or pg_`;
  const queueRule = "a list of queue names (1-128 characters of A-Z a-z 0-9 _ . : / -, starting with a letter or digit)";
  const badUrl = "pgbg: --database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded";
  const badListenUrl = "pgbg: --listen-url (PGBG_LISTEN_URL) must be a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded";
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
    [["--vacuum-interval", "500ms"], {}, durationOrOff("vacuum-interval", "PGBG_VACUUM_INTERVAL", 1000, "500ms")],
    [[], { PGBG_VACUUM_INTERVAL: "soon" }, durationOrOff("vacuum-interval", "PGBG_VACUUM_INTERVAL", 1000, "soon")],
    [["--completed-retention", "500ms"], {}, retention("completed-retention", "PGBG_COMPLETED_RETENTION", ", or 0 or off", "500ms")],
    [["--completed-retention", "366d"], {}, retention("completed-retention", "PGBG_COMPLETED_RETENTION", ", or 0 or off", "366d")],
    [["--failed-retention", "never"], {}, retention("failed-retention", "PGBG_FAILED_RETENTION", ", or forever", "never")],
    [[], { PGBG_FAILED_RETENTION: "off" }, retention("failed-retention", "PGBG_FAILED_RETENTION", ", or forever", "off")],
    [["--schema", "Bad-Name"], {}, badSchema("Bad-Name")],
    [["--schema", "pg_catalog"], {}, badSchema("pg_catalog")],
    [["--schema", "x".repeat(64)], {}, badSchema("x".repeat(64))],
    [["--schema", 'a"; DROP SCHEMA public; --'], {}, badSchema('a"; DROP SCHEMA public; --')],
    [["--database-url", "notaurl"], {}, badUrl],
    [["--database-url", "postgres://someone:hunter2@db:notaport/x"], {}, badUrl],
    [["--database-url", "postgres://someone:hunter2%ZZ@127.0.0.1:1/x"], {}, badUrl],
    [[], { DATABASE_URL: "mysql://root:hunter2@db/x" }, badUrl],
    [["--transaction-pooling=maybe"], {}, `pgbg: --transaction-pooling (PGBG_TRANSACTION_POOLING) must be true or false, got "maybe"`],
    [[], { PGBG_TRANSACTION_POOLING: "sometimes" }, `pgbg: --transaction-pooling (PGBG_TRANSACTION_POOLING) must be true or false, got "sometimes"`],
    [["--transaction-pooling", "--listen-url", "postgres://someone:hunter2@db:notaport/x"], {}, badListenUrl],
    [["--listen-url", "postgres://someone:hunter2@db/x"], {}, "pgbg: --listen-url (PGBG_LISTEN_URL) goes with --transaction-pooling: without it, workers LISTEN on the database URL"],
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
    for (const [flag, setting] of serveFlags) {
      const covered = cases.some(([args, env]) => args.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`)) || setting.env in env);
      assert.ok(covered, `no case for --${flag}`);
    }
  });

  for (const [args, env, line] of cases) {
    test(`exits 2 with one line for ${[...args, ...Object.entries(env).map(([k, v]) => `${k}=${v}`)].join(" ")}`, () => {
      // A case about --tasks gives its own; a good one beside it would hide the bad one.
      const tasks = args.includes("--tasks") ? [] : ["--tasks", fixtureTasks];
      assert.deepEqual(refusal([...tasks, ...args], env), { code: 2, line });
      assert.ok(!line.includes("hunter2") && !line.includes("s3cret-pw"), "no password in the line");
    });
  }

  test("every flag also reads its variable: the flag's bad value, given by the variable, gets the same line", () => {
    for (const [flag, setting] of serveFlags) {
      const byFlag = cases.find(([args, env, line]) =>
        args.length === 2 && args[0] === `--${flag}` && !Object.keys(env).length && line.includes(`--${flag} (${setting.env})`)
      );
      if (!byFlag) continue; // --migrate, a switch: its bad values are given by variable in the table
      const tasks = flag === "tasks" ? [] : ["--tasks", fixtureTasks];
      assert.deepEqual(refusal(tasks, { [setting.env]: byFlag[0][1] }), { code: 2, line: byFlag[2] }, `${setting.env}=${byFlag[0][1]}`);
    }
  });

  test("the README's flag table lists every flag with its variable and default, and each variable is PGBG_ and the flag's name", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const rows = [...readme.matchAll(/^\| `--([a-z-]+)`(?: \/ `--no-[a-z-]+`)? \| `([A-Z_]+)` \| ([^|]+) \|/gm)];
    const plain = (text: string) => text.replace(/[`()]/g, "").trim();
    assert.deepEqual(rows.map((r) => r[1]), Object.keys(serveArgs.flags), "the same flags, in --help order");
    for (const [, flag, env, shown] of rows) {
      const setting = serveArgs.flags[flag as keyof typeof serveArgs.flags];
      assert.equal(env, setting.env, `--${flag}'s variable`);
      assert.equal(env, flag === "database-url" ? "DATABASE_URL" : `PGBG_${flag.toUpperCase().replaceAll("-", "_")}`);
      assert.equal(plain(shown), plain(setting.shown), `--${flag}'s default`);
    }
  });

  test("a flag wins over its variable, which wins over the default; an empty variable is unset", () => {
    const config = (args: string[], env: Env = {}, isTTY = false) => parseServeArgs(["--tasks", fixtureTasks, ...args], env, isTTY);
    assert.deepEqual(config([]), {
      databaseUrl: undefined, transactionPooling: false, listenUrl: undefined, schema: "pgbg", tasks: [fixtureTasks], workers: 2, concurrency: 10, timeout: 30_000, retryDelay: 5_000,
      checkInterval: 1_000, idleSleep: 1_000, maxAttempts: 25, queues: null, shutdownTimeout: 30_000, compactInterval: 30_000, vacuumInterval: 5_000,
      completedRetention: 0, failedRetention: Number.POSITIVE_INFINITY,
      migrate: true, logLevel: "info", logFormat: "json", metricsPort: null, metricsHost: "0.0.0.0",
    });
    assert.equal(config([], {}, true).logFormat, "pretty", "pretty on a terminal");
    assert.equal(config([], { PGBG_TRANSACTION_POOLING: "true", PGBG_LISTEN_URL: "postgres://h/db" }).listenUrl, "postgres://h/db");
    assert.throws(() => config([], { PGBG_LISTEN_URL: "postgres://h/db" }), /--listen-url \(PGBG_LISTEN_URL\) goes with --transaction-pooling/);
    assert.equal(config([], { PGBG_WORKERS: "8" }).workers, 8);
    assert.equal(config(["--workers", "4"], { PGBG_WORKERS: "8" }).workers, 4);
    assert.equal(config(["--workers=4"], { PGBG_WORKERS: "" }).workers, 4);
    assert.equal(config([], { PGBG_WORKERS: "" }).workers, 2);
    assert.equal(config(["--timeout", "1.5s", "--retry-delay", "0"]).timeout, 1_500);
    assert.equal(config(["--metrics-port", "0"]).metricsPort, 0, "0: any free port");
    assert.equal(config(["--database-url", "postgresql://u:p%40ss@db/x"]).databaseUrl, "postgresql://u:p%40ss@db/x");
  });

  test("list flags repeat or comma-separate; a switch takes --no-, =value or its variable", () => {
    const config = (args: string[], env: Env = {}) => parseServeArgs(args, env, false);
    assert.deepEqual(config(["--tasks", "a.ts", "--tasks", "b.ts, c.ts"]).tasks, ["a.ts", "b.ts", "c.ts"]);
    assert.deepEqual(config([], { PGBG_TASKS: "a.ts,b.ts", PGBG_QUEUES: "mail,default" }).queues, ["mail", "default"]);
    assert.equal(config(["--tasks", "a.ts", "--no-migrate"]).migrate, false);
    assert.equal(config(["--tasks", "a.ts", "--migrate=no"]).migrate, false);
    assert.equal(config(["--tasks", "a.ts"], { PGBG_MIGRATE: "off" }).migrate, false);
    assert.equal(config(["--tasks", "a.ts", "--migrate"], { PGBG_MIGRATE: "false" }).migrate, true);
    assert.deepEqual(refusal(["--tasks", "a.ts", "--migrate", "--no-migrate"]), { code: 2, line: "pgbg: --migrate (PGBG_MIGRATE) is given twice; give it once" });
    assert.deepEqual(refusal(["--tasks", "--workers", "2"]), { code: 2, line: "pgbg: --tasks (PGBG_TASKS) needs a value" });
    assert.deepEqual(refusal(["--tasks", "a.ts", "-w", "2"]), {
      code: 2, line: `pgbg: unexpected argument "-w": pgbg serve takes only --flags (see pgbg serve --help)`,
    });
    assert.deepEqual(refusal(["--tasks", "a.ts", "--constructor", "x"]), { code: 2, line: "pgbg: unknown flag --constructor (see pgbg serve --help)" });
  });

  test("--compact-interval takes a duration, or 0 or off to turn compaction off", () => {
    const interval = (args: string[], env: Env = {}) => parseServeArgs(["--tasks", fixtureTasks, ...args], env, false).compactInterval;
    assert.equal(interval([]), 30_000, "default 30s");
    assert.equal(interval(["--compact-interval", "10s"]), 10_000);
    assert.equal(interval(["--compact-interval", "off"]), 0);
    assert.equal(interval(["--compact-interval", "0"]), 0);
    assert.equal(interval([], { PGBG_COMPACT_INTERVAL: "OFF" }), 0);
    assert.equal(interval(["--compact-interval", "1m"], { PGBG_COMPACT_INTERVAL: "off" }), 60_000, "the flag wins over its variable");
  });

  test("--tasks is required", () => {
    const got = refusal([]);
    assert.ok(got);
    assert.equal(got.code, 2);
    assert.match(got.line, /^pgbg: --tasks \(PGBG_TASKS\) is required/);
  });
});

describe("every command's arguments", () => {
  const operators = Object.keys(commandArgs).filter((c) => c !== "serve") as (keyof typeof commandArgs)[];

  test("every command refuses an unknown flag, a repeated one, one without its value and a stray argument in the same words", () => {
    for (const command of Object.keys(commandArgs) as (keyof typeof commandArgs)[]) {
      const pgbgCommand = `pgbg ${command}`;
      // What each command needs besides the flags under test.
      const needs: Partial<Record<keyof typeof commandArgs, string[]>> = {
        serve: ["--tasks", fixtureTasks], retry: ["5"], cancel: ["5"], enqueue: ["work", "{}", "--tasks", fixtureTasks],
        pause: ["mail"], resume: ["mail"], limit: ["mail", "3"], rate: ["mail", "5/1s"], "run-schedule": ["nightly"],
      };
      const refused = (args: string[]) => commandRefusal(command, [...needs[command] ?? [], ...args], { PGBG_DASHBOARD_TOKEN: "a-token-of-16-chars" });
      assert.deepEqual(refused(["--bogus"]), { code: 2, line: `pgbg: unknown flag --bogus (see ${pgbgCommand} --help)` });
      assert.deepEqual(refused(["--schema", "a", "--schema=b"]), { code: 2, line: "pgbg: --schema (PGBG_SCHEMA) is given twice; give it once" });
      assert.deepEqual(refused(["--schema"]), { code: 2, line: "pgbg: --schema (PGBG_SCHEMA) needs a value" });
      assert.deepEqual(refused(["--schema", ""]), { code: 2, line: "pgbg: --schema (PGBG_SCHEMA) needs a value" });
      assert.equal(refused(["--database-url", "mysql://root:hunter2@db/x"])?.line, "pgbg: --database-url (DATABASE_URL) must be a postgres:// or postgresql:// URL, with special characters in the user name and password %-encoded");
      const stray = refused(["--", "x"])?.line;
      assert.ok(stray?.startsWith(`pgbg: unexpected argument "--"`) && stray.endsWith(`(see ${pgbgCommand} --help)`), stray);
      assert.equal(refused([]), undefined, `${pgbgCommand} with its defaults`);
    }
  });

  test("each operators' flag's help says its default, or that it is required", () => {
    for (const command of operators) {
      const help = cittyArgs(commandArgs[command]);
      for (const [name, flag] of Object.entries(commandArgs[command].flags)) {
        const described = (help[name] as { description: string }).description;
        const env = flag.env ? ` [env ${flag.env}]` : "";
        assert.ok(described.endsWith(`${env} ${flag.required === undefined ? `(default: ${flag.shown})` : "(required)"}`), `${command} --${name}: ${described}`);
      }
    }
  });

  test("the README's table of the operators' flags lists every flag of every command with its variable and default", () => {
    const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
    const section = readme.slice(readme.indexOf("| command | flag | variable | default |"));
    const rows = [...section.slice(0, section.indexOf("\n\n")).matchAll(/^\| (all|`[a-z]+`) \| ([^|]+) \|([^|]*)\| ([^|]+) \|$/gm)];
    const cells = (cell: string) => cell.split("/").map((c) => c.replace(/[`()]/g, "").trim());
    const documented = new Set<string>();
    for (const [, command, flagCell, envCell, shownCell] of rows) {
      const names = flagCell.split(" / ").map((f) => /`--([a-z-]+)`/.exec(f)![1]);
      const envs = envCell.trim() ? cells(envCell) : [];
      const shown = cells(shownCell);
      for (const [i, name] of names.entries()) {
        for (const c of command === "all" ? operators : [command.replaceAll("`", "") as keyof typeof commandArgs]) {
          const flag = (commandArgs[c].flags as Record<string, { env?: string; shown: string }>)[name];
          assert.ok(flag, `pgbg ${c} --${name} exists`);
          assert.equal(envs[i] || undefined, flag.env, `pgbg ${c} --${name}'s variable`);
          assert.ok(shown[i].startsWith(flag.shown), `pgbg ${c} --${name}'s default: README ${shown[i]}, --help ${flag.shown}`);
          documented.add(`${c} --${name}`);
        }
      }
    }
    for (const command of operators) {
      for (const name of Object.keys(commandArgs[command].flags)) assert.ok(documented.has(`${command} --${name}`), `the README documents pgbg ${command} --${name}`);
    }
  });
});

describe("the real binary", { concurrency: true }, () => {
  test("--help documents every flag of pgbg serve with its default and variable", async () => {
    const { code, stdout, stderr } = await pgbg(["serve", "--help"]);
    assert.equal(code, 0, stderr);
    const help = cittyArgs(serveArgs);
    for (const flag of Object.keys(serveArgs.flags)) {
      assert.match(stdout, new RegExp(`--${flag}\\b`), `--help lists --${flag}`);
      assert.ok(stdout.includes((help[flag] as { description: string }).description), `--help describes --${flag} with its variable and default`);
    }
    assert.match(stdout, /--no-migrate/);
  });

  test("a bad value prints its one line on stderr, without the password, and exits 2", async () => {
    const { code, stdout, stderr } = await pgbg(["serve", "--tasks", fixtureTasks, "--database-url", "postgres://someone:hunter2@db:notaport/x"]);
    assert.deepEqual([code, stdout, stderr], [2, "", `${refusal(["--tasks", fixtureTasks, "--database-url", "postgres://someone:hunter2@db:notaport/x"])!.line}\n`]);
    assert.ok(!stderr.includes("hunter2"));
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
    const { code, stderr } = await pgbg(["serve", "--tasks", fixtureTasks, "--log-format", "json"], { DATABASE_URL: url.toString() });
    assert.equal(code, 1, stderr);
    assert.equal(stderr.trim().split("\n").at(-1), expected);
    assert.ok(!stderr.includes("s3cret-pw"), "no password in the output");
  });

  test("a database that does not exist exits 1 naming it, without the password", async () => {
    const url = new URL(process.env.DATABASE_URL!);
    url.pathname = "/pgbg_no_such_database";
    const { code, stderr } = await pgbg(["serve", "--tasks", fixtureTasks, "--log-format", "json"], { DATABASE_URL: url.toString() });
    assert.equal(code, 1, stderr);
    assert.equal(stderr.trim().split("\n").at(-1), `pgbg: database "pgbg_no_such_database" does not exist`);
    if (url.password) assert.ok(!stderr.includes(url.password), "no password in the output");
  });

  test("pgbg migrate migrates and reports the status; a bad schema name exits 2", async () => {
    const url = process.env.DATABASE_URL!;
    const schema = `cli_${process.pid}`;
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    try {
      const first = await pgbg(["migrate", "--schema", schema], { DATABASE_URL: url });
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, new RegExp(`schema ${schema} migrated from version 0 to \\d+`));
      const [status, json, again] = await Promise.all([
        pgbg(["migrate", "--schema", schema, "--status"], { DATABASE_URL: url }),
        pgbg(["migrate", "--schema", schema, "--status", "--json"], { DATABASE_URL: url }),
        pgbg(["migrate", "--schema", schema, "--json"], { DATABASE_URL: url }),
      ]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /applied version (\d+), available \1/);
      const available = Number(/available (\d+)/.exec(status.stdout)![1]);
      assert.deepEqual([json.code, JSON.parse(json.stdout)], [0, { schema, applied: available, available }]);
      assert.deepEqual([again.code, JSON.parse(again.stdout)], [0, { schema, from: available, to: available }]);
      const bad = commandRefusal("migrate", ["--schema", "Nope!"], { DATABASE_URL: url });
      assert.equal(bad?.code, 2);
      assert.match(bad?.line ?? "", /^pgbg: invalid schema name "Nope!"/);
    } finally {
      // Clean up the schema this test made on the shared server.
      await sql.unsafe(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await sql.end();
    }
  });
});
