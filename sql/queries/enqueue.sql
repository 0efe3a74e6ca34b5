-- Statements that add tasks. Each runs as one prepared statement, in one
-- round trip. Payloads arrive as JSON text ($n::text::jsonb) so the client
-- sends the string it already validated instead of serialising it again.
-- run_at: an absolute time when given, else now() plus the delay in ms, so
-- delays are measured on the database's clock.

-- name: EnqueueTask
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts)
VALUES (
  $1, $2, $3::text::jsonb, $4,
  coalesce($5::timestamptz, now() + $6::float8 * interval '1 millisecond'),
  $7
)
RETURNING id;

-- name: EnqueueTaskKeyed
-- The arbiter is task_key_idx: a pending task with the same key makes this
-- insert nothing and return no row; the caller then looks the task up.
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, key)
VALUES (
  $1, $2, $3::text::jsonb, $4,
  coalesce($5::timestamptz, now() + $6::float8 * interval '1 millisecond'),
  $7, $8
)
ON CONFLICT (key) WHERE key IS NOT NULL AND state <> 'failed' DO NOTHING
RETURNING id;

-- name: EnqueueMany
-- $3 is a JSON array of payloads. Identity values are drawn in ORDER BY
-- order, so the returned ids, sorted, follow the order of the inputs.
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts)
SELECT $1, $2, i.payload, $4,
  coalesce($5::timestamptz, now() + $6::float8 * interval '1 millisecond'), $7
FROM jsonb_array_elements($3::text::jsonb) WITH ORDINALITY AS i (payload, ord)
ORDER BY i.ord
RETURNING id;

-- name: EnqueueManyKeyed
-- $8 holds one key per payload. A key that is already pending, or repeated
-- earlier in the same batch, inserts nothing; the caller looks those up.
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, key)
SELECT $1, $2, i.payload, $4,
  coalesce($5::timestamptz, now() + $6::float8 * interval '1 millisecond'), $7, i.key
FROM ROWS FROM (jsonb_array_elements($3::text::jsonb), unnest($8::text[]))
  WITH ORDINALITY AS i (payload, key, ord)
ORDER BY i.ord
ON CONFLICT (key) WHERE key IS NOT NULL AND state <> 'failed' DO NOTHING
RETURNING id, key;

-- name: PendingTaskIdsByKey
-- Uses task_key_idx: the pending task holding each key.
SELECT id, key FROM pgbg.task
WHERE key = ANY($1::text[]) AND state <> 'failed';
