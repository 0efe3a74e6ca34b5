-- Statements that add tasks. Each runs as one prepared statement, in one
-- round trip. Payloads arrive as JSON text (cast to jsonb here) so the client
-- sends the string it already validated instead of serialising it again.
-- run_at: an absolute time when given, else now() plus the delay in ms, so
-- delays are measured on the database's clock.
-- staged_xact: the enqueue's transaction for a task due at once, none for
-- one not yet due (Staged).

-- fragment: EnqueueRunAt
-- The run_at of an enqueued task: $5 when given, else now() plus $6 ms.
coalesce($5::timestamptz, now() + $6::float8 * interval '1 millisecond')

-- fragment: Staged
-- The staged_xact of a queued task whose run_at is `{{@}}`: the writing
-- transaction when it is due now, NULL (not staged) when it is not yet due
-- (migration 025).
CASE WHEN {{@}} <= now() THEN pg_current_xact_id() END

-- fragment: Once
-- `{{@}}`, a value of the statement's parameters alone, worked out once per
-- statement (a scalar sub-select of no table is an InitPlan) instead of
-- once per row: in the batch inserts the run time, the staging and the
-- retentions were half a dozen function calls a row, about 4 % of the
-- insert's time (bench/RESULTS.md, "The lane index keyed by a hash").
(SELECT {{@}})

-- name: EnqueueTask
-- $8: the task definition's version (input_version); $9: whether it has an
-- onFailed handler; $10 and $11: its retentions of completed and failed
-- tasks in ms (keep_completed, keep_failed; NULL: none set); $12: the
-- task's group (group_name; NULL: none); $13: the trace context active at
-- the enqueue, as a W3C traceparent (trace_context; NULL: none).
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed, group_name, trace_context, staged_xact)
VALUES (
  $1, $2, $3::text::jsonb, $4,
  {{EnqueueRunAt}},
  $7, $8, $9, $10::float8 * interval '1 millisecond', $11::float8 * interval '1 millisecond', $12, $13,
  {{Staged:{{EnqueueRunAt}}}}
)
RETURNING id;

-- name: EnqueueTaskKeyed
-- $1-$13 as in EnqueueTask, $14 the key. The arbiter is task_key_idx: a
-- pending task with the same key makes this insert nothing and return no
-- row; the caller then looks the task up.
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed, group_name, trace_context, key, staged_xact)
VALUES (
  $1, $2, $3::text::jsonb, $4,
  {{EnqueueRunAt}},
  $7, $8, $9, $10::float8 * interval '1 millisecond', $11::float8 * interval '1 millisecond', $12, $13, $14,
  {{Staged:{{EnqueueRunAt}}}}
)
ON CONFLICT (key) WHERE key IS NOT NULL AND state <> 'failed' DO NOTHING
RETURNING id;

-- name: EnqueueMany
-- $3 holds the payloads' JSON texts joined by line feeds. JSON text never
-- holds a raw line feed (JSON.stringify escapes every control character), so
-- splitting on it yields the payloads, which are cast one by one: cheaper on
-- the server than casting one large JSON array (bench/RESULTS.md, "Enqueue at
-- batch sizes"). Identity values are drawn in ORDER BY order (the ordinality,
-- which the scan already follows, so there is no sort): the returned ids,
-- sorted, follow the order of the inputs. They come back as one
-- comma-separated text, one row instead of one per task. $12 holds one
-- group per payload (NULL: none), or is empty when none has one; $13 the
-- trace context, one for the batch.
WITH inserted AS (
  INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed, group_name, trace_context, staged_xact)
  SELECT $1, $2, i.payload::jsonb, $4,
    {{Once:{{EnqueueRunAt}}}}, $7, $8, $9,
    {{Once:$10::float8 * interval '1 millisecond'}}, {{Once:$11::float8 * interval '1 millisecond'}}, i.group_name, $13,
    {{Once:{{Staged:{{EnqueueRunAt}}}}}}
  FROM ROWS FROM (string_to_table($3::text, E'\n'), unnest($12::text[])) WITH ORDINALITY AS i (payload, group_name, ord)
  ORDER BY i.ord
  RETURNING id
)
SELECT string_agg(id::text, ',') AS ids FROM inserted;

-- name: EnqueueManyKeyed
-- $3, $12 and $13 as in EnqueueMany; $14 holds one key per payload. A key that is already
-- pending, or repeated earlier in the same batch, inserts nothing; the caller
-- looks those up.
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed, group_name, trace_context, key, staged_xact)
SELECT $1, $2, i.payload::jsonb, $4,
  {{Once:{{EnqueueRunAt}}}}, $7, $8, $9,
  {{Once:$10::float8 * interval '1 millisecond'}}, {{Once:$11::float8 * interval '1 millisecond'}}, i.group_name, $13, i.key,
  {{Once:{{Staged:{{EnqueueRunAt}}}}}}
