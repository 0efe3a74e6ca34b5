-- Statements of the service: claim, complete, fail, release and rescue tasks,
-- and the worker registry. Every write to a claimed task is fenced by its
-- lease: `lease_token` must still be the one the claim handed out and the
-- task must still be running, so a worker that lost its lease changes nothing.

-- fragment: LimitedQueueLanes
-- The lanes of the one limited queue $2 that hold tasks of the names the
-- worker runs ($3), as `lanes` (FoundLanes).
{{FoundLanes:f.queue = ($2::text[])[1]}}

-- fragment: FoundLanes
-- The lanes (queue, name, priority) that hold queued tasks without a group
-- of the names the worker runs ($3), as `lanes`: a skip scan of
-- task_lane_idx by its key (pgbg.lane_key, migration 031), one probe per
-- lane of any queue and name, `{{@}}` a condition on the lane `f` (a
-- queue, or true). The condition is judged on the lanes found, not in the
-- scan: the key orders the lanes by their hash, so a probe for the next
-- lane of one queue would read every entry of the other queues' lanes
-- between. While vacuum is held back each probe steps over the entries of
-- the tasks completed since, at its lane's head, so the worker then claims
-- from the lanes it knows (KnownLanes) and runs this now and then
-- (lib/claim-cursor.ts judges when).
found (queue, name, priority, lane) AS (
  (SELECT t.queue, t.name, t.priority, pgbg.lane_key(t.queue, t.name, t.priority) FROM pgbg.task t
   WHERE t.state = 'queued' AND t.group_name IS NULL ORDER BY pgbg.lane_key(t.queue, t.name, t.priority) LIMIT 1)
  UNION ALL
  SELECT n.queue, n.name, n.priority, n.lane FROM found f CROSS JOIN LATERAL (
    SELECT t.queue, t.name, t.priority, pgbg.lane_key(t.queue, t.name, t.priority) AS lane FROM pgbg.task t
    WHERE t.state = 'queued' AND t.group_name IS NULL AND pgbg.lane_key(t.queue, t.name, t.priority) > f.lane
    ORDER BY pgbg.lane_key(t.queue, t.name, t.priority) LIMIT 1
  ) n
),
lanes (queue, name, priority) AS (
  SELECT f.queue, f.name, f.priority FROM found f WHERE f.name = ANY ($3::text[]) AND {{@}}
)

-- fragment: SlotsTaken
-- How many tasks the claim of queue $2 takes: at most $5, and none when
-- take_queue_slots finds the queue no longer limited by its concurrency
-- alone. `{{@}}`: the worker's unwritten outcomes. Taken once, before the
-- claim locks a task, as its LIMITs are evaluated before their scans.
slots AS MATERIALIZED (
  SELECT CASE WHEN f.free > 0 THEN f.free ELSE 0 END AS free
  FROM (SELECT pgbg.take_queue_slots(($2::text[])[1], $5::int, {{@}}::int) AS free) f
)

-- name: ClaimGroupTasks
-- The group claim: tasks with a group, taken from their groups in turn,
-- from every queue without a limit. $1-$5 as in ClaimRowTasks; $6 and $7 the
-- queue and group after which this worker's last group claim stopped (''
-- and '': none).
{{GroupClaim:false}};

-- name: ClaimLimitedGroupTasks
-- The group claim of the one limited queue $2, in the transaction that
-- took LockLimitedQueue: as ClaimGroupTasks, each group within its
-- queue's group limit. Two statements rather than a parameter: a generic
-- plan could not drop the counts of the unlimited claim, so PostgreSQL
-- planned it afresh at every call (1.6 ms, more than it ran).
{{GroupClaim:true}};

-- name: ClaimPerGroupTasks
-- The group claim of the one queue $2, limited per group alone, in one
-- statement: as ClaimLimitedGroupTasks, each group within its limit, but
-- under the queue's lock shared and each group's own
-- (share_group_limited_queue and take_group_slots, 023_group_slots), so
-- the claims of one queue run side by side. $1-$5 as in ClaimRowTasks; $6 the
-- group after which this worker's last group claim of the queue stopped
-- (NULL: from the first). A group another claim holds counts as full and
-- is passed over. Nothing is claimed when the queue is paused or no longer
-- limited per group alone: the worker reads its limits again at its next
-- check interval.
WITH RECURSIVE settings AS MATERIALIZED (
  SELECT pgbg.share_group_limited_queue(($2::text[])[1]) AS group_limit
),
-- The queue's groups from the first after $6 to the last, then from the
-- first to $6: one probe of task_group_idx per group, lazily.
after_start (group_name) AS (
  -- The first group, or the first after $6: two branches, so that each
  -- has its bound as an index condition.
  (SELECT group_name FROM pgbg.task
   WHERE $6::text IS NULL AND state = 'queued' AND group_name IS NOT NULL AND queue = ($2::text[])[1]
   ORDER BY group_name LIMIT 1)
  UNION ALL
  (SELECT group_name FROM pgbg.task
   WHERE state = 'queued' AND group_name IS NOT NULL AND queue = ($2::text[])[1] AND group_name > $6
   ORDER BY group_name LIMIT 1)
  UNION ALL
  SELECT (SELECT t.group_name FROM pgbg.task t
    WHERE t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue = ($2::text[])[1] AND t.group_name > a.group_name
    ORDER BY t.group_name LIMIT 1)
  FROM after_start a WHERE a.group_name IS NOT NULL
),
from_first (group_name) AS (
  (SELECT group_name FROM pgbg.task
   WHERE $6::text IS NOT NULL AND state = 'queued' AND group_name IS NOT NULL AND queue = ($2::text[])[1] AND group_name <= $6
   ORDER BY group_name LIMIT 1)
  UNION ALL
  SELECT (SELECT t.group_name FROM pgbg.task t
    WHERE t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue = ($2::text[])[1] AND t.group_name > a.group_name
      AND t.group_name <= $6
    ORDER BY t.group_name LIMIT 1)
  FROM from_first a WHERE a.group_name IS NOT NULL
),
-- Each group's free slots, counted under its lock as the walk reaches it
-- (the function in the select list keeps this a subquery read row by row).
walked AS (
  SELECT ($2::text[])[1] AS queue, g.group_name, false AS closed,
    pgbg.take_group_slots(($2::text[])[1], g.group_name, (SELECT group_limit FROM settings)) AS free
  FROM ((SELECT group_name FROM after_start) UNION ALL (SELECT group_name FROM from_first)) g
  WHERE g.group_name IS NOT NULL AND (SELECT group_limit FROM settings) IS NOT NULL
),
{{GroupTurns:false}};

-- fragment: GroupClaim
-- `{{@}}` is true in the limited claim.
--
-- `after_cursor` and then `from_start` walk the distinct (queue, group)
-- pairs of task_group_idx from that point round to it again, one index
-- probe per pair, lazily: the turns (GroupTurns) stop the walk at $5
-- groups that have a due task of a name this worker runs (and, under a
-- group limit, a free slot).
WITH RECURSIVE bounds AS (
  -- The walk's first and last queue: of $2, or of the index. The walk's
  -- index conditions are then bounds and a row comparison, which position
  -- each probe at once (with `queue = ANY` the scan starts at the queue's
  -- first entry).
  SELECT coalesce((SELECT min(x) FROM unnest($2::text[]) x),
      (SELECT min(queue) FROM pgbg.task WHERE state = 'queued' AND group_name IS NOT NULL)) AS lo,
    coalesce((SELECT max(x) FROM unnest($2::text[]) x),
      (SELECT max(queue) FROM pgbg.task WHERE state = 'queued' AND group_name IS NOT NULL)) AS hi
),
after_cursor (queue, group_name, closed) AS (
  (SELECT p.queue, p.group_name, {{GroupQueueClosed:{{@}}}} FROM (
    SELECT queue, group_name FROM pgbg.task
    WHERE state = 'queued' AND group_name IS NOT NULL AND queue >= (SELECT lo FROM bounds) AND queue <= (SELECT hi FROM bounds)
      AND (queue, group_name) > ($6::text, $7::text)
    ORDER BY queue, group_name LIMIT 1) p)
  UNION ALL
  SELECT p.queue, p.group_name, CASE WHEN p.queue = a.queue THEN a.closed ELSE {{GroupQueueClosed:{{@}}}} END FROM after_cursor a CROSS JOIN LATERAL (
    (SELECT t.queue, t.group_name FROM pgbg.task t
     WHERE NOT a.closed AND t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue <= (SELECT hi FROM bounds)
       AND (t.queue, t.group_name) > (a.queue, a.group_name)
     ORDER BY t.queue, t.group_name LIMIT 1)
    UNION ALL
    -- A closed queue's groups are passed over in one probe.
    (SELECT t.queue, t.group_name FROM pgbg.task t
     WHERE a.closed AND t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue <= (SELECT hi FROM bounds)
       AND t.queue > a.queue
     ORDER BY t.queue, t.group_name LIMIT 1)
  ) p
),
from_start (queue, group_name, closed) AS (
  (SELECT p.queue, p.group_name, {{GroupQueueClosed:{{@}}}} FROM (
    SELECT queue, group_name FROM pgbg.task
    WHERE state = 'queued' AND group_name IS NOT NULL AND queue >= (SELECT lo FROM bounds) AND queue <= (SELECT hi FROM bounds)
      AND (queue, group_name) <= ($6::text, $7::text)
    ORDER BY queue, group_name LIMIT 1) p)
  UNION ALL
  SELECT p.queue, p.group_name, CASE WHEN p.queue = a.queue THEN a.closed ELSE {{GroupQueueClosed:{{@}}}} END FROM from_start a CROSS JOIN LATERAL (
    (SELECT t.queue, t.group_name FROM pgbg.task t
     WHERE NOT a.closed AND t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue <= (SELECT hi FROM bounds)
       AND (t.queue, t.group_name) > (a.queue, a.group_name) AND (t.queue, t.group_name) <= ($6::text, $7::text)
     ORDER BY t.queue, t.group_name LIMIT 1)
    UNION ALL
    (SELECT t.queue, t.group_name FROM pgbg.task t
     WHERE a.closed AND t.state = 'queued' AND t.group_name IS NOT NULL AND t.queue <= (SELECT hi FROM bounds)
       AND t.queue > a.queue AND (t.queue, t.group_name) <= ($6::text, $7::text)
     ORDER BY t.queue, t.group_name LIMIT 1)
  ) p
),
walked AS (
  SELECT w.*, NULL::integer AS free FROM (
    (SELECT queue, group_name, closed FROM after_cursor) UNION ALL (SELECT queue, group_name, closed FROM from_start)
  ) w
),
{{GroupTurns:{{@}}}}

