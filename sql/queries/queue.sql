-- Statements of queue controls: pause and resume, a concurrency limit, and
-- a rate limit.
-- A paused queue keeps its tasks and takes enqueues; the claim skips it
-- (OpenLanes, GroupQueueClosed in worker.sql).

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

-- fragment: RateRecentStarts
-- The starts a queue's rate limit counts now: those of its log within the
-- last interval, by the clock now. Columns of the one pgbg.queue row in
-- scope.
(SELECT count(*) FROM unnest(rate_starts) s WHERE s > clock_timestamp() - rate_interval_ms * interval '1 millisecond')

-- fragment: RateRoomAt
-- When a queue's rate limit next has room, if its log is full: its oldest
-- logged start of the newest rate_limit ones, one interval on (NULL when
-- the log holds fewer; a time past when the oldest has aged out).
(rate_starts[cardinality(rate_starts) - rate_limit + 1] + rate_interval_ms * interval '1 millisecond')

-- fragment: GroupRecentStarts
-- The starts a group's rate limit counts now: those of its log (the
-- pgbg.group_rate row `g`) within the last interval of its queue (the
-- pgbg.queue row `q`), by the clock now.
(SELECT count(*) FROM unnest(g.starts) s WHERE s > clock_timestamp() - q.group_rate_interval_ms * interval '1 millisecond')

-- fragment: GroupRateRoomAt
-- When the group of the pgbg.group_rate row `g` next has room under its
-- queue's (`q`) group rate limit, if its log is full: as RateRoomAt.
(g.starts[cardinality(g.starts) - q.group_rate_limit + 1] + q.group_rate_interval_ms * interval '1 millisecond')

-- fragment: QueueSettingsColumns
-- A queue's controls as the library returns them; recent_starts: the
-- starts its rate limit counts now.
name, paused_at, concurrency, group_concurrency, rate_limit, rate_interval_ms, {{RateRecentStarts}}::int AS recent_starts,
group_rate_limit, group_rate_interval_ms

-- name: SetQueueConcurrency
-- $1 queue, $2 its limit (NULL: none), $3 the wake-up channel: workers
-- waiting at the old limit may start tasks under a higher one.
WITH set AS (
  INSERT INTO pgbg.queue AS queue (name, concurrency) VALUES ($1, $2::integer)
  ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency
  RETURNING {{QueueSettingsColumns}}
)
SELECT s.* FROM set s CROSS JOIN (SELECT pg_notify($3, '')) AS wake;

-- name: SetGroupConcurrency
-- $1 queue, $2 the limit of each of its groups (NULL: none), $3 the
-- wake-up channel, as SetQueueConcurrency.
WITH set AS (
  INSERT INTO pgbg.queue AS queue (name, group_concurrency) VALUES ($1, $2::integer)
  ON CONFLICT (name) DO UPDATE SET group_concurrency = excluded.group_concurrency
  RETURNING {{QueueSettingsColumns}}
)
SELECT s.* FROM set s CROSS JOIN (SELECT pg_notify($3, '')) AS wake;

-- name: SetQueueRateLimit
-- $1 queue, $2 starts allowed per interval (NULL: no rate limit), $3 the
-- interval in ms, $4 the wake-up channel. Removing the limit forgets its
-- log; changing it keeps the log, so a lower limit counts the starts
-- already made.
WITH set AS (
  INSERT INTO pgbg.queue AS queue (name, rate_limit, rate_interval_ms) VALUES ($1, $2::integer, $3::integer)
  ON CONFLICT (name) DO UPDATE SET rate_limit = excluded.rate_limit, rate_interval_ms = excluded.rate_interval_ms,
    rate_starts = CASE WHEN excluded.rate_limit IS NULL THEN '{}' ELSE queue.rate_starts END
  RETURNING {{QueueSettingsColumns}}
)
SELECT s.* FROM set s CROSS JOIN (SELECT pg_notify($4, '')) AS wake;

-- name: SetGroupRateLimit
-- $1 queue, $2 starts allowed per interval to each of its groups (NULL:
-- no group rate limit), $3 the interval in ms, $4 the wake-up channel.
-- Removing the limit forgets the groups' logs; changing it keeps them, as
-- SetQueueRateLimit does.
WITH set AS (
  INSERT INTO pgbg.queue AS queue (name, group_rate_limit, group_rate_interval_ms) VALUES ($1, $2::integer, $3::integer)
  ON CONFLICT (name) DO UPDATE SET group_rate_limit = excluded.group_rate_limit, group_rate_interval_ms = excluded.group_rate_interval_ms
  RETURNING {{QueueSettingsColumns}}
),
forgotten AS (
  DELETE FROM pgbg.group_rate g WHERE $2::integer IS NULL AND g.queue = $1 RETURNING 1
)
SELECT s.* FROM set s CROSS JOIN (SELECT pg_notify($4, '')) AS wake WHERE (SELECT count(*) FROM forgotten) >= 0;

