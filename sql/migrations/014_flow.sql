-- 014_flow: tasks that wait for other tasks (flows), and batches with a
-- completion task.
--
-- A task enqueued to run after others is `waiting` until every one of them
-- has settled: it is in none of the claim's indexes (they hold `queued`
-- rows only), so nothing claims it and no claim steps over it. Each edge
-- is a row of pgbg.task_dependency, and its parent is marked (`dependants`).
-- When a marked parent leaves the queue (its success deletes it, a cancel
-- deletes it) or fails for good, a row trigger settles its waiting
-- dependants in the same transaction: a child whose last parent succeeded
-- is `queued` at once, due now. Nothing polls for it. The trigger's WHEN
-- clause is false for every unmarked task, so the drain of tasks without
-- dependants runs no trigger (bench/RESULTS.md, "Flows").
--
-- A trigger rather than a step of each statement that ends a task: every
-- way a task ends (a worker's success, failure or cancel, ctx.complete(tx)
-- in the app's transaction, an admin's cancel, the rescue of a dead
-- worker's tasks, and the statements of a worker of the previous release
-- during a rolling upgrade) settles the dependants alike.
--
-- A batch is many members and one completion task that runs once they all
-- ended, however (policy `run`), told which failed. Its members are not
-- parents with edges: a row trigger costs about 0.1 ms a task (measured in
-- bench/RESULTS.md, "Flows"), too much for a 100,000-member drain. Each
-- member names its completion task (`batch_then`), and the statements that
-- end tasks count a batch's members once per statement
-- (pgbg.count_batch_members): one update of the completion task's row per
-- statement, not per member.

ALTER TYPE pgbg.task_state ADD VALUE IF NOT EXISTS 'waiting';

