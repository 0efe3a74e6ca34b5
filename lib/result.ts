/**
 * A task's result: the value its `run` resolved to, validated by the task's
 * `result` schema and encoded as JSON as inputs are, within the task's
 * `maxPayloadBytes`, to be stored with its completion.
 *
 * @module
 */
import { defaults } from "./config.ts";
import type { AnyTask } from "./define.ts";
import { InvalidResultError, PgbgError } from "./errors.ts";
import { isThenable, validate } from "./input.ts";
import { encodePayload } from "./payload.ts";

/**
 * The JSON text stored as the result of `task` for `value`: at once, or as
 * a promise when the schema is async. Throws (or rejects with)
 * {@link InvalidResultError}. Only for a task with a result schema.
 */
export function encodeResult(task: AnyTask, value: unknown): string | Promise<string> {
  const output = validate(task.result!, value, (issues) => new InvalidResultError(task.name, issues));
  return isThenable(output) ? Promise.resolve(output).then((o) => encode(task, o)) : encode(task, output);
}

function encode(task: AnyTask, output: unknown): string {
  try {
    // undefined has no JSON: a result schema that allows it stores null.
    return output === undefined ? "null" : encodePayload(task.name, output, task.maxPayloadBytes ?? defaults.maxPayloadBytes);
  } catch (error) {
    throw new InvalidResultError(task.name, error instanceof PgbgError ? error.message.replace(/^payload for task "[^"]*"/, "its JSON") : String(error), { cause: error });
  }
}
