-- 031_lane_key: task_lane_idx is keyed by one 64-bit hash of the lane
-- (pgbg.lane_key of its queue, name and priority) in place of the three
-- columns, and pgbg.claim_lane reads it by that key.
--
-- Every enqueue inserts an entry into the lane index, and each step of the
-- insert's search compared the entry's queue, name and priority (two texts
-- and a smallint, one function call each) before the staging transaction
-- and id that tell two tasks of one lane apart. On a copy of the enqueue in
-- batches of 1,000, the lane index was about a third of the enqueue's time;
-- keyed by one bigint it is half of that, and the enqueue went from 0.69-0.74
-- of the raw `unnest` insert to 0.84 (bench/RESULTS.md, "The lane index
-- keyed by a hash"). A key of the three columns joined into one text in
-- the C collation gave 0.80; `(staged_xact, id)` alone, 0.89.
--
-- The key is an expression of the row, not a column: nothing is stored,
-- and a writer of an earlier release that knows nothing of it still gets
-- its tasks into the index. Readers name the key as pgbg.lane_key(t.queue,
-- t.name, t.priority) = pgbg.lane_key(the lane), which the planner matches
-- to the index's expression, and compare the lane's columns too: two lanes
-- whose keys collide share a range of the index, which each reader
-- filters. The readers in functions are replaced below: claim_lane and
-- count_held_by_claims. What a collision costs is the lane discovery's (FoundLanes, a
-- skip scan of distinct keys): it finds one lane of such a key, and the
-- other is claimed when its queue and priority are found by another lane
-- of its pair (KnownPairs crosses them with every name). The chance that
-- any two of n lanes collide is about n^2 / 2^65 (10^-8 for a million).
--
-- An earlier release's readers of the lane by its columns (its lane
-- discovery, the heads of a limited claim, the end of a claim that left
-- tasks behind) no longer find an index of those columns: during a
-- rolling upgrade they read the table by a scan, correct and far slower
-- (seconds a lane discovery on a large table), so such workers should be
-- upgraded promptly. Its claims call pgbg.claim_lane, which this
-- migration replaces.
CREATE FUNCTION pgbg.lane_key(queue text, name text, priority smallint) RETURNS bigint
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
  RETURN hashtextextended(queue || E'\n' || name || E'\n' || priority::text, 0);

DROP INDEX pgbg.task_lane_idx;
CREATE INDEX task_lane_idx ON pgbg.task (pgbg.lane_key(queue, name, priority), staged_xact, id)
  WHERE state = 'queued' AND group_name IS NULL;

