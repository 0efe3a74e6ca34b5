-- 029_claim_rows_on: claim rows become the claim of every task without a
-- group (docs/storage.md, "What the drain target needs"): the lane index
-- replaces task_claim_idx, which only the row-by-row claims of such tasks
-- read.
--
-- task_lane_idx is a lane in claim order: the queued tasks of one queue,
-- name and priority without a group, by the transaction that staged them,
-- then id. pgbg.claim_lane reads a pair's tasks as one range of it from the
-- previous snapshot's xmax and one probe per transaction that snapshot saw
-- in progress; a claim row's stretch (InClaim) is a range of it too. Beside
-- task_claim_idx it cost the enqueue a fifth to a quarter of its rate
-- (bench/RESULTS.md, "Claim rows in the engine"); in its place, an index
-- of the same number of columns, it costs the width of the name.
CREATE INDEX task_lane_idx ON pgbg.task (queue, name, priority, staged_xact, id)
  WHERE state = 'queued' AND group_name IS NULL;

-- task_unstaged_idx holds the queued tasks without a group that no
-- transaction has staged: those not due yet when enqueued, retried or
-- snoozed for later, and those written by a hand or by a release before
-- 025. A claim that opens a new pair stages its lane's due ones
-- (claim_lane) by one range of it; without it that read the whole lane,
-- 17-19 ms a lane on a queue of 100,000 (bench/RESULTS.md, "Claims ended
-- without reading their tasks again"). A task due at once is staged by its
-- enqueue and never enters it, so it costs the enqueue nothing.
CREATE INDEX task_unstaged_idx ON pgbg.task (queue, name, priority, run_at)
  WHERE state = 'queued' AND group_name IS NULL AND staged_xact IS NULL;

-- An earlier release's row claims read task_claim_idx by (queue, priority,
-- run_at). Dropped, they still run during a rolling upgrade, by a scan of
-- the table, and task_claim_guard (028) fails those that meet a task a
-- claim row holds: such a worker should be upgraded, not left beside these.
DROP INDEX pgbg.task_claim_idx;
