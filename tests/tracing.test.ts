/**
 * OpenTelemetry through the real SDK (@opentelemetry/sdk-trace-base with its
 * in-memory exporter, and the AsyncLocalStorage context manager): the trace
 * active at an enqueue reaches every attempt of the task, retries included,
 * as the parent of and a link from each attempt's consumer span, and the
 * handler's own spans nest under that span.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { context, type Span, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import * as v from "valibot";
import { defineTask, drain, enqueue, enqueueMany, migrate, VERSION } from "../mod.ts";
import { createTestDatabase } from "./harness.ts";

const exporter = new InMemorySpanExporter();
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const tracer = trace.getTracer("the app");
const quiet = { debug() {}, info() {}, warn() {}, error() {} };

const db = await createTestDatabase();
const { sql } = db;
await migrate(sql);

const chargeCard = defineTask({
  name: "charge-card",
  schema: v.object({ order: v.number() }),
  retryDelay: 10,
  async run({ order }, ctx) {
    // The handler's own span, under the attempt's.
    await tracer.startActiveSpan("call the card processor", async (span) => span.end());
    if (ctx.attempt === 1 && order > 0) throw new Error("card processor timed out");
  },
});

/** Runs `fn` inside a span of the app, as a request handler would; returns the span. */
async function inRequest(fn: () => Promise<unknown>): Promise<ReadableSpan> {
  let request: Span | undefined;
  await tracer.startActiveSpan("POST /orders", async (span) => {
    request = span;
    await fn();
    span.end();
  });
  return exporter.getFinishedSpans().find((s) => s.spanContext().spanId === request!.spanContext().spanId)!;
}

const parentId = (span: ReadableSpan) => span.parentSpanContext?.spanId;
const processSpans = (id: string) =>
  exporter.getFinishedSpans().filter((s) => s.name === "process charge-card" && s.attributes["messaging.message.id"] === id)
    .sort((a, b) => Number(a.attributes["pgbg.task.attempt"]) - Number(b.attributes["pgbg.task.attempt"]));

describe("OpenTelemetry", () => {
  test("one trace from the enqueuing request through a failed attempt and its retry, each a consumer span linked to the request", async () => {
    exporter.reset();
    let id = "";
    const request = await inRequest(async () => (id = await enqueue(sql, chargeCard, { order: 7 })));
    const [{ trace_context }] = await sql`SELECT trace_context FROM pgbg.task WHERE id = ${id}`;
    const { traceId, spanId, traceFlags } = request.spanContext();
    assert.equal(trace_context, `00-${traceId}-${spanId}-0${traceFlags}`, "the request's context is stored as a traceparent");
    assert.deepEqual(await drain(sql, { tasks: [chargeCard], maxWait: 5_000, logger: quiet }), { ran: 2, succeeded: 1, failed: 1, scheduled: 0 });

    const attempts = processSpans(id);
    assert.equal(attempts.length, 2);
    for (const [i, span] of attempts.entries()) {
      assert.equal(span.spanContext().traceId, traceId, "in the request's trace");
      assert.equal(parentId(span), spanId, "a child of the request's span");
      assert.deepEqual(span.links.map((l) => l.context.spanId), [spanId], "and linked to it");
      assert.equal(span.kind, SpanKind.CONSUMER);
      assert.equal(span.instrumentationScope.name, "pgbg");
      assert.equal(span.instrumentationScope.version, VERSION);
      assert.deepEqual(span.attributes, {
        "messaging.system": "pgbg", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "default", "messaging.message.id": id, "pgbg.task.name": "charge-card", "pgbg.task.attempt": i + 1,
        "pgbg.task.outcome": i === 0 ? "failure" : "success",
      });
      const own = exporter.getFinishedSpans().filter((s) => s.name === "call the card processor" && parentId(s) === span.spanContext().spanId);
      assert.equal(own.length, 1, "the handler's span is a child of its attempt's");
    }
    assert.equal(attempts[0].status.code, SpanStatusCode.ERROR);
    assert.equal(attempts[0].status.message, "card processor timed out");
    assert.equal(attempts[0].events[0]?.name, "exception", "the error is recorded on the span");
    assert.equal(attempts[1].status.code, SpanStatusCode.UNSET);
  });

  test("enqueueMany stores the request's context with every task of the batch", async () => {
    let ids: string[] = [];
    const request = await inRequest(async () => (ids = await enqueueMany(sql, chargeCard, [{ order: -1 }, { order: -2 }])));
    const { traceId, spanId } = request.spanContext();
    const stored = await sql`SELECT DISTINCT trace_context FROM pgbg.task WHERE id IN ${sql(ids)}`;
    assert.deepEqual(stored.map((r) => r.trace_context), [`00-${traceId}-${spanId}-01`]);
    await drain(sql, { tasks: [chargeCard], logger: quiet });
    for (const id of ids) assert.equal(processSpans(id)[0]?.spanContext().traceId, traceId);
  });

  test("a thrown value that cannot be printed still ends its span, as an error, and the attempt fails as it would untraced", async () => {
    const unprintable = defineTask({
      name: "unprintable",
      schema: v.object({}),
      run() {
        throw { toString() { throw new Error("no"); } };
      },
    });
    const id = await enqueue(sql, unprintable, {}, { maxAttempts: 1 });
    assert.deepEqual(await drain(sql, { tasks: [unprintable], logger: quiet }), { ran: 1, succeeded: 0, failed: 1, scheduled: 0 });
    const span = exporter.getFinishedSpans().find((s) => s.name === "process unprintable" && s.attributes["messaging.message.id"] === id);
    assert.equal(span?.status.code, SpanStatusCode.ERROR);
    assert.equal(span?.attributes["pgbg.task.outcome"], "failure");
    assert.equal((await sql`SELECT state FROM pgbg.task WHERE id = ${id}`)[0]?.state, "failed");
  });

  test("a task enqueued outside any span stores no context, and its attempt starts a trace of its own", async () => {
    const id = await enqueue(sql, chargeCard, { order: -3 });
    assert.equal((await sql`SELECT trace_context FROM pgbg.task WHERE id = ${id}`)[0].trace_context, null);
    await drain(sql, { tasks: [chargeCard], logger: quiet });
    const [span] = processSpans(id);
    assert.ok(span, "the attempt has its span");
    assert.equal(parentId(span), undefined, "a root span");
    assert.deepEqual(span.links, []);
  });
});
