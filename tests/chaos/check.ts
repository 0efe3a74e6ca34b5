/**
 * The chaos suite's verdict: joins what the tasks recorded (start, end and
 * exit lines), what the driver did (kills, cuts from the database), and what
 * the database holds (completions, the lease ledger, rows left) and checks
 * the promise: every committed task completed once or is kept as failed,
 * none is missing, no two executions of one task overlapped while the
 * earlier one's lease held, an execution that outlived its lease never
 * committed its completion, and every re-run has a cause the scenario
 * injected.
 *
 * Pure functions, so tests/chaos-check.test.ts can show that each check
 * fails when its guarantee is broken.
 */

/** One line of an execution file written by tests/chaos/tasks.js. */
export type ExecLine =
  // `h`: this attempt ignores its abort signal on purpose (the task's `hang` or `late` input).
  // `g`: the task's group, for a group limit.
  | { k: "s"; n: number; p: number; pp: number; t: string; a: number; at: number; h?: 1; g?: string }
  // `c`: written just before its completion's commit, in the handler's transaction.
  | { k: "c"; n: number; p: number; at: number }
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

/** A time the driver cut a process off from the database (tests/chaos/proxy.ts), in wall-clock ms. */
export interface Cut {
  pid: number;
  from: number;
  /** When the cut healed: taken just after the proxy reset the process's connections. */
  to: number;
}

/**
 * Why an execution did not complete its task: its process was `killed` or
 * `exited`; it failed (`error`), or failed while its process was `cut` off
 * from the database; it was `hung` on purpose (ignored its abort signal); or
 * nothing tells when it ended (`open`).
 */
export type Cause = "killed" | "exited" | "error" | "cut" | "hung" | "open";

/**
 * How a lease ended, as the chaos database's ledger recorded it (run.ts):
 * `expired`, the task left `running` after its lease's end; `reaped`, after
 * another host removed its worker, whose heartbeat was older than its stale
 * time; `handed back`, uncounted (by a worker stopping, or by the host of a
 * worker that stopped itself, cut off); `ended` in any other way (the
 * attempt's own failure, its host's release of a worker it knew dead). Only
 * the first three may leave the attempt running: the others follow its end.
 */
export type LeaseEnd = "expired" | "reaped" | "handed back" | "ended";

/** The lease each claim handed out: who took it, when, and how it ended. Times in wall-clock ms, rounded down. */
export interface Lease {
  task: string;
  /** The claiming worker's process (in-process: the app's), from its row at the claim. */
  pid: number | null;
  /** The attempt the claim began. */
  attempt: number;
  claimedAt: number;
  /** Null while the lease held to the end of the run, or ended with the task's completion. */
  endedAt: number | null;
  ended: LeaseEnd | null;
}

/** Lease endings after which a late execution may still be running, while the task runs again. */
const REVOKED: readonly LeaseEnd[] = ["expired", "reaped", "handed back"];

/**
 * How long after a cut healed its process may still report failures the
 * cut caused: the proxy resets the connections held through the cut as it
 * heals, and the attempts waiting on them fail when their process next reads.
 */
export const CUT_AFTERMATH_MS = 2_000;

/**
 * How long after a cut healed an attempt may begin and still hang on it
 * until its process ends: its handler's own client may hold a connection
 * the proxy reset as the cut healed, which postgres.js waits out for its
 * connect timeout (30 s). An in-process run saw one begin 2.9 s after.
 */
export const CUT_HANG_MS = 30_000;

/** Everything one scenario run left behind. */
export interface RunRecord {
  /** Ids of the tasks whose enqueue committed. */
  committed: string[];
  /** Ids returned by enqueues whose transaction rolled back. */
  rolledBack: string[];
  lines: ExecLine[];
  kills: Kill[];
  cuts: Cut[];
  /** The lease ledger: one entry per claim. */
  leases: Lease[];
  /** Rows of chaos_done per task id: how often a completion committed. */
  completions: Map<string, number>;
  /** The executions whose completion committed, as `pid:n` of their start lines. */
  completedBy: string[];
  /** The result pgbg stored for each completed task (its history), naming the execution that returned it as `pid:n`. */
  results: Map<string, string>;
  /** Rows still in pgbg.task. */
  left: { id: string; state: string }[];
}

