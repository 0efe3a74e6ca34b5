-- 021_task_schedule: the schedule that enqueued a task.
--
-- The task page names a task's schedule, beside its flow. The scheduler
-- sets it in the transaction that enqueues the tick's task and advances
-- the schedule (MarkScheduledTasks): the enqueue statement is unchanged,
-- and tasks enqueued by the app write nothing more. A task kept in the
-- history keeps it. Columns without a default: added without a rewrite,
-- and the previous release's statements, which never name them, go on
-- working.
ALTER TABLE pgbg.task ADD COLUMN schedule text;
ALTER TABLE pgbg.history ADD COLUMN schedule text;
