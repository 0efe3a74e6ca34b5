/**
 * Starts a real PgBouncer (Debian's `pgbouncer` package, 1.18 here) in
 * `pool_mode = transaction` in front of the test server, for the tests of
 * pgbg behind a pooler in transaction mode. Where pgbouncer is not
 * installed those tests are skipped, saying why; `.ci/run` installs it and
 * sets PGBG_REQUIRE_PGBOUNCER=1, which makes its absence a failure.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import pg from "pg";

/** The pgbouncer binary: PGBG_PGBOUNCER, Debian's, or the first on PATH. */
export function pgbouncerBinary(): string | undefined {
  if (process.env.PGBG_PGBOUNCER) return process.env.PGBG_PGBOUNCER;
  if (existsSync("/usr/sbin/pgbouncer")) return "/usr/sbin/pgbouncer";
  try {
    return execFileSync("sh", ["-c", "command -v pgbouncer"], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Why the PgBouncer tests are skipped, or false when they run (a missing binary fails them under PGBG_REQUIRE_PGBOUNCER=1). */
export function noPgBouncer(): string | false {
  if (pgbouncerBinary() || process.env.PGBG_REQUIRE_PGBOUNCER === "1") return false;
  return "no pgbouncer installed (apt-get install pgbouncer, or set PGBG_PGBOUNCER): the PgBouncer tests are skipped";
}

/** A running PgBouncer in transaction mode. */
export interface PgBouncer {
  /** The URL of `database` through it. */
  url(database: string): string;
  /** Its port. */
  port: number;
  /**
   * What it logged last, and its pools, clients and servers as its admin
   * console lists them: for a test's timeout to say what the pooler was
   * doing (a stall behind it went unexplained twice in CI).
   */
  report(): Promise<string>;
  /** Resolves with the first line it logs from now on that matches `pattern` (a line logged before, by another test, does not count). */
  firstLine(pattern: RegExp): Promise<string>;
  stop(): Promise<void>;
}

/** A port free now (for the moment between this and pgbouncer's bind). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts PgBouncer in front of the server of `serverUrl` (its host, port,
 * user and password), in transaction mode, and resolves once it listens.
 * As root it runs as `nobody` (PgBouncer refuses to run as root).
 */
export async function startPgBouncer(serverUrl: string, poolSize = 20): Promise<PgBouncer> {
  const binary = pgbouncerBinary();
  if (!binary) throw new Error("pgbouncer is not installed (PGBG_REQUIRE_PGBOUNCER=1): apt-get install pgbouncer, or set PGBG_PGBOUNCER");
  const server = new URL(serverUrl);
  const user = decodeURIComponent(server.username || "postgres");
  const password = decodeURIComponent(server.password);
  const dir = mkdtempSync(join(tmpdir(), "pgbg-pgbouncer-"));
  chmodSync(dir, 0o755);
  const port = await freePort();
  const quote = (value: string) => `'${value.replace(/'/g, "''")}'`;
  writeFileSync(join(dir, "users.txt"), `"${user}" ""\n`, { mode: 0o600 });
  writeFileSync(join(dir, "pgbouncer.ini"), [
    "[databases]",
    `* = host=${server.hostname} port=${server.port || 5432} user=${quote(user)}${password ? ` password=${quote(password)}` : ""}`,
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${port}`,
    "unix_socket_dir =",
    "auth_type = trust",
    `auth_file = ${join(dir, "users.txt")}`,
    "pool_mode = transaction",
    `default_pool_size = ${poolSize}`,
    // Each transaction to the next idle server session, not the last one
    // used: a statement that outlives its transaction is then missed at once.
    "server_round_robin = 1",
    "max_client_conn = 1000",
    // The console's SHOW commands, for report().
    `admin_users = ${user}`,
    "",
  ].join("\n"), { mode: 0o600 });
  // The config holds the server's password: readable by pgbouncer's user alone.
  const asRoot = process.getuid?.() === 0 ? ["-u", "nobody"] : [];
  if (asRoot.length) {
    const uid = Number(execFileSync("id", ["-u", "nobody"], { encoding: "utf8" }));
    for (const file of ["users.txt", "pgbouncer.ini"]) chownSync(join(dir, file), uid, process.getgid!());
  }
  const child = spawn(binary, [...asRoot, join(dir, "pgbouncer.ini")], { stdio: ["ignore", "pipe", "pipe"] });
  // Its last lines: they outlive listening(), whose own copy grows only until then.
  const lines: string[] = [];
  const watchers: { pattern: RegExp; found: (line: string) => void }[] = [];
  const keep = (chunk: Buffer) => {
    const fresh = chunk.toString().split("\n").filter(Boolean);
    for (const line of fresh) for (const w of watchers) if (w.pattern.test(line)) w.found(line);
    if (lines.push(...fresh) > 200) lines.splice(0, lines.length - 200);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  try {
    await listening(child, port);
  } catch (error) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    port,
    url: (database) => `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/${database}`,
    firstLine: (pattern) => new Promise((found) => void watchers.push({ pattern, found })),
    report: () => consoleReport(`postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/pgbouncer`).then((shown) => `pgbouncer's last lines:\n${lines.slice(-60).join("\n")}\n${shown}`),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** SHOW POOLS, CLIENTS and SERVERS from the admin console at `url` (simple queries: the console takes no other), or why it could not be read. */
async function consoleReport(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
    const shown: string[] = [];
    for (const what of ["POOLS", "CLIENTS", "SERVERS"]) {
      const { rows } = await client.query(`SHOW ${what}`);
      shown.push(`SHOW ${what}: ${JSON.stringify(rows)}`);
    }
    return shown.join("\n");
  } catch (error) {
    return `(the admin console could not be read: ${(error as Error).message})`;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Resolves once `child` logs that it listens on `port`; rejects with its output if it exits first, or has not listened within a minute. */
function listening(child: ChildProcess, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`pgbouncer did not listen on ${port} within 60 s: ${out}`)), 60_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (out.includes(`listening on 127.0.0.1:${port}`)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => reject(new Error(`pgbouncer exited with ${code} before it listened: ${out}`)));
  });
}