-- fragment: GroupTurns
-- The groups of `walked` (queue, group_name, closed, free) in turn. Each
-- group gives up to its share of the batch in its own claim order, and the
-- batch is taken a task of each group at a time (its first, then its
-- second...), so that a group with a million queued tasks and one with ten
-- get alike. `{{@}}`: the limited claim under the queue's lock, which
-- counts each group's running tasks (task_group_running_idx) here, in a
-- statement whose snapshot is taken after the lock, so every task the
-- claims before it took is counted; otherwise a group's free slots are
-- walked's `free` (NULL: no limit).
turns AS MATERIALIZED (
  SELECT p.*, row_number() OVER () AS turn FROM (
    SELECT w.queue, w.group_name, f.free, h.name, h.priority, h.run_at, h.id FROM walked w
    -- The group's free slots under its queue's group limit and room under
    -- its group rate limit, the lesser (NULL: neither is set). The rate's
    -- room is its limit less the starts of the group's log within the last
    -- interval, by the clock now, after the queue's lock (as
    -- QueueFreeSlots counts a queue's). The queue's row is read in a
    -- subquery per group, not joined: a join may be planned as a hash of
    -- the whole walk, which then visits (and, in ClaimPerGroupTasks, locks)
    -- every group of the queue, where the walk must stop at $5 groups.
    CROSS JOIN LATERAL (SELECT CASE WHEN {{@}} THEN (SELECT least(
      CASE WHEN q.group_concurrency IS NOT NULL THEN q.group_concurrency - (SELECT count(*) FROM pgbg.task r
        WHERE r.state = 'running' AND r.group_name IS NOT NULL AND r.queue = w.queue AND r.group_name = w.group_name) END,
      CASE WHEN q.group_rate_limit IS NOT NULL THEN q.group_rate_limit - coalesce((SELECT {{GroupRecentStarts}} FROM pgbg.group_rate g
        WHERE g.queue = w.queue AND g.group_name = w.group_name), 0) END
    ) FROM pgbg.queue q WHERE q.name = w.queue) ELSE w.free END AS free) f
    -- The group's first claimable task of a name this worker runs, locked:
    -- its first turn's task, in one probe of the group's entries.
    CROSS JOIN LATERAL (SELECT t.name, t.priority, t.run_at, t.id FROM pgbg.task t
      WHERE t.state = 'queued' AND t.group_name = w.group_name AND t.queue = w.queue AND {{ClaimableTask}}
      ORDER BY t.priority, t.run_at, t.id LIMIT 1 FOR UPDATE SKIP LOCKED) h
    WHERE NOT w.closed AND (f.free IS NULL OR f.free > 0)
    LIMIT $5
  ) p
),
candidates AS (
  SELECT k.id, k.name, k.turn FROM (
    SELECT g.id, g.name, g.turn, 1::bigint AS place FROM turns g
    UNION ALL
    -- Further turns, only when fewer groups than the batch have a task:
    -- each group's share of the batch, within its free slots.
    SELECT c.id, c.name, g.turn, 1 + c.place FROM turns g CROSS JOIN LATERAL (
      SELECT x.id, x.name, row_number() OVER (ORDER BY x.priority, x.run_at, x.id) AS place FROM (
        SELECT t.id, t.name, t.priority, t.run_at FROM pgbg.task t
        WHERE t.state = 'queued' AND t.group_name = g.group_name AND t.queue = g.queue AND {{ClaimableTask}}
          AND (t.priority, t.run_at, t.id) > (g.priority, g.run_at, g.id)
        ORDER BY t.priority, t.run_at, t.id
        LIMIT least(coalesce(g.free, $5), ceil($5::float8 / (SELECT count(*) FROM turns)))::int - 1
        FOR UPDATE SKIP LOCKED
      ) x
    ) c
    WHERE (SELECT count(*) FROM turns) < $5
  ) k
  ORDER BY k.place, k.turn
  LIMIT $5
)
{{ClaimCandidates}};

-- fragment: GroupQueueClosed
-- Whether the group claim leaves the queue `p.queue` alone: not one of
-- $2, paused, limited when this is not the limited claim ({{@}}: true), or not
-- limited when it is.
(($2::text[] IS NOT NULL AND p.queue <> ALL ($2::text[]))
    OR EXISTS (SELECT FROM pgbg.queue q WHERE q.name = p.queue AND (q.paused_at IS NOT NULL OR {{QueueLimited}} <> {{@}}))
    OR ({{@}} AND NOT EXISTS (SELECT FROM pgbg.queue q WHERE q.name = p.queue)))

-- fragment: ClaimableTask
-- A queued task `t` a worker may claim now: due, of a name it runs ($3),
-- and not being cancelled. The claim adds 1 to attempts and lease_token: a
-- row already at the integer limit (only one written by hand can be) would
-- fail the whole statement with "integer out of range" and so block every
-- claim of its lane. It is left alone instead, as a row of an unregistered
-- name is.
t.run_at <= now() AND t.name = ANY($3::text[])
      AND t.attempts < 2147483647 AND t.lease_token < 2147483647
      AND t.cancel_requested_at IS NULL

-- fragment: QueueLimited
-- Whether the pgbg.queue row `q` has a limit (concurrency or rate, of the
-- queue or per group): its tasks are then claimed with the limited claim
-- alone.
(q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL OR q.group_concurrency IS NOT NULL OR q.group_rate_limit IS NOT NULL)

-- fragment: QueuePerGroup
-- Whether the limited pgbg.queue row `q` is limited per group alone, by a
-- group concurrency limit: its claim is ClaimPerGroupTasks (as
-- share_group_limited_queue judges it).
(q.concurrency IS NULL AND q.rate_limit IS NULL AND q.group_rate_limit IS NULL)

-- fragment: QueueSlotsOnly
-- Whether the limited pgbg.queue row `q` is limited by its concurrency
-- alone: its claim is ClaimSlotRowTasks (as take_queue_slots judges it).
(q.concurrency IS NOT NULL AND q.rate_limit IS NULL AND q.group_concurrency IS NULL AND q.group_rate_limit IS NULL)

