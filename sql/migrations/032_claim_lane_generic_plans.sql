-- 032_claim_lane_generic_plans: pgbg.claim_lane plans each of its
-- statements once per session, for any lane, never by a sequential scan,
-- and never compiles them.
--
-- PL/pgSQL plans a statement with its variables as values for the first
-- five calls, then keeps one plan for any values only if that plan's
-- estimate is no worse than theirs. The claim's read of the lane (`found`)
-- mostly failed that test, so it was planned again at nearly every call,
-- about 0.9 ms each, once per lane a worker runs for every claim: at 800
-- tasks/s with eight task names that was most of a core of the server's
-- time. And after some ANALYZEs of the task or claim table, under a held
-- horizon, the plans made for the call's values read the lane's dead
-- entries (3-4 ms a call instead of 0.04) until the next ANALYZE. Those
-- were the spells of the pressure bench's hold: completions down to
-- 200-700/s for 20-55 s (bench/RESULTS.md, "The claim of a lane planned
-- once").
--
-- A plan for any values is kept for the session, made from the statistics
-- of its first call, which may be of an empty table: on those the planner
-- chose sequential scans (of the claim table for the lane's newest claim
-- row, of the task table for the tasks a claim passes over), which read
-- every row, dead ones too, at every later call. With sequential scans off
-- in the function each statement reads its index whatever the statistics
-- (tests/claim-rows.test.ts). JIT is off too: a kept plan on a table
-- bloated by a held horizon can be estimated past jit_above_cost, and JIT
-- then compiles at every call (the end of a claim took about a second a
-- call so, bench/RESULTS.md, "The lane index keyed by a hash"). The
-- settings hold inside the function alone; a migration that replaces the
-- function must name them again, as CREATE OR REPLACE sets only those it
-- is given.
ALTER FUNCTION pgbg.claim_lane(text, text, smallint, uuid, interval, integer)
  SET plan_cache_mode = force_generic_plan
  SET enable_seqscan = off
  SET jit = off;
