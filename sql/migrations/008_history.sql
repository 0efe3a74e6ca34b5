-- 008_history: finished tasks kept for a while, with their results, out of
-- the queue's table.
--
-- A task that declares a result schema keeps its final state and result
-- for a retention time (an hour unless it says otherwise), and any task may
-- keep its completed history. The task table stays the queue: success still
-- deletes the row, in the same statement that copies what is kept into
-- pgbg.history. So the queue's table neither grows with history nor is
-- bloated by its deletion, and tasks that keep nothing write nothing more.
--
-- pgbg.history is never deleted from. It is split into eight partitions
-- (slots), filled one at a time: pgbg.history_rotation names the slot that
-- finished tasks go into now. A maintenance service (HistoryRotator) moves
-- to the next empty slot once the current one has filled for a while, and
-- empties a slot with TRUNCATE once every row in it has expired:
-- no dead rows, no vacuum, and the space comes back at once, whatever a
-- long transaction holds (the rotation of PgQ's event tables, applied to
-- history). A row outlives its retention until its whole slot expired;
-- reads leave expired rows out.

-- Retentions, from the task's definition at enqueue, read where no
-- definition is loaded (an admin's cancel, the failed-task pruner). NULL:
-- nothing kept (completed), kept for ever (failed). Columns without a
-- default: added without rewriting the table, and the previous release's
-- statements, which never name them, go on working.
ALTER TABLE pgbg.task ADD COLUMN keep_completed interval;
ALTER TABLE pgbg.task ADD COLUMN keep_failed interval;

-- The failed-task pruner's way to the failed tasks (few, nearly always).
CREATE INDEX task_failed_idx ON pgbg.task (failed_at) WHERE state = 'failed';

CREATE TABLE pgbg.history (
  id          bigint NOT NULL,
  slot        smallint NOT NULL,
  -- completed, or cancelled (a kept task whose cancel was asked).
  state       text NOT NULL,
  queue       text NOT NULL,
  name        text NOT NULL,
  key         text,
  attempts    integer NOT NULL,
  enqueued_at timestamptz NOT NULL,
  finished_at timestamptz NOT NULL,
  -- Reads leave the row out from here on; its slot is emptied after.
  expires_at  timestamptz NOT NULL,
  -- Its input, as stored.
  payload     jsonb NOT NULL,
  -- The error of an earlier attempt, if one failed.
  last_error  jsonb,
  -- What run resolved to, validated by the task's result schema; NULL for a
  -- task without one.
  result      jsonb,
  CONSTRAINT history_pkey PRIMARY KEY (id, slot),
  CONSTRAINT history_state CHECK (state IN ('completed', 'cancelled'))
) PARTITION BY LIST (slot);

CREATE TABLE pgbg.history_0 PARTITION OF pgbg.history FOR VALUES IN (0);
CREATE TABLE pgbg.history_1 PARTITION OF pgbg.history FOR VALUES IN (1);
CREATE TABLE pgbg.history_2 PARTITION OF pgbg.history FOR VALUES IN (2);
CREATE TABLE pgbg.history_3 PARTITION OF pgbg.history FOR VALUES IN (3);
CREATE TABLE pgbg.history_4 PARTITION OF pgbg.history FOR VALUES IN (4);
CREATE TABLE pgbg.history_5 PARTITION OF pgbg.history FOR VALUES IN (5);
CREATE TABLE pgbg.history_6 PARTITION OF pgbg.history FOR VALUES IN (6);
CREATE TABLE pgbg.history_7 PARTITION OF pgbg.history FOR VALUES IN (7);

-- Whether a slot may be emptied: its latest expiry, read from the index's
-- end, under the lock that keeps new rows out.
CREATE INDEX history_expires_idx ON pgbg.history (expires_at);

-- The slot finished tasks go into, and since when.
CREATE TABLE pgbg.history_rotation (
  one     boolean NOT NULL DEFAULT true,
  slot    smallint NOT NULL,
  since   timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT history_rotation_pkey PRIMARY KEY (one),
  CONSTRAINT history_rotation_one CHECK (one),
  CONSTRAINT history_rotation_slot CHECK (slot BETWEEN 0 AND 7)
);
INSERT INTO pgbg.history_rotation (slot) VALUES (0);

-- Who waits for a task's end (waitForResult), so that the statements that
-- end a kept task notify only when someone does: a drain nobody waits on
-- sends nothing (a NOTIFY serialises commits). Unlogged: a waiter that a
-- crash forgets is still polling. Rows of waiters that died are pruned.
CREATE UNLOGGED TABLE pgbg.result_waiter (
  task_id bigint NOT NULL,
  -- Where to notify: the waiter LISTENs there.
  channel text NOT NULL,
  since   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX result_waiter_task_idx ON pgbg.result_waiter (task_id);

-- Empties slot `empty_slot` when every row in it has expired; true if it did.
-- It looks first without a lock, so that a slot with live rows costs the
-- readers of pgbg.history nothing; then again under the slot's lock, which
-- keeps new rows out while it looks (a completion that read the slot's
-- number before the rotation moved on may still be inserting there: its
-- row is then either seen, and the slot kept, or inserted after, into the
-- emptied slot). It waits at most 200 ms for the lock, which every read of
-- pgbg.history takes too, and tries again at the next turn. The looks are
-- planned for the one slot (its number in the text), so they lock no other
-- slot. TRUNCATE needs the TRUNCATE privilege on the slot's table, not its
-- ownership.
CREATE FUNCTION pgbg.empty_history_slot(empty_slot integer) RETURNS boolean
  LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  live boolean;
BEGIN
  IF empty_slot IS NULL OR empty_slot NOT BETWEEN 0 AND 7 THEN
    RAISE EXCEPTION 'no history slot %', empty_slot;
  END IF;
  -- Through the parent (its SELECT is granted), pruned to the slot.
  EXECUTE 'SELECT EXISTS (SELECT 1 FROM pgbg.history h WHERE h.slot = ' || empty_slot || ' AND h.expires_at > now())' INTO live;
  IF live THEN
    RETURN false;
  END IF;
  PERFORM set_config('lock_timeout', '200ms', true);
  BEGIN
    EXECUTE 'LOCK TABLE pgbg.history_' || empty_slot || ' IN ACCESS EXCLUSIVE MODE';
  EXCEPTION WHEN lock_not_available THEN
    RETURN false;
  END;
  EXECUTE 'SELECT EXISTS (SELECT 1 FROM pgbg.history h WHERE h.slot = ' || empty_slot || ' AND h.expires_at > now())' INTO live;
  IF live THEN
    RETURN false;
  END IF;
  EXECUTE 'TRUNCATE pgbg.history_' || empty_slot;
  RETURN true;
END
$$;
