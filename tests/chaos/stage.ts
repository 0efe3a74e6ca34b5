/**
 * What a chaos scenario is and what it gets from the runner (run.ts): the
 * stage it plays on (its database, the processes it may start and hurt) and
 * the helpers every scenario shares.
 */
import type postgres from "postgres";
import type { Cause, ExecLine } from "./check.ts";
import type { App, HostOptions, ServeOptions, Supervisor } from "./cluster.ts";

/** How big a run is: `full` for `npm run chaos`, `ci` for the short version CI runs. */
export type Size = "full" | "ci";

/** What a scenario gets from the runner. */
export interface Stage {
  size: Size;
  // deno-lint-ignore no-explicit-any
  sql: postgres.Sql<any>;
  /** The scenario database's URL. */
  url: string;
  /** Starts a supervisor on this scenario's database; the runner stops those still running at the end. */
  serve(options: ServeOptions): Supervisor;
  /** Starts an app hosting an in-process worker, behind its own cuttable proxy; resolves once it is ready. The runner stops it at the end. */
  host(options: HostOptions): Promise<App>;
  /** The execution lines the tasks have written so far. */
  lines(): ExecLine[];
  /** Committed task ids; scenarios that enqueue by hand push onto it. */
  committed: string[];
  /** Ids of enqueues that were rolled back. */
  rolledBack: string[];
  /** Resolves once no task is queued or running (failing after a generous bound); calls `tick` every 200 ms meanwhile. */
  drained(tick?: () => void | Promise<void>): Promise<void>;
  /** Restarts the PostgreSQL server, down for `downMs`. */
  restartServer(downMs: number): Promise<void>;
  /** Adds a note to the scenario's line of figures. */
  note(text: string): void;
}

/** A scenario: what it injects, and which re-run causes that explains. */
export interface Scenario {
  name: string;
  /** Causes of re-runs this scenario's faults explain. */
  allowed: readonly Cause[];
  /** Causes that must each explain at least one re-run: without them the scenario injected no fault. */
  expected?: readonly Cause[];
  /** The concurrency limit the scenario sets on its queue: never passed, and reached. */
  limit?: number;
  /** The group limit the scenario sets on its queue: never passed by any group, and reached by one. */
  groupLimit?: number;
  /** It serves tests/chaos/ticks.js's every-second schedule too: no tick may fire twice or be skipped. */
  ticks?: boolean;
  run(stage: Stage): Promise<void>;
}

/**
 * How long a task sleeps: mostly 0–9 ms, so that many pass through; one in
 * ten 100–300 ms, so that a task handed to a second worker while the first
 * still runs it would overlap long enough to be seen.
 */
export function taskMs(): number {
  return Math.random() < 0.1 ? 100 + Math.floor(Math.random() * 200) : Math.floor(Math.random() * 10);
}

/** `full` in the full run, `ci` in the short one. */
export const sized = (stage: Stage, full: number, ci: number) => (stage.size === "full" ? full : ci);
