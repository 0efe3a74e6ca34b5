-- 012_task_group: groups of tasks within a queue (a tenant, an account),
-- claimed in turn, and a concurrency limit per group.
--
-- A task's group is set at enqueue (defineTask's `group`, or the enqueue's
-- own option). A grouped task waits in task_group_idx, not in
-- task_claim_idx: the ordinary claim reads a lane in enqueue order and
-- would serve one group's backlog before every other group's tasks. The
-- group claim (ClaimGroupTasks) instead walks the queue's groups from
-- where the worker's last claim stopped, one index probe per group, and
-- takes a few tasks of each in turn.
ALTER TABLE pgbg.task
  ADD COLUMN group_name text,
  ADD CONSTRAINT task_group_name_length CHECK (group_name IS NULL OR char_length(group_name) BETWEEN 1 AND 256);

-- At most this many tasks of any one group of the queue run at once,
-- across every host (1: one at a time, in enqueue order).
ALTER TABLE pgbg.queue
  ADD COLUMN group_concurrency integer,
  ADD CONSTRAINT queue_group_concurrency_positive CHECK (group_concurrency >= 1);

-- The ordinary claim's index holds the tasks without a group only.
DROP INDEX pgbg.task_claim_idx;
CREATE INDEX task_claim_idx ON pgbg.task (queue, priority, run_at, id)
  WHERE state = 'queued' AND group_name IS NULL;

-- The group claim's: a group's tasks together, in claim order, so that the
-- distinct groups of a queue are found by skipping from one to the next.
CREATE INDEX task_group_idx ON pgbg.task (queue, group_name, priority, run_at, id)
  WHERE state = 'queued' AND group_name IS NOT NULL;

-- The running tasks of a group, counted by the limited claim against the
-- group's limit: one short range per group, among the running tasks only.
CREATE INDEX task_group_running_idx ON pgbg.task (queue, group_name)
  WHERE state = 'running' AND group_name IS NOT NULL;
