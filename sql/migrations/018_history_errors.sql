-- 018_history_errors: a kept task keeps each failed attempt's error.
--
-- Migration 016 kept the errors of a task's failed attempts in the queue
-- only: a task that failed twice and then succeeded, or was cancelled,
-- lost them when it moved into the history, and its page showed none. The
-- statements that move a task there (KeepFinished) copy them too. A column
-- without a default, added to the partitioned table and so to every slot,
-- without a rewrite; the previous release's inserts, which never name it,
-- leave it null.
ALTER TABLE pgbg.history ADD COLUMN errors jsonb;
