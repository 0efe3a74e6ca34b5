-- 027_claim_lanes: the claim of several lanes by claim rows, the claim
-- the workers make when claim rows are on (docs/storage.md, "What the
-- drain target needs"; off by default until every reader of "running"
-- reads claim rows too, and the row-by-row claims read lanes).
--
-- No lane index yet: beside task_claim_idx, which the row-by-row claims
-- read, it cost the enqueue a fifth to over a quarter of its rate
-- (bench/RESULTS.md, "Claim rows in the engine"), so it comes with the
-- migration that makes the claim by claim rows the default and drops
-- task_claim_idx. Until then a lane claim reads task_claim_idx's (queue,
-- priority) range, which is correct and, on a deep queue, slow.

-- Claims up to `wanted` tasks for `claimer` from the lanes given, sorted by
-- priority, each lane by pgbg.claim_lane with its name's lease (`lease_ms`,
-- ms), until `wanted` are taken. The lanes of one priority share what is
-- left: each asks first for its share of it (what is left over the lanes
-- of its priority still to come), so that a backlog of one task name does
-- not hold back another of the same priority until it is drained; then
-- what the lanes without enough tasks left over goes to those that filled
-- their share, in order. The caller lists every lane that may hold tasks
-- (ClaimRowTasks: each of its names in each queue and priority), and an
-- empty one costs a probe. A function, so that no lane is claimed past
-- what the worker asked for: a claim row holds every task it returns, and
-- one the worker never received would wait for its lease to end.
CREATE FUNCTION pgbg.claim_lanes(lane_queues text[], lane_names text[], lane_priorities smallint[], lease_ms integer[],
    claimer uuid, wanted integer)
  RETURNS TABLE (id bigint, name text, queue text, payload jsonb, attempts integer, max_attempts integer, priority smallint,
    snoozes integer, input_version integer, trace_context text, batch_then bigint, lag_ms float8, run_at_us bigint, claim_id bigint)
  LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
  lanes integer := coalesce(cardinality(lane_queues), 0);
  taken integer := 0;
  sharing integer;
  asked integer;
  n integer;
  filled boolean[] := '{}';
BEGIN
  FOR i IN 1 .. lanes LOOP
    EXIT WHEN taken >= wanted;
    sharing := 0;
    FOR j IN i .. lanes LOOP
      EXIT WHEN lane_priorities[j] <> lane_priorities[i];
      sharing := sharing + 1;
    END LOOP;
    asked := ceil((wanted - taken)::numeric / sharing)::integer;
    RETURN QUERY SELECT * FROM pgbg.claim_lane(lane_queues[i], lane_names[i], lane_priorities[i], claimer,
      lease_ms[i] * interval '1 millisecond', asked);
    GET DIAGNOSTICS n = ROW_COUNT;
    taken := taken + n;
    filled[i] := n = asked;
  END LOOP;
  FOR i IN 1 .. lanes LOOP
    EXIT WHEN taken >= wanted;
    CONTINUE WHEN NOT coalesce(filled[i], false);
    RETURN QUERY SELECT * FROM pgbg.claim_lane(lane_queues[i], lane_names[i], lane_priorities[i], claimer,
      lease_ms[i] * interval '1 millisecond', wanted - taken);
    GET DIAGNOSTICS n = ROW_COUNT;
    taken := taken + n;
  END LOOP;
END
$$;

-- The settling of a task's dependants (migration 014), which read a
-- deleted queued task as cancelled, also reads the completion of claim
-- rows as a success: a task becomes a parent while a claim row holds it
-- when a flow names it as a dependency (MarkPendingParents), and that
-- completion deletes a row that was never running. Unchanged otherwise.
CREATE OR REPLACE FUNCTION pgbg.task_settle_dependants() RETURNS trigger
  LANGUAGE plpgsql AS $$
