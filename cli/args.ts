/**
 * Strict parsing of a command's arguments against its table of flags
 * (cli/args-table.ts). The same table gives citty, the command framework,
 * what `--help` prints ({@link cittyArgs}); the parsing is ours because citty
 * is lenient by design: it ignores unknown flags and stray arguments, keeps
 * only the last of a repeated flag, reads a flag given without its value as
 * absent and takes `-1` for a short flag. A typo such as `--wrkers 4` would
 * then run with the default, `--tasks a --tasks b` would load only `b`, and
 * `pgbg retry --all-faild` would look like success. Here each of those is a
 * {@link UsageError} whose message is the line the CLI prints, and it exits 2.
 *
 * A flag wins over its environment variable, which wins over its default; an
 * empty variable counts as unset.
 *
 * @module
 */
import process from "node:process";
import { type ArgsDef, type CommandDef, defineCommand } from "citty";
import { MAX_DURATION } from "../lib/define.ts";
import { formatDuration, parseDuration } from "../lib/duration.ts";
import { failWith, UsageError } from "./exit.ts";

/** How a flag takes its value: `list` flags may repeat, `boolean` ones take none (or `=true`/`=false`). */
export type FlagKind = "text" | "count" | "duration" | "list" | "boolean";

/**
 * One row of a command's table of flags: everything --help, the parser and
 * the checks need. Built by {@link count}, {@link duration}, {@link list},
 * {@link text}, {@link choice} or {@link boolean}.
 */
export interface Flag<T> {
  kind: FlagKind;
  /** The environment variable read when the flag is not given; named in messages. */
  env?: string;
  /** What the flag does, for --help. */
  description: string;
  /** The default as --help and the README show it. */
  shown: string;
  /** The value when neither the flag nor its variable is given. */
  default?: T;
  /** Set when the flag must be given: why, appended to "is required" (empty: no reason). */
  required?: string;
  /** An empty value is read like any other instead of refused as missing: for a flag whose check names it. */
  allowEmpty?: boolean;
  /** Turns the texts given (several for a list flag given more than once) into the value; throws UsageError naming the rule. */
  read(raw: readonly string[], label: string): T;
}

/** A command's flags by name (without the `--`), in --help order. */
export type Flags = Record<string, Flag<unknown>>;

/** The value of each flag: undefined when it was not given and has no default (and is not required). */
export type FlagValues<F extends Flags> = {
  [K in keyof F]: (F[K] extends Flag<infer T> ? T : never) | (F[K] extends { default: unknown } | { required: string } ? never : undefined);
};

/** A command's arguments: its flags, and the positional arguments it takes, if any. */
export interface CommandArgs<F extends Flags> {
  /** The command as messages name it: `pgbg serve`. */
  command: string;
  flags: F;
  positionals?: {
    /** Their names (upper-cased in --help) and descriptions, in order. */
    names: Record<string, string>;
    /** The last one takes any number of values. */
    many?: boolean;
    /** Set when they must be given: the message when some are missing. */
    required?: string;
    /** Checks each value; returns the rule it breaks, or undefined. */
    check?: (value: string) => string | undefined;
  };
  /**
   * Rules between arguments, checked last; throws UsageError. A method, so
   * that a spec with narrower flags is still a CommandArgs<Flags>; NoInfer,
   * so that F is inferred from `flags` alone.
   */
  check?(args: ParsedArgs<NoInfer<F>>): void;
}

/** What {@link parseArgs} returns: the checked value of every flag, and the positional arguments. */
export interface ParsedArgs<F extends Flags> {
  flags: FlagValues<F>;
  positionals: string[];
}

/** The environment the flags' variables are read from. */
export type Env = Record<string, string | undefined>;

/** `--name (VARIABLE)`, or `--name` for a flag without a variable: how messages name a flag. */
function labelOf(name: string, flag: Flag<unknown>): string {
  return flag.env ? `--${name} (${flag.env})` : `--${name}`;
}