FROM ROWS FROM (string_to_table($3::text, E'\n'), unnest($12::text[]), unnest($14::text[]))
  WITH ORDINALITY AS i (payload, group_name, key, ord)
ORDER BY i.ord
ON CONFLICT (key) WHERE key IS NOT NULL AND state <> 'failed' DO NOTHING
RETURNING id, key;

-- name: EnqueueTaskWindowed
-- A key held for a window (throttle): the key's row in pgbg.task_key is
-- taken first, on its primary key, when it is new or its hold ended, and
-- the task is inserted only then. $1-$13 as in EnqueueTask, $14 the key,
-- $15 the window in ms, $16 1 when it runs from the task's finish (the row
-- then holds until the finish, and key_hold carries the window), 0 from
-- now. The hold is judged on the row's latest version (a concurrent
-- enqueue that took it is waited for), never on this statement's
-- snapshot. Before trying, the statement looks on its snapshot whether
-- the key is held, or pending without a window (EnqueueTaskKeyed's case),
-- and then does not try: a refused enqueue takes no lock on the key's row,
-- which the finish of its task (task_key_release) must update.
WITH taken AS (
  INSERT INTO pgbg.task_key AS k (key, held_until)
  SELECT $14, CASE WHEN $16::int = 0 THEN now() + $15::float8 * interval '1 millisecond' END
  WHERE NOT EXISTS (SELECT 1 FROM pgbg.task p WHERE p.key = $14 AND p.state <> 'failed')
    AND NOT EXISTS (SELECT 1 FROM pgbg.task_key h WHERE h.key = $14 AND (h.held_until IS NULL OR h.held_until > now()))
  ON CONFLICT (key) DO UPDATE SET held_until = excluded.held_until, task_id = NULL
  WHERE k.held_until <= now()
  RETURNING k.key
)
INSERT INTO pgbg.task (queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed, group_name, trace_context, key, key_hold, staged_xact)
SELECT $1, $2, $3::text::jsonb, $4,
  {{EnqueueRunAt}},
  $7, $8, $9, $10::float8 * interval '1 millisecond', $11::float8 * interval '1 millisecond', $12, $13, $14,
  CASE WHEN $16::int = 1 THEN $15::float8 * interval '1 millisecond' END,
  {{Staged:{{EnqueueRunAt}}}}
FROM taken
ON CONFLICT (key) WHERE key IS NOT NULL AND state <> 'failed' DO NOTHING
RETURNING id;

-- name: SetKeyTask
-- Names task $2 as the one that took key $1 (what a refused enqueue returns).
UPDATE pgbg.task_key SET task_id = $2 WHERE key = $1 AND task_id IS NULL;

-- name: KeyHolder
-- The task that took key $1 last, while its hold lasts.
SELECT task_id FROM pgbg.task_key
WHERE key = $1 AND task_id IS NOT NULL AND (held_until IS NULL OR held_until > now());

-- name: ReplaceQueuedTask
-- replace (debounce): the queued task holding key $1 gets this enqueue's
-- input ($2, JSON text), run time ($3 absolute, else now plus $4 ms),
-- priority ($5), version ($6) and group ($9), if it is a task of the same name ($7)
-- and queue ($8) whose cancel nobody asked. A running task is left as it
-- is, one a claim row holds among them (IsHeld); so is one of another
-- name, whose input this one is not. A claim by claim rows that reads the
-- task while this statement runs can still take its old input, the
-- replace then restaging it for a later claim: the lane's lock would close
-- that gap, and is not taken here, in the caller's transaction, where it
-- would hold the lane's claims until that transaction ends
-- (docs/storage.md, "The readers of running").
UPDATE pgbg.task t SET payload = $2::text::jsonb,
  run_at = coalesce($3::timestamptz, now() + $4::float8 * interval '1 millisecond'),
  priority = $5, input_version = $6, group_name = $9
WHERE t.key = $1 AND t.state = 'queued' AND t.name = $7 AND t.queue = $8 AND t.cancel_requested_at IS NULL AND NOT {{IsHeld}}
RETURNING t.id;

-- name: PendingTaskIdsByKey
-- Uses task_key_idx: the pending task holding each key.
SELECT id, key FROM pgbg.task
WHERE key = ANY($1::text[]) AND state <> 'failed';
