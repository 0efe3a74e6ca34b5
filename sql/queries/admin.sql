-- Statements of the operators' commands (`pgbg status`, `list`, `retry`,
-- `cancel`), the dashboard and the metrics. They read the whole task table
-- at most once per call: fine for a person or a scraper asking every few
-- seconds, not meant for a hot path.

-- name: TaskStatus
-- Per queue and task name: tasks by state (queued ones split into due and
-- scheduled), the age of the oldest due task, and the outcomes of about the
-- last minute (task_count periods that started in the last 60 s). A task a
-- claim row holds is running: counted once per call (HeldCounts) and moved
-- from the queued to the running, not probed per task. The oldest due task
-- may be one a claim row holds: with claim rows on, the age of the oldest
-- due task not finished yet, and none when claim rows hold every due task.
WITH {{HeldCounts}},
tasks AS (
  SELECT queue, name,
    count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS queued,
    count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
    count(*) FILTER (WHERE state = 'running') AS running,
    count(*) FILTER (WHERE state = 'failed') AS failed,
    min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now()) AS oldest_due
  FROM pgbg.task
  WHERE cancel_requested_at IS NULL OR state = 'running'
  GROUP BY queue, name
),
counts AS (
  SELECT queue, name, sum(completed) AS completed, sum(failed) AS failed, sum(retried) AS retried
  FROM pgbg.task_count
  WHERE period >= now() - interval '60 seconds'
  GROUP BY queue, name
)
SELECT coalesce(t.queue, c.queue) AS queue, coalesce(t.name, c.name) AS name,
  (coalesce(t.queued, 0) - coalesce(h.queued, 0))::int AS queued, coalesce(t.scheduled, 0)::int AS scheduled,
  (coalesce(t.running, 0) + coalesce(h.running, 0))::int AS running, coalesce(t.failed, 0)::int AS failed,
  CASE WHEN coalesce(t.queued, 0) > coalesce(h.queued, 0) THEN (extract(epoch FROM now() - t.oldest_due) * 1000)::float8 END AS oldest_queued_ms,
  coalesce(c.completed, 0)::int AS completed_last_minute,
  coalesce(c.failed, 0)::int AS failed_last_minute,
  coalesce(c.retried, 0)::int AS retried_last_minute
FROM tasks t FULL JOIN counts c ON c.queue = t.queue AND c.name = t.name
LEFT JOIN held h ON h.queue = t.queue AND h.name = t.name
ORDER BY 1, 2;

-- name: UnregisteredTasks
-- Waiting tasks whose name no live worker registered: no worker will run
-- them until one that knows the name starts.
SELECT t.queue, t.name, count(*)::int AS tasks
FROM pgbg.task t
WHERE t.state = 'queued'
  AND NOT EXISTS (SELECT 1 FROM pgbg.worker w WHERE t.name = ANY(w.tasks))
GROUP BY t.queue, t.name
ORDER BY 1, 2;

-- name: WorkerStatus
-- Live workers, their heartbeats and how many tasks each holds, by a lease
-- of its own or a claim row (the claim rows' stretches, one range each: a
-- lateral join whose OFFSET keeps it from being flattened into a read of
-- the whole table).
SELECT w.id, w.supervisor_id, w.pid, w.hostname, w.runtime, w.concurrency, w.queues, w.tasks, w.idle,
  w.started_at, w.heartbeat_at,
  -- now() is this statement's transaction start; a heartbeat committed
  -- since can be a little later.
  greatest(extract(epoch FROM now() - w.heartbeat_at) * 1000, 0)::float8 AS heartbeat_age_ms,
  ((SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.worker_id = w.id)
    + (SELECT count(*) FROM pgbg.claim c
       CROSS JOIN LATERAL (SELECT FROM pgbg.task t WHERE {{ClaimStretch}} OFFSET 0) t
       WHERE c.worker_id = w.id))::int AS running
FROM pgbg.worker w
ORDER BY w.started_at, w.id;

-- fragment: TaskColumns
-- A task as the admin API shows it: `scheduled` is a queued task not due
-- yet; one a claim row holds is running, its worker the claim's, and its
-- attempt counted (IsHeld). Its value: more columns (GetTask adds the
-- errors, which lists leave out).
SELECT t.id, t.queue, t.name,
  CASE WHEN t.state = 'queued' AND t.run_at > now() THEN 'scheduled' WHEN {{IsHeld}} THEN 'running' ELSE t.state::text END AS state,
  t.attempts + CASE WHEN {{IsHeld}} THEN 1 ELSE 0 END AS attempts, t.max_attempts, t.priority, t.key, t.run_at, t.enqueued_at, t.failed_at,
  coalesce(t.worker_id, {{ClaimWorker}}) AS worker_id, t.cancel_requested_at, t.last_error, t.payload, t.snoozes, t.input_version, t.group_name, t.flow_id, t.schedule{{@}}
