-- 027_claim_lanes: the lane index and the claim of several lanes by claim
-- rows, the claim the workers make when claim rows are on (docs/storage.md,
-- "What the drain target needs"; off by default until every reader of
-- "running" reads claim rows too).
--
-- The lane index orders a lane (queue, name, priority, without a group) by
-- its staging transaction, as pgbg.claim_lane reads it. It stands beside
-- task_claim_idx, which the row-by-row claims read, until those read lanes
-- too: each enqueue then writes both (bench/RESULTS.md, "Claim rows in the
-- worker", has the cost).
CREATE INDEX task_lane_idx ON pgbg.task (queue, name, priority, staged_xact, id)
  WHERE state = 'queued' AND group_name IS NULL;

-- The lane's tasks that no transaction staged yet (delayed, retried or
-- snoozed for later, or written by another writer): a claim that starts a
-- new pair stages those that are due, and finds them here. It holds
-- delayed tasks only, so an enqueue of a task due at once does not write it.
CREATE INDEX task_unstaged_idx ON pgbg.task (queue, name, priority, run_at)
  WHERE state = 'queued' AND group_name IS NULL AND staged_xact IS NULL;

-- Claims up to `wanted` tasks for `claimer` from the lanes given, in the
-- order given (the caller sorts them by priority), each lane by
-- pgbg.claim_lane with its name's lease (`lease_ms`, ms), until `wanted`
-- are taken. A function, so that no lane is claimed past what the worker
-- asked for: a claim row holds every task it returns, and one the worker
-- never received would wait for its lease to end.
CREATE FUNCTION pgbg.claim_lanes(lane_queues text[], lane_names text[], lane_priorities smallint[], lease_ms integer[],
    claimer uuid, wanted integer)
  RETURNS TABLE (id bigint, name text, queue text, payload jsonb, attempts integer, max_attempts integer, priority smallint,
    snoozes integer, input_version integer, trace_context text, batch_then bigint, lag_ms float8, run_at_us bigint, claim_id bigint)
  LANGUAGE plpgsql VOLATILE STRICT AS $$
DECLARE
  taken integer := 0;
  n integer;
BEGIN
  FOR i IN 1 .. coalesce(cardinality(lane_queues), 0) LOOP
    EXIT WHEN taken >= wanted;
    RETURN QUERY SELECT * FROM pgbg.claim_lane(lane_queues[i], lane_names[i], lane_priorities[i], claimer,
      lease_ms[i] * interval '1 millisecond', wanted - taken);
    GET DIAGNOSTICS n = ROW_COUNT;
    taken := taken + n;
  END LOOP;
END
$$;
