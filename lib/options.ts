/**
 * Checks of the options objects that pgbg's functions take. Each check names
 * the option and what it must be, and refuses names it does not know, so a
 * typo such as `dealy` is an error rather than a silently ignored option.
 *
 * @module
 */
import { InvalidOptionsError } from "./errors.ts";

/** Checks one option's value; returns an error message or undefined. */
export type OptionCheck = (value: unknown) => string | undefined;

/**
 * Validates `options` against `checks` (one per allowed name) and returns it
 * typed. `undefined` values are treated as absent. `where` names the call in
 * messages, such as `enqueue()`.
 */
export function checkOptions<T extends object>(where: string, options: unknown, checks: Record<string, OptionCheck>): Partial<T> {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options)) throw new InvalidOptionsError(`${where}: options must be an object`);
  for (const [name, value] of Object.entries(options)) {
    const check = checks[name];
    if (!check) {
      throw new InvalidOptionsError(`${where}: unknown option "${name}" (known: ${Object.keys(checks).join(", ")})`);
    }
    if (value === undefined) continue;
    const problem = check(value);
    if (problem) throw new InvalidOptionsError(`${where}: option "${name}" ${problem}`);
  }
  return options as Partial<T>;
}

/** A whole number within [min, max]. */
export function integer(min: number, max: number): OptionCheck {
  return (value) =>
    typeof value === "number" && Number.isInteger(value) && value >= min && value <= max
      ? undefined
      : `must be a whole number from ${min} to ${max}, got ${formatValue(value)}`;
}

/** A string accepted by `test`, described by `rule`. */
export function text(test: (value: string) => boolean, rule: string): OptionCheck {
  return (value) => (typeof value === "string" && test(value) ? undefined : `must be ${rule}, got ${formatValue(value)}`);
}

/** Accepts any value: for options checked later by a dedicated check (the schema name). */
export const checkedLater: OptionCheck = () => undefined;

/** A value of the given typeof. */
export function ofType(type: "function" | "string" | "boolean"): OptionCheck {
  return (value) => (typeof value === type ? undefined : `must be a ${type}, got ${formatValue(value)}`);
}

/** A short, safe rendering of a bad value for an error message. */
export function formatValue(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === "number" || typeof value === "boolean" || value === null || value === undefined) return String(value);
  if (typeof value === "bigint") return `${value}n`;
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? "an invalid Date" : value.toISOString();
  return Array.isArray(value) ? "an array" : `a ${typeof value}`;
}
