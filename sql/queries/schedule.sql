-- Statements of recurring tasks (lib/scheduler.ts). A tick is fired in one
-- transaction that locks its schedule's row (LockSchedule), enqueues the
-- tick's task and advances last_tick (AdvanceSchedule): a host that finds
-- the row locked leaves it to the one holding it, and one that locks it
-- after reads the advanced last_tick, so no tick is enqueued twice.

-- name: DeclareSchedules
-- A host's schedules: $1 names, $2 task names, $3 crons, $4 time zones,
-- $5 their next ticks. A new schedule starts from now: ticks before its
-- first declaration do not fire. A schedule whose cron or time zone
-- changed gets the new next tick; its last tick stays.
INSERT INTO pgbg.schedule (name, task, cron, timezone, last_tick, next_tick)
SELECT s.name, s.task, s.cron, s.timezone, now(), s.next_tick
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS s (name, task, cron, timezone, next_tick)
ON CONFLICT (name) DO UPDATE SET
  task = excluded.task, cron = excluded.cron, timezone = excluded.timezone, seen_at = now(),
  next_tick = CASE WHEN (pgbg.schedule.cron, pgbg.schedule.timezone) IS DISTINCT FROM (excluded.cron, excluded.timezone)
                   THEN excluded.next_tick ELSE pgbg.schedule.next_tick END;

-- name: ScheduleStates
-- $1 names. Read without a lock, to find the schedules with a tick due or
-- a run asked for; the database's now() is the clock ticks are due by.
SELECT name, last_tick, run_requested_at, now() AS now FROM pgbg.schedule WHERE name = ANY($1::text[]);

-- name: LockSchedule
-- $1 name. SKIP LOCKED: a host firing it now holds the row.
SELECT name, last_tick, run_requested_at, now() AS now FROM pgbg.schedule WHERE name = $1 FOR UPDATE SKIP LOCKED;

-- name: AdvanceSchedule
-- In the transaction that enqueued the ticks' tasks: $1 name, $2 newest
-- tick handled (NULL: none), $3 next tick, $4 whether a run asked for was
-- handled, $5 the last task enqueued (NULL: none).
UPDATE pgbg.schedule SET
  last_tick = greatest(last_tick, $2::timestamptz),
  next_tick = $3::timestamptz,
  run_requested_at = CASE WHEN $4::boolean THEN NULL ELSE run_requested_at END,
  last_fired_at = CASE WHEN $5::bigint IS NULL THEN last_fired_at ELSE now() END,
  last_task_id = coalesce($5::bigint, last_task_id)
WHERE name = $1;

-- name: MarkScheduledTasks
-- In the same transaction: the tasks $1 were enqueued by schedule $2 (the
-- task page names it). Their rows were inserted in this transaction, so
-- nothing else holds them.
UPDATE pgbg.task SET schedule = $2 WHERE id = ANY($1::bigint[]);

-- name: RequestScheduleRun
-- $1 name: a host running the schedule fires it once at its next check.
UPDATE pgbg.schedule SET run_requested_at = coalesce(run_requested_at, now()) WHERE name = $1 RETURNING name;

-- name: ListSchedules
SELECT name, task, cron, timezone, last_tick, last_fired_at, last_task_id, next_tick, seen_at, run_requested_at, now() AS now
FROM pgbg.schedule ORDER BY name;
