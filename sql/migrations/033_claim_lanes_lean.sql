-- 033_claim_lanes_lean: the claim of lanes returns each task in seven
-- columns instead of fourteen: what is the same for every task of a claim
-- row (its lane, its id, the claim's time) on the first task it returns alone,
-- and the columns that nearly always hold their defaults in one, NULL
-- while they do.
--
-- A worker's share of a served drain's CPU was about half (bench/RESULTS.md,
-- "Where a worker's CPU goes in a drain"), and a third of that was
-- postgres.js reading the claim's rows, a cost that grows with the number
-- of columns whatever they hold: a NULL costs the reader about what a
-- small integer does. Read by a client alone, a claim of 1,000 rows cost
-- 3.3 µs of its CPU a row in fourteen columns (and two constants the
-- statement added) against 1.75 in these seven, and the server 0.90 against
-- 0.63 (bench/RESULTS.md, "Seven columns a claimed task").
--
-- pgbg.claim_lanes stays as it was for the workers of releases before this
-- one, which call it while this release's migrate runs and until they stop
-- (tests/upgrade.test.ts); the loops below are its loops, and a change of how
-- claim_lanes shares a claim among lanes must be made in both. claim_lane
-- is shared, unchanged.
--
-- The columns:
-- - id, payload, attempts (this attempt's number), run_at_us, trace_context:
--   the task's own, as claim_lanes returns them;
-- - rare: NULL while max_attempts is NULL, snoozes 0, input_version 1 and
--   batch_then NULL, else those four as a JSON array (batch_then as text:
--   a bigint is exact in JSON only as a string);
-- - lane: on the first task returned of each claim row alone, else NULL: a JSON
--   array of the lane's queue, name and priority, the claim row's id (as
--   text) and when the claim took it (now(), epoch microseconds, as text).
--   The tasks that follow are that row's until the next `lane`: each call
--   of claim_lane writes at most one claim row and returns its tasks
--   together (a call that returns none may still write one, for tasks it
--   passed over).
CREATE FUNCTION pgbg.claim_lanes_lean(lane_queues text[], lane_names text[], lane_priorities smallint[], lease_ms integer[],
    claimer uuid, wanted integer)
  RETURNS TABLE (id bigint, payload jsonb, attempts integer, run_at_us bigint, trace_context text, rare text, lane text)
  LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
  lanes integer := coalesce(cardinality(lane_queues), 0);
  taken integer := 0;
  sharing integer;
  asked integer;
  n integer;
  filled boolean[] := '{}';
  claimed_at text := ((extract(epoch FROM now()) * 1000000)::bigint)::text;
BEGIN
  -- claim_lanes' two loops as two passes of one, so that the query is
  -- written once: the first asks each lane for its share, the second gives
  -- what is left to the lanes that filled theirs.
  FOR pass IN 1 .. 2 LOOP
    FOR i IN 1 .. lanes LOOP
      EXIT WHEN taken >= wanted;
      IF pass = 1 THEN
        sharing := 0;
        FOR j IN i .. lanes LOOP
          EXIT WHEN lane_priorities[j] <> lane_priorities[i];
          sharing := sharing + 1;
        END LOOP;
        asked := ceil((wanted - taken)::numeric / sharing)::integer;
      ELSE
        CONTINUE WHEN NOT coalesce(filled[i], false);
        asked := wanted - taken;
      END IF;
      -- WITH ORDINALITY numbers the rows in the order claim_lane returned
      -- them: the first carries the lane.
      RETURN QUERY SELECT c.id, c.payload, c.attempts, c.run_at_us, c.trace_context,
        CASE WHEN c.max_attempts IS NOT NULL OR c.snoozes <> 0 OR c.input_version <> 1 OR c.batch_then IS NOT NULL
          THEN json_build_array(c.max_attempts, c.snoozes, c.input_version, c.batch_then::text)::text END,
        CASE WHEN c.n = 1 THEN json_build_array(c.queue, c.name, c.priority, c.claim_id::text, claimed_at)::text END
      FROM pgbg.claim_lane(lane_queues[i], lane_names[i], lane_priorities[i], claimer, lease_ms[i] * interval '1 millisecond', asked)
        WITH ORDINALITY AS c (id, name, queue, payload, attempts, max_attempts, priority, snoozes, input_version, trace_context,
          batch_then, lag_ms, run_at_us, claim_id, n);
      GET DIAGNOSTICS n = ROW_COUNT;
      taken := taken + n;
      IF pass = 1 THEN
        filled[i] := n = asked;
      END IF;
    END LOOP;
  END LOOP;
END
$$;
