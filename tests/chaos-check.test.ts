// The chaos suite's verdict (tests/chaos/check.ts) must catch every way the
// promise can break: these records break it one way each.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type Cause, check, type ExecLine, type RunRecord } from "./chaos/check.ts";

/** One execution: a start line and, unless `end` is null, an end line. */
function exec(p: number, n: number, t: string, a: number, start: number, end: number | null, o: "done" | "error" = "done"): ExecLine[] {
  const lines: ExecLine[] = [{ k: "s", n, p, pp: 1, t, a, at: start }];
  if (end !== null) lines.push({ k: "e", n, p, o, at: end });
  return lines;
}

function record(parts: Partial<RunRecord>): RunRecord {
  return { committed: ["1", "2"], rolledBack: [], lines: [], kills: [], completions: new Map([["1", 1], ["2", 1]]), left: [], ...parts };
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

  test("a committed task that never completed and is not kept as failed is lost", () => {
    const v = verdict({ lines: clean(), completions: new Map([["1", 1]]) });
    assert.equal(v.figures.lost, 1);
    assert.match(v.problems.join("\n"), /1 committed task\(s\) neither completed nor kept as failed: 2/);
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
