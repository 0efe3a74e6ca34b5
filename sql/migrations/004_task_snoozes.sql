-- 004_task_snoozes: how many times each task was snoozed.
--
-- A handler may call ctx.retryAfter(ms) to put its task back for later
-- without counting the attempt (a snooze). A task that snoozed its task's
-- maxSnoozes times counts every further snooze as a failed attempt, so that
-- one that snoozes forever still ends. The count lives on the row because
-- a snooze hands the task to whichever worker claims it next.
--
-- A column with a constant default is added without rewriting the table;
-- statements of the previous release name their columns and never this one,
-- so its workers go on claiming and completing while this one migrates.
ALTER TABLE pgbg.task ADD COLUMN snoozes integer NOT NULL DEFAULT 0
  CONSTRAINT task_snoozes_in_range CHECK (snoozes >= 0);
