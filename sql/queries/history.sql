-- Statements of the history: finished tasks kept for their retention, with
-- their results, in pgbg.history (migration 008 says how it is stored and
-- emptied), and the waiters told when a task they wait for ends.

-- fragment: KeepFinished
-- Copies each row of the CTE `finished` (id, state, queue, name, key,
-- attempts, enqueued_at, payload, last_error, errors, result, keep, flow_id,
-- completed_attempt, schedule) whose `keep` (an
-- interval) is set into the history's current slot, expiring after `keep`;
-- in the statement that ends the task, so a task is in one table or the
-- other, never both nor neither. Wakes the waiters of every finished row.
kept AS (
  INSERT INTO pgbg.history (id, slot, state, queue, name, key, attempts, enqueued_at, finished_at, expires_at, payload, last_error, errors, result, flow_id,
    completed_attempt, schedule)
  SELECT f.id, r.slot, f.state, f.queue, f.name, f.key, f.attempts, f.enqueued_at, now(), now() + f.keep, f.payload, f.last_error, f.errors, f.result, f.flow_id,
    f.completed_attempt, f.schedule
  FROM finished f CROSS JOIN pgbg.history_rotation r
  WHERE f.keep IS NOT NULL
  RETURNING id
),
{{WakeWaiters}}

-- fragment: CompletedAttempt
-- The attempt that completed a task being deleted (pgbg.task t), as the
-- history keeps it beside the failed ones' errors: its number, its worker,
-- its start (its claim, {{@}} ms since the epoch) and its end.
jsonb_build_object('attempt', t.attempts, 'worker', t.worker_id, 'startedAt', to_timestamp({{@}} / 1000.0), 'at', now())

-- fragment: CancelledColumns
-- A cancelled task as KeepFinished takes it (from a DELETE of pgbg.task t):
-- kept for its definition's retention of completed tasks, without result.
t.id, 'cancelled'::text AS state, t.queue, t.name, t.key, t.attempts, t.enqueued_at, t.payload, t.last_error, t.errors,
    NULL::jsonb AS result, t.keep_completed AS keep, t.flow_id, NULL::jsonb AS completed_attempt, t.schedule,
    -- A failed member was counted when it failed.
    CASE WHEN t.state <> 'failed' THEN t.batch_then END AS batch_then

-- fragment: WakeWaiters
-- Notifies the waiters (waitForResult) of the tasks of `finished`, on the
-- channel each listens on. Reads pgbg.result_waiter, empty while nobody
-- waits, so that a drain nobody waits on notifies nothing. The statement
-- reads `woken` so that it runs.
woken AS (
  SELECT pg_notify(w.channel, w.task_id::text) FROM pgbg.result_waiter w
  WHERE w.task_id IN (SELECT id FROM finished)
)

