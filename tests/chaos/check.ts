/**
 * The chaos suite's verdict: joins what the tasks recorded (start, end and
 * exit lines), what the driver did (kills) and what the database holds
 * (completions, rows left) and checks the promise: every committed task
 * completed once or is kept as failed, none is missing, no two executions of
 * one task overlapped, and every re-run has a cause the scenario injected.
 *
 * Pure functions, so tests/chaos-check.test.ts can show that each check
 * fails when its guarantee is broken.
 */

/** One line of an execution file written by tests/chaos/tasks.js. */
export type ExecLine =
  | { k: "s"; n: number; p: number; pp: number; t: string; a: number; at: number }
  | { k: "e"; n: number; p: number; o: "done" | "error"; e?: string; at: number }
  | { k: "x"; p: number; c: number; at: number };

/** A kill the driver sent: one worker, or a supervisor's whole process group. */
export interface Kill {
  pid: number;
  /** True when the supervisor `pid` and its workers were killed together. */
  group: boolean;
  /** Wall-clock ms, taken just before the signal was sent. */
  at: number;
}

/** Why an execution did not complete its task. */
export type Cause = "killed" | "exited" | "error" | "open";

/** Everything one scenario run left behind. */
export interface RunRecord {
  /** Ids of the tasks whose enqueue committed. */
  committed: string[];
  /** Ids returned by enqueues whose transaction rolled back. */
  rolledBack: string[];
  lines: ExecLine[];
  kills: Kill[];
  /** Rows of chaos_done per task id: how often a completion committed. */
  completions: Map<string, number>;
  /** Rows still in pgbg.task. */
  left: { id: string; state: string }[];
}

/** The figures printed for a scenario. */
export interface Figures {
  tasks: number;
  executions: number;
  kills: number;
  reruns: Record<Cause, number>;
  lost: number;
  duplicatesWhileLeased: number;
  completedTwice: number;
  failed: number;
  rolledBackRan: number;
}

/** The figures and, when the promise was broken, what broke it. */
export interface Verdict {
  figures: Figures;
  problems: string[];
}

interface Execution {
  task: string;
  pid: number;
  ppid: number;
  attempt: number;
  start: number;
  end?: number;
  outcome?: "done" | "error";
  error?: string;
  cause?: Cause;
}

/**
 * When the process that ran an execution stopped: its exit line, or the kill
 * of it or of its supervisor's group, whichever came first. A kill's time is
 * taken just before the signal, so it is at most a few microseconds early.
 */
function processEnds(lines: ExecLine[], kills: Kill[]) {
  const exits = new Map<number, number>();
  for (const l of lines) if (l.k === "x") exits.set(l.p, Math.min(exits.get(l.p) ?? Infinity, l.at));
  const killed = new Map<number, number>();
  const groups = new Map<number, number>();
  for (const k of kills) {
    const map = k.group ? groups : killed;
    map.set(k.pid, Math.min(map.get(k.pid) ?? Infinity, k.at));
  }
  return (e: Execution): { at: number; cause: Cause } => {
    const byKill = Math.min(killed.get(e.pid) ?? Infinity, groups.get(e.ppid) ?? Infinity, groups.get(e.pid) ?? Infinity);
    const byExit = exits.get(e.pid) ?? Infinity;
    if (byKill === Infinity && byExit === Infinity) return { at: Infinity, cause: "open" };
    return byKill <= byExit ? { at: byKill, cause: "killed" } : { at: byExit, cause: "exited" };
  };
}

function executions(lines: ExecLine[], kills: Kill[]): Execution[] {
  const byKey = new Map<string, Execution>();
  for (const l of lines) {
    if (l.k === "s") byKey.set(`${l.p}:${l.n}`, { task: String(l.t), pid: l.p, ppid: l.pp, attempt: l.a, start: l.at });
  }
  for (const l of lines) {
    if (l.k !== "e") continue;
    const e = byKey.get(`${l.p}:${l.n}`);
    if (!e) continue;
    Object.assign(e, { end: l.at, outcome: l.o, error: l.e });
    if (l.o === "error") e.cause = "error";
  }
  const stopped = processEnds(lines, kills);
  for (const e of byKey.values()) {
    if (e.end !== undefined) continue;
    const { at, cause } = stopped(e);
    e.end = at;
    e.cause = cause;
  }
  return [...byKey.values()];
}

