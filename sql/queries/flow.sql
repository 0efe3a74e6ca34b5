-- Statements of flows and batches: tasks that wait for other tasks
-- (migration 014 says how they are stored and released).

-- name: ReserveTaskIds
-- $1 task ids drawn from the task table's own sequence, as one
-- comma-separated text: a flow's edges name its tasks before they are
-- inserted, so the insert writes each row once, complete.
-- The sequence's name is looked up once (an InitPlan): per row it cost
-- 4 µs, ten times the nextval.
SELECT string_agg(nextval((SELECT pg_get_serial_sequence('pgbg.task', 'id'))::regclass)::text, ',') AS ids
FROM generate_series(1, $1::int);

-- name: InsertFlow
-- A flow or batch ($1 kind, $2 policy when a parent fails, $3 its tasks'
-- count, $4 a batch's completion task, $5 and $6 a flow's task ids and its
-- edges as flat (parent, child) pairs, kept for getFlow; NULL for a flow of
-- more than 1,000 tasks, too large to draw).
INSERT INTO pgbg.flow (kind, on_parent_failure, size, then_id, task_ids, edges)
VALUES ($1, $2, $3, $4, $5::bigint[], $6::bigint[])
RETURNING id;

-- name: MarkPendingParents
-- The tasks among $1 that are pending (queued, waiting or running, their
-- cancel not asked), marked as having dependants. The update locks them
-- until the enqueue commits: a claim passes them by meanwhile, and the
-- statement that ends one waits, then finds the new dependants
-- (pgbg.task_settle_dependants). Locked in id order.
UPDATE pgbg.task t SET dependants = true
FROM (SELECT id FROM pgbg.task WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE) p
WHERE t.id = p.id AND t.state <> 'failed' AND t.cancel_requested_at IS NULL
RETURNING t.id;

-- name: SucceededParents
-- The tasks among $1 that succeeded and are still kept in the history: a
-- dependency on one is met already.
SELECT h.id FROM pgbg.history h
WHERE h.id = ANY($1::bigint[]) AND h.state = 'completed' AND h.expires_at > now();

-- name: EnqueueFlowTasks
-- The tasks of one flow or batch, with the ids ReserveTaskIds drew ($1),
-- one row per element of $1, $2 (each row's template, 1-based), $3 (the
-- payloads, JSON texts joined by line feeds, as EnqueueMany) and $4 (the
-- groups; empty when none has one). A template is what the tasks of one
-- definition enqueued alike share, one element of each of $5-$14: queues,
-- names, priorities, run_at (NULL: now plus $9 ms), max attempts,
-- versions, onFailed (1/0), and retentions in ms; so a flow of 100,000
-- tasks of a few definitions sends four arrays of its size, not fourteen.
-- $15 the trace context, $16 the flow. $17 and $18: the edges (parent,
-- child), $19 1 where the parent is still pending (an edge to wait on), 0
-- where it succeeded already. A task with an edge to wait on is
-- `waiting`, the others `queued`; a task that is a parent is marked. The
-- edges to wait on are inserted in the same statement. A batch has no
-- edges: $20 is its completion task, `waiting` for its $21 members, each
-- of which names it (batch_then); NULL for a flow.
WITH e AS (
  SELECT * FROM unnest($17::bigint[], $18::bigint[], $19::smallint[]) AS e (parent_id, child_id, pending)
),
per_child AS (
  SELECT child_id, array_agg(parent_id ORDER BY parent_id) AS parents, count(*) FILTER (WHERE pending = 1)::int AS waiting
  FROM e GROUP BY child_id
),
templates AS (
  SELECT * FROM ROWS FROM (unnest($5::text[]), unnest($6::text[]), unnest($7::smallint[]), unnest($8::timestamptz[]), unnest($9::float8[]),
      unnest($10::integer[]), unnest($11::integer[]), unnest($12::smallint[]), unnest($13::float8[]), unnest($14::float8[])) WITH ORDINALITY
    AS p (queue, name, priority, run_at, delay_ms, max_attempts, version, on_failed, keep_completed, keep_failed, n)
),
inserted AS (
  INSERT INTO pgbg.task (id, queue, name, payload, priority, run_at, max_attempts, input_version, on_failed, keep_completed, keep_failed,
    group_name, trace_context, flow_id, state, parent_ids, waiting_on, dependants, batch_then, staged_xact)
  OVERRIDING SYSTEM VALUE
  SELECT i.id, p.queue, p.name, i.payload::jsonb, p.priority,
    coalesce(p.run_at, now() + p.delay_ms * interval '1 millisecond'), p.max_attempts, p.version, p.on_failed = 1,
    p.keep_completed * interval '1 millisecond', p.keep_failed * interval '1 millisecond', i.group_name, $15, $16,
    CASE WHEN coalesce(c.waiting, 0) > 0 OR i.id = $20::bigint THEN 'waiting' ELSE 'queued' END::pgbg.task_state,
    c.parents, CASE WHEN i.id = $20::bigint THEN $21::int ELSE c.waiting END,
    CASE WHEN i.id IN (SELECT parent_id FROM e WHERE pending = 1) THEN true END,
    CASE WHEN i.id <> $20::bigint THEN $20::bigint END,
    {{Staged:coalesce(p.run_at, now() + p.delay_ms * interval '1 millisecond')}}
  FROM ROWS FROM (unnest($1::bigint[]), unnest($2::integer[]), string_to_table($3::text, E'\n'), unnest($4::text[]))
    AS i (id, template, payload, group_name)
  JOIN templates p ON p.n = i.template
  LEFT JOIN per_child c ON c.child_id = i.id
  ORDER BY i.id
  RETURNING id
),
edges AS (
  INSERT INTO pgbg.task_dependency (parent_id, child_id)
  SELECT parent_id, child_id FROM e WHERE pending = 1
  ORDER BY parent_id, child_id
  RETURNING parent_id
)
SELECT (SELECT count(*) FROM inserted)::int AS tasks, (SELECT count(*) FROM edges)::int AS edges;

