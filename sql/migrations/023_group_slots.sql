-- 023_group_slots: the claim of a queue limited per group alone, or by
-- its concurrency alone, in one statement.
--
-- A claim that keeps each group within its limit must count the group's
-- running tasks after every claim of the group before it committed. Under
-- the queue's advisory lock (LockLimitedQueue) the count is the next
-- statement of the claim's transaction: the claims of the queue then run
-- one at a time, each a transaction of five round trips. A queue limited
-- per group alone (no concurrency or rate limit of its own, no group rate
-- limit) needs no order between the claims of different groups, so its
-- claim (ClaimPerGroupTasks) takes a lock per group instead; one limited
-- by its concurrency alone (ClaimSlotTasks) takes the queue's lock and
-- counts in the claim statement, and shares the lock while no worker can
-- reach the limit. They count through these functions: each is VOLATILE,
-- so each query in it reads a snapshot of its own, taken after the lock
-- the function took just before, where the claim statement's own
-- snapshot was taken before. In a transaction that is not READ
-- COMMITTED (a server or role whose default is REPEATABLE READ) its
-- queries would all read the transaction's first snapshot, and count none
-- of the claims committed since: there each returns NULL, and workers
-- claim the queue under its lock, in a READ COMMITTED transaction of their
-- own (LimitedQueues tells them).

-- The queue's lock, shared, then its group limit (NULL: it is not, or no
-- longer, limited per group alone, or it is paused). A claim under the
-- queue's lock (one that reads the queue as limited as a whole) waits for
-- the shared holders, so its counts see their claims, and they for it.
CREATE FUNCTION pgbg.share_group_limited_queue(claimed_queue text) RETURNS integer
  LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN NULL;
  END IF;
  PERFORM pg_advisory_xact_lock_shared(hashtext('pgbg.queue'), hashtext(claimed_queue));
  RETURN (SELECT q.group_concurrency FROM pgbg.queue q
    WHERE q.name = claimed_queue AND q.paused_at IS NULL AND q.concurrency IS NULL AND q.rate_limit IS NULL
      AND q.group_rate_limit IS NULL);
END
$$;

-- The group's lock, if no other claim holds it (0: one does, and the
-- claim passes the group over rather than wait), then its free slots: the
-- limit less its running tasks (task_group_running_idx). The lock is held
-- until the claim's transaction ends, so the claims of one group run one
-- at a time, and each counts every task the ones before it took.
CREATE FUNCTION pgbg.take_group_slots(claimed_queue text, claimed_group text, group_limit integer) RETURNS integer
  LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('pgbg.group'), hashtext(claimed_queue || chr(10) || claimed_group)) THEN
    RETURN 0;
  END IF;
  RETURN group_limit - (SELECT count(*) FROM pgbg.task r
    WHERE r.state = 'running' AND r.group_name IS NOT NULL AND r.queue = claimed_queue AND r.group_name = claimed_group);
END
$$;

-- The free slots of a queue limited by its concurrency alone (NULL: it is
-- not, or no longer, or it is paused). While the registered workers that
-- claim from the queue cannot reach the limit (their concurrency and
-- detached attempts in all are within it, as QueueFreeSlots judges), the
-- queue's lock is taken shared and nothing is counted: such claims run
-- side by side. The judgement is made again after the lock: a worker that
-- registered meanwhile may have claimed under the lock, exclusive, and
-- counted without this claim's tasks (0: claim nothing now; the next
-- claim counts). A worker that registers after it waits, at its first
-- claim, for this one's lock. Otherwise the lock is exclusive, and the
-- queue's row is read again and its running tasks counted after it. A
-- worker holds no more leases of the queue than its concurrency and its
-- detached attempts: its limited claims take no more than its free slots
-- less the outcomes it has not written yet (their tasks keep their leases
-- until then; lib/claim.ts).
CREATE FUNCTION pgbg.take_queue_slots(claimed_queue text) RETURNS integer
  LANGUAGE plpgsql VOLATILE AS $$
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
    RETURN CASE WHEN unreachable THEN queue_limit ELSE 0 END;
  END IF;
  RETURN queue_limit - (SELECT count(*) FROM pgbg.task t WHERE t.state = 'running' AND t.queue = claimed_queue);
END
$$;
