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
  /**
   * Whether messages of `level` are written. Optional; when present, hot
   * paths skip building debug messages that would be dropped.
   */
  isEnabled?(level: "debug" | "info" | "warn" | "error"): boolean;
}

/** A logger that drops everything. */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * Reduces any thrown value to JSON-safe fields for logs and the task's
 * `last_error`: name, message, code and stack of an Error; the printed form
 * of anything else (a string, a number, an object without a stack).
 */
export function describeError(error: unknown): { name: string; message: string; code?: string; stack?: string } {
  try {
    return describe(error);
  } catch {
    // A handler may throw anything, including a value whose getters, toJSON
    // and toString all throw. Describing it must not throw in turn: in the
    // worker that would reject the attempt's bookkeeping, crash the process
    // and interrupt every other task it was running.
    return { name: "UnreadableError", message: "a thrown value that cannot be read (its properties, toJSON or toString threw)" };
  }
}

function describe(error: unknown): { name: string; message: string; code?: string; stack?: string } {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      name: storable(String(error.name), 200),
      message: storable(String(error.message), 4000),
      ...(typeof code === "string" ? { code: storable(code, 200) } : {}),
      ...(error.stack ? { stack: storable(error.stack, 4000) } : {}),
    };
  }
  let text: string;
  try {
    text = typeof error === "string" ? error : JSON.stringify(error) ?? String(error);
  } catch {
    text = String(error);
  }
  return { name: "NonError", message: storable(`non-Error value thrown: ${text}`, 2000) };
}

/**
 * Cuts `text` to `max` UTF-16 units and makes it storable in jsonb, which
 * refuses \u0000 and lone surrogates (a cut can split a surrogate pair): one
 * unstorable error message must not block the batch that carries it.
 */
function storable(text: string, max: number): string {
  return text.slice(0, max).replaceAll("\u0000", "\\u0000").toWellFormed();
}