-- fragment: ClaimCandidates
-- Claims the rows of `candidates` (id, name, turn), each leased with the
-- lease length of its name ($4), and returns them. lag_ms: how long the
-- task waited since it became due (its enqueue, delay or retry time), for
-- metrics; run_at_us (epoch microseconds, exact) orders the tasks; turn:
-- the group's place in a group claim's
-- rotation; batch_then: a batch member's completion task (its success is
-- CompleteBatchTasks').
-- No ORDER BY: the worker starts the tasks in claim order (priority,
-- run_at, id) and puts them in it when they are not (lib/claim.ts,
-- inClaimOrder), which costs it one comparison per task when they are.
-- Here a sort, and the CTE around the UPDATE it needs, cost about 1.5 µs of
-- server CPU a task (bench/RESULTS.md, "The claim without its final sort").
-- The lag is date_part's float8, not extract's numeric: about 2,600
-- instructions a task less (bench/RESULTS.md, "A task's server cost in
-- instructions"); a metric needs no more than a double's precision.
-- run_at_us stays numeric until something as cheap is also exact.
UPDATE pgbg.task t SET
  state = 'running',
  attempts = t.attempts + 1,
  lease_token = t.lease_token + 1,
  worker_id = $1::uuid,
  lease_expires_at = now() + l.lease_ms * interval '1 millisecond'
FROM candidates c
JOIN unnest($3::text[], $4::integer[]) AS l (name, lease_ms) ON l.name = c.name
-- By id: a primary key lookup per task, in the candidates' order. A join by
-- row address (ctid) was planned as a hash of the candidates and a TID
-- scan per task, and cost about 3 µs of server CPU a task more
-- (bench/RESULTS.md, "The claim without its final sort"). A candidate
-- whose row was updated after the statement's snapshot is locked in its
-- new version, which the update reaches from the version its lookup by id
-- finds; a TID scan reads with the snapshot and did not see it.
WHERE t.id = c.id
RETURNING t.id, t.name, t.queue, t.group_name, t.payload, t.attempts, t.max_attempts, t.lease_token, t.priority,
  t.snoozes, t.input_version, t.trace_context, t.batch_then, c.turn,
  date_part('epoch', now() - t.run_at) * 1000 AS lag_ms,
  (extract(epoch FROM t.run_at) * 1000000)::bigint AS run_at_us

-- fragment: LeasedRowAddresses
-- The row addresses of the tasks $1 (ids) whose lease tokens are $2, while
-- leased: each looked up by primary key, LIMIT keeping the lookup per task.
-- Used inside `ctid = ANY (ARRAY(...))`, so that it runs once per statement
-- (see CompleteTasks).
SELECT x.ctid FROM unnest($1::bigint[], $2::integer[]) AS c (id, token)
CROSS JOIN LATERAL (
  SELECT ctid FROM pgbg.task
  WHERE id = c.id AND lease_token = c.token AND worker_id IS NOT NULL AND lease_expires_at IS NOT NULL
  LIMIT 1
) x

-- fragment: Sent
-- The value at position {{@}} of the row's entry in `sent` (a one-row CTE:
-- `by_id`, what the worker sent about each attempt, a JSON array keyed
-- `id:token` (SentKey), the token first), as text. A write-back reads its batch's values
-- this way rather than by joining the batch to the table: on a prepared
-- statement's generic plan, which expects 10 rows from any unnest, that
-- join ran as a nested loop that scanned the whole batch once per row
-- written, 1,000 rows in 170 ms and 4,000 in 2.9 s instead of 6 and 15
-- (bench/RESULTS.md, "Write-backs in linear time"). The scalar sub-select
-- runs once per statement.
((SELECT by_id FROM sent) -> {{SentKey:t.id, t.lease_token}} ->> {{@}})

-- fragment: SentKey
-- The key of an attempt in `sent`: its task id and lease token ({{@}}), so
-- that a batch holding one task twice (an outcome written once more after a
-- statement missed it) keeps each attempt's own entry.
concat_ws(':', {{@}})

-- fragment: LeaseHeld
-- The fence, rechecked on the row written: a task taken over while the
-- statement waited for its lock is met in its new version, whose token
-- has no entry in what was sent. The lease holder stands for state =
-- 'running' (task_running_has_lease), so that no partial index fits.
(SELECT by_id FROM sent) ? {{SentKey:t.id, t.lease_token}} AND t.worker_id IS NOT NULL AND t.lease_expires_at IS NOT NULL

-- name: CompleteTasks
-- Success: the task is deleted. $1 ids, $2 their lease tokens.
-- The rows are found by one sub-select run once per statement (a primary
-- key lookup per task), so the cost is the batch's whatever the statistics
-- say; the fence is LeaseHeld. Why not a join: bench/RESULTS.md, items 4
-- and 14, and "Write-backs in linear time".
WITH sent AS MATERIALIZED (
  SELECT jsonb_object_agg({{SentKey:c.id, c.token}}, jsonb_build_array(c.token)) AS by_id FROM unnest($1::bigint[], $2::integer[]) AS c (id, token)
)
DELETE FROM pgbg.task t
WHERE t.ctid = ANY (ARRAY(
  {{LeasedRowAddresses}}
))
  AND {{LeaseHeld}}
RETURNING t.id;

-- name: CompleteClaimedTasks
-- Success of tasks a claim row holds (pgbg.claim_lane, migration 026): each
-- is deleted while it is still its claim's (InClaim) and the claim is held
-- by this worker. $1 the tasks' ids, $2 their claims' ids (each once),
-- $3 the worker. The claim row is the fence: a task that was restaged
-- since (a rescue, a release) has left the claim's pair, and a claim ended
-- or taken over is no longer held by this worker. The tasks are found by
-- one sub-select run once per statement, as in CompleteTasks; each is
-- matched to its claim by the claim's stretch of its lane, so that no
-- value is sent per task but its id. A task restaged while the statement
-- waited for its lock is met in its new version, which is in no pair of
-- these claims. Returns one row (completed: how many; ids: which, only
-- when not all of $1).
WITH held AS MATERIALIZED (
  -- Read by the trigger that settles a flow's dependants: these queued
  -- tasks end completed, not cancelled (migration 027).
  SELECT c.*, set_config('pgbg_flow.ending', 'complete', true) AS ending FROM pgbg.claim c
  WHERE c.id = ANY ($2::bigint[]) AND c.worker_id = $3::uuid
),
completed AS (
  DELETE FROM pgbg.task t
  USING held c
  WHERE t.ctid = ANY (ARRAY(
    {{ClaimedRowAddresses}}
  ))
    AND {{InClaim}}
  RETURNING t.id
)
-- One row: how many were deleted, and their ids only when the fence
-- refused some (fewer than sent). A row per task cost the worker a
-- message to read for each (bench/RESULTS.md, "The lane index keyed by a
-- hash", its part "The completion's one row").
SELECT n.completed, CASE WHEN n.completed < cardinality($1::bigint[]) THEN (SELECT string_agg(d.id::text, ',') FROM completed d) END AS ids
FROM (SELECT count(*)::int AS completed FROM completed) n;

-- fragment: ClaimedRowAddresses
-- The row addresses of the tasks $1 (ids) a claim row returned: each looked
-- up by primary key, LIMIT keeping the lookup per task; used inside `ctid =
-- ANY (ARRAY(...))`, so that it runs once per statement (see CompleteTasks).
-- The fence is the statement's (InClaim).
SELECT x.ctid FROM unnest($1::bigint[]) AS s (id)
CROSS JOIN LATERAL (SELECT ctid FROM pgbg.task WHERE id = s.id LIMIT 1) x

-- fragment: InClaim
-- Whether task `t`, one that claim row `c` returned to this worker, is
-- still c's: queued in c's lane, in c's pair and in c's stretch of it
-- (migration 026). The pair too, not the stretch alone: transaction ids
-- are drawn when a transaction first writes, not when it commits, so a
-- task restaged by a transaction that began before c's claim has an id
-- inside c's stretch and is a later claim's; and the stretch of a pair's
-- first claim starts at the lane's head, among tasks of earlier pairs.
-- Not `group_name IS NULL`, which a change of group (a restaging) rules
-- out already: with it and `state = 'queued'` these conditions imply the
-- predicate of the partial index then read (task_claim_idx, since
-- replaced by the lane index), and a generic plan scanned that
-- whole index to filter it by row address, 4,000 tasks in 34 ms instead
-- of 6.
(t.queue = c.queue AND t.name = c.name AND t.priority = c.priority AND t.state = 'queued'
  AND (t.staged_xact, t.id) > (c.after_xact, c.after_id) AND (t.staged_xact, t.id) <= (c.last_xact, c.last_id)
  AND pg_visible_in_snapshot(t.staged_xact, c.upto) AND (c.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, c.since)))

-- fragment: ClaimStretch
-- InClaim as a range of task_lane_idx: for the reads of a claim row's
-- tasks from the table (its end, the counts of what claim rows hold),
-- which name the index's key (pgbg.lane_key, migration 031) for the
-- planner to read the stretch by it. InClaim alone is for tasks found
-- otherwise (by primary key), where the key would be a hash a row.
-- `group_name IS NULL` implies the index's predicate with InClaim's
-- `state = 'queued'`, so that the partial index can serve the read.
pgbg.lane_key(t.queue, t.name, t.priority) = pgbg.lane_key(c.queue, c.name, c.priority) AND {{InClaim}} AND t.group_name IS NULL

