/**
 * OpenTelemetry, when the application has `@opentelemetry/api` (an optional
 * peer dependency, loaded on first use and never required): the trace
 * context active at an enqueue is stored with the task (a W3C traceparent),
 * and each attempt runs in a consumer span whose parent is that context and
 * which links to it, so the enqueuing request, every attempt and every retry
 * are one trace. Without the package nothing is loaded and nothing is
 * stored; without a registered SDK the API's spans are no-ops.
 *
 * Spans follow OpenTelemetry's messaging conventions: `process <task name>`,
 * kind CONSUMER, with `messaging.system` "pgbg", `messaging.operation.type`
 * "process", `messaging.destination.name` (the queue) and
 * `messaging.message.id` (the task id), plus `pgbg.task.name`,
 * `pgbg.task.attempt` and `pgbg.task.outcome` ("success", "failure",
 * "timeout", "permanent-failure" or "snooze").
 *
 * @module
 */
import { VERSION } from "./version.ts";

// The parts of @opentelemetry/api pgbg uses, declared here so that neither
// the build nor an application's type check needs the package.
interface SpanContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote?: boolean;
  traceState?: { serialize(): string };
}
interface Span {
  isRecording(): boolean;
  spanContext(): SpanContext;
  setAttribute(key: string, value: string | number): unknown;
  recordException(exception: unknown): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}
type Context = unknown;
interface Api {
  context: { active(): Context; with<T>(context: Context, fn: () => T): T };
  trace: {
    getSpanContext(context: Context): SpanContext | undefined;
    setSpanContext(context: Context, spanContext: SpanContext): Context;
    setSpan(context: Context, span: Span): Context;
    getTracer(name: string, version?: string): {
      startSpan(name: string, options: { kind: number; links?: { context: SpanContext }[]; attributes: Record<string, string | number> }, context?: Context): Span;
    };
  };
  isSpanContextValid(spanContext: SpanContext): boolean;
  createTraceState(raw?: string): { serialize(): string };
  ROOT_CONTEXT: Context;
  SpanKind: { CONSUMER: number };
  SpanStatusCode: { ERROR: number };
}

/** The API once loaded; null when the package is absent; undefined before the first try. */
let api: Api | null | undefined;
let loading: Promise<void> | undefined;

// A name in a variable: neither TypeScript, nor Deno's or JSR's module graph,
// nor a bundler goes looking for an optional package that may be absent.
const API_PACKAGE = "@opentelemetry/api";

/** Loads `@opentelemetry/api` once, if the application has it. */
export function loadTracing(): Promise<void> {
  loading ??= import(API_PACKAGE).then(
    // The namespace holds the whole API; its default export (in ESM) only the main objects.
    (module) => void (api = (typeof (module as Partial<Api>).isSpanContextValid === "function" ? module : module.default) as Api),
    () => void (api = null),
  );
  return loading;
}

/**
 * The trace context active now, as stored with a task (traceparent, then
 * the tracestate after a space), or null: at once once the API's load was
 * tried, else (the first call) as a promise.
 */
export function activeTraceContext(): string | null | Promise<string | null> {
  if (api === undefined) return loadTracing().then(() => activeTraceContext() as string | null);
  if (!api) return null;
  const span = api.trace.getSpanContext(api.context.active());
  if (!span || !api.isSpanContextValid(span)) return null;
  const parent = `00-${span.traceId}-${span.spanId}-${(span.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
  const state = span.traceState?.serialize();
  return state ? `${parent} ${state}` : parent;
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?: (.+))?$/;

/** The span context a stored trace context names, or undefined for none (or one that does not parse). */
function storedSpanContext(a: Api, stored: string | null): SpanContext | undefined {
  const m = stored ? TRACEPARENT.exec(stored) : null;
  if (!m) return undefined;
  const context: SpanContext = { traceId: m[1], spanId: m[2], traceFlags: parseInt(m[3], 16), isRemote: true };
  if (m[4]) context.traceState = a.createTraceState(m[4]);
  return a.isSpanContextValid(context) ? context : undefined;
}

/** What an attempt needs of the task it runs, for its span. */
export interface TracedTask {
  id: string;
  name: string;
  queue: string;
  attempt: number;
  traceContext: string | null;
}

/** How an attempt ended, for its span. */
export type TracedOutcome = "success" | "failure" | "timeout" | "permanent-failure" | "snooze";

/** An attempt's span: `run` runs the attempt in it, `end` ends it with the attempt's outcome. */
export interface AttemptSpan {
  run<T>(fn: () => T): T;
  end(outcome: TracedOutcome, error?: unknown): void;
}

/** An attempt run as it is, its span a no-op that needs no ending. */
const UNTRACED: AttemptSpan = { run: (fn) => fn(), end() {} };

/** Starts the span of an attempt of `task`; undefined when tracing is absent (or not loaded yet). */
export function startAttemptSpan(task: TracedTask): AttemptSpan | undefined {
  const a = api;
  if (!a) return undefined;
  const stored = storedSpanContext(a, task.traceContext);
  const parent = stored ? a.trace.setSpanContext(a.ROOT_CONTEXT, stored) : a.context.active();
  const span = a.trace.getTracer("pgbg", VERSION).startSpan(`process ${task.name}`, {
    kind: a.SpanKind.CONSUMER,
    links: stored ? [{ context: stored }] : undefined,
    attributes: {
      "messaging.system": "pgbg",
      "messaging.operation.type": "process",
      "messaging.operation.name": "process",
      "messaging.destination.name": task.queue,
      "messaging.message.id": task.id,
      "pgbg.task.name": task.name,
      "pgbg.task.attempt": task.attempt,
    },
  }, parent);
  // The API's no-op span, with no trace to carry (no SDK, and no stored or
  // active parent): running the attempt in a context of its own would
  // change nothing a handler can see, and cost two context copies per
  // attempt (5 % of a worker's CPU in a drain with the API installed).
  if (!span.isRecording() && !a.isSpanContextValid(span.spanContext())) return UNTRACED;
  const inSpan = a.trace.setSpan(parent, span);
  return {
    run: (fn) => a.context.with(inSpan, fn),
    end(outcome, error) {
      try {
        span.setAttribute("pgbg.task.outcome", outcome);
        if (outcome !== "success" && outcome !== "snooze") {
          span.setStatus({ code: a.SpanStatusCode.ERROR, message: error instanceof Error ? error.message : undefined });
          // A thrown value may be anything, even one whose String() throws:
          // the span then goes without it, and the attempt's outcome stands.
          if (error !== undefined) span.recordException(error instanceof Error ? error : String(error));
        }
      } catch {
        // see above
      }
      span.end();
    },
  };
}