/**
 * Parses `argv` (the arguments after the command's name) against `spec`,
 * reading unset flags from `env`. Accepts `--flag value`, `--flag=value`,
 * and for booleans `--flag`, `--flag=true|false` and `--no-flag`; list flags
 * may repeat. Throws {@link UsageError} for an unknown flag, a flag given
 * twice or without its value, a stray or `-x` argument, a missing required
 * argument or a value that breaks its flag's rule; a flag's own check may
 * throw another PgbgError (such as the library's schema-name error).
 */
export function parseArgs<F extends Flags>(argv: readonly string[], spec: CommandArgs<F>, env: Env): ParsedArgs<F> {
  const { given, positionals } = scan(argv, spec);
  checkPositionals(positionals, spec);
  const flags: Record<string, unknown> = {};
  for (const [name, flag] of Object.entries(spec.flags)) {
    const fromEnv = flag.env ? env[flag.env] : undefined;
    const raw = given.get(name) ?? (fromEnv ? [fromEnv] : undefined);
    flags[name] = raw === undefined ? flag.default : flag.read(raw, labelOf(name, flag));
  }
  for (const [name, flag] of Object.entries(spec.flags)) {
    if (flag.required !== undefined && flags[name] === undefined) {
      throw new UsageError(`${labelOf(name, flag)} is required${flag.required ? `: ${flag.required}` : ""}`);
    }
  }
  const parsed = { flags: flags as FlagValues<F>, positionals };
  spec.check?.(parsed);
  return parsed;
}

