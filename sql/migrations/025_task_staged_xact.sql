-- 025_task_staged_xact: each queued task records the transaction that put
-- it in its lane, the first stage of the snapshot-pair claim
-- (docs/storage.md, "What the drain target needs").
--
-- That claim will cut each lane into batches by pairs of snapshots, as PgQ
-- does: a claim takes the tasks its snapshot sees and the previous claim's
-- did not, judged by this transaction. So the transaction must be the one
-- whose commit made the task claimable, and a task must get a new one each
-- time it becomes claimable again; one left with an old transaction would
-- be behind every later pair and never claimed. The rule:
-- - a task queued and due when its row is written is staged by the
--   transaction that wrote it (the enqueue statements and the flow's
--   insert set it). The column has no default: a row inserted by any
--   other writer (a hand-written insert, an onFailed hook, the previous
--   release's enqueue during a rolling upgrade) has none, and is staged
--   by a claim once due (migration 026). A default of the writing
--   transaction would stage a delayed task at once, and a claim by
--   snapshots, which judges no run_at, would run it early;
-- - a task not yet due (a delay, a retry's backoff, a snooze) has none
--   until it is due: a claim by snapshots judges no run_at, so the claim
--   of its lane stages it then (migration 026);
-- - every change back to queued, and every change of a queued task's
--   run_at, priority or group, restages it: the trigger below, so that the
--   rule holds for every writer, those of the previous release among them
--   (a worker of the previous release serves on this schema during a
--   rolling upgrade: tests/upgrade.test.ts).
-- Nothing claims by it yet: the claims still read run_at order
-- (task_claim_idx), and the column costs the enqueue its width and one
-- function call a row (bench/RESULTS.md, "The staged transaction").
--
-- Without a default, so that the table is not rewritten: tasks queued
-- before this migration have none, and count as not staged.
ALTER TABLE pgbg.task ADD COLUMN staged_xact xid8;

-- Restages a task that became queued, or was moved, by an UPDATE that did
-- not set staged_xact itself: staged by this transaction when due, else
-- unstaged. AFTER, not BEFORE: a BEFORE row trigger on UPDATE makes every
-- update of the table (the claim's among them) lock each row before
-- writing it, where this one only judges its WHEN on the claim's rows.
CREATE FUNCTION pgbg.task_restage() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  UPDATE pgbg.task SET staged_xact = CASE WHEN run_at <= now() THEN pg_current_xact_id() END
  WHERE id = NEW.id;
  RETURN NULL;
END
$$;

CREATE TRIGGER task_restaged AFTER UPDATE OF state, run_at, priority, group_name ON pgbg.task
  FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.staged_xact IS NOT DISTINCT FROM OLD.staged_xact
    AND (OLD.state <> 'queued' OR NEW.run_at <> OLD.run_at OR NEW.priority <> OLD.priority
      OR NEW.group_name IS DISTINCT FROM OLD.group_name))
  EXECUTE FUNCTION pgbg.task_restage();