/** The figures printed for a scenario. */
export interface Figures {
  tasks: number;
  executions: number;
  kills: number;
  cuts: number;
  reruns: Record<Cause, number>;
  lost: number;
  duplicatesWhileLeased: number;
  /** Pairs of executions that overlapped after the earlier one's lease had expired or was revoked: allowed. */
  overlapsAfterLease: number;
  /** Executions still running when another execution of their task began, whose completion committed all the same. */
  lateCommits: number;
  completedTwice: number;
  failed: number;
  rolledBackRan: number;
  /** Under a queue's concurrency limit: the most executions that overlapped. */
  mostAtOnce?: number;
  /** Under a group limit: the most executions of one group that overlapped. */
  mostOfAGroupAtOnce?: number;
}

/** The figures and, when the promise was broken, what broke it. */
export interface Verdict {
  figures: Figures;
  problems: string[];
}

interface Execution {
  task: string;
  pid: number;
  /** The sequence number of its start line in its process. */
  n: number;
  ppid: number;
  attempt: number;
  start: number;
  /** It ignores its abort signal on purpose. */
  hangs: boolean;
  /** Its task's group, if it has one. */
  group?: string;
  end?: number;
  /** When only its completion's commit was left (its `c` line). */
  committing?: number;
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

/** Whether process `pid` was cut off from the database at `at`, or had just healed. */
function cutAt(cuts: Cut[]) {
  return (pid: number, at: number, aftermath = CUT_AFTERMATH_MS) => cuts.some((c) => c.pid === pid && c.from <= at && at <= c.to + aftermath);
}

/**
 * The most executions that overlapped, as a queue's concurrency limit
 * counts them: an execution holds its slot from its claim (before its start
 * line) until its completion commits (after its `c` line, and before its end
 * line, which a kill may also prevent), or until its process is killed (its
 * task holds its slot until released, later still). An end and a start at
 * the same millisecond do not overlap.
 */
function mostAtOnce(all: Execution[], completedBy: Set<string>): number {
  const holds = (e: Execution) => (e.committing !== undefined && completedBy.has(`${e.pid}:${e.n}`) ? e.committing : e.end ?? Infinity);
  const edges = all.flatMap((e) => [[e.start, 1], [holds(e), -1]]);
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let most = 0;
  for (const [, step] of edges) most = Math.max(most, (now += step));
  return most;
}

/** mostAtOnce within each group: the group whose executions overlapped most, and how many did. */
function mostOfAGroupAtOnce(all: Execution[], completedBy: Set<string>): { group: string; most: number } {
  const byGroup = new Map<string, Execution[]>();
  for (const e of all) if (e.group !== undefined) byGroup.set(e.group, [...(byGroup.get(e.group) ?? []), e]);
  let top = { group: "(none)", most: 0 };
  for (const [group, list] of byGroup) {
    const most = mostAtOnce(list, completedBy);
    if (most > top.most) top = { group, most };
  }
  return top;
}

function executions(lines: ExecLine[], kills: Kill[], cuts: Cut[]): Execution[] {
  const byKey = new Map<string, Execution>();
  for (const l of lines) {
    if (l.k === "s") {
      byKey.set(`${l.p}:${l.n}`, { task: String(l.t), pid: l.p, n: l.n, ppid: l.pp, attempt: l.a, start: l.at, hangs: l.h === 1, group: l.g });
    }
  }
  const wasCut = cutAt(cuts);
  for (const l of lines) {
    if (l.k === "c") {
      const e = byKey.get(`${l.p}:${l.n}`);
      if (e) e.committing = l.at;
    }
    if (l.k !== "e") continue;
    const e = byKey.get(`${l.p}:${l.n}`);
    if (!e) continue;
    Object.assign(e, { end: l.at, outcome: l.o, error: l.e });
    if (l.o === "error") e.cause = e.hangs ? "hung" : wasCut(e.pid, l.at) ? "cut" : "error";
  }
  const stopped = processEnds(lines, kills);
  for (const e of byKey.values()) {
    if (e.end !== undefined) continue;
    const { at, cause } = stopped(e);
    e.end = at;
    // A hung execution runs until its process ends; its task ran again
    // long before, because it hung. One that began while its process was
    // cut off, or within CUT_HANG_MS after the cut healed, and never ended
    // before its process did, hung on the cut: its handler's own client was
    // left on a connection the proxy reset while it opened, which
    // postgres.js waits out for its connect timeout (30 s), longer than the
    // run has left.
    e.cause = e.hangs && cause !== "open" ? "hung" : cause === "exited" && wasCut(e.pid, e.start, CUT_HANG_MS) ? "cut" : cause;
  }
  return [...byKey.values()];
}

/**
 * The lease of each execution: the last claim of its task by its process
 * for its attempt made before it started (a hand-back does not count the
 * attempt, so one process may claim one attempt of a task twice).
 */
function leaseFinder(leases: Lease[]) {
  const byKey = new Map<string, Lease[]>();
  for (const l of leases) {
    const key = `${l.task}:${l.pid}:${l.attempt}`;
    byKey.set(key, [...(byKey.get(key) ?? []), l]);
  }
  for (const list of byKey.values()) list.sort((a, b) => a.claimedAt - b.claimedAt);
  return (e: Execution): Lease | undefined => byKey.get(`${e.task}:${e.pid}:${e.attempt}`)?.findLast((l) => l.claimedAt <= e.start);
}

/** The lease of `e`, as a problem message puts it. */
function describeLease(lease: Lease | undefined): string {
  if (!lease) return "no claim in the lease ledger";
  if (lease.endedAt === null) return "its lease never ended";
  return `its lease ${lease.ended === "ended" ? "ended by its own outcome or a release" : `was ${lease.ended}`} at ${lease.endedAt}`;
}

interface OverlapFigures {
  duplicatesWhileLeased: number;
  overlapsAfterLease: number;
  lateCommits: number;
}

/**
 * Checks the executions of one task, in start order: each that began while
 * an earlier one still ran must have begun after that one's lease expired
 * or was revoked, and the earlier one's completion must not have committed.
 */
function checkOverlaps(task: string, list: Execution[], leaseOf: (e: Execution) => Lease | undefined, completedBy: Set<string>, problems: string[]): OverlapFigures {
  const figures = { duplicatesWhileLeased: 0, overlapsAfterLease: 0, lateCommits: 0 };
  const late = new Set<Execution>();
  list.forEach((b, j) => {
    const running = list.slice(0, j).filter((a) => a.end! > b.start);
    for (const a of running) late.add(a);
    const held = running.filter((a) => {
      const lease = leaseOf(a);
      return !(lease?.endedAt != null && lease.endedAt <= b.start && REVOKED.includes(lease.ended!));
    });
    figures.overlapsAfterLease += running.length - held.length;
    if (!held.length) return;
    figures.duplicatesWhileLeased++;
    const a = held[0];
    problems.push(
      `task ${task}: attempt ${b.attempt} (pid ${b.pid}) started while an earlier execution was still running ` +
        `(attempt ${a.attempt}, pid ${a.pid}, started ${a.start}; ${describeLease(leaseOf(a))}; the new one started ${b.start})`,
    );
  });
  for (const a of late) {
    if (!completedBy.has(`${a.pid}:${a.n}`)) continue;
    figures.lateCommits++;
    problems.push(`task ${task}: attempt ${a.attempt} (pid ${a.pid}) committed its completion though another execution began while it ran (${describeLease(leaseOf(a))})`);
  }
  return figures;
}

/**
 * Every completed task's stored result belongs to the execution whose
 * completion committed (the one that held the lease: checkOverlaps sees to
 * that), and no task that did not complete has one.
 */
function checkResults(record: RunRecord, all: Execution[], problems: string[], sample: (ids: string[]) => string): void {
  const taskOf = new Map(all.map((e) => [`${e.pid}:${e.n}`, e.task]));
  const committedBy = new Set(record.completedBy);
  const missing = [...record.completions.keys()].filter((id) => !record.results.has(id));
  if (missing.length) problems.push(`${missing.length} completed task(s) without a stored result: ${sample(missing)}`);
  const foreign = [...record.results].filter(([id, by]) => taskOf.get(by) !== id || !committedBy.has(by)).map(([id]) => id);
  if (foreign.length) problems.push(`${foreign.length} task(s) whose stored result is not that of the execution whose completion committed: ${sample(foreign)}`);
  const unearned = [...record.results.keys()].filter((id) => !record.completions.has(id));
  if (unearned.length) problems.push(`${unearned.length} task(s) with a stored result that never completed: ${sample(unearned)}`);
}

/**
 * Checks one run. `allowed` lists the causes of re-runs that the scenario
 * injected (kills, cuts, hangs, exits of retired workers, errors from
 * dropped connections); a re-run with any other cause is a problem, as is
 * an execution whose end nobody can tell. `expected` lists causes that must
 * each explain at least one re-run: a fault that interrupted nothing proved
 * nothing.
 */
export function check(record: RunRecord, allowed: readonly Cause[], expected: readonly Cause[] = [], limit?: number, groupLimit?: number): Verdict {
  const problems: string[] = [];
  const sample = (ids: string[]) => `${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}`;
  const all = executions(record.lines, record.kills, record.cuts);
  const byTask = new Map<string, Execution[]>();
  for (const e of all) byTask.set(e.task, [...(byTask.get(e.task) ?? []), e]);

  const committed = new Set(record.committed);
  const failed = new Set(record.left.filter((r) => r.state === "failed").map((r) => r.id));
  const unfinished = record.left.filter((r) => r.state !== "failed").map((r) => r.id);
  const lost = record.committed.filter((id) => !record.completions.has(id) && !failed.has(id));
  if (lost.length) problems.push(`${lost.length} committed task(s) neither completed nor kept as failed: ${sample(lost)}`);
  if (unfinished.length) problems.push(`${unfinished.length} task(s) still queued or running at the end: ${sample(unfinished)}`);

  checkResults(record, all, problems, sample);

  const twice = [...record.completions].filter(([, n]) => n > 1).map(([id]) => id);
  if (twice.length) problems.push(`${twice.length} task(s) completed more than once: ${sample(twice)}`);

  const strangers = [...byTask.keys(), ...record.completions.keys()].filter((id) => !committed.has(id));
  const rolledBack = new Set(record.rolledBack);
  const rolledBackRan = new Set(strangers.filter((id) => rolledBack.has(id)));
  if (rolledBackRan.size) problems.push(`${rolledBackRan.size} task(s) whose enqueue rolled back ran: ${sample([...rolledBackRan])}`);
  const unknown = [...new Set(strangers.filter((id) => !rolledBack.has(id)))];
  if (unknown.length) problems.push(`${unknown.length} task(s) ran that were never enqueued: ${sample(unknown)}`);

  const overlaps: OverlapFigures = { duplicatesWhileLeased: 0, overlapsAfterLease: 0, lateCommits: 0 };
  const leaseOf = leaseFinder(record.leases);
  const completedBy = new Set(record.completedBy);
  const reruns: Record<Cause, number> = { killed: 0, exited: 0, error: 0, cut: 0, hung: 0, open: 0 };
  for (const [task, list] of byTask) {
    list.sort((a, b) => a.start - b.start);
    const f = checkOverlaps(task, list, leaseOf, completedBy, problems);
    for (const k of Object.keys(overlaps) as (keyof OverlapFigures)[]) overlaps[k] += f[k];
    for (const e of list) {
      if (e.outcome === "done") continue;
      reruns[e.cause!]++;
      if (!allowed.includes(e.cause!)) {
        problems.push(`task ${task}: attempt ${e.attempt} (pid ${e.pid}) did not complete, cause "${e.cause}"${e.error ? ` (${e.error})` : ""}, which this scenario does not inject`);
      }
    }
  }
  for (const cause of expected) {
    if (!reruns[cause]) problems.push(`no re-run had the cause "${cause}": the scenario's fault interrupted no attempt`);
  }
  const most = mostAtOnce(all, completedBy);
  if (limit !== undefined && most > limit) problems.push(`${most} executions ran at once under a concurrency limit of ${limit}`);
  if (limit !== undefined && most < limit) problems.push(`at most ${most} executions ran at once: the limit of ${limit} was never reached, so the run proves nothing of it`);
  const mostOfAGroup = groupLimit === undefined ? undefined : mostOfAGroupAtOnce(all, completedBy);
  if (mostOfAGroup !== undefined && mostOfAGroup.most > groupLimit!) {
    problems.push(`${mostOfAGroup.most} executions of group ${mostOfAGroup.group} ran at once under a group limit of ${groupLimit}`);
  }
  if (mostOfAGroup !== undefined && mostOfAGroup.most < groupLimit!) {
    problems.push(`at most ${mostOfAGroup.most} executions of one group ran at once: the group limit of ${groupLimit} was never reached, so the run proves nothing of it`);
  }
  return {
    figures: {
      tasks: record.committed.length,
      executions: all.length,
      kills: record.kills.length,
      cuts: record.cuts.length,
      reruns,
      lost: lost.length,
      ...overlaps,
      completedTwice: twice.length,
      failed: failed.size,
      rolledBackRan: rolledBackRan.size,
      ...(limit === undefined ? {} : { mostAtOnce: most }),
      ...(mostOfAGroup === undefined ? {} : { mostOfAGroupAtOnce: mostOfAGroup.most }),
    },
    problems,
  };
}

/** One line of figures, as the suite prints it. */
export function describeFigures(name: string, f: Figures, seconds: number): string {
  const causes = (Object.entries(f.reruns) as [Cause, number][]).filter(([, n]) => n).map(([c, n]) => `${c} ${n}`).join(", ");
  const total = Object.values(f.reruns).reduce((a, b) => a + b, 0);
  const afterLease = f.overlapsAfterLease || f.lateCommits ? `overlaps after the lease ended ${f.overlapsAfterLease} (late completions committed ${f.lateCommits}), ` : "";
  return `${name}: ${f.tasks} tasks, ${f.executions} executions, ${f.kills} kills${f.cuts ? `, ${f.cuts} cuts` : ""}, re-runs ${total}${causes ? ` (${causes})` : ""}, ` +
    `lost ${f.lost}, duplicates while leased ${f.duplicatesWhileLeased}, ${afterLease}completed twice ${f.completedTwice}, failed ${f.failed}` +
    `${f.rolledBackRan ? `, rolled back but ran ${f.rolledBackRan}` : ""}${f.mostAtOnce === undefined ? "" : `, most at once ${f.mostAtOnce}`}` +
    `${f.mostOfAGroupAtOnce === undefined ? "" : `, most of a group at once ${f.mostOfAGroupAtOnce}`}, ${seconds.toFixed(1)} s`;
}

/** What became of the ticks of tests/chaos/ticks.js's schedule, which fires every second. */
export interface TickVerdict {
  /** Ticks fired: recorded by their task, or still queued. */
  fired: number;
  /** Ticks enqueued more than once. */
  duplicated: string[];
  /** Ticks from the first fired to the schedule's last handled that never fired (its catch-up policy backfills every one). */
  skipped: string[];
}

/**
 * Checks the every-second schedule's ticks: `fired` holds one entry per task
 * a tick enqueued (ISO times), `lastTick` is the newest tick the schedule
 * records as handled.
 */
export function checkTicks(fired: string[], lastTick: Date | null): TickVerdict {
  const seen = new Map<number, number>();
  for (const at of fired) seen.set(Date.parse(at), (seen.get(Date.parse(at)) ?? 0) + 1);
  const duplicated = [...seen].filter(([, n]) => n > 1).map(([at]) => new Date(at).toISOString());
  const skipped: string[] = [];
  if (seen.size && lastTick) {
    for (let at = Math.min(...seen.keys()); at <= lastTick.getTime(); at += 1000) if (!seen.has(at)) skipped.push(new Date(at).toISOString());
  }
  return { fired: fired.length, duplicated, skipped };
}
