// The chaos suite's verdict (tests/chaos/check.ts) must catch every way the
// promise can break: these records break it one way each. An execution may
// outlive its lease (an in-process attempt that ignores its signal is
// detached, not ended), so an overlap is allowed only after the earlier
// attempt's lease expired or was revoked, and never with its completion.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type Cause, check, checkTicks, CUT_AFTERMATH_MS, CUT_HANG_MS, type ExecLine, type Lease, type RunRecord } from "./chaos/check.ts";

/** One execution: a start line and, unless `end` is null, an end line. */
function exec(p: number, n: number, t: string, a: number, start: number, end: number | null, o: "done" | "error" = "done"): ExecLine[] {
  const lines: ExecLine[] = [{ k: "s", n, p, pp: 1, t, a, at: start }];
  if (end !== null) lines.push({ k: "e", n, p, o, at: end });
  return lines;
}

/** An execution that ignores its abort signal on purpose (tasks.js's `hang`): marked, and without an end line. */
function hungExec(p: number, n: number, t: string, a: number, start: number): ExecLine[] {
  return [{ k: "s", n, p, pp: 1, t, a, at: start, h: 1 }];
}

/** A lease of the ledger. */
function lease(task: string, pid: number, attempt: number, claimedAt: number, endedAt: number | null = null, ended: Lease["ended"] = null): Lease {
  return { task, pid, attempt, claimedAt, endedAt, ended };
}

/**
 * A run record. Unless given, the completions' executions are the last of
 * each completed task that ended done, and each stored result is theirs.
 */
function record(parts: Partial<RunRecord>): RunRecord {
  const base: RunRecord = {
    committed: ["1", "2"], rolledBack: [], lines: [], kills: [], cuts: [], leases: [], completions: new Map([["1", 1], ["2", 1]]),
    completedBy: [], results: new Map(), left: [],
    ...parts,
  };
  const taskOf = new Map<string, string>(base.lines.flatMap((l) => (l.k === "s" ? [[`${l.p}:${l.n}`, String(l.t)] as [string, string]] : [])));
  if (!parts.completedBy) {
    const last = new Map<string, string>();
    for (const l of base.lines) if (l.k === "e" && l.o === "done") last.set(taskOf.get(`${l.p}:${l.n}`)!, `${l.p}:${l.n}`);
    base.completedBy = [...base.completions.keys()].flatMap((id) => (last.has(id) ? [last.get(id)!] : []));
  }
  if (!parts.results) base.results = new Map(base.completedBy.map((by) => [taskOf.get(by)!, by]));
  return base;
}

const clean = () => [...exec(10, 1, "1", 1, 100, 110), ...exec(11, 1, "2", 1, 100, 120)];
const verdict = (parts: Partial<RunRecord>, allowed: Cause[] = ["killed", "exited", "error"]) => check(record(parts), allowed);