-- The table's CHECKs of the values a caller gives, each a condition every
-- row written pays for (about 2 % of the batch insert's time each): a
-- queue and a name of 1-128 characters, a key of 1-512, a group of 1-256,
-- max_attempts and input_version at least 1, and attempts and snoozes at
-- least 0. Every write of pgbg refuses such a value before it reaches SQL,
-- with an error that names it (InvalidOptionsError, InvalidTaskError), and
-- the two counters are pgbg's own, only ever counted up. Dropped, the
-- enqueue went from 0.75-0.79 to 0.81-0.87 of the raw insert across the
-- batch sizes (bench/RESULTS.md, "The lane index keyed by a hash"). The
-- table keeps the two CHECKs that what pgbg reads relies on: a running
-- task has a lease, and a failed one its failure time. A row written by
-- hand with such a value is the writer's, and a worker takes it as it is:
-- a name no worker runs waits unclaimed, as any such name does, and a
-- max_attempts of 0 fails the task for good at its first failure, as 1
-- would.
ALTER TABLE pgbg.task
  DROP CONSTRAINT task_queue_length,
  DROP CONSTRAINT task_name_length,
  DROP CONSTRAINT task_key_length,
  DROP CONSTRAINT task_group_name_length,
  DROP CONSTRAINT task_max_attempts_in_range,
  DROP CONSTRAINT task_input_version_in_range,
  DROP CONSTRAINT task_attempts_in_range,
  DROP CONSTRAINT task_snoozes_in_range;

-- pgbg.count_held_by_claims as migration 028 wrote it, each held claim
-- row's stretch read by the lane's key: by the columns alone it read the
-- whole table once per held claim row, under the queue's lock of every
-- limited claim (take_queue_slots).
CREATE OR REPLACE FUNCTION pgbg.count_held_by_claims(claimed_queue text) RETURNS bigint
  LANGUAGE plpgsql STABLE STRICT AS $$
BEGIN
  RETURN (SELECT count(*) FROM pgbg.claim c
    CROSS JOIN LATERAL (
      SELECT FROM pgbg.task t
      WHERE pgbg.lane_key(t.queue, t.name, t.priority) = pgbg.lane_key(c.queue, c.name, c.priority)
        AND t.queue = c.queue AND t.name = c.name AND t.priority = c.priority AND t.state = 'queued'
        AND (t.staged_xact, t.id) > (c.after_xact, c.after_id) AND (t.staged_xact, t.id) <= (c.last_xact, c.last_id)
        AND pg_visible_in_snapshot(t.staged_xact, c.upto) AND (c.since IS NULL OR NOT pg_visible_in_snapshot(t.staged_xact, c.since))
        AND t.group_name IS NULL
      ORDER BY t.staged_xact, t.id OFFSET 0
    ) x
    WHERE c.worker_id IS NOT NULL AND c.queue = claimed_queue);
END
$$;

-- pgbg.claim_lane as migration 030 wrote it, its two reads of the lane by
-- the key.
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
  open_claim bigint;
  own xid8;
  -- The lane's key in task_lane_idx; the reads below also compare the
  -- lane's columns, which two lanes of one key (a hash collision) differ in.
  lane bigint := pgbg.lane_key(lane_queue, lane_name, lane_priority);
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
  -- The lane's newest claim row, when its pair has tasks left: ended below
  -- (whole) if the read finds none.
  open_claim := CASE WHEN prev.id IS NOT NULL AND NOT prev.whole THEN prev.id END;
  -- One statement: the pair's next tasks with every column the worker is
  -- sent, read once, and the claim row written from them.
  RETURN QUERY
  WITH found AS MATERIALIZED (
    -- The stretch, in lane order, and one task past it, which tells
    -- whether the pair has more (`whole`). A materialized CTE is read
    -- back in the order it was written (each reader scans its one
    -- tuplestore from the start: how PostgreSQL 14-17 run it, not a
    -- documented promise; the claim-row tests fail when the stretch's
    -- last task is not the last read), so the readers below take the
    -- stretch as its first `wanted` rows: a window numbering them cost
    -- 0.3 ms a claim of 1,000, and a sort by that number as much again.
    SELECT p.* FROM (
      -- One probe per transaction in progress at `since`, each an index
      -- range of its own: as `staged_xact = ANY (…)` beside the row
      -- comparison, the array was a filter on a scan of the rest of the
      -- lane, and each claim of a 100,000-task drain read what was left of
      -- it. The claim's start splits into the transaction and the id: as a
      -- row comparison beside `staged_xact = x.xact`, the btree began the
      -- probe of a transaction before the start (a held horizon's, in every
      -- snapshot's list) at the start and read to the lane's end. The
      -- probe is a range from (x, the claim's start in x) to x's last
      -- entry, not `staged_xact = x`: the planner drops a column fixed by
      -- `=` from the order, so `ORDER BY id` could be read from task_pkey,
      -- and with statistics that see one staging transaction (a backfill
      -- enqueued in one) it chose that, filtering the whole table for
      -- each probe (tests/claim-rows.test.ts).
      SELECT p.* FROM pg_snapshot_xip(pair_since) AS x (xact)
      CROSS JOIN LATERAL (
        SELECT t.id, t.staged_xact, (t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647) AS claimable,
          t.name, t.queue, t.payload, t.attempts, t.max_attempts, t.priority, t.snoozes, t.input_version, t.trace_context,
          t.batch_then, t.run_at FROM pgbg.task t
        WHERE pgbg.lane_key(t.queue, t.name, t.priority) = lane
          AND t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
          AND t.state = 'queued' AND t.group_name IS NULL
          AND (t.staged_xact, t.id) > (x.xact, CASE WHEN x.xact = from_xact THEN from_id ELSE -1 END)
          AND t.staged_xact <= x.xact
          AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
        ORDER BY t.staged_xact, t.id LIMIT wanted + 1
      ) p
      WHERE x.xact >= from_xact
      UNION ALL
      (SELECT t.id, t.staged_xact, (t.cancel_requested_at IS NULL AND t.attempts < 2147483647 AND t.lease_token < 2147483647) AS claimable,
          t.name, t.queue, t.payload, t.attempts, t.max_attempts, t.priority, t.snoozes, t.input_version, t.trace_context,
          t.batch_then, t.run_at FROM pgbg.task t
      WHERE pgbg.lane_key(t.queue, t.name, t.priority) = lane
        AND t.queue = lane_queue AND t.name = lane_name AND t.priority = lane_priority
        AND t.state = 'queued' AND t.group_name IS NULL
        AND (t.staged_xact, t.id) > (start_xact, start_id)
        AND t.staged_xact < pg_snapshot_xmax(pair_upto)
        AND pg_visible_in_snapshot(t.staged_xact, pair_upto)
      ORDER BY t.staged_xact, t.id LIMIT wanted + 1)
      ORDER BY 2, 1 LIMIT wanted + 1
    ) p
  ),
  stretch AS (
    SELECT count(*) AS tasks, bool_or(f.claimable) AS held FROM (SELECT f.claimable FROM found f LIMIT wanted) f
  ),
  -- The claim row, from the stretch's first and last tasks. A stretch of
  -- tasks a claim may not take alone still moves the lane on: its row is
  -- held by nobody, as an ended claim's.
  claimed AS (
    INSERT INTO pgbg.claim AS c (since, upto, after_xact, after_id, last_xact, last_id, lease_expires_at, priority, whole,
      worker_id, queue, name)
    SELECT pair_since, pair_upto, first.staged_xact, first.id - 1, last.staged_xact, last.id,
      CASE WHEN s.held THEN now() + lease END, lane_priority, NOT EXISTS (SELECT FROM found f OFFSET wanted),
      CASE WHEN s.held THEN claimer END, lane_queue, lane_name
    FROM stretch s
    CROSS JOIN LATERAL (SELECT f.staged_xact, f.id FROM found f LIMIT 1) first
    CROSS JOIN LATERAL (SELECT f.staged_xact, f.id FROM found f OFFSET greatest(s.tasks - 1, 0) LIMIT 1) last
    WHERE s.tasks > 0
    RETURNING c.id
  ),
  -- The stretch's tasks a claim may not take (a cancel asked, a count at
  -- its integer limit) are restaged, into a later pair (this
  -- transaction's id is past the pair's snapshot, or in progress in it),
  -- so that the stretch holds the tasks returned alone: a worker whose
  -- every outcome of the claim was written then ends it without reading
  -- the stretch again (EndClaims). By id, not by the row read: a version
  -- written since the read (a replace; a cancel waits for the lane's
  -- lock) is then restaged too.
  passed AS (
    UPDATE pgbg.task t SET staged_xact = pg_current_xact_id()
    WHERE t.id = ANY (ARRAY(SELECT f.id FROM (SELECT f.id, f.claimable FROM found f LIMIT wanted) f WHERE NOT f.claimable))
  ),
  -- The rest of the pair is gone (cancelled, restaged): the next claim
  -- reads a pair of its own.
  ended AS (
    UPDATE pgbg.claim c SET whole = true WHERE c.id = open_claim AND NOT EXISTS (SELECT FROM found)
  )
  SELECT f.id, f.name, f.queue, f.payload, f.attempts + 1, f.max_attempts, f.priority, f.snoozes, f.input_version,
    f.trace_context, f.batch_then, date_part('epoch', now() - f.run_at) * 1000,
    (extract(epoch FROM f.run_at) * 1000000)::bigint, (SELECT c.id FROM claimed c)
  FROM (SELECT * FROM found f LIMIT wanted) f
  WHERE f.claimable;
END
$$;
