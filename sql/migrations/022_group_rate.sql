-- 022_group_rate: a rate limit per group, and a worker's detached attempts.
--
-- A rate limit per group: at most group_rate_limit of
-- each group's tasks start (are claimed) in any group_rate_interval_ms,
-- across every host, for a quota per tenant or per account.
--
-- Each group keeps its own sliding log, as a queue's rate limit does
-- (011_queue_rate, and why not a counter per window or a token bucket):
-- the claim times of its starts within the last interval, oldest first,
-- at most the limit of them. It lives in a table of its own, a row per
-- group that started a task within the last interval, because a queue
-- may have any number of groups. The limited claim reads a group's row
-- by its key and writes it after claiming (RecordGroupStarts), both under
-- the queue's advisory lock; the count pruner deletes rows whose newest
-- start has aged out.
ALTER TABLE pgbg.queue
  ADD COLUMN group_rate_limit       integer,
  ADD COLUMN group_rate_interval_ms integer,
  ADD CONSTRAINT queue_group_rate_limit_range CHECK (group_rate_limit BETWEEN 1 AND 10000),
  ADD CONSTRAINT queue_group_rate_interval_positive CHECK (group_rate_interval_ms >= 1),
  ADD CONSTRAINT queue_group_rate_whole CHECK ((group_rate_limit IS NULL) = (group_rate_interval_ms IS NULL));

CREATE TABLE pgbg.group_rate (
  queue      text NOT NULL,
  group_name text NOT NULL,
  starts     timestamptz[] NOT NULL,
  PRIMARY KEY (queue, group_name)
);

-- The attempts a worker let run on detached (an in-process attempt that
-- ignored its abort signal past its timeout): they keep their leases but
-- not their slots. The limited claim adds them to the workers'
-- concurrency when it judges whether a queue's limit can bind
-- (QueueFreeSlots). With a default: added without a rewrite, and the
-- previous release's workers, which never write it, leave it at 0.
ALTER TABLE pgbg.worker ADD COLUMN detached integer NOT NULL DEFAULT 0;
