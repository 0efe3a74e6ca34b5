-- 028_claim_rows_limited: the claims of limited queues by claim rows (while
-- claim rows are on, off by default), which count the tasks claim rows
-- hold against a concurrency limit.
--
-- While claim rows are on, every claim of a lane is by claim rows, limited
-- or not (sql/queries/worker.sql, ClaimLimitedRowTasks): a row-by-row
-- claim reads a lane from its head and would take a task a claim row holds,
-- still queued in its row, and run it twice. A task a claim row holds is
-- running all the same, so a concurrency limit counts it, in the count
-- take_queue_slots makes under the queue's lock as in QueueFreeSlots.

-- How many tasks of `claimed_queue` claim rows hold: one ordered range of
-- its lane per held claim row of the queue (the claim row's stretch, as
-- InClaim in sql/queries/worker.sql reads it), none while claim rows are
-- off. A lateral join whose OFFSET keeps it from being flattened: as a
-- join of the claim rows to the table it was planned as a scan of the
-- whole table. plpgsql, so that its plan is kept between calls.
CREATE FUNCTION pgbg.count_held_by_claims(claimed_queue text) RETURNS bigint
  LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
  RETURN (SELECT count(*) FROM pgbg.claim c
    CROSS JOIN LATERAL (
      SELECT FROM pgbg.task t
      WHERE t.queue = c.queue AND t.name = c.name AND t.priority = c.priority AND t.state = 'queued'
        AND (t.staged_xact, t.id) > (c.after_xact, c.after_id) AND (t.staged_xact, t.id) <= (c.last_xact, c.last_id)
        AND pg_visible_in_snapshot(t.staged_xact, c.upto) AND (c.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, c.since))
        AND t.group_name IS NULL
      ORDER BY t.staged_xact, t.id OFFSET 0
    ) x
    WHERE c.worker_id IS NOT NULL AND c.queue = claimed_queue);
END
$$;

-- take_queue_slots as in 024, its count of the queue's running tasks
-- joined by those claim rows hold: the lock, the judgement and what it
-- returns are 024's.
CREATE OR REPLACE FUNCTION pgbg.take_queue_slots(claimed_queue text, wanted integer, unwritten integer) RETURNS integer
  LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
  queue_limit integer;
  unreachable boolean;
  shared boolean;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN NULL;
  END IF;
  -- The queue's row before the lock, to choose it, and again after it: the
  -- limit, a pause or the limit's kind may have changed while waiting.
  FOR pass IN 1..2 LOOP
    SELECT q.concurrency, q.concurrency >= (SELECT coalesce(sum(w.concurrency + w.detached), 0) FROM pgbg.worker w
        WHERE w.queues IS NULL OR q.name = ANY (w.queues))
      INTO queue_limit, unreachable
      FROM pgbg.queue q
      WHERE q.name = claimed_queue AND q.paused_at IS NULL AND q.rate_limit IS NULL AND q.group_concurrency IS NULL
        AND q.group_rate_limit IS NULL;
    IF queue_limit IS NULL THEN
      RETURN NULL;
    END IF;
    EXIT WHEN pass = 2;
    shared := unreachable;
    IF shared THEN
      PERFORM pg_advisory_xact_lock_shared(hashtext('pgbg.queue'), hashtext(claimed_queue));
    ELSE
      PERFORM pg_advisory_xact_lock(hashtext('pgbg.queue'), hashtext(claimed_queue));
    END IF;
  END LOOP;
  IF shared THEN
    -- Counted nothing: the worker's own leases must stay within its concurrency.
    RETURN CASE WHEN unreachable THEN least(queue_limit, wanted - unwritten) ELSE 0 END;
  END IF;
  RETURN least(wanted, queue_limit - (SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.queue = claimed_queue)
    - pgbg.count_held_by_claims(claimed_queue));
END
$$;