describe("chaos verdict", () => {
  test("a clean run has no problems", () => {
    const v = verdict({ lines: clean() });
    assert.deepEqual(v.problems, []);
    assert.equal(v.figures.executions, 2);
    assert.equal(v.figures.lost, 0);
  });

  test("under a concurrency limit: more executions at once than the limit is a problem, and so is never reaching it", () => {
    // Tasks 1 and 2 overlap (100-110 and 100-120): two at once.
    const lines = clean();
    assert.deepEqual(check(record({ lines }), ["killed"], [], 2).problems, []);
    assert.equal(check(record({ lines }), ["killed"], [], 2).figures.mostAtOnce, 2);
    assert.match(check(record({ lines }), ["killed"], [], 1).problems.join("\n"), /2 executions ran at once under a concurrency limit of 1/);
    assert.match(check(record({ lines }), ["killed"], [], 3).problems.join("\n"), /the limit of 3 was never reached/);
    // An end and a start at the same millisecond do not overlap.
    const touching = [...exec(10, 1, "1", 1, 100, 110), ...exec(11, 1, "2", 1, 110, 120)];
    assert.equal(check(record({ lines: touching }), ["killed"], [], 1).figures.mostAtOnce, 1);
    // A completion frees its slot when it commits, after the `c` line and
    // before the end line: task 2 started in between, after task 1's slot was free.
    const committed: ExecLine[] = [...exec(10, 1, "1", 1, 100, 115), { k: "c", n: 1, p: 10, at: 109 }, ...exec(11, 1, "2", 1, 110, 120)];
    assert.equal(check(record({ lines: committed }), ["killed"], [], 1).figures.mostAtOnce, 1);
    // A `c` line whose commit did not happen (no completion names it) frees nothing.
    assert.equal(check(record({ lines: committed, completedBy: ["11:1"] }), ["killed"], [], 1).figures.mostAtOnce, 2);
  });

  test("under a group limit: more executions of one group at once than the limit is a problem, other groups' do not count, and it must be reached", () => {
    const grouped = (g: string, lines: ExecLine[]) => lines.map((l) => (l.k === "s" ? { ...l, g } : l));
    // Tasks 1 and 2 of group a overlap; task 3 of group b overlaps both.
    const lines = [...grouped("a", clean()), ...grouped("b", exec(12, 1, "3", 1, 105, 115))];
    const run = (limit: number) => check(record({ lines, committed: ["1", "2", "3"], completions: new Map([["1", 1], ["2", 1], ["3", 1]]) }), ["killed"], [], undefined, limit);
    assert.deepEqual(run(2).problems, []);
    assert.equal(run(2).figures.mostOfAGroupAtOnce, 2);
    assert.match(run(1).problems.join("\n"), /2 executions of group a ran at once under a group limit of 1/);
    assert.match(run(3).problems.join("\n"), /the group limit of 3 was never reached/);
  });

  test("a committed task that never completed and is not kept as failed is lost", () => {
    const v = verdict({ lines: clean(), completions: new Map([["1", 1]]) });
    assert.equal(v.figures.lost, 1);
    assert.match(v.problems.join("\n"), /1 committed task\(s\) neither completed nor kept as failed: 2/);
  });

  test("a completed task's stored result must be that of the execution whose completion committed", () => {
    const missing = verdict({ lines: clean(), results: new Map([["1", "10:1"]]) });
    assert.match(missing.problems.join("\n"), /1 completed task\(s\) without a stored result: 2/);
    // Task 1 ran twice; the second execution's completion committed, but the first one's value was stored.
    const lines = [...exec(10, 1, "1", 1, 100, 110), ...exec(12, 1, "1", 2, 105, 115), ...exec(11, 1, "2", 1, 100, 120)];
    const foreign = verdict({ lines, completedBy: ["12:1", "11:1"], results: new Map([["1", "10:1"], ["2", "11:1"]]) }, ["killed", "exited", "error", "open"]);
    assert.match(foreign.problems.join("\n"), /1 task\(s\) whose stored result is not that of the execution whose completion committed: 1/);
    const swapped = verdict({ lines: clean(), results: new Map([["1", "11:1"], ["2", "10:1"]]) });
    assert.match(swapped.problems.join("\n"), /2 task\(s\) whose stored result is not that/);
    const unearned = verdict({ lines: clean(), completions: new Map([["1", 1]]), left: [{ id: "2", state: "failed" }], results: new Map([["1", "10:1"], ["2", "11:1"]]) });
    assert.match(unearned.problems.join("\n"), /1 task\(s\) with a stored result that never completed: 2/);
  });

  test("a task kept as failed is not lost", () => {
    const v = verdict({ lines: clean(), completions: new Map([["1", 1]]), left: [{ id: "2", state: "failed" }] });
    assert.deepEqual(v.problems, []);
    assert.equal(v.figures.failed, 1);
  });

  test("a task still queued at the end is a problem", () => {
    const v = verdict({ lines: clean(), left: [{ id: "3", state: "queued" }] });
    assert.match(v.problems.join("\n"), /still queued or running/);
  });

  test("two completions of one task", () => {
    const v = verdict({ lines: clean(), completions: new Map([["1", 2], ["2", 1]]) });
    assert.equal(v.figures.completedTwice, 1);
  });

  test("a second execution that starts before the first ended overlaps", () => {
    const lines = [...exec(10, 1, "1", 1, 100, 200, "error"), ...exec(11, 1, "1", 2, 150, 250), ...exec(12, 1, "2", 1, 100, 110)];
    const v = verdict({ lines });
    assert.equal(v.figures.duplicatesWhileLeased, 1);
    assert.match(v.problems.join("\n"), /task 1: attempt 2 \(pid 11\) started while an earlier execution was still running/);
  });

  test("a killed execution ends at its kill: a re-run after it is fine, one before it overlaps", () => {
    const killedThenRerun = [...exec(10, 1, "1", 1, 100, null), ...exec(11, 1, "1", 2, 160, 170), ...exec(12, 1, "2", 1, 100, 110)];
    const fine = verdict({ lines: killedThenRerun, kills: [{ pid: 10, group: false, at: 150 }] }, ["killed"]);
    assert.deepEqual(fine.problems, []);
    assert.equal(fine.figures.reruns.killed, 1);
    const early = verdict({ lines: killedThenRerun, kills: [{ pid: 10, group: false, at: 165 }] }, ["killed"]);
    assert.equal(early.figures.duplicatesWhileLeased, 1);
  });

  test("a group kill of the supervisor ends its workers' executions", () => {
    const lines = [...exec(10, 1, "1", 1, 100, null), ...exec(11, 1, "1", 2, 300, 310), ...exec(12, 1, "2", 1, 100, 110)];
    const v = verdict({ lines, kills: [{ pid: 1, group: true, at: 200 }] }, ["killed"]);
    assert.deepEqual(v.problems, []);
  });

  test("an execution nobody can tell the end of overlaps whatever comes after it", () => {
    const lines = [...exec(10, 1, "1", 1, 100, null), ...exec(11, 1, "1", 2, 500, 510), ...exec(12, 1, "2", 1, 100, 110)];
    const v = verdict({ lines });
    assert.equal(v.figures.reruns.open, 1);
    assert.equal(v.figures.duplicatesWhileLeased, 1);
  });

  test("an exit line ends the executions of that process", () => {
    const lines = [...exec(10, 1, "1", 1, 100, null), { k: "x", p: 10, c: 4, at: 200 } as ExecLine, ...exec(11, 1, "1", 2, 300, 310), ...exec(12, 1, "2", 1, 100, 110)];
    assert.deepEqual(verdict({ lines }, ["exited"]).problems, []);
  });

  test("a re-run whose cause the scenario does not inject is a problem", () => {
    const lines = [...exec(10, 1, "1", 1, 100, 150, "error"), ...exec(11, 1, "1", 2, 300, 310), ...exec(12, 1, "2", 1, 100, 110)];
    const v = verdict({ lines }, ["killed"]);
    assert.match(v.problems.join("\n"), /cause "error".*which this scenario does not inject/);
  });

  test("a rolled-back task that ran, and a task that was never enqueued", () => {
    const lines = [...clean(), ...exec(13, 1, "7", 1, 100, 110), ...exec(13, 2, "8", 1, 100, 110)];
    const v = verdict({ lines, rolledBack: ["7"] });
    assert.equal(v.figures.rolledBackRan, 1);
    assert.match(v.problems.join("\n"), /task\(s\) ran that were never enqueued: 8/);
  });
});

