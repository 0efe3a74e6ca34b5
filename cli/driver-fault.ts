/**
 * The fault of postgres.js 3.4.9 that no caller can catch: when the server
 * ends a connection (a failover, a restart, `pg_terminate_backend`, an
 * idle-session timeout) with a small write queued, the driver writes to the
 * closed socket from a `setImmediate` and throws a TypeError there
 * (porsager/postgres#1154, #1208), or rejects a promise no query holds with
 * the connection's error. A long-running CLI process that holds no
 * transaction (`pgbg dashboard`) survives it by replacing its pool: the
 * connection the fault struck may never flush a write again.
 *
 * @module
 */

// The driver's error for a connection the server or the network closed, and
// the socket's. Not CONNECTION_ENDED or CONNECTION_DESTROYED: those are the
// client's own end() of a pool.
const CONNECTION_CODES = new Set(["CONNECTION_CLOSED", "ECONNRESET", "EPIPE"]);

/**
 * True for a connection the server or the network ended, as a query's error
 * or one the driver raised outside any query, and for the driver's write to
 * a closed connection. Narrower than isConnectionError
 * (cli/connection-error.ts), which takes any non-SQLSTATE code, every 57P
 * and 53300 as "retry later": here an uncaught error that is not the
 * driver's ends the process.
 */
export function isDriverFault(error: unknown): boolean {
  if (error instanceof TypeError) return /postgres[\\/](?:.*[\\/])?src[\\/]connection\.js/.test(error.stack ?? "");
  const code = (error as { code?: unknown } | null)?.code;
  // SQLSTATE 57P01-57P03 (the server ending the session) and class 08 (connection exceptions).
  return typeof code === "string" && (CONNECTION_CODES.has(code) || /^57P0[1-3]$/.test(code) || /^08[0-9A-Z]{3}$/.test(code));
}
