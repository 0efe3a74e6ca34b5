/**
 * How the CLI ends: exit code 0 on success, 1 when the operation failed, 2
 * on bad usage, each failure as one line on stderr.
 *
 * @module
 */
import process from "node:process";
import { InvalidConfigError } from "../lib/errors.ts";
import { describeError } from "../lib/log.ts";

/**
 * Bad usage: a missing or malformed argument. Its message is the line the
 * CLI prints after `pgbg: `; it exits 2. It is an InvalidConfigError (code
 * PGBG_INVALID_CONFIG), so callers branch on the code as for the library's
 * errors.
 */
export class UsageError extends InvalidConfigError {}

// Errors that mean the arguments were wrong, not that the operation failed.
const USAGE_CODES = new Set([
  "PGBG_INVALID_SCHEMA_NAME", "PGBG_INVALID_INPUT", "PGBG_INVALID_PAYLOAD", "PGBG_PAYLOAD_TOO_LARGE", "PGBG_INVALID_OPTIONS", "PGBG_INVALID_CONFIG",
]);

/** The exit code for an error: 2 for bad usage, 1 otherwise. */
export function exitCodeOf(error: unknown): 1 | 2 {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === "string" && USAGE_CODES.has(code) ? 2 : 1;
}

/** Writes `pgbg: message` to stderr and exits with `code`. */
export function fail(code: number, message: string): never {
  process.stderr.write(`pgbg: ${message.split("\n")[0]}\n`);
  process.exit(code);
}

/** Exits as `error` calls for: one line and its exit code. */
export function failWith(error: unknown): never {
  fail(exitCodeOf(error), describeError(error).message);
}