-- name: ClaimRowTasks
-- The claim of tasks without a group in queues without a limit, by claim
-- rows (migrations 026-029): $1 worker id, $2 queues (NULL: every queue),
-- $3 registered task names, $4 lease length in ms for each name in $3, $5
-- how many to claim. `lanes` are those that hold tasks (FoundLanes);
-- OpenLanes and ClaimOpenLanesLean claim them, each task in the seven
-- columns of pgbg.claim_lanes_lean (migration 033; lib/claim.ts reads them).
WITH RECURSIVE {{FoundLanes:true}},
{{OpenLanes:false}}
{{ClaimOpenLanesLean:$5::integer}};

-- name: ClaimRowTasksFrom
-- ClaimRowTasks from the lanes the worker knows ($6 queues, $7 names, $8
-- priorities), without looking for others.
WITH {{KnownLanes}},
{{OpenLanes:false}}
{{ClaimOpenLanesLean:$5::integer}};

-- name: ClaimLimitedRowTasks
-- The limited claim, in claimLimited's transaction (lib/limits.ts): the
-- tasks without a group of the one limited queue $2, at most $5 (its free
-- slots), by claim rows as every claim of a lane is: claims of a lane take
-- turns under its lock and each starts after the last.
WITH RECURSIVE {{LimitedQueueLanes}},
{{OpenLanes:true}}
{{ClaimOpenLanes:$5::integer}};

-- name: ClaimLimitedRowTasksFrom
-- ClaimLimitedRowTasks from the lanes of the limited queue the worker
-- knows ($6 queues, $7 names, $8 priorities), as ClaimRowTasksFrom.
WITH {{KnownLanes}},
{{OpenLanes:true}}
{{ClaimOpenLanes:$5::integer}};

-- name: ClaimSlotRowTasks
-- The claim of a queue limited by its concurrency alone (ClaimLimitedRowTasks'
-- tasks), in one statement: at most the free slots take_queue_slots finds
-- ($6: the worker's unwritten outcomes).
WITH RECURSIVE {{LimitedQueueLanes}},
{{SlotsTaken:$6}},
{{OpenLanes:true}}
{{ClaimOpenLanes:(SELECT s.free FROM slots s)}};

-- name: ClaimSlotRowTasksFrom
-- ClaimSlotRowTasks from the lanes of the queue the worker knows ($6
-- queues, $7 names, $8 priorities; $9: its unwritten outcomes).
WITH {{KnownLanes}},
{{SlotsTaken:$9}},
{{OpenLanes:true}}
{{ClaimOpenLanes:(SELECT s.free FROM slots s)}};

-- fragment: KnownLanes
-- The lanes a claim is given from the worker's claim cursor ($6 queues,
-- $7 names, $8 priorities), as `lanes`: no positions, as a claim row's
-- pair starts past every task taken before. Each lane costs its claim a
-- probe and its lock, held to the commit, an empty lane too: crossed with
-- every name the worker ran, as they were, the (queue, priority) pairs it
-- knew cost a claim of the pressure bench's workers (nine names) nine,
-- and two workers' claims queued for each other's locks on the eight
-- empty lanes (bench/RESULTS.md, "The cursor's lanes, not its pairs").
-- OpenLanes keeps those of the names the worker runs ($3).
lanes (queue, name, priority) AS (
  SELECT l.queue, l.name, l.priority FROM unnest($6::text[], $7::text[], $8::smallint[]) AS l (queue, name, priority)
)

-- fragment: OpenLanes
-- The lanes (queue, name, priority) of `lanes` a claim by claim rows takes
-- from, with their names' lease lengths ($4), as `open`: those in queues
-- it claims from and that are not paused, and limited or not as the claim
-- is (`{{@}}`: whether it is the limited claim; a queue limited per group
-- alone counts as not limited, a group limit holding no task without a
-- group): one probe of queue_pkey per lane.
open AS (
  SELECT l.queue, l.name, l.priority, k.lease_ms, h.head_xact, h.head_id FROM lanes l
  JOIN unnest($3::text[], $4::integer[]) AS k (name, lease_ms) ON k.name = l.name
  LEFT JOIN LATERAL ({{LaneHead:{{@}}}}) h ON true
  WHERE ($2::text[] IS NULL OR l.queue = ANY ($2::text[]))
    AND NOT EXISTS (SELECT FROM pgbg.queue q WHERE q.name = l.queue
      AND (q.paused_at IS NOT NULL OR ({{QueueLimited}} AND NOT {{QueuePerGroup}}) <> {{@}}))
),
-- In the limited claim, the lanes' locks first, in lane order (as
-- LockTaskLanes takes them), before pgbg.claim_lanes takes each in the
-- claims' order: that order is by the lanes' heads, which two claims may
-- read differently, and two claims of a queue whose limit cannot bind run
-- side by side, each locking the lanes it passes (an empty one too), so
-- that each would wait for the other's. None in other claims, whose order
-- is the same for every claim.
locked AS MATERIALIZED (
  SELECT count(*) AS n FROM (
    SELECT CASE WHEN {{@}} THEN {{LaneLock:l.queue, l.name, l.priority}} END
    FROM (SELECT o.queue, o.name, o.priority FROM open o WHERE {{@}} ORDER BY 1, 2, 3 OFFSET 0) l
  ) x
)

-- fragment: LaneOrder
-- The order of the lanes of `open` for pgbg.claim_lanes: by priority, then
-- by their heads in the limited claim (LaneHead; the first lane takes
-- what it can of a claim too small to share), then by queue and name. A
-- lane without a staged task first: it may hold due tasks no claim has
-- staged yet (a retry, a snooze, a delay), which only its claim stages; last,
-- a limited claim of one task would never reach it while other lanes
-- have tasks. An empty one costs a probe.
o.priority, o.head_xact NULLS FIRST, o.head_id NULLS FIRST, o.queue, o.name

-- fragment: LaneHead
-- In the limited claim (`{{@}}`), the next task of the lane `l` after its
-- newest claim row's stretch (or its first), as (head_xact, head_id), by
-- which ClaimOpenLanes orders the lanes of one priority: a limited claim
-- asks for few tasks, often one, which the first lane in that order takes,
-- so that a queue limited to 1 runs its tasks in the order they became
-- due across its names (across the names a claim from the cursor reads,
-- while full claims are slow: those the worker took tasks from). Its
-- newest claim row is read as claim_lane reads it (the last entry of
-- claim_lane_idx up to the lane's end). A task of
-- that claim's pair staged by a transaction it saw in progress may come
-- before the head: an order among the lanes, not a promise. None in other
-- claims, which share among lanes (pgbg.claim_lanes). The bound is two
-- scalars, an index bound of task_lane_idx: as a row value of the claim
-- row it was a filter, and the probe read from the lane's head, over the
-- entries of every task completed while vacuum is held back.
SELECT t.staged_xact AS head_xact, t.id AS head_id
FROM (SELECT) one
LEFT JOIN LATERAL (
  SELECT c.last_xact, c.last_id FROM (
    SELECT c.queue, c.name, c.priority, c.last_xact, c.last_id FROM pgbg.claim c
    WHERE {{@}} AND (c.queue, c.name, c.priority, c.id) <= (l.queue, l.name, l.priority, 9223372036854775807)
    ORDER BY c.queue DESC, c.name DESC, c.priority DESC, c.id DESC LIMIT 1
  ) c WHERE (c.queue, c.name, c.priority) = (l.queue, l.name, l.priority)
) n ON true
CROSS JOIN LATERAL (
  SELECT t.staged_xact, t.id FROM pgbg.task t
  WHERE {{@}} AND pgbg.lane_key(t.queue, t.name, t.priority) = pgbg.lane_key(l.queue, l.name, l.priority)
    AND t.queue = l.queue AND t.name = l.name AND t.priority = l.priority
    AND t.state = 'queued' AND t.group_name IS NULL AND t.staged_xact IS NOT NULL
    AND (t.staged_xact, t.id) > (coalesce(n.last_xact, '0'::xid8), coalesce(n.last_id, 0))
  ORDER BY t.staged_xact, t.id LIMIT 1
) t

-- fragment: ClaimOpenLanes
-- Claims up to `{{@}}` tasks from `open` by pgbg.claim_lanes, in priority
-- order, each lane by pgbg.claim_lane, which writes one claim row per lane
-- it takes tasks from and none per task (a lane without tasks costs a
-- probe). Each returned task carries its claim row's id; its attempt is
-- not counted until it ends otherwise than by success (LeaseClaimedTasks).
SELECT c.id, c.name, c.queue, NULL::text AS group_name, c.payload, c.attempts, c.max_attempts, 0 AS lease_token, c.priority,
  c.snoozes, c.input_version, c.trace_context, c.batch_then, c.lag_ms, c.run_at_us, c.claim_id
FROM {{OrderedOpenLanes}}
CROSS JOIN LATERAL pgbg.claim_lanes(o.queues, o.names, o.priorities, o.leases, $1::uuid, {{@}}) c

-- fragment: ClaimOpenLanesLean
-- ClaimOpenLanes in pgbg.claim_lanes_lean's seven columns (migration 033):
-- the lane's columns on a claim row's first task alone, the rarely set
-- ones in one. The ordinary claim's, whose rows are the most a worker
-- reads; the limited claims' rows go with the group claims' through the
-- same code, and keep ClaimOpenLanes' columns.
SELECT c.id, c.payload, c.attempts, c.run_at_us, c.trace_context, c.rare, c.lane
FROM {{OrderedOpenLanes}}
CROSS JOIN LATERAL pgbg.claim_lanes_lean(o.queues, o.names, o.priorities, o.leases, $1::uuid, {{@}}) c

-- fragment: OrderedOpenLanes
-- The lanes of `open` as the arrays pgbg.claim_lanes and claim_lanes_lean take, in LaneOrder,
-- once `locked` took the limited claim's locks.
(
  SELECT array_agg(o.queue ORDER BY {{LaneOrder}}) AS queues, array_agg(o.name ORDER BY {{LaneOrder}}) AS names,
    array_agg(o.priority ORDER BY {{LaneOrder}}) AS priorities, array_agg(o.lease_ms ORDER BY {{LaneOrder}}) AS leases
  FROM open o WHERE (SELECT x.n FROM locked x) >= 0
) o

-- name: LeaseClaimedTasks
-- Tasks a claim row holds for this worker, each given a lease of its own:
-- running, leased to the worker until its claim's lease ends, with the
-- next lease token, and its attempt counted (a claim row's claim does not
-- count it: migration 026). The worker does this before it writes any
-- outcome but a plain success (a failure, a snooze, a hand-back, a
-- finished cancel, ctx.complete(tx), a batch member's success, which
-- counts its batch down), which the statements of row leases then
-- write, fenced by the token returned: the rare outcomes keep one set of
-- statements. $1 ids, $2
-- their claims' ids (one per task), $3 the worker. A task no longer its
-- claim's (InClaim) is not returned.
{{LeaseClaimed:unnest($1::bigint[], $2::bigint[])}};

-- name: LeaseClaimedTask
-- LeaseClaimedTasks of one task ($1, of claim $2; $3 the worker), in the
-- transaction of ctx.complete(tx): scalars, as CompleteTaskInTransaction
-- takes, since the caller's client may not know array types (postgres.js
-- with `fetch_types: false` sent a bigint[] parameter as a scalar, and the
-- statement failed with "malformed array literal").
{{LeaseClaimed:(VALUES ($1::bigint, $2::bigint))}};

