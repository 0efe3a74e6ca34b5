-- 003_worker_stale_after: each worker states how long its heartbeat may be
-- silent before other supervisors may take it for dead.
--
-- Supervisors may run with different check intervals. With one threshold
-- per supervisor, a supervisor checking every second would take the workers
-- of one that heartbeats every 30 s for dead and release their running
-- tasks. The threshold now travels with the worker: its supervisor sets it,
-- the worker stops itself (and its tasks) when its heartbeat has not
-- succeeded for 40 % of it, and every supervisor reaps by the worker's own
-- value. NULL (a worker of an older pgbg) means the reaper's own threshold.
-- bigint: 20 × the longest check interval (168 h) is past integer's range.
ALTER TABLE pgbg.worker ADD COLUMN stale_after_ms bigint
  CONSTRAINT worker_stale_after_positive CHECK (stale_after_ms > 0);
