-- 024_queue_slots_unwritten: the claim of a queue limited by its
-- concurrency alone takes the worker's unwritten outcomes off its claim
-- only when it does not count the queue's running tasks.
--
-- A worker's attempt that ended keeps its task's lease (the task stays
-- running) until its outcome is written, in a batch, a moment later. A
-- claim that counts the queue's running tasks counts those too. A claim
-- that counts nothing (the limit cannot bind: the registered workers'
-- concurrency in all is within it) relies on each worker holding no more
-- of the queue's leases than its concurrency, so it must take no more
-- than the worker's free slots less its unwritten outcomes. Until now the
-- worker took them off every limited claim (023's take_queue_slots could
-- not say which branch it took), which made a busy worker's claims short
-- under a limit that counts, or none at all, and short claims send a
-- worker idle.
--
-- take_queue_slots(queue, wanted, unwritten): how many of the wanted
-- tasks the claim may take (0 or less: none; NULL: the queue is not, or no
-- longer, limited by its concurrency alone, or it is paused, or an
-- argument is NULL: STRICT, so that a missing count claims nothing rather
-- than nothing taken off). The lock and the judgement are 023's.
CREATE FUNCTION pgbg.take_queue_slots(claimed_queue text, wanted integer, unwritten integer) RETURNS integer
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
  RETURN least(wanted, queue_limit - (SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.queue = claimed_queue));
END
$$;

-- 023's form, which the previous release's workers call (they take their
-- unwritten outcomes off the claim themselves): the same, with nothing
-- taken off.
CREATE OR REPLACE FUNCTION pgbg.take_queue_slots(claimed_queue text) RETURNS integer
  LANGUAGE sql VOLATILE AS $$
  SELECT pgbg.take_queue_slots(claimed_queue, 2147483647, 0)
$$;
