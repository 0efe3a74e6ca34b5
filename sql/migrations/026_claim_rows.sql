-- 026_claim_rows: claim rows, and the claim of one lane by a pair of
-- snapshots, the second stage of the snapshot-pair claim (docs/storage.md,
-- "What the drain target needs").
--
-- A lane is the queued tasks of one queue, name and priority without a
-- group, read in (staged_xact, id) order. A claim of a lane writes one
-- claim row and leaves its tasks' rows as they are: the row names the
-- pair of snapshots whose difference the claim took (the tasks staged by
-- transactions `upto` sees and `since` did not), and the stretch of that
-- difference, in lane order, that is its own. A task whose staging commits
-- after a claim's snapshot falls in a later pair, so no task is ever behind
-- a claim, and nothing is updated per task.
--
-- A lane claim takes a task of its pair unless its cancel was asked, its
-- attempts are at the integer limit (as ClaimableTask), or it is a flow's
-- parent or a batch member: their completion must say how they ended
-- (migration 014's triggers read a deleted queued row as cancelled), so
-- they keep the row-by-row claim until it does.
--
-- Nothing calls claim_lane yet: the workers still claim row by row
-- (ClaimTasks). Tasks it takes look queued to every other reader until
-- those readers learn of claim rows (the stages that follow). Two rules
-- for them, on which the fence (CompleteClaimedTasks) relies:
-- - whoever ends a claim row (a rescue, a release) restages the tasks it
--   still holds in the same transaction, since a completion reads the
--   claim row without locking it and is fenced by its tasks' rows;
-- - a writer that restages a task (a replace, a change of priority) must
--   not restage one a claim holds, or take the lane's lock first: a claim
--   reads its tasks without locking them, and a task restaged after that
--   read is in a later pair, and would run twice.

-- One row per claim of a lane, held by its worker until its tasks end.
CREATE TABLE pgbg.claim (
  id               bigint GENERATED ALWAYS AS IDENTITY,
  -- The pair: the lane's tasks staged by a transaction that `upto` sees and
  -- `since` did not (since NULL: the lane's first pair, everything `upto`
  -- sees).
  since            pg_snapshot,
  upto             pg_snapshot NOT NULL,
  -- This claim's stretch of the pair, in (staged_xact, id) order: after
  -- (after_xact, after_id), up to and with (last_xact, last_id).
  after_xact       xid8 NOT NULL,
  after_id         bigint NOT NULL,
  last_xact        xid8 NOT NULL,
  last_id          bigint NOT NULL,
  -- Set while a worker holds the claim: its tasks are running.
  lease_expires_at timestamptz,
  claimed_at       timestamptz NOT NULL DEFAULT now(),
  priority         smallint NOT NULL,
  -- The claim took the rest of its pair: the lane's next claim reads a
  -- pair of its own, from `upto` on. Otherwise it goes on in this pair.
  whole            boolean NOT NULL,
  worker_id        uuid,
  queue            text NOT NULL,
  name             text NOT NULL,
  CONSTRAINT claim_pkey PRIMARY KEY (id),
  CONSTRAINT claim_held_has_lease CHECK ((worker_id IS NULL) = (lease_expires_at IS NULL))
);

-- The lane's newest claim, which its next claim goes on from.
CREATE INDEX claim_lane_idx ON pgbg.claim (queue, name, priority, id);

-- Claims up to `wanted` tasks of one lane for worker `claimer`, leased for
-- `lease`, writing one claim row; returns them with that row's id (none
-- when the lane has none to give). The claims of a lane run one at a time,
-- under a lock taken before this function reads its snapshot: each claim
-- statement of a VOLATILE function in a READ COMMITTED transaction reads a
-- snapshot of its own, taken after the lock. Under REPEATABLE READ its
-- snapshot would be the transaction's first, taken before the lock, and two
-- claims could read the same pair: it refuses to run there.
--
-- The tasks of a pair are found in two parts, so that no claim steps over
-- the index entries of tasks taken by earlier pairs, whether or not they
-- are still there (running, or deleted and not yet vacuumed): those staged
-- by transactions `since` saw in progress (one probe each), and those from
-- `since`'s xmax on (one range). A claim that fills its batch leaves the
-- rest of its pair to the lane's next claim.
--
-- A claim that starts a new pair stages the lane's due tasks first, so
-- that a delay ends in the claim's path and not a check interval later
-- in a service's.
CREATE FUNCTION pgbg.claim_lane(lane_queue text, lane_name text, lane_priority smallint, claimer uuid, lease interval,
    wanted integer)
  RETURNS TABLE (id bigint, name text, queue text, payload jsonb, attempts integer, max_attempts integer, priority smallint,
    snoozes integer, input_version integer, trace_context text, batch_then bigint, lag_ms float8, run_at_us bigint, claim_id bigint)
  LANGUAGE plpgsql VOLATILE STRICT AS $$
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
  SELECT * INTO prev FROM pgbg.claim c
  WHERE c.queue = lane_queue AND c.name = lane_name AND c.priority = lane_priority
  ORDER BY c.id DESC LIMIT 1;
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
    SELECT p.id, p.staged_xact FROM pg_snapshot_xip(pair_since) AS x (xact)
    CROSS JOIN LATERAL (
      SELECT t.id, t.staged_xact FROM pgbg.task t
      WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
        AND t.state = 'queued' AND t.group_name IS NULL AND t.cancel_requested_at IS NULL AND t.attempts < 2147483647
        AND t.dependants IS NOT TRUE AND t.batch_then IS NULL
        AND t.staged_xact = x.xact
        AND (t.staged_xact, t.id) > (from_xact, from_id)
        AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
      ORDER BY t.id LIMIT wanted + 1
    ) p
    UNION ALL
    (SELECT t.id, t.staged_xact FROM pgbg.task t
    WHERE t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
      AND t.state = 'queued' AND t.group_name IS NULL AND t.cancel_requested_at IS NULL AND t.attempts < 2147483647
      AND t.dependants IS NOT TRUE AND t.batch_then IS NULL
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
  VALUES (pair_since, pair_upto, from_xact, from_id, taken_xacts[least(n, wanted)], taken[least(n, wanted)],
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