-- fragment: LeaseClaimed
-- LeaseClaimedTasks of the tasks of `{{@}}` (id, claim_id).
UPDATE pgbg.task t SET {{OwnLease}}
FROM {{@}} AS s (id, claim_id)
JOIN pgbg.claim c ON c.id = s.claim_id AND c.worker_id = $3::uuid
WHERE t.id = s.id AND {{InClaim}} AND {{KnowsClaimRows}}
RETURNING t.id, t.lease_token

-- name: LeaseExpiredClaims
-- Claim rows whose lease ended, or whose worker is one of $1 (dead, or
-- stopped because its heartbeat could not get through or past its stop's
-- bound with its hand-backs unwritten): their tasks each
-- given a lease of its own, as LeaseClaimedTasks gives it (held by the
-- claim's worker until the claim's lease ends), and the rows ended, in
-- one statement. The release or rescue of row leases that follows
-- (ReleaseWorkerTasks, HandBackWorkerTasks, RescueExpiredLeases) then
-- takes them as it takes any task: the attempt counted or not, failed when
-- its attempts are used up, its hook called. Whoever ends a claim row
-- moves the tasks it still holds out of it in the same statement
-- (migration 026). The rows are locked, so that two hosts' rescues do not
-- both lease a claim's tasks; a completion reads its claim row unlocked
-- and is fenced by its tasks' rows, which this statement changed.
WITH ended AS (
  SELECT c.*, false AS settled FROM pgbg.claim c
  WHERE c.worker_id IS NOT NULL AND (c.lease_expires_at < now() OR c.worker_id = ANY ($1::uuid[]))
  FOR UPDATE
),
-- A lane's newest row held by nobody, kept by EndClaimRows while its lane's
-- next claim goes on from it, goes once a newer one exists (a
-- data-modifying CTE runs whether or not the statement reads it).
pruned AS (
  DELETE FROM pgbg.claim c WHERE c.worker_id IS NULL AND {{NotNewestClaim}}
  RETURNING c.id
)
{{EndClaimRows:{{OwnLease}}}};

-- name: EndClaims
-- A worker's claims ($1, held by worker $2) whose tasks all ended and
-- whose outcomes are written: ended, as LeaseExpiredClaims ends them. A
-- task still its claim's (none, unless an outcome was lost to the fence)
-- is restaged, so that a later pair takes it: whoever ends a claim row
-- moves the tasks it still holds out of it in the same statement
-- (migration 026). $3: those of $1 whose every task's outcome the fence
-- let through (each deleted, or given a lease of its own), whose stretch
-- holds nothing left to move (a claim restages what it passes over:
-- migration 028), so it is not read: at the end of a drain's claim that
-- read was every index entry and row of the tasks just deleted, about a
-- fifth of the server's time a task (bench/RESULTS.md, "Claims ended
-- without reading their tasks again").
WITH ended AS (
  SELECT c.*, c.id = ANY ($3::bigint[]) AS settled FROM pgbg.claim c WHERE c.id = ANY ($1::bigint[]) AND c.worker_id = $2::uuid
  FOR UPDATE
)
{{EndClaimRows:staged_xact = pg_current_xact_id()}};

-- fragment: OwnLease
-- What gives task `t`, held by claim row `c`, a lease of its own: running,
-- leased to c's worker until c's lease ends, the next lease token, and the
-- attempt counted (a claim row's claim does not count it: migration 026).
state = 'running', attempts = t.attempts + 1, lease_token = t.lease_token + 1,
  worker_id = c.worker_id, lease_expires_at = c.lease_expires_at

-- fragment: EndClaimRows
-- Ends the claim rows of `ended` (a CTE the statement begins with, whose
-- `settled` says a claim has no task left in it), with
-- what is left of their tasks moved out of them by `SET {{@}}`: whoever
-- ends a claim row moves its tasks out of it in the same statement
-- (migration 026). Each row is deleted, but a lane's newest, which the
-- lane's next claim goes on from, is kept, held by nobody (the rescue's
-- statement prunes it once a newer one comes: LeaseExpiredClaims). Only
-- the rows ended and the lane's newer ones are read: a lane's older rows,
-- deleted and not yet vacuumed, are as many as its claims while vacuum is
-- held back, and a read of them all made every end slower than the last.
-- Returns how many claims and tasks it ended and moved.
, moved AS (
  UPDATE pgbg.task t SET {{@}}
  FROM ended c
  WHERE t.ctid = ANY (ARRAY(
    -- Each claim's tasks by a range of its lane, read in lane order between
    -- the stretch's bounds (`group_name IS NULL` lets the partial claim
    -- index serve; unordered, a bitmap scan read the whole lane), in a
    -- lateral join whose OFFSET keeps it from being flattened, found by
    -- row address: as a join of `ended` to the table, InClaim was planned
    -- as a sequential scan of the whole table at every end.
    SELECT x.ctid FROM ended c
    CROSS JOIN LATERAL (
      SELECT t.ctid FROM pgbg.task t WHERE {{ClaimStretch}} ORDER BY t.staged_xact, t.id OFFSET 0
    ) x
    WHERE NOT c.settled
  ))
    AND {{InClaim}} AND {{KnowsClaimRows}}
  RETURNING t.id
),
gone AS (
  DELETE FROM pgbg.claim c
  WHERE c.id IN (SELECT e.id FROM ended e) AND {{NotNewestClaim}}
  RETURNING c.id
),
unheld AS (
  UPDATE pgbg.claim c SET worker_id = NULL, lease_expires_at = NULL
  WHERE c.id IN (SELECT e.id FROM ended e) AND c.id NOT IN (SELECT g.id FROM gone g)
  RETURNING c.id
)
SELECT (SELECT count(*) FROM ended) AS claims, (SELECT count(*) FROM moved) AS tasks
WHERE (SELECT count(*) FROM gone) + (SELECT count(*) FROM unheld) >= 0