/**
 * Checks one run. `allowed` lists the causes of re-runs that the scenario
 * injected (kills, exits of retired workers, errors from dropped
 * connections); a re-run with any other cause is a problem, as is an
 * execution whose end nobody can tell.
 */
export function check(record: RunRecord, allowed: readonly Cause[]): Verdict {
  const problems: string[] = [];
  const sample = (ids: string[]) => `${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}`;
  const all = executions(record.lines, record.kills);
  const byTask = new Map<string, Execution[]>();
  for (const e of all) byTask.set(e.task, [...(byTask.get(e.task) ?? []), e]);

  const committed = new Set(record.committed);
  const failed = new Set(record.left.filter((r) => r.state === "failed").map((r) => r.id));
  const unfinished = record.left.filter((r) => r.state !== "failed").map((r) => r.id);
  const lost = record.committed.filter((id) => !record.completions.has(id) && !failed.has(id));
  if (lost.length) problems.push(`${lost.length} committed task(s) neither completed nor kept as failed: ${sample(lost)}`);
  if (unfinished.length) problems.push(`${unfinished.length} task(s) still queued or running at the end: ${sample(unfinished)}`);

  const twice = [...record.completions].filter(([, n]) => n > 1).map(([id]) => id);
  if (twice.length) problems.push(`${twice.length} task(s) completed more than once: ${sample(twice)}`);

  const strangers = [...byTask.keys(), ...record.completions.keys()].filter((id) => !committed.has(id));
  const rolledBack = new Set(record.rolledBack);
  const rolledBackRan = new Set(strangers.filter((id) => rolledBack.has(id)));
  if (rolledBackRan.size) problems.push(`${rolledBackRan.size} task(s) whose enqueue rolled back ran: ${sample([...rolledBackRan])}`);
  const unknown = [...new Set(strangers.filter((id) => !rolledBack.has(id)))];
  if (unknown.length) problems.push(`${unknown.length} task(s) ran that were never enqueued: ${sample(unknown)}`);

  let overlaps = 0;
  const reruns: Record<Cause, number> = { killed: 0, exited: 0, error: 0, open: 0 };
  for (const [task, list] of byTask) {
    list.sort((a, b) => a.start - b.start);
    let busyUntil = -Infinity;
    for (const e of list) {
      if (e.start < busyUntil) {
        overlaps++;
        problems.push(`task ${task}: attempt ${e.attempt} (pid ${e.pid}) started while an earlier execution was still running`);
      }
      busyUntil = Math.max(busyUntil, e.end!);
      if (e.outcome === "done") continue;
      reruns[e.cause!]++;
      if (!allowed.includes(e.cause!)) {
        problems.push(`task ${task}: attempt ${e.attempt} (pid ${e.pid}) did not complete, cause "${e.cause}"${e.error ? ` (${e.error})` : ""}, which this scenario does not inject`);
      }
    }
  }
  return {
    figures: {
      tasks: record.committed.length,
      executions: all.length,
      kills: record.kills.length,
      reruns,
      lost: lost.length,
      duplicatesWhileLeased: overlaps,
      completedTwice: twice.length,
      failed: failed.size,
      rolledBackRan: rolledBackRan.size,
    },
    problems,
  };
}

/** One line of figures, as the suite prints it. */
export function describeFigures(name: string, f: Figures, seconds: number): string {
  const causes = (Object.entries(f.reruns) as [Cause, number][]).filter(([, n]) => n).map(([c, n]) => `${c} ${n}`).join(", ");
  const total = Object.values(f.reruns).reduce((a, b) => a + b, 0);
  return `${name}: ${f.tasks} tasks, ${f.executions} executions, ${f.kills} kills, re-runs ${total}${causes ? ` (${causes})` : ""}, ` +
    `lost ${f.lost}, duplicates while leased ${f.duplicatesWhileLeased}, completed twice ${f.completedTwice}, failed ${f.failed}` +
    `${f.rolledBackRan ? `, rolled back but ran ${f.rolledBackRan}` : ""}, ${seconds.toFixed(1)} s`;
}
