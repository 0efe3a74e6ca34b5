/**
 * The one place that knows which JavaScript runtime runs pgbg (Node, Bun or
 * Deno) and how to start another process of the same runtime.
 *
 * @module
 */
import process from "node:process";

/** The runtime pgbg runs on. */
export type RuntimeName = "node" | "bun" | "deno";

/** Detects the current runtime. */
export function runtimeName(): RuntimeName {
  const g = globalThis as { Deno?: unknown; Bun?: unknown };
  if (g.Deno !== undefined) return "deno";
  if (g.Bun !== undefined) return "bun";
  return "node";
}

/**
 * The command that runs `script` as a new process of this runtime, keeping
 * the loader flags of this one (such as a TypeScript loader under Node).
 */
export function scriptCommand(script: string): { command: string; args: string[] } {
  switch (runtimeName()) {
    case "deno":
      return { command: process.execPath, args: ["run", "-A", script] };
    case "bun":
      return { command: process.execPath, args: [script] };
    default:
      return { command: process.execPath, args: [...process.execArgv, script] };
  }
}
