-- 001_init: the task table, the worker registry, and the enqueue wake-up trigger.
--
-- `pgbg.` is replaced by the configured (validated, quoted) schema name when
-- the migration is compiled for a schema; migrate() creates the schema itself.

CREATE TYPE pgbg.task_state AS ENUM ('queued', 'running', 'failed');

-- One row per task that has not yet succeeded. Success deletes the row, so the
-- table holds only the live queue plus the failed tasks kept for operators.
--
-- Columns are ordered widest-first (8-byte, then 4-, then 2-byte, then
-- variable length) so that a row carries no alignment padding.
CREATE TABLE pgbg.task (
  id               bigint GENERATED ALWAYS AS IDENTITY,
  -- When the task becomes claimable. Delays are computed from the database's
  -- clock at enqueue, so application hosts with skewed clocks agree.
  run_at           timestamptz NOT NULL DEFAULT now(),
  enqueued_at      timestamptz NOT NULL DEFAULT now(),
  -- Set while running: the lease ends here; any worker may reclaim after it.
  lease_expires_at timestamptz,
  failed_at        timestamptz,
  state            pgbg.task_state NOT NULL DEFAULT 'queued',
  -- Attempts started so far (incremented by each claim).
  attempts         integer NOT NULL DEFAULT 0,
  -- NULL means "the service's --max-attempts".
  max_attempts     integer,
  -- Fencing token: incremented by every claim and never reused, so a worker
  -- that lost its lease cannot complete or fail the task with a stale token.
  lease_token      integer NOT NULL DEFAULT 0,
  priority         smallint NOT NULL DEFAULT 0,
  worker_id        uuid,
  queue            text NOT NULL,
  name             text NOT NULL,
  key              text,
  payload          jsonb NOT NULL,
  last_error       jsonb,
  CONSTRAINT task_pkey PRIMARY KEY (id),
  CONSTRAINT task_queue_length CHECK (char_length(queue) BETWEEN 1 AND 128),
  CONSTRAINT task_name_length CHECK (char_length(name) BETWEEN 1 AND 128),
  CONSTRAINT task_key_length CHECK (key IS NULL OR char_length(key) BETWEEN 1 AND 512),
  CONSTRAINT task_attempts_in_range CHECK (attempts >= 0),
  CONSTRAINT task_max_attempts_in_range CHECK (max_attempts IS NULL OR max_attempts >= 1),
  -- A running task always has a live lease holder; no other state has one.
  CONSTRAINT task_running_has_lease CHECK (
    (state = 'running') = (lease_expires_at IS NOT NULL AND worker_id IS NOT NULL)
  ),
  CONSTRAINT task_failed_has_failed_at CHECK ((state = 'failed') = (failed_at IS NOT NULL))
) WITH (
  -- Every task is inserted, updated by its claim (and by a retry), then
  -- deleted. Leaving 15 % of each page free lets the claimed version of a row
  -- usually land on the page it came from, which keeps the claim and the
  -- delete from dirtying a second page.
  fillfactor = 85,
  -- A queue table turns over its whole content continuously. With the default
  -- scale factor (20 % of the table dead before a vacuum) dead rows pile up
  -- at the head of the claim index and every claim has to step over them.
  -- Vacuum after a fixed number of dead rows instead, without cost-based
  -- throttling, so the table and its indexes stay near the live queue's size.
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 5000,
  autovacuum_vacuum_insert_scale_factor = 0,
  autovacuum_vacuum_insert_threshold = 20000,
  autovacuum_vacuum_cost_delay = 0,
  -- The claim's plan does not depend on fresh statistics (its ORDER BY and
  -- LIMIT match the claim index), so analyze rarely.
  autovacuum_analyze_scale_factor = 0.5
);

-- The claim index: the worker's claim walks it in claim order (priority, then
-- run_at, then enqueue order) within one queue, and stops after LIMIT rows,
-- so the cost of a claim does not grow with the depth of the queue. Partial:
-- running and failed rows are never in it, so it stays as small as the set
-- of waiting tasks.
CREATE INDEX task_claim_idx ON pgbg.task (queue, priority, run_at, id)
  WHERE state = 'queued';

-- The rescue index: finds leases that expired (a worker died without
-- releasing them) and the leases of one worker, among the few running rows.
CREATE INDEX task_lease_idx ON pgbg.task (lease_expires_at)
  WHERE state = 'running';

-- At most one pending (queued or running) task per key. Failed tasks do not
-- hold their key, so a key can be enqueued again after its task failed.
CREATE UNIQUE INDEX task_key_idx ON pgbg.task (key)
  WHERE key IS NOT NULL AND state <> 'failed';

-- One row per live worker process. Workers heartbeat here; a supervisor
-- releases the leases of a worker whose heartbeat stopped.
CREATE TABLE pgbg.worker (
  id             uuid NOT NULL,
  supervisor_id  uuid NOT NULL,
  started_at     timestamptz NOT NULL DEFAULT now(),
  heartbeat_at   timestamptz NOT NULL DEFAULT now(),
  pid            integer NOT NULL,
  concurrency    integer NOT NULL,
  -- True while the worker sleeps on an empty queue; the enqueue trigger only
  -- sends a wake-up when some worker is idle (see task_notify_inserted).
  idle           boolean NOT NULL DEFAULT false,
  hostname       text NOT NULL,
  runtime        text NOT NULL,
  -- NULL means every queue.
  queues         text[],
  tasks          text[] NOT NULL,
  CONSTRAINT worker_pkey PRIMARY KEY (id)
) WITH (
  -- Heartbeats update columns that no index covers: with free room on the
  -- page they are HOT updates that write no index entries.
  fillfactor = 50
);

-- Wakes sleeping workers when tasks are enqueued. NOTIFY serialises the
-- commits of all notifying transactions on a database-wide lock, so sending
-- one for every enqueue would cap the enqueue rate of a busy system. Busy
-- workers do not need it (they claim again as soon as a slot frees), so the
-- notification is only sent while some worker says it is idle. Statement
-- level: one check and at most one notification per INSERT, however many rows.
CREATE FUNCTION pgbg.task_notify_inserted() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM pgbg.worker WHERE idle) THEN
    PERFORM pg_notify('pgbg:' || TG_TABLE_SCHEMA, '');
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER task_notify_inserted AFTER INSERT ON pgbg.task
  FOR EACH STATEMENT EXECUTE FUNCTION pgbg.task_notify_inserted();