/** Sorts `argv` into the texts given for each flag and the positional arguments, refusing what no rule allows. */
function scan(argv: readonly string[], spec: CommandArgs<Flags>): { given: Map<string, string[]>; positionals: string[] } {
  const { command, flags } = spec;
  const given = new Map<string, string[]>();
  const positionals: string[] = [];
  const takes = Object.keys(spec.positionals?.names ?? {}).length;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--") || arg === "--") {
      if (!takes) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}: ${command} takes only --flags (see ${command} --help)`);
      if (arg === "--") throw new UsageError(`unexpected argument "--" (see ${command} --help)`);
      // citty would read "-1" as a short flag and drop it from the
      // positionals, so `pgbg cancel 5 -1` would quietly cancel only 5.
      if (arg.length > 1 && arg.startsWith("-")) {
        throw new UsageError(`unexpected argument ${JSON.stringify(arg)}: pgbg has no short flags, and no negative ids (see ${command} --help)`);
      }
      positionals.push(arg);
      if (positionals.length > takes && !spec.positionals?.many) throw new UsageError(`unexpected argument ${JSON.stringify(arg)} (see ${command} --help)`);
      continue;
    }
    const eq = arg.indexOf("=");
    let name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    const negated = !Object.hasOwn(flags, name) && name.startsWith("no-") && flags[name.slice(3)]?.kind === "boolean";
    if (negated) name = name.slice(3);
    // Object.hasOwn: "--constructor" must be unknown, not Object's own.
    const flag = Object.hasOwn(flags, name) ? flags[name] : undefined;
    if (!flag) throw new UsageError(`unknown flag --${name} (see ${command} --help)`);
    const label = labelOf(name, flag);
    if (given.has(name) && flag.kind !== "list") throw new UsageError(`${label} is given twice; give it once`);
    if (flag.kind === "boolean") {
      if (negated && inline !== undefined) throw new UsageError(`--no-${name} takes no value`);
      // An =value is read with the variable's rule (true/false, yes/no, 1/0).
      given.set(name, [negated ? "false" : inline ?? "true"]);
      continue;
    }
    // A next argument that is a flag is not this one's value: `--tasks --workers 2` lacks the tasks.
    const value = inline ?? (argv[i + 1]?.startsWith("--") ? undefined : argv[++i]);
    // An empty value would otherwise fall back to the variable or the default unseen.
    if (value === undefined || (value === "" && !flag.allowEmpty)) throw new UsageError(`${label} needs a value`);
    given.set(name, [...(given.get(name) ?? []), value]);
  }
  return { given, positionals };
}

/** Refuses missing positional arguments and values that break their rule. */
function checkPositionals(positionals: string[], spec: CommandArgs<Flags>): void {
  const rules = spec.positionals;
  if (!rules) return;
  if (rules.required !== undefined && positionals.length < (rules.many ? 1 : Object.keys(rules.names).length)) throw new UsageError(rules.required);
  for (const value of positionals) {
    const broken = rules.check?.(value);
    if (broken) throw new UsageError(`${broken}, got ${JSON.stringify(value)}`);
  }
}

/** citty's argument definitions for `spec`, for --help: each flag's description ends with `[env X] (default: Y)`. */
export function cittyArgs(spec: CommandArgs<Flags>): ArgsDef {
  const args: ArgsDef = {};
  for (const [name, description] of Object.entries(spec.positionals?.names ?? {})) {
    args[name] = { type: "positional", required: false, description };
  }
  for (const [name, flag] of Object.entries(spec.flags)) {
    const env = flag.env ? ` [env ${flag.env}]` : "";
    const shown = flag.required !== undefined ? "(required)" : `(default: ${flag.shown})`;
    args[name] = flag.kind === "boolean"
      ? { type: "boolean", description: `${flag.description}${env} ${shown}`, ...(flag.default === true ? { negativeDescription: `Turn --${name} off` } : {}) }
      : { type: "string", description: `${flag.description}${env} ${shown}` };
  }
  return args;
}

/**
 * A citty command whose arguments are parsed by {@link parseArgs} (from
 * `process.env`) before `run` receives them; bad usage prints its line and
 * exits 2. citty still handles `--help`.
 */
export function defineCliCommand<F extends Flags>(
  spec: CommandArgs<F>,
  description: string,
  run: (args: ParsedArgs<F>) => Promise<unknown>,
): CommandDef<ArgsDef> {
  return defineCommand({
    meta: { name: spec.command.replace(/^pgbg /, ""), description },
    args: cittyArgs(spec),
    run({ rawArgs }) {
      let args: ParsedArgs<F>;
      try {
        args = parseArgs(rawArgs, spec, process.env);
      } catch (error) {
        failWith(error);
      }
      return run(args);
    },
  });
}

/** What every kind of flag takes besides its own rules; see {@link Flag}. */
export interface FlagOptions<T> {
  env?: string;
  description: string;
  /** Default: the default value, written as the flag takes it. */
  shown?: string;
  default?: T;
  required?: string;
  allowEmpty?: boolean;
  /** The rule that messages state, `--x must be RULE, got "v"`; each kind words its own. */
  rule?: string;
  /** A further check of the value: false when it breaks the rule. It may throw an error of its own instead, which is passed on as it is. */
  check?: (value: T, label: string) => boolean;
  /** The value may hold a secret: messages never echo it. */
  secret?: boolean;
}

/** The error for a value that breaks its flag's rule, quoting the value unless it may be a secret. */
function broken(label: string, rule: string, got: string, secret = false): UsageError {
  return new UsageError(`${label} must be ${rule}${secret ? "" : `, got ${JSON.stringify(got)}`}`);
}

/**
 * A row of the table from its options and `read`. The options are kept in
 * the row's type, so that a flag with a default, or a required one, is typed
 * as never undefined.
 */
function flagOf<T, O extends FlagOptions<T>>(kind: FlagKind, options: O, read: Flag<T>["read"]): Flag<T> & O {
  const byDefault = options.default === undefined ? undefined : kind === "duration" ? formatDuration(Number(options.default)) : String(options.default);
  const shown = options.shown ?? byDefault;
  if (shown === undefined) throw new Error(`a flag without a default says what --help shows instead: ${options.description}`);
  return { ...options, kind, shown, read };
}

/** `read` for a flag that takes one text: `parse` returns undefined when the text breaks `rule`, then the options' check runs. */
function readOne<T>(options: FlagOptions<T>, rule: string, parse: (text: string) => T | undefined): Flag<T>["read"] {
  return (raw, label) => {
    const value = parse(raw[0]);
    if (value === undefined || (options.check && !options.check(value, label))) throw broken(label, options.rule ?? rule, raw[0], options.secret);
    return value;
  };
}

/** A whole number from `min` to `max`. */
export function count<const O extends FlagOptions<number> & { min: number; max: number }>(options: O): Flag<number> & O {
  return flagOf("count", options, readOne(options, `a whole number from ${options.min} to ${options.max}`, (text) => {
    const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : Number.NaN;
    return Number.isSafeInteger(n) && n >= options.min && n <= options.max ? n : undefined;
  }));
}

/** A duration in ms (`500ms`, `30s`, `5m`, `1h` or plain ms) from `min` to MAX_DURATION; with `canBeOff`, `0` or `off` give 0. */
export function duration<const O extends FlagOptions<number> & { min: number; max?: number; canBeOff?: boolean; canBeForever?: boolean }>(
  options: O,
): Flag<number> & O {
  const max = options.max ?? MAX_DURATION;
  const off = options.canBeOff ? ", or 0 or off" : options.canBeForever ? ", or forever" : "";
  const rule = `a duration such as 500ms, 30s, 5m${max > MAX_DURATION ? ", 30d" : ""} or plain milliseconds, from ${options.min} ms to ${formatDuration(max)}${off}`;
  return flagOf("duration", options, readOne(options, rule, (text) => {
    if (options.canBeOff && /^\s*(0|off)\s*$/i.test(text)) return 0;
    if (options.canBeForever && /^\s*forever\s*$/i.test(text)) return Number.POSITIVE_INFINITY;
    const ms = parseDuration(text, max);
    return ms !== undefined && ms >= options.min ? ms : undefined;
  }));
}

/** Any text that passes the options' check (which goes with a `rule`, or throws its own error). */
export function text<const O extends FlagOptions<string>>(options: O): Flag<string> & O {
  return flagOf("text", options, readOne(options, options.rule ?? "", (value) => value));
}

/** One of `values`. */
export function choice<const V extends string, const O extends FlagOptions<V>>(values: readonly V[], options: O): Flag<V> & O {
  const rule = `${values.slice(0, -1).join(", ")} or ${values.at(-1)}`;
  return flagOf("text", options, readOne(options, rule, (value) => (values as readonly string[]).includes(value) ? value as V : undefined));
}

/** A switch: `--flag`, `--no-flag`, or true/false, yes/no, on/off, 1/0 after `=` or in its variable. */
export function boolean<const O extends FlagOptions<boolean>>(options: O): Flag<boolean> & O {
  return flagOf("boolean", options, readOne(options, "true or false", (value) => {
    if (/^(1|true|yes|on)$/i.test(value)) return true;
    if (/^(0|false|no|off)$/i.test(value)) return false;
    return undefined;
  }));
}

/**
 * A comma-separated list, which may also be given by repeating the flag;
 * `item` is the rule of each entry.
 */
export function list<const O extends FlagOptions<string[]> & { item?: { rule: string; test: (item: string) => boolean } }>(options: O): Flag<string[]> & O {
  return flagOf("list", options, (raw, label) => {
    const items = raw.flatMap((x) => x.split(",")).map((x) => x.trim()).filter(Boolean);
    const rule = options.rule ?? "a non-empty comma-separated list";
    if (!items.length || (options.check && !options.check(items, label))) throw broken(label, rule, raw.join(","), options.secret);
    const bad = options.item && items.find((item) => !options.item!.test(item));
    if (bad !== undefined) throw broken(label, options.item!.rule, bad, options.secret);
    return items;
  });
}