-- name: CompleteKeptTasks
-- Success of tasks that keep their history or a result: deleted from the
-- queue, as CompleteTasks does and fenced alike, and kept in pgbg.history
-- for $4 ms each, with the result $3 (JSON text; NULL for none), and the
-- attempt that succeeded (CompletedAttempt), claimed at $5 (ms since the
-- epoch). Only the attempt that holds the lease gets past the fence, so no
-- other attempt's result is ever stored. $1 ids, $2 lease tokens.
WITH sent AS MATERIALIZED (
  -- The result as its JSON text: a result of JSON null stays null, not SQL NULL.
  SELECT jsonb_object_agg({{SentKey:c.id, c.token}}, jsonb_build_array(c.token, c.result, c.keep_ms, c.claimed_ms)) AS by_id
  FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::float8[], $5::float8[]) AS c (id, token, result, keep_ms, claimed_ms)
),
finished AS (
  DELETE FROM pgbg.task t
  WHERE t.ctid = ANY (ARRAY(
    {{LeasedRowAddresses}}
  ))
    AND {{LeaseHeld}}
  RETURNING t.id, 'completed'::text AS state, t.queue, t.name, t.key, t.attempts, t.enqueued_at, t.payload, t.last_error, t.errors,
    {{Sent:1}}::jsonb AS result, {{Sent:2}}::float8 * interval '1 millisecond' AS keep, t.flow_id, t.batch_then,
    {{CompletedAttempt:{{Sent:3}}::float8}} AS completed_attempt, t.schedule
),
{{KeepFinished}},
{{CountBatch:false}}
SELECT id FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: CompleteClaimedKeptTasks
-- CompleteKeptTasks for tasks claim rows hold: each deleted while still its
-- claim's and the claim this worker's, as CompleteClaimedTasks deletes
-- them, and kept in the history as CompleteKeptTasks keeps them, the
-- attempt the claim row gave (its number one more than the row's count,
-- which a claim row's claim leaves as it was, and the claim's worker: as
-- CompletedAttempt says otherwise). $1 ids, $2 their claims' ids (each
-- once), $3 the worker; per id, $4 the result (JSON text or NULL), $5 the
-- retention in ms, $6 the claim (ms since the epoch). A claim row never
-- holds a batch member (pgbg.claim_lane).
WITH held AS MATERIALIZED (
  -- Read by the trigger that settles a flow's dependants (migration 027).
  SELECT c.*, set_config('pgbg_flow.ending', 'complete', true) AS ending FROM pgbg.claim c
  WHERE c.id = ANY ($2::bigint[]) AND c.worker_id = $3::uuid
),
sent AS MATERIALIZED (
  SELECT jsonb_object_agg(s.id::text, jsonb_build_array(s.result, s.keep_ms, s.claimed_ms)) AS by_id
  FROM unnest($1::bigint[], $4::text[], $5::float8[], $6::float8[]) AS s (id, result, keep_ms, claimed_ms)
),
finished AS (
  DELETE FROM pgbg.task t
  USING held c
  WHERE t.ctid = ANY (ARRAY(
    {{ClaimedRowAddresses}}
  ))
    AND {{InClaim}}
  RETURNING t.id, 'completed'::text AS state, t.queue, t.name, t.key, t.attempts + 1 AS attempts, t.enqueued_at, t.payload, t.last_error, t.errors,
    ((SELECT by_id FROM sent) -> t.id::text ->> 0)::jsonb AS result,
    ((SELECT by_id FROM sent) -> t.id::text ->> 1)::float8 * interval '1 millisecond' AS keep, t.flow_id,
    jsonb_build_object('attempt', t.attempts + 1, 'worker', c.worker_id,
      'startedAt', to_timestamp(((SELECT by_id FROM sent) -> t.id::text ->> 2)::float8 / 1000.0), 'at', now()) AS completed_attempt,
    t.schedule
),
{{KeepFinished}}
SELECT id FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) >= 0;

-- name: CompleteKeptTaskInTransaction
-- ctx.complete(tx) of a task that keeps its history or a result: the same
-- fenced delete as CompleteTaskInTransaction, and the copy into the
-- history, in the handler's own transaction. $1 id, $2 lease token, $3
-- result (JSON text or NULL), $4 retention in ms, $5 the attempt's claim
-- (ms since the epoch).
WITH finished AS (
  DELETE FROM pgbg.task t
  WHERE t.id = $1 AND t.lease_token = $2 AND t.state = 'running'
  RETURNING t.id, 'completed'::text AS state, t.queue, t.name, t.key, t.attempts, t.enqueued_at, t.payload, t.last_error, t.errors,
    $3::text::jsonb AS result, $4::float8 * interval '1 millisecond' AS keep, t.flow_id, t.batch_then,
    {{CompletedAttempt:$5::float8}} AS completed_attempt, t.schedule
),
{{KeepFinished}},
{{CountBatch:false}}
SELECT id FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: GetFinishedTask
-- A kept task by id ($1), until it expires: the primary key of each slot.
SELECT h.id, h.queue, h.name, h.state, h.attempts, h.key, h.enqueued_at, h.finished_at, h.expires_at, h.payload, h.last_error, h.result, h.flow_id, h.errors,
  h.completed_attempt, h.schedule
FROM pgbg.history h
WHERE h.id = $1 AND h.expires_at > now()
LIMIT 1;

-- fragment: FinishedTaskFilter
-- TaskFilter's filters on the tasks kept in the history, each NULL for any:
-- $1 state (completed or cancelled), $2 name, $9 the start of its name, $4
-- queue, $5 key, $6 and $7 the enqueue time; after the id $8 (NULL: from
-- the start).
WHERE h.id > coalesce($8::bigint, 0) AND h.expires_at > now()
  AND ($1::text IS NULL OR h.state = $1::text)
  AND ($2::text IS NULL OR h.name = $2::text)
  AND ($9::text IS NULL OR starts_with(h.name, $9::text))
  AND ($4::text IS NULL OR h.queue = $4::text)
  AND ($5::text IS NULL OR h.key = $5::text)
  AND ($6::timestamptz IS NULL OR h.enqueued_at >= $6::timestamptz)
  AND ($7::timestamptz IS NULL OR h.enqueued_at < $7::timestamptz)