-- fragment: KnowsClaimRows
-- Says, for the rest of the transaction, that its writes know claim rows:
-- the guard of migration 028 (task_claim_guard), which fails a row claim
-- of an earlier release that would turn a task a claim row holds running,
-- lets them through (giving a held task a lease of its own is this
-- release's to do). A sub-select run once, before the statement's first
-- row is written. The row claims of this release (ClaimCandidates) are of
-- tasks with a group alone since migration 029, which the guard's WHEN
-- leaves alone, and do not say it.
(SELECT set_config('pgbg_claim.known', 'on', true)) = 'on'

-- fragment: NotNewestClaim
-- Whether claim row `c` is not its lane's newest: a newer one exists (read
-- from c on in claim_lane_idx).
EXISTS (SELECT FROM pgbg.claim n WHERE n.queue = c.queue AND n.name = c.name AND n.priority = c.priority AND n.id > c.id)

-- fragment: IsHeld
-- Whether task `t` is one a claim row holds: a claim by claim rows leaves
-- its tasks' rows queued (migration 026), and every reader of "running"
-- reads both kinds, so a task a claim row holds is running, leased to the
-- claim's worker, its attempt under way. A probe of claim_lane_idx per
-- queued task, and none at all while no claim row is held (the first
-- sub-select runs once per statement): for the readers of a few tasks (a
-- task, a page of them, a cancel); those that count the whole table use
-- HeldCounts.
(CASE WHEN t.state <> 'queued' OR NOT (SELECT EXISTS (SELECT FROM pgbg.claim h WHERE h.worker_id IS NOT NULL)) THEN false
  ELSE {{HeldByClaim:c.worker_id IS NOT NULL}} END)

-- fragment: HeldCounts
-- The tasks claim rows hold, per queue and name, as `held`: `running`, all
-- of them, and `queued`, those whose cancel was not asked (the ones a
-- count of queued tasks counted). For the readers that count the whole
-- table (status, the depth sample), which move them from the queued to
-- the running: read once per call, one ordered range of its lane per held
-- claim row, where IsHeld per task would probe the claim rows once for
-- every queued task.
held AS (
  SELECT x.queue, x.name, count(*) AS running, count(*) FILTER (WHERE x.cancel_requested_at IS NULL) AS queued
  FROM pgbg.claim c
  CROSS JOIN LATERAL (
    SELECT t.queue, t.name, t.cancel_requested_at FROM pgbg.task t
    WHERE {{ClaimStretch}} ORDER BY t.staged_xact, t.id OFFSET 0
  ) x
  WHERE c.worker_id IS NOT NULL
  GROUP BY x.queue, x.name
)

-- fragment: HeldByClaim
-- Whether the queued task `t` is one a claim row `c` holds for which
-- {{@}} (a condition on c's worker: any held row, or one worker's), by a
-- probe of claim_lane_idx.
EXISTS (SELECT FROM pgbg.claim c WHERE {{@}} AND {{InClaim}})

-- fragment: ClaimWorker
-- The worker whose claim row holds task `t`, or NULL (IsHeld).
(SELECT c.worker_id FROM pgbg.claim c WHERE t.state = 'queued' AND c.worker_id IS NOT NULL AND {{InClaim}} LIMIT 1)

-- fragment: LaneLock
-- The lock of lane `l` (queue, name, priority), as pgbg.claim_lane takes it
-- (migration 026), held to the end of the transaction.
pg_advisory_xact_lock(hashtext('pgbg.claim'), hashtext(l.queue || E'\n' || l.name || E'\n' || l.priority))

-- name: CompleteBatchTasks
-- CompleteTasks for batch members (the claim returned their batch_then):
-- the same fenced delete, and their batches' completion tasks counted down
-- in the same statement. Apart, so that the completion of every other task
-- stays the plain delete (a CTE around it cost the drain 5-10 % of server
-- CPU: bench/RESULTS.md, "Flows").
WITH sent AS MATERIALIZED (
  SELECT jsonb_object_agg({{SentKey:c.id, c.token}}, jsonb_build_array(c.token)) AS by_id FROM unnest($1::bigint[], $2::integer[]) AS c (id, token)
),
finished AS (
  DELETE FROM pgbg.task t
  WHERE t.ctid = ANY (ARRAY(
    {{LeasedRowAddresses}}
  ))
    AND {{LeaseHeld}}
  RETURNING t.id, t.batch_then
),
{{CountBatch:false}}
SELECT id FROM finished WHERE (SELECT count(*) FROM batch_counted) >= 0;

-- name: CompleteTaskInTransaction
-- ctx.complete(tx): the same fenced delete, for one task, in the handler's
-- own transaction.
DELETE FROM pgbg.task
WHERE id = $1 AND lease_token = $2 AND state = 'running'
RETURNING id;

-- name: CompleteBatchTaskInTransaction
-- CompleteTaskInTransaction of a batch member, counting down its batch's
-- completion task in the handler's transaction.
WITH finished AS (
  DELETE FROM pgbg.task
  WHERE id = $1 AND lease_token = $2 AND state = 'running'
  RETURNING id, batch_then
),
{{CountBatch:false}}
SELECT id FROM finished WHERE (SELECT count(*) FROM batch_counted) >= 0;

-- name: FailTasks
-- A failed attempt: queued again after its retry delay, or kept as failed
-- when it was permanent or the attempts are used up. $1 ids, $2 lease
-- tokens, $3 retry delays in ms, $4 errors (JSON text), $5 permanent (1) or not (0),
-- $6 max attempts for tasks that did not set their own.
-- Found and fenced as in CompleteTasks. A task failed for good that wants
-- its onFailed hook gets it in this statement (EnqueueFailedHooks), and
-- its waiters are woken (WakeWaiters).
WITH sent AS MATERIALIZED (
  SELECT jsonb_object_agg({{SentKey:f.id, f.token}}, jsonb_build_array(f.token, f.delay_ms, f.error::jsonb, f.permanent)) AS by_id
  FROM unnest($1::bigint[], $2::integer[], $3::float8[], $4::text[], $5::smallint[]) AS f (id, token, delay_ms, error, permanent)
),
released AS (
  UPDATE pgbg.task t SET
    state = CASE WHEN {{Sent:3}} = '1' OR t.attempts >= coalesce(t.max_attempts, $6) THEN 'failed' ELSE 'queued' END::pgbg.task_state,
    failed_at = CASE WHEN {{Sent:3}} = '1' OR t.attempts >= coalesce(t.max_attempts, $6) THEN now() END,
    run_at = CASE WHEN {{Sent:3}} = '1' OR t.attempts >= coalesce(t.max_attempts, $6) THEN t.run_at
             ELSE now() + {{Sent:1}}::float8 * interval '1 millisecond' END,
    last_error = (SELECT by_id FROM sent) -> {{SentKey:t.id, t.lease_token}} -> 2,
    errors = {{AppendError:((SELECT by_id FROM sent) -> {{SentKey:t.id, t.lease_token}} -> 2)}},
    lease_expires_at = NULL,
    worker_id = NULL
  WHERE t.ctid = ANY (ARRAY(
    {{LeasedRowAddresses}}
  ))
    AND {{LeaseHeld}}
  RETURNING t.id, t.state, t.queue, t.name, t.priority, t.payload, t.attempts, t.last_error, t.on_failed, t.cancel_requested_at, t.batch_then
),
{{EnqueueFailedHooks}},
finished AS (SELECT id, batch_then FROM released WHERE state = 'failed'),
{{WakeWaiters}},
{{CountBatch:true}}
SELECT id, state FROM released WHERE (SELECT count(*) FROM hooks) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: SnoozeTasks
-- ctx.retryAfter(ms): the task queued again after its wait ($3, ms), the
-- attempt not counted and the snooze counted; its last error stays. The
-- worker sends here only tasks under their maxSnoozes (it claimed their
-- count); past it a snooze is a failed attempt (FailTasks). $1 ids, $2
-- lease tokens. Found and fenced as in CompleteTasks.
WITH sent AS MATERIALIZED (
  SELECT jsonb_object_agg({{SentKey:s.id, s.token}}, jsonb_build_array(s.token, s.delay_ms)) AS by_id
  FROM unnest($1::bigint[], $2::integer[], $3::float8[]) AS s (id, token, delay_ms)
)
UPDATE pgbg.task t SET
  state = 'queued', run_at = now() + {{Sent:1}}::float8 * interval '1 millisecond', attempts = t.attempts - 1, snoozes = t.snoozes + 1,
  lease_expires_at = NULL, worker_id = NULL
WHERE t.ctid = ANY (ARRAY(
  {{LeasedRowAddresses}}
))
  AND {{LeaseHeld}}
RETURNING t.id;