-- name: QueueSettings
-- Every queue paused or limited, by name.
SELECT {{QueueSettingsColumns}}
FROM pgbg.queue q WHERE paused_at IS NOT NULL OR {{QueueLimited}} ORDER BY name;

-- name: LimitedQueues
-- The queues with a limit (concurrency or rate, of the queue or per group): a worker claims from them
-- with the limited claim (paused ones too, which QueueFreeSlots then finds
-- paused: so a resume needs no new read of this list). per_group: limited
-- per group alone, claimed with ClaimPerGroupTasks; slots_only: limited by
-- its concurrency alone, claimed with ClaimSlotRowTasks. Both need their
-- statement's transaction READ COMMITTED (the session's default, as this
-- statement runs in a transaction of its own).
SELECT name, {{QueuePerGroup}} AND current_setting('transaction_isolation') = 'read committed' AS per_group,
  {{QueueSlotsOnly}} AND current_setting('transaction_isolation') = 'read committed' AS slots_only
FROM pgbg.queue q WHERE {{QueueLimited}} ORDER BY name;

-- name: LockLimitedQueue
-- $1 queue. Taken by the limited claim's transaction before it counts the
-- queue's running tasks: the limited claims of one queue run one at a
-- time, and each counts (in its next statement's snapshot) every task the
-- ones before it claimed. The key's first half marks pgbg's queue locks.
SELECT pg_advisory_xact_lock(hashtext('pgbg.queue'), hashtext($1));

-- name: QueueFreeSlots
-- $1 queue: how many of its tasks may start now, or NULL when it has no
-- limit any more or is paused (under a group limit alone, as many as
-- asked: ClaimGroupTasks keeps each group's). Under a concurrency limit, the limit less
-- its running tasks (found through task_lease_idx, which holds every
-- running task) and the tasks claim rows hold (count_held_by_claims,
-- migration 028), unless
-- the limit cannot bind: when the registered
-- workers that claim from the queue may hold no more leases in all than
-- the limit (their concurrency, and the attempts they let run on detached,
-- which keep their leases), it is the limit, and nothing is counted
-- (uncounted). That holds because such a claim takes no more than the
-- worker's free slots less its unwritten outcomes (lib/limits.ts), so no
-- uncounted claim gives a worker more leases than its concurrency (a
-- counted claim may, for a moment, as its count saw those leases; the
-- tasks executing stay within the limit either way), and every running task is its
-- worker's (a worker's row goes only once its tasks are handed back, or,
-- when it is reaped as dead, once it stopped running them itself: its
-- self-stop comes before its stale time), and a worker that registers
-- after this count is seen by every limited claim
-- after its own first one, which this lock orders. So a non-binding limit
-- costs no count of the running tasks, which under a held-back vacuum
-- steps over an entry for every task that ran since (docs/storage.md);
-- under a rate limit, the limit less its recent starts
-- (by the clock now, after the lock: so every start the claims before
-- this one recorded counts); under both, the lesser. rated:
-- RecordQueueStarts must log what the claim takes; room_in_ms: when the
-- rate has room again, in ms from now (0 or less, or NULL: it has).
-- group_rated: RecordGroupStarts must log the starts of each group the
-- claim takes from (ClaimLimitedGroupTasks keeps each group within its
-- rate); group_room_in_ms: when the first group whose rate is used up
-- has room again (NULL: none is used up; a full log whose oldest counted
-- start has aged out is not, and must not hide one that is).
SELECT CASE WHEN q.paused_at IS NULL THEN coalesce(least(
    CASE WHEN q.concurrency IS NULL THEN NULL
      WHEN r.unreachable THEN q.concurrency
      ELSE q.concurrency - (SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.queue = q.name) - pgbg.count_held_by_claims(q.name) END,
    q.rate_limit - {{RateRecentStarts}}
  ), 2147483647) END::int AS free,
  coalesce(r.unreachable, false) AS uncounted,
  q.rate_limit IS NOT NULL AS rated,
  (extract(epoch FROM {{RateRoomAt}} - clock_timestamp()) * 1000)::float8 AS room_in_ms,
  q.group_rate_limit IS NOT NULL AS group_rated,
  (SELECT (extract(epoch FROM min({{GroupRateRoomAt}}) - clock_timestamp()) * 1000)::float8 FROM pgbg.group_rate g
   WHERE q.group_rate_limit IS NOT NULL AND g.queue = q.name AND {{GroupRateRoomAt}} > clock_timestamp()) AS group_room_in_ms
FROM pgbg.queue q
CROSS JOIN LATERAL (SELECT CASE WHEN q.concurrency IS NOT NULL THEN q.concurrency >= (SELECT coalesce(sum(w.concurrency + w.detached), 0)
  FROM pgbg.worker w WHERE w.queues IS NULL OR q.name = ANY (w.queues)) END AS unreachable) r
WHERE q.name = $1 AND {{QueueLimited}};

-- name: RecordQueueStarts
-- $1 queue, $2 how many tasks the limited claim just took: logs one start
-- each, by the clock after the claim (so each logged time is no earlier
-- than its claim, and any interval holds at most rate_limit claims), and
-- drops the starts older than the interval.
UPDATE pgbg.queue q SET rate_starts = ARRAY(
  SELECT s FROM unnest(q.rate_starts) s WHERE s > clock_timestamp() - q.rate_interval_ms * interval '1 millisecond'
  UNION ALL
  SELECT clock_timestamp() FROM generate_series(1, $2::int)
  ORDER BY 1
)
WHERE q.name = $1 AND q.rate_limit IS NOT NULL;

-- name: RecordGroupStarts
-- $1 queue, $2 groups, $3 how many tasks of each the limited claim just
-- took: logs one start each in its group's log, by the clock after the
-- claim, and drops the starts older than the queue's group rate interval
-- (as RecordQueueStarts). Each group once in $2: a row is written once
-- per statement.
INSERT INTO pgbg.group_rate AS g (queue, group_name, starts)
SELECT $1, c.group_name, ARRAY(SELECT clock_timestamp() FROM generate_series(1, c.n))
FROM unnest($2::text[], $3::integer[]) AS c (group_name, n)
ON CONFLICT (queue, group_name) DO UPDATE SET starts = ARRAY(
  SELECT s FROM unnest(g.starts) s
  WHERE s > clock_timestamp() - (SELECT q.group_rate_interval_ms FROM pgbg.queue q WHERE q.name = g.queue) * interval '1 millisecond'
  UNION ALL
  SELECT unnest(excluded.starts)
  ORDER BY 1
);

-- name: PruneGroupRates
-- Deletes the logs of groups whose newest start is older than their
-- queue's group rate interval, or whose queue has no group rate limit any
-- more: they count nothing, and a queue may have any number of groups.
-- Safe beside the limited claim without its lock: a row it writes again
-- has a new start, and the delete rechecks the row it waited for.
DELETE FROM pgbg.group_rate g
WHERE NOT EXISTS (
  SELECT FROM pgbg.queue q WHERE q.name = g.queue AND q.group_rate_limit IS NOT NULL
    AND g.starts[cardinality(g.starts)] > clock_timestamp() - q.group_rate_interval_ms * interval '1 millisecond'
);

-- name: GroupLimitWaiting
-- For each queue with a limit per group: its due tasks whose group runs as
-- many tasks as the limit allows, or started as many as its rate allows
-- within the interval, which the claim steps over (/metrics,
-- pgbg_queue_limit_waiting). The due tasks counted per group through
-- task_group_idx, each group's running ones through task_group_running_idx
-- (one state each, so that each count reads its own partial index); read
-- once per scrape.
SELECT q.name AS queue, coalesce((
  SELECT sum(d.due) FROM (
    SELECT t.group_name, count(*) AS due FROM pgbg.task t
    WHERE t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue = q.name AND t.run_at <= now()
    GROUP BY t.group_name
  ) d
  WHERE (SELECT count(*) FROM pgbg.task r
      WHERE r.state = 'running' AND r.group_name IS NOT NULL AND r.queue = q.name AND r.group_name = d.group_name) >= q.group_concurrency
    OR (SELECT {{GroupRecentStarts}} FROM pgbg.group_rate g WHERE g.queue = q.name AND g.group_name = d.group_name) >= q.group_rate_limit
), 0)::int AS waiting
FROM pgbg.queue q
WHERE q.group_concurrency IS NOT NULL OR q.group_rate_limit IS NOT NULL
ORDER BY q.name;