DECLARE
  -- A running task deleted is a success, unless the statement that deletes
  -- it ends a cancelled attempt (FinishCancelledTasks says so in the
  -- transaction-local setting pgbg_flow.ending): a task whose cancel was asked
  -- may still succeed, and is then kept and counted as completed. So is a
  -- queued one that a claim row held, deleted by the completion of claim
  -- rows (CompleteClaimedTasks says 'complete'): its row was never running.
  outcome text := CASE
    WHEN TG_OP = 'UPDATE' THEN 'failed'
    WHEN current_setting('pgbg_flow.ending', true) = 'complete' THEN 'completed'
    WHEN OLD.state = 'running' AND coalesce(current_setting('pgbg_flow.ending', true), '') <> 'cancel' THEN 'completed'
    ELSE 'cancelled' END;
  child record;
  policy text;
  released boolean := false;
BEGIN
  IF TG_OP = 'DELETE' AND OLD.state = 'failed' THEN
    RETURN NULL;
  END IF;
  -- Each edge of OLD, then its child by primary key: a join the planner
  -- cannot turn into a scan of the task table, whatever its estimates.
  FOR child IN
    SELECT c.id, c.waiting_on, c.flow_id
    FROM pgbg.task_dependency d JOIN pgbg.task c ON c.id = d.child_id
    WHERE d.parent_id = OLD.id AND c.state = 'waiting'
    ORDER BY c.id
    FOR UPDATE OF c
  LOOP
    IF outcome <> 'completed' THEN
      SELECT coalesce((SELECT f.on_parent_failure FROM pgbg.flow f WHERE f.id = child.flow_id), 'fail') INTO policy;
    END IF;
    IF outcome = 'completed' OR policy = 'run' THEN
      UPDATE pgbg.task SET
        waiting_on = waiting_on - 1,
        state = CASE WHEN waiting_on <= 1 THEN 'queued' ELSE 'waiting' END::pgbg.task_state,
        run_at = CASE WHEN waiting_on <= 1 THEN now() ELSE run_at END,
        failed_parents = CASE WHEN outcome = 'completed' THEN failed_parents ELSE array_append(failed_parents, OLD.id) END
      WHERE id = child.id;
      released := released OR child.waiting_on <= 1;
    ELSIF policy = 'cancel' THEN
      WITH gone AS (
        DELETE FROM pgbg.task t WHERE t.id = child.id
        RETURNING t.id, t.queue, t.name, t.key, t.attempts, t.enqueued_at, t.payload, t.keep_completed, t.flow_id
      )
      INSERT INTO pgbg.history (id, slot, state, queue, name, key, attempts, enqueued_at, finished_at, expires_at, payload, last_error, result, flow_id)
      SELECT g.id, r.slot, 'cancelled', g.queue, g.name, g.key, g.attempts, g.enqueued_at, now(), now() + g.keep_completed, g.payload,
        jsonb_build_object('name', 'ParentFailedError', 'code', 'PGBG_PARENT_FAILED',
          'message', format('parent task %s %s', OLD.id, outcome)),
        NULL, g.flow_id
      FROM gone g CROSS JOIN pgbg.history_rotation r
      WHERE g.keep_completed IS NOT NULL;
    ELSE
      UPDATE pgbg.task SET
        waiting_on = 0, state = 'failed', failed_at = now(),
        last_error = jsonb_build_object('name', 'ParentFailedError', 'code', 'PGBG_PARENT_FAILED',
          'message', format('parent task %s %s', OLD.id, outcome))
      WHERE id = child.id;
    END IF;
  END LOOP;
  DELETE FROM pgbg.task_dependency WHERE parent_id = OLD.id;
  IF released AND EXISTS (SELECT 1 FROM pgbg.worker WHERE idle) THEN
    PERFORM pg_notify('pgbg:' || TG_TABLE_SCHEMA, '');
  END IF;
  RETURN NULL;
END
$$;

