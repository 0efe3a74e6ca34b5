/**
 * Which errors mean "the database cannot be reached now": the supervisor
 * waits and retries on them at start (cli/schema-wait.ts), and restarts
 * workers that failed on them as soon as the database answers again
 * (cli/database-watch.ts).
 *
 * @module
 */

/**
 * True for errors a later retry may cure: the server is down, starting or
 * restarting (SQLSTATE classes 08 and 57P), or the network failed (node
 * errno codes, postgres.js' CONNECT_TIMEOUT). A wrong password, an unknown
 * database or a pgbg schema error is final.
 */
export function isConnectionError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code !== "string") return false;
  if (code.startsWith("PGBG_")) return false;
  if (/^[0-9A-Z]{5}$/.test(code)) return code.startsWith("08") || code.startsWith("57P");
  return true;
}
