-- 009_task_key_window: dedup keys held for a window (throttle).
--
-- A key given to enqueue holds while its task is pending (task_key_idx).
-- With a window, it holds longer: for `ms` after the enqueue, or after the
-- task finished (completed, cancelled or failed for good), and an enqueue
-- of the key meanwhile writes nothing. Those holds outlive the task's row,
-- so they live here, one row per key. The row is taken, or found held, by
-- an INSERT ... ON CONFLICT on its primary key in the enqueue's statement:
-- concurrent enqueues of one key queue on that row, and exactly one takes
-- it.
CREATE TABLE pgbg.task_key (
  key        text NOT NULL,
  -- The task that took the key last (set just after its enqueue).
  task_id    bigint,
  -- Until when the key holds; NULL while it holds until its task finishes
  -- (a window from the finish), which task_key_release then sets.
  held_until timestamptz,
  CONSTRAINT task_key_pkey PRIMARY KEY (key)
);

-- The window a task holds its key for after it finishes; NULL for none.
ALTER TABLE pgbg.task ADD COLUMN key_hold interval;

-- When a task holding its key past its finish finishes, its key holds for
-- its window from now. Row triggers with a WHEN clause: for any other task
-- the condition is false and nothing runs, so the drain of tasks without
-- such a key does not call it (bench/RESULTS.md measures it).
CREATE FUNCTION pgbg.task_key_release() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  UPDATE pgbg.task_key SET held_until = now() + OLD.key_hold WHERE key = OLD.key AND held_until IS NULL;
  RETURN NULL;
END
$$;
CREATE TRIGGER task_key_finished AFTER DELETE ON pgbg.task
  FOR EACH ROW WHEN (OLD.key_hold IS NOT NULL) EXECUTE FUNCTION pgbg.task_key_release();
CREATE TRIGGER task_key_failed AFTER UPDATE OF state ON pgbg.task
  FOR EACH ROW WHEN (NEW.state = 'failed' AND OLD.key_hold IS NOT NULL) EXECUTE FUNCTION pgbg.task_key_release();