FROM pgbg.task t

-- name: GetTask
-- One task by id ($1), by primary key; no row for an id the table does not
-- hold, or a cancelled task that is no longer running (it is being deleted).
{{TaskColumns:, t.errors}}
WHERE t.id = $1 AND (t.cancel_requested_at IS NULL OR t.state = 'running' OR {{IsHeld}});

-- fragment: TaskFilter
-- The admin API's filters on the queue's tasks, each NULL for any: $1 state
-- (queued: due now; scheduled: queued for later; running; failed; waiting:
-- for other tasks), $2 task name, $9 the start of its name, $4 queue, $5
-- dedup key, $6 and $7 the enqueue time from (inclusive) and to
-- (exclusive); and after the id $8 (NULL: from the start). A task a claim
-- row holds is running (IsHeld). The start is a
-- coalesce, not `$8 IS NULL OR`: a prepared statement's generic plan
-- cannot start an index scan at an OR, and would read every page from the
-- first task. Each optional filter is a CASE, not `$2 IS NULL OR`: a
-- generic plan takes `$2 IS NULL` to hold for 0.5 % of the rows, and with
-- six such filters it expected one row of 50,000. Once the table's ids no
-- longer follow its physical order (free space reused after a vacuum), it
-- then sorted a sequential scan rather than read a page of the primary
-- key (bench/RESULTS.md, "listTasks' generic plan"). A cancelled task that
-- is no longer running is being deleted.
WHERE (t.cancel_requested_at IS NULL OR t.state = 'running' OR {{IsHeld}})
  AND t.id > coalesce($8::bigint, 0)
  AND CASE WHEN $2::text IS NULL THEN true ELSE t.name = $2::text END
  AND CASE WHEN $9::text IS NULL THEN true ELSE starts_with(t.name, $9::text) END
  AND CASE WHEN $4::text IS NULL THEN true ELSE t.queue = $4::text END
  AND CASE WHEN $5::text IS NULL THEN true ELSE t.key = $5::text END
  AND CASE WHEN $6::timestamptz IS NULL THEN true ELSE t.enqueued_at >= $6::timestamptz END
  AND CASE WHEN $7::timestamptz IS NULL THEN true ELSE t.enqueued_at < $7::timestamptz END
  AND CASE $1::text
    WHEN 'queued' THEN t.state = 'queued' AND t.run_at <= now() AND NOT {{IsHeld}}
    WHEN 'scheduled' THEN t.state = 'queued' AND t.run_at > now()
    WHEN 'running' THEN t.state = 'running' OR {{IsHeld}}
    WHEN 'failed' THEN t.state = 'failed'
    WHEN 'waiting' THEN t.state = 'waiting'
    ELSE true
  END

-- name: ListTasks
-- One page of tasks in id order (enqueue order), at most $3, filtered by
-- TaskFilter. A page reads the primary key from where the last one ended
-- (keyset, not OFFSET), so a deep page costs what the first does.
{{TaskColumns:}}
{{TaskFilter}}
ORDER BY t.id
LIMIT $3;

-- name: ListFailedTasks
-- ListTasks for $1 = 'failed': the literal state lets the planner read
-- task_failed_list_idx (id WHERE state = 'failed'), so that a page reads a
-- page of entries however many other tasks come before it.
{{TaskColumns:}}
{{TaskFilter}}
  AND t.state = 'failed'
ORDER BY t.id
LIMIT $3;

-- name: CountFailedTasks
-- CountTasks for $1 = 'failed', through task_failed_list_idx.
SELECT count(*)::int AS n FROM (
  SELECT 1 FROM pgbg.task t
  {{TaskFilter}}
    AND t.state = 'failed'
  LIMIT $3
) counted;

-- name: CountTasks
-- How many tasks TaskFilter keeps, counted up to $3 at most: a count on a
-- deep queue reads every row it counts, so the dashboard's stops early.
SELECT count(*)::int AS n FROM (
  SELECT 1 FROM pgbg.task t
  {{TaskFilter}}
  LIMIT $3
) counted;

-- name: RetryFailedTasks
-- Queues failed tasks again, due now, with their attempts and snoozes reset (a retried
-- task gets all its attempts again; last_error stays until the next one).
-- $1 ids, or NULL for every failed task; $2 task name or NULL. A task whose
-- key another pending task holds now is left failed (task_key_idx). A
-- batch member was counted as failed by its batch: retried, it is no
-- longer its member (its end is not counted twice).
UPDATE pgbg.task t SET state = 'queued', run_at = now(), failed_at = NULL, attempts = 0, snoozes = 0, batch_then = NULL
WHERE t.state = 'failed' AND t.cancel_requested_at IS NULL
  -- A task failed by its flow's policy (a parent failed) stays failed: run
  -- again, it would run without that parent.
  AND (t.last_error IS NULL OR t.last_error->>'code' IS DISTINCT FROM 'PGBG_PARENT_FAILED')
  AND ($1::bigint[] IS NULL OR t.id = ANY($1::bigint[]))
  AND ($2::text IS NULL OR t.name = $2::text)
  AND (t.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM pgbg.task p WHERE p.key = t.key AND p.state <> 'failed'
  ))
