/**
 * Durations as the service's flags and environment variables write them.
 *
 * @module
 */

import { MAX_DURATION } from "./define.ts";

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses `500ms`, `30s`, `5m`, `1h`, `2d`, `1.5s` or plain milliseconds
 * (`250`) into whole milliseconds. Returns undefined for anything else,
 * including negative values and values above `max` (7 days, MAX_DURATION,
 * unless given).
 */
export function parseDuration(text: string, max: number = MAX_DURATION): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/.exec(text);
  if (!match) return undefined;
  const ms = Math.round(Number(match[1]) * UNITS[match[2] ?? "ms"]);
  return Number.isSafeInteger(ms) && ms <= max ? ms : undefined;
}

/** Renders milliseconds the way --help shows defaults: `30s`, `500ms`, `5m`. */
export function formatDuration(ms: number): string {
  if (ms === Number.POSITIVE_INFINITY) return "forever";
  if (ms % 86_400_000 === 0 && ms > MAX_DURATION) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
