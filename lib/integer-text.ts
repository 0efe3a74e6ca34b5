/**
 * Integers as PostgreSQL prints a bigint (decimal, no leading zeros),
 * compared as numbers without parsing them: task ids and run_at in epoch
 * microseconds, which postgres.js hands over as text.
 *
 * @module
 */

/** Compares two integers written in decimal without leading zeros, as numbers (negative ones included). */
export function compareIntegerText(a: string, b: string): number {
  const negative = a.startsWith("-");
  if (negative !== b.startsWith("-")) return negative ? -1 : 1;
  const magnitude = a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  return negative ? 0 - magnitude : magnitude;
}
