-- Statements of the task table's vacuum (lib/maintenance/table-vacuumer.ts).
-- Every claim and completion leaves dead row versions in the task table;
-- pgbg vacuums it itself, as soon as they are removable, rather than wait
-- for autovacuum's next visit (autovacuum_naptime, a minute by default, and
-- never when autovacuum is off).

-- name: TaskVacuumState
-- The task table's dead and live rows as the statistics count them (what
-- autovacuum reads), whether the current role owns the table (only the
-- owner may vacuum it), and the horizon: what holds the oldest transaction
-- id that a snapshot or an open transaction of this database, a standby's
-- feedback, a replication slot or a prepared transaction still holds
-- (vacuums are left out, as PostgreSQL leaves them out). Vacuum removes no
-- row deleted after it, so while it stays the same a second vacuum would
-- remove nothing. The horizon names its holder as well as its id (the
-- session and when its transaction began): a snapshot taken while a
-- transaction of another database runs carries that transaction's id as
-- its xmin, so the id alone may stay the same after the holder let go,
-- while vacuum, which ignores other databases, could remove more. This
-- statement's own session is left out: its snapshot ends with it. Sessions
-- of other roles show no xmin to a role without pg_read_all_stats: the
-- horizon then seems to move with pgbg's own sessions, and the service
-- vacuums each interval, uselessly, while such a session holds it.
-- Every snapshot taken while the holder's transaction runs has that
-- transaction's id as its xmin, so the oldest id is shared by the holder
-- and whichever sessions are inside a statement at that moment (the
-- workers' own among them): the holder is the one whose transaction it
-- is, else the one whose transaction began first. With the first of the
-- tied rows named (by backend order), the horizon seemed to move at
-- nearly every look while a transaction held it, and the service
-- vacuumed every interval, for nothing, 0.3-0.5 s of a busy server's CPU
-- each time (bench/RESULTS.md).
SELECT coalesce(s.n_dead_tup, 0)::float8 AS dead_rows,
  coalesce(s.n_live_tup, 0)::float8 AS live_rows,
  pg_has_role(c.relowner, 'USAGE') AS owned,
  (SELECT h.x::text || ' ' || h.holder FROM (
     SELECT a.backend_xmin AS x, 1 AS snapshot_only, a.xact_start AS began, a.pid || ' ' || coalesce(a.xact_start::text, '') AS holder
     FROM pg_stat_activity a
     WHERE a.backend_xmin IS NOT NULL AND a.backend_type <> 'autovacuum worker' AND a.pid <> pg_backend_pid()
       AND (a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) OR a.backend_type = 'walsender')
     UNION ALL SELECT a.backend_xid, 0, a.xact_start, a.pid || ' ' || coalesce(a.xact_start::text, '') FROM pg_stat_activity a
     WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid()
       AND a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
     UNION ALL SELECT r.xmin, 0, NULL, 'slot ' || r.slot_name FROM pg_replication_slots r WHERE r.xmin IS NOT NULL
     UNION ALL SELECT p.transaction, 0, p.prepared, 'prepared ' || p.gid FROM pg_prepared_xacts p
   ) h ORDER BY age(h.x) DESC, h.snapshot_only, h.began NULLS FIRST, h.holder LIMIT 1) AS horizon
FROM pg_class c
LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
WHERE c.oid = 'pgbg.task'::regclass;

-- name: VacuumTask
-- SKIP_LOCKED: when autovacuum, another host's vacuum or an index rebuild
-- holds the table, skip this turn instead of waiting in the lock queue.
-- Its lock does not block claims, completions or enqueues, but unlike
-- autovacuum's it is not given up for a waiting ALTER TABLE or REINDEX,
-- which then waits for it (and the queue behind them). Its truncation of
-- empty tail pages takes the table's exclusive lock while no one waits for
-- it. Cannot run in a transaction block.
VACUUM (SKIP_LOCKED) pgbg.task;
