/**
 * Which errors mean "the database cannot be reached now": the supervisor
 * waits and retries on them at start (cli/schema-wait.ts), and restarts
 * workers that failed on them as soon as the database answers again
 * (cli/database-watch.ts).
 *
 * @module
 */

/** SQLSTATE too_many_connections: max_connections, or the role's or database's CONNECTION LIMIT, is reached. */
const TOO_MANY_CONNECTIONS = "53300";

/**
 * True for errors a later retry may cure: the server is down, starting or
 * restarting (SQLSTATE classes 08 and 57P), it has no connection slot left
 * for now (53300: too many clients, or too many for the role; other
 * clients' connections end), or the network failed (node errno codes,
 * postgres.js' CONNECT_TIMEOUT). A wrong password, an unknown database or a
 * pgbg schema error is final.
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  if (code.startsWith("PGBG_")) return false;
  if (/^[0-9A-Z]{5}$/.test(code)) return code.startsWith("08") || code.startsWith("57P") || code === TOO_MANY_CONNECTIONS;
  return true;
}
