-- 032_claim_lane_generic_plans: pgbg.claim_lane plans each of its
-- statements once per session, for any lane, and never compiles them.
--
-- PL/pgSQL plans a statement with its variables as values for the first
-- five calls, then keeps one plan for any values only if that plan's
-- estimate is no worse than theirs. The claim's read of the lane (`found`)
-- never passed that test, so it was planned again at every call, about
-- 0.9 ms each, at least once per lane a worker runs for every claim: at 800
-- tasks/s with eight task names that was most of a core of the server's
-- time, every ANALYZE of the task or claim table started the choice anew,
-- and under a held horizon the plans made for some statistics read the
-- lane's dead entries (4 ms a call instead of 0.04). Those were the spells
-- of the pressure bench's hold: completions down to 200-700/s for 20-55 s
-- after one autovacuum's ANALYZE, back after another's (bench/RESULTS.md,
-- "The claim of a lane planned once").
--
-- The statements were written for the plan with no values: ordered index
-- scans from a start key that no estimate can turn into another plan
-- (their comments in 031). JIT is off for them too: a plan kept for a
-- session on a table bloated by a held horizon can be estimated past
-- jit_above_cost, and JIT then compiles at every call (the end of a claim
-- took about a second a call so, bench/RESULTS.md, "The lane index keyed by
-- a hash"). Both settings hold inside the function alone.
ALTER FUNCTION pgbg.claim_lane(text, text, smallint, uuid, interval, integer)
  SET plan_cache_mode = force_generic_plan
  SET jit = off;