-- name: HandBackTasks
-- A stopping worker hands its unfinished tasks back, claimable at once. A
-- hand-back does not count the attempt (the task did not fail); a release
-- (ReleaseWorkerTasks, RescueExpiredLeases) does. Found and fenced as in
-- CompleteTasks.
WITH sent AS MATERIALIZED (
  SELECT jsonb_object_agg({{SentKey:r.id, r.token}}, jsonb_build_array(r.token)) AS by_id FROM unnest($1::bigint[], $2::integer[]) AS r (id, token)
)
UPDATE pgbg.task t SET
  state = 'queued', run_at = {{RequeuedRunAt}}, attempts = t.attempts - 1,
  lease_expires_at = NULL, worker_id = NULL
WHERE t.ctid = ANY (ARRAY(
  {{LeasedRowAddresses}}
))
  AND {{LeaseHeld}}
RETURNING t.id;

-- name: ReleaseWorkerTasks
-- The leases of workers known to be dead ($3), released at once. A release
-- counts the attempt (the task may be what killed its worker), so a task
-- that keeps killing workers ends as failed. $1 default max attempts, $2
-- error JSON. The attempts it ends are counted in task_count in the same
-- statement, as a worker counts the ones it fails (CountReleased).
WITH released AS (
  UPDATE pgbg.task t SET {{ReleaseLease}}
  WHERE t.state = 'running' AND t.worker_id = ANY($3::uuid[])
  RETURNING t.id, t.state, t.queue, t.name, t.priority, t.payload, t.attempts, t.last_error, t.on_failed, t.cancel_requested_at, t.batch_then
),
{{CountReleased}},
{{EnqueueFailedHooks}},
finished AS (SELECT id, batch_then FROM released WHERE state = 'failed'),
{{CountBatch:true}}
SELECT id, state, queue, name FROM released WHERE (SELECT count(*) FROM hooks) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: HandBackWorkerTasks
-- The tasks of workers that stopped themselves because their heartbeat could
-- not get through, or past their stop's bound with every attempt ended
-- (cli/worker.ts): claimable at once, the attempt not counted, since the
-- task did not fail. Only while the worker's row exists: a worker another
-- host reaped has lost its row, and that host releases its tasks, counted
-- (ReleaseWorkerTasks), even if it has not done so yet.
UPDATE pgbg.task t SET
  state = 'queued', run_at = {{RequeuedRunAt}}, attempts = t.attempts - 1,
  lease_expires_at = NULL, worker_id = NULL
WHERE t.state = 'running' AND t.worker_id = ANY($1::uuid[])
  AND EXISTS (SELECT 1 FROM pgbg.worker w WHERE w.id = t.worker_id)
RETURNING t.id, t.state, t.queue, t.name;

-- name: RescueExpiredLeases
-- Tasks whose lease ran out (their worker vanished without anyone noticing):
-- claimable again, the attempt counted, and counted in task_count as
-- ReleaseWorkerTasks counts it. Uses task_lease_idx. $1 default max
-- attempts, $2 error JSON.
WITH released AS (
  UPDATE pgbg.task t SET {{ReleaseLease}}
  WHERE t.state = 'running' AND t.lease_expires_at < now()
  RETURNING t.id, t.state, t.queue, t.name, t.priority, t.payload, t.attempts, t.last_error, t.on_failed, t.cancel_requested_at, t.batch_then
),
{{CountReleased}},
{{EnqueueFailedHooks}},
finished AS (SELECT id, batch_then FROM released WHERE state = 'failed'),
{{CountBatch:true}}
SELECT id, state, queue, name FROM released WHERE (SELECT count(*) FROM hooks) + (SELECT count(*) FROM batch_counted) >= 0;

-- fragment: RequeuedRunAt
-- The run_at of a task `t` queued again at once (handed back, released or
-- rescued). Without a group: now, the time it is due again from (its
-- staging, by the trigger task_restaged, puts it behind the tasks due
-- before it). With one: its own, due already, so that it keeps its place in its
-- group's order, and a group limit of 1 still runs the group in enqueue
-- order when a worker dies or stops.
CASE WHEN t.group_name IS NULL THEN now() ELSE least(t.run_at, now()) END

-- fragment: ReleaseLease
-- What a release or rescue writes: the lease ended, the attempt counted, so
-- the task is queued again at once, or failed when its attempts are used
-- up ($1 the default max attempts); $2 (error JSON) becomes its last error.
state = CASE WHEN t.attempts >= coalesce(t.max_attempts, $1) THEN 'failed' ELSE 'queued' END::pgbg.task_state,
    failed_at = CASE WHEN t.attempts >= coalesce(t.max_attempts, $1) THEN now() END,
    run_at = {{RequeuedRunAt}},
    last_error = $2::text::jsonb,
    errors = {{AppendError:$2::text::jsonb}},
    lease_expires_at = NULL,
    worker_id = NULL

-- fragment: AppendError
-- The errors of task `t` with one more at their end, the error {{@}} with
-- the worker that ran the attempt (`t`'s before the update), its number,
-- and its end (`at`: the error's own where it has one, a worker's; now for
-- a release's); the last 20 kept (migration 016).
jsonb_path_query_array(coalesce(t.errors, '[]'::jsonb)
      || jsonb_build_array(jsonb_build_object('at', now()) || {{@}} || jsonb_build_object('worker', t.worker_id, 'attempt', t.attempts)),
    '$[last - 19 to last]')

-- fragment: EnqueueFailedHooks
-- The onFailed hook of each task of `released` that failed for good and
-- wants one, and was not cancelled: a task named "<name>:on-failed" in the
-- task's queue, at its priority, its input what the handler is told
-- (lib/hooks.ts). In the failing statement, so a failure and its hook
-- commit together. Inserted by pgbg.enqueue_failed_hook, called only for
-- such a task (migration 007 says why); the statement reads `hooks` so
-- that it runs. defineTask keeps names with a hook short enough for the
-- suffix.
hooks AS (
  SELECT pgbg.enqueue_failed_hook(id, queue, name, priority, payload, attempts, last_error) AS id
  FROM released
  WHERE state = 'failed' AND on_failed AND cancel_requested_at IS NULL
)

-- fragment: CountReleased
-- The attempts a release or rescue ended (the CTE `released`), added to the
-- current 10-second period of task_count as failed (kept as failed) or
-- retried (queued again): `pgbg status` and the metrics count an attempt a
-- worker's death ended as they count one its handler failed. In the
-- releasing statement, so that a release is counted once and only if it
-- happened.
counted AS (
  INSERT INTO pgbg.task_count AS c (period, queue, name, failed, retried)
  SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10), queue, name,
    count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'queued')
  FROM released
  GROUP BY queue, name
  -- In key order, as RecordTaskCounts: two upserts of several rows each
  -- cannot then lock them in opposite orders and deadlock.
  ORDER BY queue, name
  ON CONFLICT (period, queue, name) DO UPDATE SET
    failed = c.failed + excluded.failed,
    retried = c.retried + excluded.retried
)

-- name: RegisterWorker
INSERT INTO pgbg.worker (id, supervisor_id, pid, concurrency, hostname, runtime, queues, tasks, stale_after_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7::text[], $8::text[], $9);

-- name: HeartbeatWorker
-- No row back means another supervisor declared this worker dead and
-- released its tasks: the worker must stop. `cancelled` lists the worker's
-- running tasks that `pgbg cancel` asked to stop, its claim rows' among
-- them (task_cancel_idx, empty nearly always: a claim row's task has no
-- worker in its row, and a queued task's cancel deletes it unless a claim
-- row holds it).
UPDATE pgbg.worker SET heartbeat_at = now() WHERE id = $1
RETURNING id, ARRAY(
  SELECT t.id FROM pgbg.task t
  WHERE t.worker_id = $1 AND t.cancel_requested_at IS NOT NULL AND t.state = 'running'
  UNION ALL
  SELECT t.id FROM pgbg.task t
  WHERE t.worker_id IS NULL AND t.cancel_requested_at IS NOT NULL AND t.state = 'queued' AND {{HeldByClaim:c.worker_id = $1}}
) AS cancelled;

