-- Statements of queue controls: pause and resume. A paused queue keeps its
-- tasks and takes enqueues; the claim skips it (ClaimFromLanes).

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
  DELETE FROM pgbg.queue WHERE name = ANY($1::text[]) AND paused_at IS NOT NULL RETURNING name
)
SELECT r.name FROM resumed r CROSS JOIN (SELECT pg_notify($2, '')) AS wake;

-- name: PausedQueues
SELECT name, paused_at FROM pgbg.queue WHERE paused_at IS NOT NULL ORDER BY name;
