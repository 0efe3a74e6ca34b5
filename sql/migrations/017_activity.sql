-- 017_activity: what the dashboard's charts draw, kept for 24 hours.
--
-- The charts show, per minute, the outcomes (task_count, which supervisors
-- used to keep for an hour only), the start latency and the queue depth.
--
-- `task_count.lag` holds the attempts that started in the period, per
-- bucket of their wait from due to start (the buckets of lib/stats.ts's
-- HISTOGRAM_BUCKETS, the last one above every bound): a chart reads its
-- p50 and p95 off the buckets, as a Prometheus histogram is read. Written by
-- the statement a worker already sends at each heartbeat (RecordTaskCounts),
-- so the drain pays no new statement. Nullable, without a default: added
-- without rewriting the table, and the previous release's statements, which
-- never name it, go on working.
ALTER TABLE pgbg.task_count ADD COLUMN lag bigint[];

-- The number of tasks per queue and task name in each state that makes up
-- the queue's depth, sampled once a minute by one host (SampleTaskDepth;
-- the first host to sample a minute writes it, the others find it there).
-- The row of queue '' and name '' (names are never empty) holds the
-- minute's totals and is written even when the queue is empty: a minute
-- without it was not sampled (no host ran), which a chart leaves blank
-- rather than drawing as an empty queue.
CREATE TABLE pgbg.task_depth (
  minute    timestamptz NOT NULL,
  queue     text NOT NULL,
  name      text NOT NULL,
  -- Due tasks not yet claimed.
  queued    integer NOT NULL,
  -- Tasks that wait for their time (a delay or a retry's backoff).
  scheduled integer NOT NULL,
  running   integer NOT NULL,
  CONSTRAINT task_depth_pkey PRIMARY KEY (minute, queue, name)
);
