import assert from "node:assert/strict";
import { test } from "node:test";
import * as v from "valibot";
import { type AttemptOptions, LazyAbort, type Outcome, startAttempt, TaskTimeoutError } from "../lib/attempt.ts";
import { defineTask } from "../lib/define.ts";
import { InvalidInputError } from "../lib/errors.ts";

test("LazyAbort: a signal read after the abort is already aborted, with the reason", () => {
  const lazy = new LazyAbort();
  const reason = new Error("timeout");
  lazy.abort(reason);
  assert.equal(lazy.signal.aborted, true);
  assert.equal(lazy.signal.reason, reason);
  assert.equal(lazy.reason, reason);
});

test("LazyAbort: a signal read before the abort fires its listeners once, with the first reason", () => {
  const lazy = new LazyAbort();
  const seen: unknown[] = [];
  lazy.signal.addEventListener("abort", () => seen.push(lazy.signal.reason));
  lazy.abort("first");
  lazy.abort("second");
  assert.deepEqual(seen, ["first"]);
  assert.equal(lazy.reason, "first");
});

/** Starts one attempt of a task with `run` on `payload`; returns what startAttempt returned and the outcomes reported. */
function attemptOf(run: (input: { n: number }, ctx: { signal: AbortSignal }) => unknown, payload: unknown, extra: Partial<AttemptOptions> = {}) {
  const task = defineTask({ name: "t", schema: v.object({ n: v.number() }), run: run as never });
  const outcomes: Outcome[] = [];
  const returned = startAttempt({
    task, claimed: { id: "1", name: "t", queue: "default", group: null, priority: 0, payload, attempt: 1, maxAttempts: null, leaseToken: 1, claimId: null, snoozes: 0, inputVersion: 1, traceContext: null, batchThen: null, lagMs: 0, runAtUs: "0", claimedAtMs: 0 },
    // sql: these attempts never read the database (ctx.parentResults, ctx.batch).
    schema: "pgbg", sql: null as never, timeout: 1_000, grace: 1_000, controller: new LazyAbort(), onOverdue: () => {}, ...extra,
  }, (outcome) => outcomes.push(outcome));
  return { returned, outcomes };
}

test("startAttempt: a handler that returns without a promise has succeeded before startAttempt returns", () => {
  const ran: number[] = [];
  const { returned, outcomes } = attemptOf((input) => void ran.push(input.n), { n: 7 });
  assert.equal(returned, undefined);
  assert.deepEqual(ran, [7]);
  assert.deepEqual(outcomes, [{ kind: "success" }]);
});

test("startAttempt: a synchronous throw is a failure to retry, reported at once", () => {
  const { returned, outcomes } = attemptOf(() => {
    throw new Error("boom");
  }, { n: 1 });
  assert.equal(returned, undefined);
  assert.equal(outcomes.length, 1);
  assert.equal(outcomes[0].kind, "failure");
  assert.equal(outcomes[0].kind === "failure" && (outcomes[0].error as Error).message, "boom");
  assert.equal(outcomes[0].kind === "failure" && outcomes[0].permanent, false);
});

test("startAttempt: input the schema refuses fails for good without running the handler", () => {
  let ran = false;
  const { outcomes } = attemptOf(() => void (ran = true), { n: "seven" });
  assert.equal(ran, false);
  assert.equal(outcomes.length, 1);
  assert.ok(outcomes[0].kind === "failure" && outcomes[0].error instanceof InvalidInputError);
  assert.equal(outcomes[0].kind === "failure" && outcomes[0].permanent, true);
});

test("startAttempt: a promise is awaited; its resolution is a success and its rejection a failure, each reported once", async () => {
  const ok = attemptOf(async () => {}, { n: 1 });
  const bad = attemptOf(() => Promise.reject("not an Error"), { n: 1 });
  assert.ok(ok.returned instanceof Promise && bad.returned instanceof Promise);
  assert.equal(ok.outcomes.length + bad.outcomes.length, 0);
  await Promise.all([ok.returned, bad.returned]);
  assert.deepEqual(ok.outcomes, [{ kind: "success" }]);
  assert.deepEqual(bad.outcomes, [{ kind: "failure", error: "not an Error", permanent: false, timedOut: false }]);
});

test("startAttempt: at the timeout the signal aborts and the attempt fails as timed out, even if the handler then resolves", async () => {
  let signal: AbortSignal | undefined;
  const { returned, outcomes } = attemptOf((_, ctx) => {
    signal = ctx.signal;
    return new Promise((resolve) => signal!.addEventListener("abort", () => setTimeout(resolve, 10)));
  }, { n: 1 }, { timeout: 30 });
  await returned;
  assert.equal(signal?.aborted, true);
  assert.ok(signal?.reason instanceof TaskTimeoutError);
  assert.equal(outcomes.length, 1);
  assert.ok(outcomes[0].kind === "failure" && outcomes[0].timedOut && outcomes[0].error instanceof TaskTimeoutError);
});

test("startAttempt: a handler that ignores its signal past the grace period is reported overdue, and its late end still counts as timed out", async () => {
  let release!: () => void;
  let overdue!: () => void;
  const overdueSeen = new Promise<void>((r) => (overdue = r));
  const { returned, outcomes } = attemptOf(() => new Promise<void>((r) => (release = r)), { n: 1 }, { timeout: 10, grace: 20, onOverdue: () => overdue() });
  await overdueSeen;
  assert.equal(outcomes.length, 0);
  release();
  await returned;
  assert.ok(outcomes[0].kind === "failure" && outcomes[0].timedOut);
});

test("startAttempt: an async schema validates before the handler runs", async () => {
  const task = defineTask({
    name: "a",
    schema: v.pipeAsync(v.object({ n: v.number() }), v.checkAsync(async (x) => x.n > 0, "n must be positive")),
    run() {},
  });
  const outcomes: Outcome[] = [];
  const claimed = (payload: unknown) => ({ id: "1", name: "a", queue: "default", group: null, priority: 0, payload, attempt: 1, maxAttempts: null, leaseToken: 1, claimId: null, snoozes: 0, inputVersion: 1, traceContext: null, batchThen: null, lagMs: 0, runAtUs: "0", claimedAtMs: 0 });
  const common = { task, schema: "pgbg", sql: null as never, timeout: 1_000, grace: 1_000, controller: new LazyAbort(), onOverdue: () => {} };
  await startAttempt({ ...common, claimed: claimed({ n: 1 }) }, (o) => outcomes.push(o));
  await startAttempt({ ...common, claimed: claimed({ n: -1 }) }, (o) => outcomes.push(o));
  assert.deepEqual(outcomes[0], { kind: "success" });
  assert.ok(outcomes[1].kind === "failure" && outcomes[1].permanent && outcomes[1].error instanceof InvalidInputError);
});
