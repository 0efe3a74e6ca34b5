-- 011_queue_rate: a rate limit per queue: at most rate_limit of its tasks
-- start (are claimed) in any rate_interval_ms, across every host.
--
-- The limit is kept exact with a sliding log rather than a counter per
-- window or a token bucket: both of those let up to twice the limit
-- through across a window's edge. rate_starts holds the claim times of the
-- starts within the last interval, oldest first, at most rate_limit of
-- them, so the log stays small; the limited claim (lib/limits.ts) reads it
-- and appends to it under the queue's advisory lock.
ALTER TABLE pgbg.queue
  ADD COLUMN rate_limit       integer,
  ADD COLUMN rate_interval_ms integer,
  ADD COLUMN rate_starts      timestamptz[] NOT NULL DEFAULT '{}',
  ADD CONSTRAINT queue_rate_limit_range CHECK (rate_limit BETWEEN 1 AND 10000),
  ADD CONSTRAINT queue_rate_interval_positive CHECK (rate_interval_ms >= 1),
  ADD CONSTRAINT queue_rate_whole CHECK ((rate_limit IS NULL) = (rate_interval_ms IS NULL));
