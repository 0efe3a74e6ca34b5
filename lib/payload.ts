/**
 * Encoding of task inputs as JSON payloads. pgbg stores exactly what the
 * caller passed, so it refuses values that JSON would silently change
 * (rather than store something else and fail, or worse succeed, later).
 *
 * @module
 */
import { InvalidPayloadError, PayloadTooLargeError } from "./errors.ts";

function describe(value: object): string {
  const name = Object.getPrototypeOf(value)?.constructor?.name;
  return name ? `a ${name}` : "an object with a custom prototype";
}

/** Returns the first problem found in `value`, as [path, problem], or undefined. */
function findProblem(value: unknown, path: string, ancestors: Set<object>): [string, string] | undefined {
  switch (typeof value) {
    case "string":
      if (value.includes("\u0000")) return [path, "strings cannot contain \\u0000 (PostgreSQL jsonb refuses it)"];
      if (!value.isWellFormed()) return [path, "string holds a lone UTF-16 surrogate"];
      return undefined;
    case "number":
      return Number.isFinite(value) ? undefined : [path, `${value} is not a finite number`];
    case "boolean":
      return undefined;
    case "bigint":
      return [path, "a BigInt has no JSON form (send it as a string)"];
    case "function":
      return [path, "a function has no JSON form"];
    case "symbol":
      return [path, "a symbol has no JSON form"];
    case "undefined":
      return [path, "undefined has no JSON form here (use null)"];
  }
  if (value === null) return undefined;
  const object = value as object;
  if (ancestors.has(object)) return [path, "the value contains a cycle"];
  const proto = Object.getPrototypeOf(object);
  const isArray = Array.isArray(object);
  if (!isArray && proto !== Object.prototype && proto !== null) {
    const hint = object instanceof Date ? " (send date.toISOString())" : "";
    return [path, `${describe(object)} is not plain JSON data${hint}`];
  }
  ancestors.add(object);
  try {
    if (isArray) {
      const array = object as unknown[];
      for (let i = 0; i < array.length; i++) {
        const found = findProblem(array[i], path ? `${path}.${i}` : String(i), ancestors);
        if (found) return found;
      }
    } else {
      for (const key of Object.keys(object)) {
        const item = (object as Record<string, unknown>)[key];
        // An undefined property is left out by JSON, which is what an
        // optional field means; anything else that JSON drops is refused.
        if (item === undefined) continue;
        const child = path ? `${path}.${key}` : key;
        if (key.includes("\u0000")) return [child, "keys cannot contain \\u0000"];
        const found = findProblem(item, child, ancestors);
        if (found) return found;
      }
    }
  } finally {
    ancestors.delete(object);
  }
  return undefined;
}

const encoder = new TextEncoder();
const ancestors = new Set<object>();

/** Size of a string in UTF-8 bytes, without encoding it when it is clearly small. */
function utf8Length(text: string, limit: number): number {
  if (text.length * 3 <= limit) return text.length; // cannot exceed the limit
  return encoder.encode(text).length;
}

/**
 * Encodes a task input as JSON text. Throws {@link InvalidPayloadError}
 * naming the path of the first value JSON cannot carry faithfully, and
 * {@link PayloadTooLargeError} when the JSON exceeds `limit` bytes.
 */
export function encodePayload(task: string, input: unknown, limit: number, index?: number): string {
  // findProblem leaves the set empty again, and nothing else runs meanwhile.
  const problem = findProblem(input, "", ancestors);
  if (problem) throw new InvalidPayloadError(task, problem[0], problem[1], index);
  const text = JSON.stringify(input);
  const bytes = utf8Length(text, limit);
  if (bytes > limit) throw new PayloadTooLargeError(task, bytes, limit, index);
  return text;
}