-- name: ListFinishedTasks
-- One page of kept tasks in id order, at most $3, filtered by
-- FinishedTaskFilter. The slots' primary keys merged in id order, read
-- from where the last page ended.
SELECT h.id, h.queue, h.name, h.state, h.attempts, h.key, h.enqueued_at, h.finished_at, h.expires_at, h.payload, h.last_error, h.result, h.flow_id,
  h.schedule
FROM pgbg.history h
{{FinishedTaskFilter}}
ORDER BY h.id
LIMIT $3;

-- name: CountFinishedTasks
-- How many kept tasks FinishedTaskFilter keeps, up to $3 at most.
SELECT count(*)::int AS n FROM (
  SELECT 1 FROM pgbg.history h
  {{FinishedTaskFilter}}
  LIMIT $3
) counted;

-- name: RecentFinishedTasks
-- The newest $1 tasks kept in the history in state $2, newest first: the
-- slots' primary keys read backwards, merged.
SELECT h.id, h.queue, h.name, h.state, h.attempts, h.key, h.enqueued_at, h.finished_at, h.expires_at, h.payload, h.last_error, h.result, h.flow_id,
  h.schedule
FROM pgbg.history h
WHERE h.state = $2 AND h.expires_at > now()
ORDER BY h.id DESC
LIMIT $1;

-- name: AddResultWaiter
-- A waitForResult call: notify channel $2 when task $1 ends.
INSERT INTO pgbg.result_waiter (task_id, channel) VALUES ($1, $2);

-- name: RemoveResultWaiter
-- The end of a waitForResult call (one of its rows; a second waiter of the
-- same task on the same channel keeps the other).
DELETE FROM pgbg.result_waiter
WHERE ctid = (SELECT ctid FROM pgbg.result_waiter WHERE task_id = $1 AND channel = $2 LIMIT 1);

-- name: HistoryRotation
-- The slot finished tasks go into, how long ago it became the current one
-- (ms), and the other slots that hold rows.
SELECT r.slot, extract(epoch FROM now() - r.since) * 1000 AS age_ms,
  ARRAY(SELECT s FROM generate_series(0, 7) AS s
        WHERE s <> r.slot AND EXISTS (SELECT 1 FROM pgbg.history h WHERE h.slot = s)) AS filled
FROM pgbg.history_rotation r;

-- name: RotateHistory
-- Moves the current slot from $1 to the next empty one after it, skipping
-- slots that still hold rows (a long retention keeps its slot, not the
-- rotation); none empty: it stays. Another host that moved it first makes
-- this change nothing.
UPDATE pgbg.history_rotation r SET slot = n.s, since = now()
FROM (
  SELECT (($1 + g.i) % 8)::smallint AS s FROM generate_series(1, 7) AS g (i)
  WHERE NOT EXISTS (SELECT 1 FROM pgbg.history h WHERE h.slot = ($1 + g.i) % 8)
  ORDER BY g.i
  LIMIT 1
) n
WHERE r.slot = $1
RETURNING r.slot;

-- name: EmptyHistorySlot
-- Truncates slot $1 if all its rows expired (pgbg.empty_history_slot).
SELECT pgbg.empty_history_slot($1) AS emptied;

-- name: PruneResultWaiters
-- Waiters older than a day: their process died without removing its row.
DELETE FROM pgbg.result_waiter WHERE since < now() - interval '1 day';

-- name: PruneKeyHolds
-- Key holds (pgbg.task_key) that ended: an enqueue treats them as absent.
-- A hold still running, or waiting for its task's finish (NULL), stays.
DELETE FROM pgbg.task_key WHERE held_until < now();

-- name: PruneFailedTasks
-- Deletes failed tasks older than their retention: the one their
-- definition gave at enqueue (keep_failed), else $1 ms (NULL: kept for
-- ever). At most $2 at a time, through task_failed_idx.
DELETE FROM pgbg.task
WHERE ctid = ANY (ARRAY(
  SELECT t.ctid FROM pgbg.task t
  WHERE t.state = 'failed'
    AND t.failed_at < now() - coalesce(t.keep_failed, $1::float8 * interval '1 millisecond')
  ORDER BY t.failed_at
  LIMIT $2
))
  AND state = 'failed'
RETURNING id;
