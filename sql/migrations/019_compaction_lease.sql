-- 019_compaction_lease: one index compaction at a time, held by a row.
--
-- Compaction (lib/compact.ts) held a session advisory lock across REINDEX
-- CONCURRENTLY, which runs in transactions of its own, so no
-- transaction-level lock can span it. Behind a pooler in transaction mode
-- (PgBouncer's pool_mode = transaction), consecutive statements of one
-- client may run on different server sessions: the lock could be taken on
-- one and released on none, and stay held for as long as that session
-- lives. A lease row holds through any pooler. Its holder renews it while
-- it compacts; a holder that died leaves it to expire (a minute), after
-- which the next compaction drops what its REINDEX left behind.
CREATE TABLE pgbg.compaction (
  one     boolean NOT NULL DEFAULT true,
  -- Who compacts: a random id per compaction.
  holder  uuid NOT NULL,
  -- The lease ends here unless renewed.
  until   timestamptz NOT NULL,
  CONSTRAINT compaction_pkey PRIMARY KEY (one),
  CONSTRAINT compaction_one CHECK (one)
);
