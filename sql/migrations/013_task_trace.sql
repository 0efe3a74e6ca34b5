-- 013_task_trace: the trace context active where a task was enqueued, so
-- that each of its attempts joins that trace (OpenTelemetry, when the
-- application has @opentelemetry/api). A W3C traceparent
-- (00-<trace id>-<span id>-<flags>), with the tracestate after a space
-- when there is one; NULL when no span was active or tracing is absent.
-- Nullable without a default, so adding it rewrites no row.
ALTER TABLE pgbg.task ADD COLUMN trace_context text;
