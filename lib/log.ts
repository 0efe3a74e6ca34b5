/**
 * The logger interface the service's library parts write to. The CLI passes
 * one backed by consola; the library itself stays free of it.
 *
 * @module
 */

/** Structured fields of a log line (task id, name, attempt, duration, error…). */
export type LogFields = Record<string, unknown>;

/** Where the worker and supervisor report what they do. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

/** A logger that drops everything. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * Reduces any thrown value to JSON-safe fields for logs and the task's
 * `last_error`: name, message, code and stack of an Error; the printed form
 * of anything else (a string, a number, an object without a stack).
 */
export function describeError(error: unknown): { name: string; message: string; code?: string; stack?: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      name: error.name,
      message: error.message,
      ...(typeof code === "string" ? { code } : {}),
      ...(error.stack ? { stack: error.stack.slice(0, 4000) } : {}),
    };
  }
  let text: string;
  try {
    text = typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
  } catch {
    text = String(error);
  }
  return { name: "NonError", message: `non-Error value thrown: ${text.slice(0, 2000)}` };
}