-- The claim of one lane (migration 026), changed where a held horizon
-- made it read more with every claim (docs/storage.md, "Claim rows under
-- a held horizon"; bench/RESULTS.md has the runs):
-- - A claim row's stretch starts just before the first task the claim
--   took, where it started at the claim's start: for a pair's first claim
--   that is the lane's head, so every read of the stretch (the end of the
--   claim, the readers of "running") stepped over the index entries of
--   every task the lane completed that vacuum had not removed. What lies
--   between the claim's start and its first task is what it passed over
--   (a cancel asked), which it does not hold.
-- - The lane's newest claim row is read from claim_lane_idx's end of the
--   lane on any plan (see the statement). By claim_pkey backwards, a lane
--   with no claim row yet read the whole claim table, deleted rows too:
--   a worker running several task names spent tens of ms a claim there,
--   holding its lanes' locks, and the pressure bench's hold fell to about
--   320 tasks/s.
-- - A transaction in progress at the pair's `since` that began before the
--   claim's start is not probed: a held horizon's is in every snapshot's
--   list, and its probe read from the start to the lane's end.
-- - A task at the lease token's integer limit is passed over, as one at
--   the attempts' limit is: a claim row's claim does not write the token,
--   but any outcome but a success gives the task a lease of its own with
--   the next one (LeaseClaimedTasks), which would overflow. Row claims
--   pass over both.
-- - A flow's parent and a batch member are claimed like any task, where
--   026 passed over them: a claim row's stretch holds every queued task in
--   it (InClaim), so one passed over inside a stretch read as running, was
--   restaged at the claim's end and passed over again by every later
--   claim, and a worker claiming by claim rows never ran it. The parent's
--   success is the claim rows' completion (task_settle_dependants above);
--   a member's is written by a lease of its own (LeaseClaimedTasks), which
--   counts its batch down.
-- Unchanged otherwise.
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
  SELECT array_agg(p.id ORDER BY p.staged_xact, p.id), array_agg(p.staged_xact ORDER BY p.staged_xact, p.id)
    INTO taken, taken_xacts
  FROM (
    -- One probe per transaction in progress at `since`, each an index
    -- range of its own: as `staged_xact = ANY (…)` beside the row
    -- comparison, the array was a filter on a scan of the rest of the lane,
    -- and each claim of a 100,000-task drain read what was left of it.
    -- The claim's start splits into the transaction and the id: as a row
    -- comparison beside `staged_xact = x.xact`, the btree began the probe
    -- of a transaction before the start (a held horizon's, in every
    -- snapshot's list) at the start and read to the lane's end.
    SELECT p.id, p.staged_xact FROM pg_snapshot_xip(pair_since) AS x (xact)
    CROSS JOIN LATERAL (
      SELECT t.id, t.staged_xact FROM pgbg.task t
      WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
        AND t.state = 'queued' AND t.group_name IS NULL AND t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647
        AND t.staged_xact = x.xact
        AND t.id > CASE WHEN x.xact = from_xact THEN from_id ELSE -1 END
        AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
      ORDER BY t.id LIMIT wanted + 1
    ) p
    WHERE x.xact >= from_xact
    UNION ALL
    (SELECT t.id, t.staged_xact FROM pgbg.task t
    WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
      AND t.state = 'queued' AND t.group_name IS NULL AND t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647
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
  INSERT INTO pgbg.claim AS c (since, upto, after_xact, after_id, last_xact, last_id, lease_expires_at, priority, whole,
    worker_id, queue, name)
  VALUES (pair_since, pair_upto, taken_xacts[1], taken[1] - 1, taken_xacts[least(n, wanted)], taken[least(n, wanted)],
    now() + lease, lane_priority, n <= wanted, claimer, lane_queue, lane_name)
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
  FROM unnest(taken[1:least(n, wanted)]) AS k (id)
  CROSS JOIN LATERAL (SELECT * FROM pgbg.task t WHERE t.id = k.id LIMIT 1) t;
END
$$;
