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

/**
 * A value JSON cannot carry faithfully: why, and the keys leading to it from
 * the root, innermost first (collected only once a problem is found, so a
 * valid payload builds no path at all).
 */
interface Problem {
  reason: string;
  keys: string[];
}

/**
 * Returns the first problem found in `value`, or undefined. `ancestors`
 * holds the objects being walked, outermost first, to find cycles: an array,
 * not a Set, because payloads are shallow (and the recursion bounds their
 * depth anyway), while a Set that is added to and deleted from for every
 * object keeps rebuilding its table.
 */
function findProblem(value: unknown, ancestors: object[]): Problem | undefined {
  switch (typeof value) {
    case "string":
      if (value.includes("\u0000")) return { reason: "strings cannot contain \\u0000 (PostgreSQL jsonb refuses it)", keys: [] };
      if (!value.isWellFormed()) return { reason: "string holds a lone UTF-16 surrogate", keys: [] };
      return undefined;
    case "number":
      return Number.isFinite(value) ? undefined : { reason: `${value} is not a finite number`, keys: [] };
    case "boolean":
      return undefined;
    case "bigint":
      return { reason: "a BigInt has no JSON form (send it as a string)", keys: [] };
    case "function":
      return { reason: "a function has no JSON form", keys: [] };
    case "symbol":
      return { reason: "a symbol has no JSON form", keys: [] };
    case "undefined":
      return { reason: "undefined has no JSON form here (use null)", keys: [] };
  }
  if (value === null) return undefined;
  const object = value as object;
  if (ancestors.includes(object)) return { reason: "the value contains a cycle", keys: [] };
  const isArray = Array.isArray(object);
  if (!isArray) {
    const proto = Object.getPrototypeOf(object);
    if (proto !== Object.prototype && proto !== null) {
      const hint = object instanceof Date ? " (send date.toISOString())" : "";
      return { reason: `${describe(object)} is not plain JSON data${hint}`, keys: [] };
    }
  }
  ancestors.push(object);
  const found = isArray ? findInArray(object as unknown[], ancestors) : findInObject(object as Record<string, unknown>, ancestors);
  ancestors.pop();
  return found;
}

function findInArray(array: unknown[], ancestors: object[]): Problem | undefined {
  for (let i = 0; i < array.length; i++) {
    const found = findProblem(array[i], ancestors);
    if (found) {
      found.keys.push(String(i));
      return found;
    }
  }
  return undefined;
}

function findInObject(object: Record<string, unknown>, ancestors: object[]): Problem | undefined {
  const keys = Object.keys(object);
  for (let k = 0; k < keys.length; k++) {
    const key = keys[k];
    const item = object[key];
    // An undefined property is left out by JSON, which is what an optional
    // field means; anything else that JSON drops is refused.
    if (item === undefined) continue;
    const found = key.includes("\u0000") ? { reason: "keys cannot contain \\u0000", keys: [] } : findProblem(item, ancestors);
    if (found) {
      found.keys.push(key);
      return found;
    }
  }
  return undefined;
}

const encoder = new TextEncoder();

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
  // A fresh list of ancestors per call: a getter that throws, or that
  // enqueues in turn, cannot leave another call's walk with a wrong one.
  const problem = findProblem(input, []);
  if (problem) throw new InvalidPayloadError(task, problem.keys.reverse().join("."), problem.reason, index);
  const text = JSON.stringify(input);
  const bytes = utf8Length(text, limit);
  if (bytes > limit) throw new PayloadTooLargeError(task, bytes, limit, index);
  return text;
}