RETURNING t.id;

-- name: CancelTasks
-- Deletes the given tasks that are queued or failed (keeping those that keep
-- their history as cancelled); marks the running ones, a claim row's
-- among them (their worker aborts the attempt at its next heartbeat and
-- deletes the task when the attempt ends). A task that changed state
-- during the call is in neither result; the caller asks again. Run after
-- LockTaskLanes, in its transaction: a claim by claim rows reads its
-- tasks without locking them, and one deleted under it would still run.
WITH finished AS (
  DELETE FROM pgbg.task t WHERE t.id = ANY($1::bigint[]) AND t.state <> 'running' AND NOT {{IsHeld}}
  RETURNING {{CancelledColumns}}
),
{{KeepFinished}},
{{CountBatch:true}},
deleted AS (
  SELECT id, 'deleted'::text AS outcome FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0
),
signalled AS (
  UPDATE pgbg.task t SET cancel_requested_at = coalesce(t.cancel_requested_at, now())
  WHERE t.id = ANY($1::bigint[]) AND (t.state = 'running' OR {{IsHeld}})
  RETURNING t.id, 'signalled'::text AS outcome
)
SELECT id, outcome FROM deleted
UNION ALL
SELECT id, outcome FROM signalled;

-- name: LockTaskLanes
-- Takes the lane lock (LaneLock) of each lane the queued tasks $1 are in,
-- in lane order, so that two callers cannot deadlock: run first in the
-- transaction of a write that must know whether a claim row holds a task
-- (CancelTasks), whose statement then reads a snapshot taken after every
-- claim of those lanes in flight has committed.
SELECT count(*) FROM (
  SELECT {{LaneLock:l.queue, l.name, l.priority}} FROM (
    SELECT DISTINCT t.queue, t.name, t.priority FROM pgbg.task t
    WHERE t.id = ANY ($1::bigint[]) AND t.state = 'queued' AND t.group_name IS NULL
    ORDER BY 1, 2, 3
  ) l
) locked;

-- name: Activity
-- Each of the last $1 minutes, the current one last, of one queue ($2) and
-- task name ($3) or of all when null: outcomes and start-latency buckets
-- summed over the minute's 10-second periods (task_count), and the depth
-- sample (task_depth; without filters its totals' row, queue ''), and
-- whether a host sampled the minute at all. Each part reads a range of its
-- table's primary key: 24 hours are about 8,640 periods per queue and task
-- name.
WITH minutes AS (
  SELECT generate_series(date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute', date_trunc('minute', now()), interval '1 minute') AS minute
),
counts AS (
  SELECT date_trunc('minute', period) AS minute,
    sum(completed)::int AS completed, sum(failed)::int AS failed, sum(retried)::int AS retried
  FROM pgbg.task_count
  WHERE period >= (SELECT min(minute) FROM minutes) AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR name = $3)
  GROUP BY 1
),
lags AS (
  SELECT minute, array_agg(n ORDER BY i) AS lag
  FROM (
    SELECT date_trunc('minute', c.period) AS minute, b.i, sum(b.n)::int AS n
    FROM pgbg.task_count c, unnest(c.lag) WITH ORDINALITY AS b (n, i)
    WHERE c.period >= (SELECT min(minute) FROM minutes) AND ($2::text IS NULL OR c.queue = $2) AND ($3::text IS NULL OR c.name = $3)
    GROUP BY 1, 2
  ) buckets
  GROUP BY minute
),
depth AS (
  SELECT minute, sum(queued)::int AS queued, sum(scheduled)::int AS scheduled, sum(running)::int AS running
  FROM pgbg.task_depth
  WHERE minute >= (SELECT min(minute) FROM minutes)
    AND CASE WHEN $2::text IS NULL AND $3::text IS NULL THEN queue = ''
      ELSE queue <> '' AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR name = $3) END
  GROUP BY minute
),
sampled AS (
  SELECT minute FROM pgbg.task_depth WHERE minute >= (SELECT min(minute) FROM minutes) AND queue = ''
)
SELECT m.minute, coalesce(c.completed, 0) AS completed, coalesce(c.failed, 0) AS failed, coalesce(c.retried, 0) AS retried,
  l.lag, s.minute IS NOT NULL AS sampled,
  coalesce(d.queued, 0) AS queued, coalesce(d.scheduled, 0) AS scheduled, coalesce(d.running, 0) AS running
FROM minutes m
LEFT JOIN counts c USING (minute) LEFT JOIN lags l USING (minute) LEFT JOIN depth d USING (minute) LEFT JOIN sampled s USING (minute)
ORDER BY m.minute;
