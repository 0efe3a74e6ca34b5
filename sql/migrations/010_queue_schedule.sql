-- 010_queue_schedule: queue controls (pause, a concurrency limit), and
-- recurring tasks (schedules).
--
-- A queue's row exists only once an operator paused it or set its limit.
-- Every claim probes it per lane (queue_pkey): a paused queue is skipped,
-- so every worker of every host stops claiming from it at its next claim,
-- and a limited one is left to the limited claim (ClaimLimitedTasks).
CREATE TABLE pgbg.queue (
  name        text NOT NULL,
  paused_at   timestamptz,
  -- At most this many of the queue's tasks run at once, across every host.
  concurrency integer,
  CONSTRAINT queue_pkey PRIMARY KEY (name),
  CONSTRAINT queue_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
  CONSTRAINT queue_concurrency_positive CHECK (concurrency >= 1)
);

-- A schedule is defined in code (defineSchedule); its row records which of
-- its ticks are handled. A host fires a tick by advancing last_tick from
-- the value it read (compare and set) in the transaction that enqueues the
-- tick's task, so a tick is enqueued once however many hosts see it due,
-- and not again after the task has left the queue.
CREATE TABLE pgbg.schedule (
  name             text NOT NULL,
  task             text NOT NULL,
  cron             text NOT NULL,
  timezone         text NOT NULL,
  -- The newest tick handled: fired, or skipped by the catch-up policy.
  last_tick        timestamptz NOT NULL,
  -- When a tick last enqueued a task, and that task's id.
  last_fired_at    timestamptz,
  last_task_id     bigint,
  -- The next tick, as the host that last handled it computed it.
  next_tick        timestamptz,
  -- When a host last declared it: a schedule no host declares has left the code.
  seen_at          timestamptz NOT NULL DEFAULT now(),
  -- Set by runSchedule (pgbg run-schedule): fire once now, outside the cron.
  run_requested_at timestamptz,
  CONSTRAINT schedule_pkey PRIMARY KEY (name),
  CONSTRAINT schedule_name_length CHECK (char_length(name) BETWEEN 1 AND 128)
);