describe("chaos verdict: leases, cuts and hangs", () => {
  describe("an execution that outlived its lease (in-process: a hung attempt, detached)", () => {
    // Task 1: attempt 1 (pid 10) hangs from 100 until its process exits at
    // 1000; attempt 2 (pid 11) runs from 300 to 310 and completes.
    const lines = [...hungExec(10, 1, "1", 1, 100), ...exec(11, 1, "1", 2, 300, 310), ...exec(12, 1, "2", 1, 100, 110), { k: "x", p: 10, c: 0, at: 1000 } as ExecLine];
    const attempt2 = lease("1", 11, 2, 299);
    const withLease = (first: Lease, parts: Partial<RunRecord> = {}) => verdict({ lines, leases: [first, attempt2], completedBy: ["11:1", "12:1"], ...parts }, ["hung"]);

    test("may overlap the next attempt once its lease expired, was reaped or handed back, and its re-run is put down to the hang", () => {
      for (const ended of ["expired", "reaped", "handed back"] as const) {
        const v = withLease(lease("1", 10, 1, 99, 250, ended));
        assert.deepEqual(v.problems, [], ended);
        assert.equal(v.figures.overlapsAfterLease, 1);
        assert.equal(v.figures.duplicatesWhileLeased, 0);
        assert.equal(v.figures.reruns.hung, 1);
      }
    });

    test("overlaps while its lease held when the lease ended after the next attempt began", () => {
      const v = withLease(lease("1", 10, 1, 99, 350, "expired"));
      assert.equal(v.figures.duplicatesWhileLeased, 1);
      assert.match(v.problems.join("\n"), /task 1: attempt 2 \(pid 11\) started while an earlier execution was still running \(attempt 1, pid 10, .*expired at 350/);
    });

    test("overlaps while its lease held when the lease never ended, ended by an outcome or a release, or is not in the ledger", () => {
      for (const first of [lease("1", 10, 1, 99), lease("1", 10, 1, 99, 250, "ended"), lease("1", 99, 1, 99, 250, "expired")]) {
        assert.equal(withLease(first).figures.duplicatesWhileLeased, 1, JSON.stringify(first));
      }
    });

    test("is judged by its own claim: the last one of its task, process and attempt before it started", () => {
      // Handed back uncounted, attempt 1 was claimed twice by pid 10; the
      // hung execution began after the second claim, whose lease held.
      const v = withLease(lease("1", 10, 1, 99, 250, "expired"), { leases: [lease("1", 10, 1, 20, 30, "handed back"), lease("1", 10, 1, 99), attempt2] });
      assert.equal(v.figures.duplicatesWhileLeased, 1);
      const early = withLease(lease("1", 10, 1, 99, 250, "expired"), { leases: [lease("1", 10, 1, 99, 250, "expired"), lease("1", 10, 1, 101), attempt2] });
      assert.equal(early.figures.duplicatesWhileLeased, 0, "a claim after its start is not its own");
    });

    test("must not commit its completion: a late completion that committed fails the verdict", () => {
      const lateLines = [...exec(10, 1, "1", 1, 100, 400, "done"), ...exec(11, 1, "1", 2, 300, 310, "error"), ...exec(12, 1, "2", 1, 100, 110)];
      const v = verdict({ lines: lateLines, leases: [lease("1", 10, 1, 99, 250, "expired"), attempt2], completedBy: ["10:1", "12:1"] }, ["error"]);
      assert.equal(v.figures.overlapsAfterLease, 1);
      assert.equal(v.figures.lateCommits, 1);
      assert.match(v.problems.join("\n"), /task 1: attempt 1 \(pid 10\) committed its completion though another execution began while it ran \(its lease was expired at 250\)/);
      const refused = verdict({ lines: lateLines, leases: [lease("1", 10, 1, 99, 250, "expired"), attempt2], completedBy: ["12:1"] }, ["error"]);
      assert.equal(refused.figures.lateCommits, 0);
    });
  });

  test("a failure while its process was cut off, or just after the cut healed, is put down to the cut; later, to an error", () => {
    const lines = [...exec(10, 1, "1", 1, 100, 500, "error"), ...exec(11, 1, "1", 2, 600, 610), ...exec(12, 1, "2", 1, 100, 110)];
    const cut = (to: number) => verdict({ lines, cuts: [{ pid: 10, from: 200, to }] }, ["cut"]);
    assert.deepEqual(cut(400).problems, []);
    assert.equal(cut(400).figures.reruns.cut, 1);
    assert.match(cut(400 - CUT_AFTERMATH_MS - 1).problems.join("\n"), /cause "error"/);
    assert.match(verdict({ lines, cuts: [{ pid: 99, from: 200, to: 400 }] }, ["cut"]).problems.join("\n"), /cause "error"/);
  });

  test("an execution begun within CUT_HANG_MS after a cut healed that never ended before its process exited is put down to the cut; one begun later, to the exit", () => {
    // Pid 10 was cut off from 200 to 400; its execution of task 1 began at
    // 400 + start and hung until its process exited 4,600 ms later.
    const hungAfter = (start: number) => {
      const begin = 400 + start;
      return verdict({
        lines: [...exec(10, 1, "1", 1, begin, null), { k: "x", p: 10, c: 0, at: begin + 4_600 }, ...exec(11, 1, "1", 2, begin + 2_600, begin + 2_610), ...exec(12, 1, "2", 1, 100, 110)],
        cuts: [{ pid: 10, from: 200, to: 400 }],
        leases: [lease("1", 10, 1, begin - 1, begin + 2_100, "expired"), lease("1", 11, 2, begin + 2_599)],
      }, ["cut"]);
    };
    assert.deepEqual(hungAfter(900).problems, []);
    assert.equal(hungAfter(900).figures.reruns.cut, 1);
    // As an in-process run saw: begun 2.9 s after the cut healed.
    assert.deepEqual(hungAfter(CUT_AFTERMATH_MS + 900).problems, []);
    assert.match(hungAfter(CUT_HANG_MS + 1).problems.join("\n"), /cause "exited"/);
  });

  test("a cause the scenario expected that interrupted nothing fails the verdict", () => {
    const lines = [...exec(10, 1, "1", 1, 100, null), ...exec(11, 1, "1", 2, 300, 310), ...exec(12, 1, "2", 1, 100, 110)];
    const kills = [{ pid: 10, group: false, at: 200 }];
    assert.deepEqual(check(record({ lines, kills }), ["killed", "cut"], ["killed"]).problems, []);
    assert.match(check(record({ lines, kills }), ["killed", "cut"], ["killed", "cut"]).problems.join("\n"), /no re-run had the cause "cut"/);
  });

  test("the every-second schedule: a tick fired twice, or missing up to the last handled, is found", () => {
    const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
    assert.deepEqual(checkTicks([at(1), at(2), at(3)], new Date(at(3))), { fired: 3, duplicated: [], skipped: [] });
    assert.deepEqual(checkTicks([at(1), at(2), at(2), at(4)], new Date(at(5))), { fired: 4, duplicated: [at(2)], skipped: [at(3), at(5)] });
  });
});
