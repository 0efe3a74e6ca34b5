-- 002_operations: what operators need beyond the queue itself: cancelling a
-- running task, and counts of recent outcomes (a successful task leaves no
-- row behind to count).

-- Set by `pgbg cancel` on a running task. Its worker learns of it with its
-- next heartbeat, aborts the attempt's signal and deletes the task when the
-- attempt ends. A task that left `running` before its worker noticed (failed,
-- released, rescued) is deleted by the supervisor's check, and no claim takes
-- it meanwhile. NULL costs no space in the row.
ALTER TABLE pgbg.task ADD COLUMN cancel_requested_at timestamptz;

-- Holds only tasks whose cancel was requested, so it is empty nearly always
-- and costs the claim and the completions nothing; the heartbeat looks up
-- its worker's cancelled tasks through it.
CREATE INDEX task_cancel_idx ON pgbg.task (worker_id)
  WHERE cancel_requested_at IS NOT NULL;

-- Outcomes per 10-second period, queue and task name. Workers add what they
-- wrote since their last heartbeat, once per heartbeat (never per task or per
-- batch), so the drain pays nothing for it; supervisors delete periods older
-- than an hour.
CREATE TABLE pgbg.task_count (
  period    timestamptz NOT NULL,
  completed bigint NOT NULL DEFAULT 0,
  -- Attempts that failed for good (the task is kept as failed).
  failed    bigint NOT NULL DEFAULT 0,
  -- Attempts that failed and were queued again for a retry.
  retried   bigint NOT NULL DEFAULT 0,
  queue     text NOT NULL,
  name      text NOT NULL,
  CONSTRAINT task_count_pkey PRIMARY KEY (period, queue, name)
);
