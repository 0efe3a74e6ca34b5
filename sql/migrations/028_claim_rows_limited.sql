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

-- claim_lane as in 027, but a claim's stretch holds the tasks it returns
-- alone: the tasks it may not take (a cancel asked, an attempt count or a
-- lease token at its integer limit), which 027 passed over, leaving them
-- inside the stretch for the end of the claim to restage, are read beside
-- the others and restaged by the claim itself. So once every outcome of a
-- claim is written, nothing of its stretch is left to move, and the
-- worker ends it without reading the stretch again (EndClaims, which read
-- every one of its tasks' index entries and rows, deleted by then: about
-- a fifth of the server's time in a served drain, bench/RESULTS.md). A
-- stretch of such tasks alone writes a claim row held by nobody, so that
-- the lane moves on past them. Unchanged otherwise.
CREATE OR REPLACE FUNCTION pgbg.claim_lane(lane_queue text, lane_name text, lane_priority smallint, claimer uuid, lease interval,
    wanted integer)
  RETURNS TABLE (id bigint, name text, queue text, payload jsonb, attempts integer, max_attempts integer, priority smallint,
    snoozes integer, input_version integer, trace_context text, batch_then bigint, lag_ms float8, run_at_us bigint, claim_id bigint)
  LANGUAGE plpgsql VOLATILE STRICT
  -- Its reads are ordered index scans from a start key (the lane's newest
  -- claim row, the pair's range): a bitmap scan reads every entry the
  -- planner cannot see are of deleted rows, and a table whose rows are
  -- mostly deleted, as the claim table is under a held horizon, looks
  -- small enough to it that a bitmap and a sort of one row seemed cheaper.
  SET enable_bitmapscan = off
  AS $$
#variable_conflict use_column
DECLARE
  prev pgbg.claim;
  pair_since pg_snapshot;
  pair_upto pg_snapshot;
  from_xact xid8 := '0';
  from_id bigint := 0;
  start_xact xid8;
  start_id bigint;
  taken bigint[];
  taken_xacts xid8[];
  claimable boolean[];
  passed bigint[];
  held boolean;
  n integer;
  new_claim bigint;
  own xid8;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'the claim of a lane needs READ COMMITTED, not %', current_setting('transaction_isolation')
      USING ERRCODE = '25000';
  END IF;
  IF wanted < 1 THEN
    RETURN;
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('pgbg.claim'), hashtext(lane_queue || E'\n' || lane_name || E'\n' || lane_priority));
  -- The lane's newest claim row: the last entry of claim_lane_idx up to
  -- the lane's end, read backwards and kept only if it is the lane's. No
  -- column is set equal to a value, so that the order stays the index's
  -- whole key and no plan but that scan gives it: with `=` on the lane,
  -- the generic plan read claim_pkey backwards for a lane with no claim
  -- row yet, filtering every row of the table, deleted ones too; with the
  -- priority as a range, it read the whole lane by a bitmap. A lane ever
  -- claimed keeps its newest row, so the scan stops at the first entry,
  -- or at the previous lane's newest for a lane never claimed.
  SELECT * INTO prev FROM pgbg.claim c
  WHERE (c.queue, c.name, c.priority, c.id) <= (lane_queue, lane_name, lane_priority, 9223372036854775807)
  ORDER BY c.queue DESC, c.name DESC, c.priority DESC, c.id DESC LIMIT 1;
  IF prev.queue IS DISTINCT FROM lane_queue OR prev.name IS DISTINCT FROM lane_name OR prev.priority IS DISTINCT FROM lane_priority THEN
    prev := NULL;
  END IF;
  IF prev.id IS NOT NULL AND NOT prev.whole THEN
    pair_since := prev.since;
    pair_upto := prev.upto;
    from_xact := prev.last_xact;
    from_id := prev.last_id;
  ELSE
    -- A new pair: the lane's due tasks that have no staging transaction
    -- yet (delayed, snoozed or retried later, or queued before migration
    -- 025) are staged first, by this claim's transaction. That transaction
    -- is in this pair when the snapshot below sees it as ended (a later
    -- one ended first), and this claim's own reads see its writes; else it
    -- is past the snapshot's xmax, in the next pair.
    UPDATE pgbg.task t SET staged_xact = pg_current_xact_id()
    WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
      AND t.state = 'queued' AND t.group_name IS NULL AND t.staged_xact IS NULL AND t.run_at <= now();
    pair_since := prev.upto;
    pair_upto := pg_current_snapshot();
    -- A snapshot leaves this transaction out of its list of those in
    -- progress, so that a transaction id of its own below the xmax reads
    -- as ended: stored so, whatever this transaction stages after the
    -- snapshot (a second claim of the lane, the caller's own writes) would
    -- read as before this pair and be in none. Stored in progress, its
    -- tasks are the next pair's, through the probe.
    own := pg_current_xact_id_if_assigned();
    IF own IS NOT NULL AND own < pg_snapshot_xmax(pair_upto) THEN
      pair_upto := (least(pg_snapshot_xmin(pair_upto), own) || ':' || pg_snapshot_xmax(pair_upto) || ':'
        || array_to_string(ARRAY(SELECT x FROM pg_snapshot_xip(pair_upto) AS x UNION SELECT own ORDER BY 1), ','))::pg_snapshot;
    END IF;
  END IF;
  -- The range part starts after the claim's start, and at since's xmax.
  IF pair_since IS NULL OR from_xact >= pg_snapshot_xmax(pair_since) THEN
    start_xact := from_xact;
    start_id := from_id;
  ELSE
    start_xact := pg_snapshot_xmax(pair_since);
    start_id := -1;
  END IF;
  SELECT array_agg(p.id ORDER BY p.staged_xact, p.id), array_agg(p.staged_xact ORDER BY p.staged_xact, p.id),
    array_agg(p.claimable ORDER BY p.staged_xact, p.id)
    INTO taken, taken_xacts, claimable
  FROM (
    -- One probe per transaction in progress at `since`, each an index
    -- range of its own: as `staged_xact = ANY (…)` beside the row
    -- comparison, the array was a filter on a scan of the rest of the lane,
    -- and each claim of a 100,000-task drain read what was left of it.
    -- The claim's start splits into the transaction and the id: as a row
    -- comparison beside `staged_xact = x.xact`, the btree began the probe
    -- of a transaction before the start (a held horizon's, in every
    -- snapshot's list) at the start and read to the lane's end.
    SELECT p.id, p.staged_xact, p.claimable FROM pg_snapshot_xip(pair_since) AS x (xact)
    CROSS JOIN LATERAL (
      SELECT t.id, t.staged_xact, (t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647) AS claimable FROM pgbg.task t
      WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
        AND t.state = 'queued' AND t.group_name IS NULL
        AND t.staged_xact = x.xact
        AND t.id > CASE WHEN x.xact = from_xact THEN from_id ELSE -1 END
        AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
      ORDER BY t.id LIMIT wanted + 1
    ) p
    WHERE x.xact >= from_xact
    UNION ALL
    (SELECT t.id, t.staged_xact, (t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647) AS claimable FROM pgbg.task t
    WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
      AND t.state = 'queued' AND t.group_name IS NULL
      AND (t.staged_xact, t.id) > (start_xact, start_id)
      AND t.staged_xact < pg_snapshot_xmax(pair_upto)
      AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
    ORDER BY t.staged_xact, t.id LIMIT wanted + 1)
    ORDER BY 2, 1 LIMIT wanted + 1
  ) p;
  n := coalesce(cardinality(taken), 0);
  IF n = 0 THEN
    IF prev.id IS NOT NULL AND NOT prev.whole THEN
      -- The rest of the pair is gone (cancelled, restaged): the next claim reads a pair of its own.
      UPDATE pgbg.claim c SET whole = true WHERE c.id = prev.id;
    END IF;
    RETURN;
  END IF;
  n := least(n, wanted + 1);
  -- The stretch's tasks a claim may not take (a cancel asked, a count at
  -- its integer limit) are restaged, into a later pair (this
  -- transaction's id is past the pair's snapshot, or in progress in it),
  -- so that the stretch holds the tasks returned alone: a worker whose
  -- every outcome of the claim was written then ends it without reading
  -- the stretch again (EndClaims).
  passed := ARRAY(SELECT taken[i] FROM generate_subscripts(taken, 1) AS i WHERE i <= least(n, wanted) AND NOT claimable[i]);
  IF cardinality(passed) > 0 THEN
    UPDATE pgbg.task t SET staged_xact = pg_current_xact_id() WHERE t.id = ANY (passed);
  END IF;
  -- A stretch of such tasks alone still moves the lane on: its row is
  -- held by nobody, as an ended claim's.
  held := cardinality(passed) < least(n, wanted);
  INSERT INTO pgbg.claim AS c (since, upto, after_xact, after_id, last_xact, last_id, lease_expires_at, priority, whole,
    worker_id, queue, name)
  VALUES (pair_since, pair_upto, taken_xacts[1], taken[1] - 1, taken_xacts[least(n, wanted)], taken[least(n, wanted)],
    CASE WHEN held THEN now() + lease END, lane_priority, n <= wanted, CASE WHEN held THEN claimer END, lane_queue, lane_name)
  RETURNING c.id INTO new_claim;
  -- Each by its primary key, in a lateral join whose LIMIT keeps it from
  -- being flattened: `t.id = ANY (taken)` is a filter that scans the array
  -- for every row of the table once the plan is generic, and a plain join
  -- was planned as a hash of a sequential scan of the whole table (each
  -- claim of a 100,000-task drain read it).
  RETURN QUERY
  SELECT t.id, t.name, t.queue, t.payload, t.attempts + 1, t.max_attempts, t.priority, t.snoozes, t.input_version,
    t.trace_context, t.batch_then, date_part('epoch', now() - t.run_at) * 1000,
    (extract(epoch FROM t.run_at) * 1000000)::bigint, new_claim
  FROM unnest(taken[1:least(n, wanted)], claimable[1:least(n, wanted)]) AS k (id, claimable)
  CROSS JOIN LATERAL (SELECT * FROM pgbg.task t WHERE t.id = k.id LIMIT 1) t
  WHERE k.claimable;
END
$$;

-- The guard of claim rows against the row claims of a release before them
-- (docs/storage.md, "The guard adopted"): a task without a group turned
-- from queued to running by a statement that does not say it knows claim
-- rows (sql/queries/worker.sql, KnowsClaimRows) while a held claim row
-- holds it fails the statement, so that such a row claim cannot run the
-- task a second time, and changes nothing. The task's lane lock first, as
-- claim_lane takes it before its snapshot: a claim in flight is waited
-- for, and its row then read (each statement of this function reads a
-- snapshot of its own); a claim that starts later waits for this
-- transaction, and reads the task as running. AFTER, not BEFORE, which
-- could pass over the row instead: a BEFORE trigger locks each row it is
-- fired for to read it, whatever its WHEN says, and cost the default
-- drain's claims about 1.3 µs of server CPU a task (5 %); the AFTER
-- triggers of pgbg.task read the old row already, so this one costs its
-- WHEN (bench/RESULTS.md, "The guard of claim rows"). The writes of this
-- release say they know claim rows, so for them the WHEN is false.
CREATE FUNCTION pgbg.task_claim_guard() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('pgbg.claim'), hashtext(OLD.queue || E'\n' || OLD.name || E'\n' || OLD.priority));
  IF EXISTS (SELECT FROM pgbg.claim c
      WHERE c.queue = OLD.queue AND c.name = OLD.name AND c.priority = OLD.priority AND c.worker_id IS NOT NULL
        AND (OLD.staged_xact, OLD.id) > (c.after_xact, c.after_id) AND (OLD.staged_xact, OLD.id) <= (c.last_xact, c.last_id)
        AND pg_visible_in_snapshot(OLD.staged_xact, c.upto) AND (c.since IS NULL OR NOT pg_visible_in_snapshot(OLD.staged_xact, c.since))) THEN
    RAISE EXCEPTION 'pgbg: task % is running, held by a claim row of a newer pgbg: this claim is of an earlier release, which does not read claim rows; upgrade this worker', OLD.id
      USING ERRCODE = '55000';
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER task_claim_guard AFTER UPDATE OF state ON pgbg.task
  FOR EACH ROW
  WHEN (OLD.state = 'queued' AND NEW.state = 'running' AND OLD.group_name IS NULL
    AND current_setting('pgbg_claim.known', true) IS DISTINCT FROM 'on')
  EXECUTE FUNCTION pgbg.task_claim_guard();
