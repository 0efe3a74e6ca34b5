-- Statements of queue controls: pause and resume, and a concurrency limit.
-- A paused queue keeps its tasks and takes enqueues; the claim skips it
-- (ClaimFromLanes).

-- name: PauseQueues
-- $1 queue names. A queue paused already keeps its first pause time.
INSERT INTO pgbg.queue (name, paused_at)
SELECT q, now() FROM unnest($1::text[]) AS q
ON CONFLICT (name) DO UPDATE SET paused_at = coalesce(pgbg.queue.paused_at, excluded.paused_at)
RETURNING name, paused_at;

-- name: ResumeQueues
-- $1 queue names, $2 the workers' wake-up channel. Sleeping workers are
-- woken, as by an enqueue, so the queue's due tasks start at once.
WITH resumed AS (
  UPDATE pgbg.queue SET paused_at = NULL WHERE name = ANY($1::text[]) AND paused_at IS NOT NULL RETURNING name
)
SELECT r.name FROM resumed r CROSS JOIN (SELECT pg_notify($2, '')) AS wake;

-- name: SetQueueConcurrency
-- $1 queue, $2 its limit (NULL: none), $3 the wake-up channel: workers
-- waiting at the old limit may start tasks under a higher one.
WITH set AS (
  INSERT INTO pgbg.queue (name, concurrency) VALUES ($1, $2::integer)
  ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency
  RETURNING name, paused_at, concurrency
)
SELECT s.name, s.paused_at, s.concurrency FROM set s CROSS JOIN (SELECT pg_notify($3, '')) AS wake;

-- name: QueueSettings
-- Every queue paused or limited, by name.
SELECT name, paused_at, concurrency FROM pgbg.queue WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL ORDER BY name;

-- name: LimitedQueues
-- The queues with a concurrency limit: a worker claims from them with the
-- limited claim (paused ones too, which QueueFreeSlots then finds paused:
-- so a resume needs no new read of this list).
SELECT name FROM pgbg.queue WHERE concurrency IS NOT NULL ORDER BY name;

-- name: LockLimitedQueue
-- $1 queue. Taken by the limited claim's transaction before it counts the
-- queue's running tasks: the limited claims of one queue run one at a
-- time, and each counts (in its next statement's snapshot) every task the
-- ones before it claimed. The key's first half marks pgbg's queue locks.
SELECT pg_advisory_xact_lock(hashtext('pgbg.queue'), hashtext($1));

-- name: QueueFreeSlots
-- $1 queue: its limit less its running tasks (found through
-- task_lease_idx, which holds every running task), or NULL when it has no
-- limit any more or is paused.
SELECT CASE WHEN q.paused_at IS NULL THEN q.concurrency - (SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.queue = q.name) END::int AS free
FROM pgbg.queue q WHERE q.name = $1 AND q.concurrency IS NOT NULL;
