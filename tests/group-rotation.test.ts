/**
 * Which kind of task a worker with grouped tasks claims first
 * (lib/groups.ts): by turns, a kind found empty goes second for REST_MS,
 * and the second kind is claimed only while the batch has room. In this
 * process, with claim functions that record their calls.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { claimBothKinds, GroupRotation, REST_MS } from "../lib/groups.ts";
import type { ClaimScope } from "../lib/claim.ts";

/** A scope with a rotation, and claims of each kind that return `have` rows at most and record what they were asked. */
function kinds(have: { plain: number; grouped: number }) {
  const scope: ClaimScope = { workerId: "w", queues: null, names: [], leaseMs: [], groups: new GroupRotation() };
  const calls: string[] = [];
  const claim = (kind: "plain" | "grouped") => (want: number) => {
    calls.push(`${kind} ${want}`);
    return Promise.resolve(Array.from({ length: Math.min(want, have[kind]) }, () => kind));
  };
  return { scope, calls, plain: claim("plain"), grouped: claim("grouped") };
}

test("both kinds by turns; the second only while the batch has room", async () => {
  const k = kinds({ plain: 10, grouped: 3 });
  assert.deepEqual(await claimBothKinds(k.scope, "", 5, k.plain, k.grouped), ["grouped", "grouped", "grouped", "plain", "plain"]);
  assert.deepEqual(await claimBothKinds(k.scope, "", 5, k.plain, k.grouped), ["plain", "plain", "plain", "plain", "plain"]);
  assert.deepEqual(k.calls, ["grouped 5", "plain 2", "plain 5"], "the grouped claim is not made when the plain one filled the batch");
});

test("a kind found empty goes second until REST_MS passed, whatever the turn", async () => {
  const k = kinds({ plain: 10, grouped: 0 });
  const rotation = k.scope.groups!;
  await claimBothKinds(k.scope, "", 4, k.plain, k.grouped);
  k.calls.length = 0;
  for (let i = 0; i < 4; i++) await claimBothKinds(k.scope, "", 4, k.plain, k.grouped);
  assert.deepEqual(k.calls, ["plain 4", "plain 4", "plain 4", "plain 4"], "no statement for the empty kind while the other fills every batch");
  // Each claim site rests apart: the limited claim of a queue has its own turns.
  assert.equal(rotation.groupsFirst("some-queue"), true);
  await new Promise((r) => setTimeout(r, REST_MS + 20));
  k.calls.length = 0;
  for (let i = 0; i < 2; i++) await claimBothKinds(k.scope, "", 4, k.plain, k.grouped);
  assert.ok(k.calls.includes("grouped 4"), `rested, the empty kind is tried again first by its turn: ${k.calls.join(", ")}`);
});

test("the rotation moves on to the group of the latest turn a claim took from", () => {
  const rotation = new GroupRotation();
  rotation.passed([{ queue: "q", group_name: "b", turn: 2 }, { queue: "q", group_name: "z", turn: 1 }, { queue: "q", group_name: "c", turn: 3 }]);
  assert.deepEqual([rotation.queue, rotation.group], ["q", "c"]);
  rotation.passed([]);
  assert.deepEqual([rotation.queue, rotation.group], ["q", "c"], "a claim that took nothing leaves it");
});
