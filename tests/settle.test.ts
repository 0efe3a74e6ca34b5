import assert from "node:assert/strict";
import { test } from "node:test";
import { allSettledOrThrow } from "../lib/settle.ts";

test("allSettledOrThrow throws the first failure only once every promise has settled, and otherwise gives every value in order", async () => {
  let finishSlow!: (value: string) => void;
  let slowDone = false;
  const slow = new Promise<string>((resolve) => (finishSlow = resolve)).then((v) => ((slowDone = true), v));
  const fails = Promise.reject(new Error("first"));
  const later = Promise.reject(new Error("second"));
  const seen: { error?: Error } = {};
  const all = allSettledOrThrow([fails, slow, later]).then(() => "resolved", (error: Error) => (seen.error = error));
  // Let every settled promise's reaction run: the failure must still wait for the slow one.
  await new Promise((r) => setImmediate(r));
  assert.equal(Object.keys(seen).length, 0, "it rejected while a promise was still running");
  finishSlow("done");
  await all;
  assert.ok(slowDone);
  assert.equal(seen.error?.message, "first");
  assert.deepEqual(await allSettledOrThrow([Promise.resolve(1), "two", Promise.resolve([3])]), [1, "two", [3]]);
});
