/**
 * Strict parsing of a command's flags. citty, which prints --help, is
 * lenient by design: it ignores unknown flags and stray arguments, keeps
 * only the last of a repeated flag, and reads a flag given without a value
 * as absent. A typo such as `--wrkers 4` would then run with the default,
 * and `--tasks a --tasks b` would load only `b`. Here each of those is an
 * error naming the flag, and list flags collect every value.
 *
 * @module
 */
import { InvalidConfigError } from "../lib/errors.ts";

/** How a flag takes its value: `list` flags may repeat, `boolean` ones take none (or `=true`/`=false`). */
export interface FlagSpec {
  kind: "list" | "boolean" | "count" | "duration" | "text";
  /** The environment variable behind the flag, named in messages. */
  env?: string;
}

/** Parsed flags: a string per single-value flag, every value of a list flag, true/false or the `=value` text of a boolean. */
export type ParsedFlags = Record<string, string | string[] | boolean>;

/**
 * Parses `argv` (the arguments after the command's name) against `specs`.
 * Accepts `--flag value`, `--flag=value` and, for booleans, `--flag` and
 * `--no-flag`. Throws `InvalidConfigError` for an unknown flag, a missing
 * or empty value, a repeated single-value flag or an argument that is not
 * a flag; `command` names the command in the hint to --help.
 */
export function parseFlags(argv: readonly string[], specs: Record<string, FlagSpec>, command: string): ParsedFlags {
  const out: ParsedFlags = {};
  const label = (name: string) => (specs[name].env ? `--${name} (${specs[name].env})` : `--${name}`);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--") || arg === "--") {
      throw new InvalidConfigError(`unexpected argument ${JSON.stringify(arg)}: ${command} takes only --flags (see ${command} --help)`);
    }
    const eq = arg.indexOf("=");
    let name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    let negated = false;
    if (!(name in specs) && name.startsWith("no-") && specs[name.slice(3)]?.kind === "boolean") {
      name = name.slice(3);
      negated = true;
    }
    const spec = specs[name];
    if (!spec) throw new InvalidConfigError(`unknown flag --${name} (see ${command} --help)`);
    if (spec.kind === "boolean") {
      if (negated && inline !== undefined) throw new InvalidConfigError(`--no-${name} takes no value`);
      // An =value is checked with the variable's rule (true/false, yes/no, 1/0).
      out[name] = negated ? false : inline ?? true;
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined || value === "") throw new InvalidConfigError(`${label(name)} needs a value`);
    if (spec.kind === "list") out[name] = [...((out[name] as string[] | undefined) ?? []), value];
    else if (name in out) throw new InvalidConfigError(`${label(name)} is given twice; give it once`);
    else out[name] = value;
  }
  return out;
}
