import assert from "node:assert/strict";
import { test } from "node:test";
import { LazyAbort } from "../lib/attempt.ts";

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
