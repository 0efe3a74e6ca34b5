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