-- One row per enqueueFlow or enqueueBatch call.
CREATE TABLE pgbg.flow (
  id          bigint GENERATED ALWAYS AS IDENTITY,
  created_at  timestamptz NOT NULL DEFAULT now(),
  -- 'flow' or 'batch'.
  kind        text NOT NULL,
  -- What a waiting task does when a parent fails for good or is cancelled:
  -- 'fail' (it fails too), 'cancel' (it is cancelled), 'run' (it runs once
  -- its other parents settled, told which failed).
  on_parent_failure text NOT NULL,
  -- Tasks enqueued by the call (a batch's members, without its completion task).
  size        integer NOT NULL,
  -- A batch's completion task.
  then_id     bigint,
  -- A flow's tasks, and its edges as flat (parent, child) pairs: getFlow
  -- draws the graph from them after its tasks left the queue. NULL for a
  -- batch, whose members are many and alike.
  task_ids    bigint[],
  edges       bigint[],
  CONSTRAINT flow_pkey PRIMARY KEY (id),
  CONSTRAINT flow_kind CHECK (kind IN ('flow', 'batch')),
  CONSTRAINT flow_on_parent_failure CHECK (on_parent_failure IN ('fail', 'cancel', 'run'))
);

-- Columns without a default: added without rewriting the table, and the
-- previous release's statements, which never name them, go on working.
ALTER TABLE pgbg.task
  -- The flow or batch the task was enqueued in.
  ADD COLUMN flow_id bigint,
  -- The tasks it waits for, as enqueued (ctx.parentResults, getFlow).
  ADD COLUMN parent_ids bigint[],
  -- Of those, how many have not settled yet: above 0 while `waiting` only
  -- (0 once released, failed or cancelled).
  ADD COLUMN waiting_on integer,
  -- Of those, the ones that failed for good or were cancelled (policy 'run').
  ADD COLUMN failed_parents bigint[],
  -- Some task waits for this one (its settling runs the trigger).
  ADD COLUMN dependants boolean,
  -- A batch member: its batch's completion task, counted down as it ends.
  ADD COLUMN batch_then bigint;

-- The tasks of a flow or batch (getFlow, cancelFlow, the batch rescue's
-- look for a member still pending). The only index a batch member adds:
-- each costs an entry at the enqueue and at every claim.
CREATE INDEX task_flow_idx ON pgbg.task (flow_id) WHERE flow_id IS NOT NULL;

ALTER TABLE pgbg.history ADD COLUMN flow_id bigint;
CREATE INDEX history_flow_idx ON pgbg.history (flow_id) WHERE flow_id IS NOT NULL;

-- parent -> child, read and deleted when the parent settles.
CREATE TABLE pgbg.task_dependency (
  parent_id bigint NOT NULL,
  child_id  bigint NOT NULL,
  CONSTRAINT task_dependency_pkey PRIMARY KEY (parent_id, child_id)
);

-- Settles the waiting dependants of the task OLD, which just succeeded
-- (deleted while running, other than by the end of a cancelled attempt),
-- was cancelled (deleted otherwise) or failed for good (updated to failed). A deleted failed task
-- (pruned, or cancelled after it failed) settled them when it failed.
-- Children are locked in id order, so two parents settling at once never
-- wait on each other's children in opposite orders. Each statement here
-- reads the committed state as it is now (READ COMMITTED takes a snapshot
-- per statement), so a dependant that an enqueue added while this task ran
-- is found: that enqueue locked this task's row, and the statement that
-- ends the task waited for its commit. A child made `queued` wakes idle
-- workers, as an enqueue does. A child failed or cancelled by its policy
-- fires this trigger in turn, so the settling cascades down the graph.
CREATE FUNCTION pgbg.task_settle_dependants() RETURNS trigger
  LANGUAGE plpgsql AS $$
DECLARE
  -- A running task deleted is a success, unless the statement that deletes
  -- it ends a cancelled attempt (FinishCancelledTasks says so in the
  -- transaction-local setting pgbg_flow.ending): a task whose cancel was asked
  -- may still succeed, and is then kept and counted as completed.
  outcome text := CASE
    WHEN TG_OP = 'UPDATE' THEN 'failed'
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

CREATE TRIGGER task_settled AFTER DELETE ON pgbg.task
  FOR EACH ROW WHEN (OLD.dependants) EXECUTE FUNCTION pgbg.task_settle_dependants();
CREATE TRIGGER task_failed_settled AFTER UPDATE OF state ON pgbg.task
  FOR EACH ROW WHEN (OLD.dependants AND NEW.state = 'failed' AND OLD.state <> 'failed')
  EXECUTE FUNCTION pgbg.task_settle_dependants();

-- Counts down the completion tasks `then_ids` of the batch members
-- `member_ids` that just ended (failed for good or cancelled when `failed`,
-- those then listed in its failed_parents). Called once per statement that
-- ends tasks, with that statement's members: one update of each completion
-- task's row, locked in id order. A completion task whose count reaches 0 is
-- queued, due now, and idle workers are woken.
CREATE FUNCTION pgbg.count_batch_members(then_ids bigint[], member_ids bigint[], failed boolean) RETURNS integer
  LANGUAGE plpgsql AS $$
DECLARE
  r record;
  released boolean := false;
BEGIN
  FOR r IN
    SELECT c.id, c.waiting_on, m.n, m.members
    FROM (
      SELECT x.then_id, count(*)::int AS n, array_agg(x.member_id ORDER BY x.member_id) AS members
      FROM unnest(then_ids, member_ids) AS x (then_id, member_id)
      GROUP BY x.then_id
    ) m JOIN pgbg.task c ON c.id = m.then_id
    WHERE c.state = 'waiting'
    ORDER BY c.id
    FOR UPDATE OF c
  LOOP
    UPDATE pgbg.task SET
      waiting_on = waiting_on - r.n,
      state = CASE WHEN waiting_on <= r.n THEN 'queued' ELSE 'waiting' END::pgbg.task_state,
      run_at = CASE WHEN waiting_on <= r.n THEN now() ELSE run_at END,
      failed_parents = CASE WHEN failed THEN coalesce(failed_parents, '{}') || r.members ELSE failed_parents END
    WHERE id = r.id;
    released := released OR r.waiting_on <= r.n;
  END LOOP;
  IF released AND EXISTS (SELECT 1 FROM pgbg.worker WHERE idle) THEN
    PERFORM pg_notify('pgbg:' || (SELECT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = 'pgbg.task'::regclass), '');
  END IF;
  RETURN 0;
END
$$;
