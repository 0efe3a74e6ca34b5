/**
 * OpenTelemetry's API with a context manager but no SDK (no tracer
 * provider registered), as an app has it when a library it uses depends on
 * the API: an attempt that has a trace to carry (its task was enqueued
 * inside one) still runs in it, so what it enqueues joins that trace; one
 * with none runs as it is, with no span of pgbg's made active.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { context, trace, TraceFlags } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import * as v from "valibot";
import { defineTask, drain, enqueue, migrate } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

const follow = defineTask({ name: "follow-up", schema: v.object({}), run() {} });

/** What each attempt saw as its active span, by order number. */
const seen = new Map<number, { traceId: string | undefined; recording: boolean | undefined; followUp: string }>();
const handle = defineTask({
  name: "handle-order",
  schema: v.object({ order: v.number() }),
  async run({ order }) {
    const span = trace.getActiveSpan();
    seen.set(order, { traceId: span?.spanContext().traceId, recording: span?.isRecording(), followUp: await enqueue(sql, follow, {}) });
  },
});

const storedContext = async (id: string) => (await sql`SELECT trace_context FROM pgbg.task WHERE id = ${id}`)[0]?.trace_context ?? null;

describe("OpenTelemetry's API without an SDK", () => {
  test("an attempt whose task was enqueued in a trace runs in it: what it enqueues carries that trace on", async () => {
    const remote = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7", traceFlags: TraceFlags.SAMPLED, isRemote: true };
    await context.with(trace.setSpanContext(context.active(), remote), () => enqueue(sql, handle, { order: 1 }));
    await drain(sql, { tasks: [handle], logger: quiet });
    const attempt = seen.get(1)!;
    assert.deepEqual([attempt.traceId, attempt.recording], [remote.traceId, false], "the API's no-op span, in the stored trace");
    assert.match(String(await storedContext(attempt.followUp)), new RegExp(`^00-${remote.traceId}-`), "the follow-up task stores the same trace");
  });

  test("an attempt with no trace to carry runs with no span of pgbg's active, and what it enqueues stores no trace", async () => {
    await enqueue(sql, handle, { order: 2 });
    await drain(sql, { tasks: [handle], logger: quiet });
    const attempt = seen.get(2)!;
    assert.equal(attempt.traceId, undefined, "no active span: the attempt ran as it is");
    assert.equal(await storedContext(attempt.followUp), null);
  });
});
