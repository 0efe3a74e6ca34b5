/**
 * The test harness: every test file gets a database of its own on the server
 * that tests/run.ts provides (DATABASE_URL), so files run in parallel and
 * leave nothing behind.
 */
import { randomBytes } from "node:crypto";
import { after } from "node:test";
import postgres from "postgres";

/** postgres.js options used by tests: quiet notices, small pools. */
export const clientOptions = { onnotice: () => {}, max: 10 } as const;

/** The server URL given by tests/run.ts, or a clear failure. */
export function serverUrl(): string {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error("DATABASE_URL is not set: run the tests with `npm test`");
  return url;
}

/** The URL of `database` on the test server. */
export function databaseUrl(database: string): string {
  const url = new URL(serverUrl());
  url.pathname = `/${database}`;
  return url.toString();
}

/** A fresh database for one test file, dropped when the file ends. */
export interface TestDatabase {
  /** Its name. */
  name: string;
  /** Its connection URL. */
  url: string;
  /** A postgres.js client connected to it, closed when the file ends. */
  sql: postgres.Sql;
  /** Opens another client on it (closed when the file ends). */
  connect(options?: postgres.Options<{}>): postgres.Sql;
}

/** Creates a database for the calling test file; `after` drops it. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const name = `pgbg_test_${randomBytes(6).toString("hex")}`;
  const admin = postgres(serverUrl(), { ...clientOptions, max: 1 });
  await admin.unsafe(`CREATE DATABASE "${name}"`);
  const url = databaseUrl(name);
  const clients: postgres.Sql[] = [];
  const connect = (options: postgres.Options<{}> = {}) => {
    const client = postgres(url, { ...clientOptions, ...options });
    clients.push(client);
    return client;
  };
  const sql = connect();
  after(async () => {
    await Promise.all(clients.map((c) => c.end({ timeout: 5 })));
    await admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    await admin.end();
  });
  return { name, url, sql, connect };
}
