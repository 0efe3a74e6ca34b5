/**
 * citty commands whose arguments are checked strictly. citty prints --help
 * but ignores unknown flags and stray arguments, so `pgbg retry --all-faild`
 * would look like success. Here an unknown flag, a flag given twice or
 * without its value, or an extra argument exits 2 naming it.
 *
 * @module
 */
import { type ArgsDef, type CommandDef, defineCommand } from "citty";
import { failWith, UsageError } from "./exit.ts";

/**
 * Checks `rawArgs` against the command's argument definitions; throws
 * UsageError. `variadic`: the last positional argument takes any number of
 * values.
 */
export function checkArgs(rawArgs: readonly string[], defs: ArgsDef, command: string, variadic: boolean): void {
  const seen = new Set<string>();
  const positionals = Object.values(defs).filter((d) => d.type === "positional").length;
  let given = 0;
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i];
    if (arg === "--help" || arg === "-h") continue;
    // citty reads any other "-x" as a short flag and drops it from the
    // positionals, so `pgbg cancel 5 -1` would quietly cancel only 5.
    if (arg.length > 1 && arg.startsWith("-") && !arg.startsWith("--")) {
      throw new UsageError(`unexpected argument ${JSON.stringify(arg)}: pgbg has no short flags, and no negative ids (see ${command} --help)`);
    }
    if (!arg.startsWith("--")) {
      if (++given > positionals && !variadic) throw new UsageError(`unexpected argument ${JSON.stringify(arg)} (see ${command} --help)`);
      continue;
    }
    const eq = arg.indexOf("=");
    let name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    if (!defs[name] && name.startsWith("no-") && defs[name.slice(3)]?.type === "boolean") name = name.slice(3);
    const def = defs[name];
    if (!def || def.type === "positional") throw new UsageError(`unknown flag --${name} (see ${command} --help)`);
    if (seen.has(name)) throw new UsageError(`--${name} is given twice; give it once`);
    seen.add(name);
    if (def.type !== "boolean" && eq < 0) {
      if (i + 1 >= rawArgs.length || rawArgs[i + 1].startsWith("--")) throw new UsageError(`--${name} needs a value`);
      i++;
    }
  }
}

/** `defineCommand`, with its arguments checked by {@link checkArgs} before `run`. */
export function defineStrictCommand<T extends ArgsDef>(def: CommandDef<T> & { meta: { name: string } }, variadic = false): CommandDef<T> {
  const run = def.run!;
  return defineCommand<T>({
    ...def,
    run(context) {
      try {
        checkArgs(context.rawArgs, def.args as ArgsDef, `pgbg ${def.meta.name}`, variadic);
      } catch (error) {
        failWith(error);
      }
      return run(context);
    },
  });
}