-- name: ParentResults
-- The results of task $1's parents that succeeded and are kept (a parent
-- keeps its result for its result retention), in id order.
SELECT h.id, h.name, h.result FROM pgbg.history h
WHERE h.id = ANY ((SELECT t.parent_ids FROM pgbg.task t WHERE t.id = $1)::bigint[])
  AND h.state = 'completed' AND h.expires_at > now()
ORDER BY h.id;

-- name: BatchOutcome
-- What became of the members of the batch whose completion task is $1:
-- its size and the members that failed for good or were cancelled, in id
-- order (failed_parents holds them in the order they ended).
SELECT f.id, f.size, ARRAY(SELECT x FROM unnest(t.failed_parents) AS x ORDER BY x) AS failed_ids
FROM pgbg.task t JOIN pgbg.flow f ON f.id = t.flow_id AND f.then_id = t.id
WHERE t.id = $1;

-- name: GetFlow
-- Flow $1 and its tasks: those still in the queue (with the parents each
-- waits for) and those kept in the history.
SELECT f.id, f.kind, f.on_parent_failure, f.size, f.then_id, f.created_at, f.task_ids, f.edges,
  ARRAY(SELECT jsonb_build_object('id', t.id::text, 'name', t.name, 'queue', t.queue, 'state', t.state::text,
      'attempts', t.attempts, 'waitingOn', t.waiting_on, 'lastError', t.last_error, 'parents', t.parent_ids)
    FROM pgbg.task t WHERE t.flow_id = f.id ORDER BY t.id) AS queued,
  ARRAY(SELECT jsonb_build_object('id', h.id::text, 'name', h.name, 'queue', h.queue, 'state', h.state,
      'attempts', h.attempts, 'lastError', h.last_error, 'result', h.result)
    FROM pgbg.history h WHERE h.flow_id = f.id AND h.expires_at > now() ORDER BY h.id) AS kept
FROM pgbg.flow f
WHERE f.id = $1;

-- name: GetBatch
-- Batch $1 in numbers, without listing its members: those still pending
-- (in the queue, not failed, still counted: a member retried by hand after
-- it failed no longer is; through task_flow_idx), and its completion
-- task's row while it is in the queue, whose waiting_on and failed_parents
-- say how many members have not ended and which failed; else its kept end.
SELECT f.id, f.size, f.then_id, f.created_at,
  (SELECT count(*) FROM pgbg.task m WHERE m.flow_id = f.id AND m.batch_then = f.then_id AND m.state <> 'failed')::int AS pending,
  c.state::text AS then_state, ARRAY(SELECT x FROM unnest(c.failed_parents) AS x ORDER BY x) AS failed_parents,
  (SELECT h.state FROM pgbg.history h WHERE h.id = f.then_id AND h.expires_at > now() LIMIT 1) AS then_kept
FROM pgbg.flow f
LEFT JOIN pgbg.task c ON c.id = f.then_id
WHERE f.id = $1 AND f.kind = 'batch';

-- name: FlowTaskIds
-- The pending tasks of flow $1, for its cancel.
SELECT t.id FROM pgbg.task t WHERE t.flow_id = $1 AND t.state <> 'failed' ORDER BY t.id;

-- name: RescueBatchCompletions
-- The completion tasks of batches whose members all ended, but not all
-- counted (a worker of the previous release ends members with statements
-- that do not count them, during a rolling upgrade): queued, due now, told
-- the failed members still kept. A member whose end is being written is
-- still seen pending, and its statement counts it; a completion task that
-- statement released is no longer waiting when this re-reads it.
-- Read from pgbg.flow, which keeps a day of flows.
UPDATE pgbg.task c SET state = 'queued', run_at = now(), waiting_on = 0,
  failed_parents = ARRAY(SELECT DISTINCT x FROM unnest(coalesce(c.failed_parents, '{}') || ARRAY(
    SELECT m.id FROM pgbg.task m WHERE m.flow_id = f.id AND m.batch_then = c.id AND m.state = 'failed')) AS x ORDER BY x)
FROM pgbg.flow f
WHERE f.kind = 'batch' AND c.id = f.then_id AND c.state = 'waiting'
  AND NOT EXISTS (SELECT 1 FROM pgbg.task m WHERE m.flow_id = f.id AND m.batch_then = c.id AND m.state <> 'failed')
RETURNING c.id;

-- name: PruneFlows
-- Flows and batches older than a day of which nothing is left in the
-- queue or kept in the history, $1 at a time.
DELETE FROM pgbg.flow
WHERE ctid = ANY (ARRAY(
  SELECT f.ctid FROM pgbg.flow f
  WHERE f.created_at < now() - interval '1 day'
    AND NOT EXISTS (SELECT 1 FROM pgbg.task t WHERE t.flow_id = f.id)
    AND NOT EXISTS (SELECT 1 FROM pgbg.history h WHERE h.flow_id = f.id AND h.expires_at > now())
  LIMIT $1
))
RETURNING id;

-- name: RecentFlows
-- The newest $1 flows and batches, newest first, with how many of their
-- tasks are still in the queue and not failed.
SELECT f.id, f.kind, f.size, f.then_id, f.created_at,
  (SELECT count(*) FROM pgbg.task t WHERE t.flow_id = f.id AND t.state <> 'failed')::int AS pending
FROM pgbg.flow f
ORDER BY f.id DESC
LIMIT $1;
