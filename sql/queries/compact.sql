-- Statements of the index compaction (lib/compact.ts): the supervisor's
-- periodic check and `pgbg compact`. B-tree files never shrink: after a
-- deep queue drained, vacuum empties the indexes' pages for reuse but keeps
-- the files at their largest size. Only a rebuild gives the space back.

-- name: TaskIndexSizes
-- One row per index of the task table: its size on disk, whether it is
-- valid, and whether it is an invalid leftover of an interrupted REINDEX
-- CONCURRENTLY (`<index>_ccnew`, `<index>_ccold`, with a number when the
-- name was taken). `live_rows` estimates the table's live rows: the larger of
-- the last vacuum's count (reltuples, -1 before the first) and the
-- statistics' running count (n_live_tup, reset to 0 by a crash), so that
-- one estimate gone low cannot make a full table look bloated.
-- `snapshot_age_s`: how long the oldest transaction of this database that
-- holds a snapshot or a transaction id (other than this session and
-- vacuums; replication slots and standbys are not seen) has been open, in s: while it
-- holds vacuum back, a rebuild would keep the rows it holds, and REINDEX
-- CONCURRENTLY would wait for it to end. Sessions of other roles show no
-- snapshot to a role without pg_read_all_stats. Reads only catalogs,
-- statistics and file sizes: needs no privilege on the table.
SELECT c.relname AS index, pg_relation_size(c.oid)::float8 AS bytes, x.indisvalid AS valid,
  (NOT x.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$') AS leftover,
  greatest(t.reltuples, coalesce(s.n_live_tup, 0), 0)::float8 AS live_rows,
  (SELECT coalesce(extract(epoch FROM now() - min(a.xact_start)), 0) FROM pg_stat_activity a
   WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AND a.pid <> pg_backend_pid()
     AND a.backend_type <> 'autovacuum worker'
     AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()))::float8 AS snapshot_age_s
FROM pg_class t
JOIN pg_index x ON x.indrelid = t.oid
JOIN pg_class c ON c.oid = x.indexrelid
LEFT JOIN pg_stat_all_tables s ON s.relid = t.oid
WHERE t.oid = 'pgbg.task'::regclass
ORDER BY c.relname;

-- name: TakeCompaction
-- One compaction per schema at a time, across every supervisor, in-process
-- host and `pgbg compact`: a lease row (migration 019), taken without
-- waiting, for $2 seconds, by holder $1. Taken when nobody holds it or the
-- last holder's lease ended; no row back when another holds it.
INSERT INTO pgbg.compaction AS c (holder, until) VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (one) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
  WHERE c.until < now()
RETURNING true AS taken;

-- name: RenewCompaction
-- Holder $1 is still compacting: its lease runs $2 seconds from now.
UPDATE pgbg.compaction SET until = now() + make_interval(secs => $2) WHERE holder = $1;

-- name: EndCompaction
DELETE FROM pgbg.compaction WHERE holder = $1;

-- name: ReindexTask
-- Rebuilds every index of the task table beside the old one, then swaps
-- them: claims, completions and enqueues go on meanwhile (it takes only a
-- SHARE UPDATE EXCLUSIVE lock on the table), and on a near-empty table the
-- build is cheap. Cannot run in a transaction block; it waits for
-- transactions older than itself. Needs the table's owner. Interrupted, it
-- leaves an invalid `_ccnew` index, dropped by the next compaction.
REINDEX TABLE CONCURRENTLY pgbg.task;