-- name: FinishCancelledTasks
-- Deletes cancelled tasks whose attempt ended, fenced by the lease like
-- every write about an attempt, keeping those that keep their history as
-- cancelled. $1 ids, $2 their lease tokens.
WITH ending AS (
  -- Read by the trigger that settles a flow's dependants: these running
  -- tasks end cancelled, not completed (migration 014).
  SELECT set_config('pgbg_flow.ending', 'cancel', true) AS ending
),
finished AS (
  DELETE FROM pgbg.task t
  USING unnest($1::bigint[], $2::integer[]) AS c (id, token)
  WHERE t.id = c.id AND t.lease_token = c.token AND t.state = 'running' AND (SELECT ending FROM ending) IS NOT NULL
  RETURNING {{CancelledColumns}}
),
{{KeepFinished}},
{{CountBatch:true}}
SELECT id FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: RecordTaskCounts
-- A worker adds the outcomes it wrote since its last heartbeat, and the
-- start latencies of the attempts it started, to the current 10-second
-- period: one statement per heartbeat, not per batch. $1 queues, $2 names,
-- $3 completed, $4 failed, $5 retried, one entry per pair (the caller merges
-- counts kept from a failed write: one INSERT ... ON CONFLICT cannot update
-- a row twice); $6 the lag buckets of every pair, $7 of them each, one
-- pair's after the other's.
INSERT INTO pgbg.task_count AS c (period, queue, name, completed, failed, retried, lag)
SELECT to_timestamp(floor(extract(epoch FROM now()) / 10) * 10), q, n, done, failed, retried,
  ($6::bigint[])[(i - 1) * $7::int + 1 : i * $7::int]
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) WITH ORDINALITY AS x (q, n, done, failed, retried, i)
ORDER BY q, n
ON CONFLICT (period, queue, name) DO UPDATE SET
  completed = c.completed + excluded.completed,
  failed = c.failed + excluded.failed,
  retried = c.retried + excluded.retried,
  lag = CASE WHEN c.lag IS NULL THEN excluded.lag ELSE
    ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0) FROM unnest(c.lag, excluded.lag) AS u (a, b)) END;

-- name: DeleteCancelledTasks
-- Cancelled tasks that left `running` before their worker deleted them
-- (failed or handed back first, or their worker died), up to 1,000 per run,
-- keeping those that keep their history as cancelled. Not one a claim row
-- holds: its worker aborts it at its next heartbeat.
-- Reads task_cancel_idx in its order, which a LIMIT keeps cheap whatever
-- the planner estimates for `IS NOT NULL` (bench/RESULTS.md, item 11).
WITH finished AS (
  DELETE FROM pgbg.task t
  WHERE t.ctid = ANY (ARRAY(
    SELECT ctid FROM pgbg.task
    WHERE cancel_requested_at IS NOT NULL AND state <> 'running'
    ORDER BY worker_id
    LIMIT 1000
  ))
    -- Checked on the rows found, not in their search: there, its sub-select
    -- made a table never analyzed be read whole.
    AND NOT {{IsHeld}}
  RETURNING {{CancelledColumns}}
),
{{KeepFinished}},
{{CountBatch:true}}
SELECT id FROM finished WHERE (SELECT count(*) FROM kept) + (SELECT count(*) FROM woken) + (SELECT count(*) FROM batch_counted) >= 0;

-- name: PruneTaskCounts
-- Counts are kept for 24 hours: the dashboard's charts reach that far back
-- (`pgbg status` shows the last minute).
DELETE FROM pgbg.task_count WHERE period < now() - interval '24 hours';

-- name: PruneTaskDepth
-- Depth samples are kept for 24 hours, as counts are. Its own statement:
-- a role without the grant on task_depth still prunes task_count.
DELETE FROM pgbg.task_depth WHERE minute < now() - interval '24 hours';

-- name: SampleTaskDepth
-- The queue's depth this minute, per queue and task name and in all (the
-- row of queue '' and name ''), unless a host sampled this minute already:
-- one host's count a minute, whatever the number of hosts. Two that sample
-- at once both count; the second's totals' row meets the first's and is
-- dropped, and with it all its rows, so that a minute's rows are one
-- count's. Counted as TaskStatus counts, the tasks claim rows hold moved
-- from the queued to the running (HeldCounts).
WITH {{HeldCounts}},
counted AS (
  -- coalesce: the totals' row of no task at all sums nothing.
  SELECT queue, name, coalesce(sum(queued), 0) AS queued, coalesce(sum(scheduled), 0) AS scheduled, coalesce(sum(running), 0) AS running
  FROM (
    SELECT queue, name, (state = 'queued' AND run_at <= now())::int AS queued, (state = 'queued' AND run_at > now())::int AS scheduled,
      (state = 'running')::int AS running
    FROM pgbg.task
    WHERE state IN ('queued', 'running') AND (cancel_requested_at IS NULL OR state = 'running')
    UNION ALL
    SELECT queue, name, -queued, 0, running FROM held
  ) t
  WHERE NOT EXISTS (SELECT FROM pgbg.task_depth WHERE minute = date_trunc('minute', now()))
  -- The empty grouping set gives the totals' row even when no task matched.
  GROUP BY GROUPING SETS ((queue, name), ())
),
totals AS (
  INSERT INTO pgbg.task_depth (minute, queue, name, queued, scheduled, running)
  SELECT date_trunc('minute', now()), '', '', queued, scheduled, running FROM counted WHERE queue IS NULL
  ON CONFLICT (minute, queue, name) DO NOTHING
  RETURNING minute
)
INSERT INTO pgbg.task_depth (minute, queue, name, queued, scheduled, running)
SELECT date_trunc('minute', now()), queue, name, queued, scheduled, running FROM counted
WHERE queue IS NOT NULL AND EXISTS (SELECT FROM totals)
ORDER BY queue, name
ON CONFLICT (minute, queue, name) DO NOTHING;

-- name: AddWorkerDetached
-- Adds $2 (1 or -1) to the attempts the worker $1 let run on detached
-- (they keep their leases but not their slots; QueueFreeSlots counts
-- them). An addition, so that two at once cannot lose one.
UPDATE pgbg.worker SET detached = greatest(0, detached + $2) WHERE id = $1;

-- name: SetWorkerIdle
-- While a worker is idle, enqueues send it a wake-up (the insert trigger).
UPDATE pgbg.worker SET idle = $2 WHERE id = $1;

-- name: RemoveWorkers
DELETE FROM pgbg.worker WHERE id = ANY($1::uuid[]);

-- name: ReapStaleWorkers
-- Workers of other supervisors whose heartbeat is older than their own
-- stale_after_ms (or $1 ms, for rows of an older pgbg) are taken for dead and
-- their rows removed; the caller then releases their tasks with
-- ReleaseWorkerTasks (should it die in between, the leases expire instead).
-- $2 is the calling host, whose own workers it watches directly. $3:
-- for how many ms the caller has reached the database without a break. A
-- worker is judged only after a full threshold of that, since during an
-- outage no worker could heartbeat.
DELETE FROM pgbg.worker
WHERE supervisor_id <> $2::uuid
  AND heartbeat_at < now() - coalesce(stale_after_ms, $1::bigint) * interval '1 millisecond'
  AND $3::float8 >= coalesce(stale_after_ms, $1::bigint)
RETURNING id;

-- name: ScheduledTasks
-- For drain(): of the claimable tasks of names $2 in queues $1 (NULL: every
-- queue), how many are not due yet, and in how many ms the first falls due
-- (0 or less: one is due now, such as a retry just written). Paused
-- queues are left out, and queues at their concurrency limit, and groups
-- at their group limit: their tasks are not claimable now, and drain()
-- would claim again at once for ever.
-- A queue whose rate limit is used up has its tasks due when it has room
-- again (the oldest logged start of a full log, one interval on), and so
-- has a group whose group rate limit is.
SELECT count(*) FILTER (WHERE d.due > now())::int AS scheduled,
  (extract(epoch FROM min(d.due) - now()) * 1000)::float8 AS next_due_ms
FROM (
  SELECT greatest(t.run_at, (SELECT {{RateRoomAt}} FROM pgbg.queue q WHERE q.name = t.queue AND q.rate_limit IS NOT NULL),
      (SELECT {{GroupRateRoomAt}} FROM pgbg.queue q JOIN pgbg.group_rate g ON g.queue = q.name
       WHERE q.name = t.queue AND q.group_rate_limit IS NOT NULL AND g.group_name = t.group_name)) AS due
  FROM pgbg.task t
  WHERE state = 'queued' AND cancel_requested_at IS NULL AND name = ANY($2::text[])
    AND ($1::text[] IS NULL OR queue = ANY($1::text[]))
    AND NOT EXISTS (
      SELECT FROM pgbg.queue q WHERE q.name = t.queue AND (q.paused_at IS NOT NULL
        OR q.concurrency <= (SELECT count(*) FROM pgbg.task r WHERE r.state = 'running' AND r.queue = q.name)
        OR (t.group_name IS NOT NULL AND q.group_concurrency <= (SELECT count(*) FROM pgbg.task r
          WHERE r.state = 'running' AND r.group_name IS NOT NULL AND r.queue = q.name AND r.group_name = t.group_name))))
) d;

-- fragment: CountBatch
-- Counts down the completion tasks of the batch members among the CTE
-- `finished` (id, batch_then) that ended here, failed for good or
-- cancelled when {{@}} (migration 014): one call per statement, none when
-- no member ended. The statement reads `batch_counted` so that it runs.
batch_counted AS (
  SELECT pgbg.count_batch_members(array_agg(batch_then), array_agg(id), {{@}})
  FROM finished WHERE batch_then IS NOT NULL
  HAVING count(*) > 0
)
