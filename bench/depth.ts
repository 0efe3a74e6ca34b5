/**
 * Depth and bloat: does the claim stay index-driven with a million tasks
 * queued, and does the task table shrink back after they passed through,
 * with nothing but autovacuum and the running service (which rebuilds
 * bloated indexes), without a manual VACUUM?
 */
import { enqueueMany } from "../mod.ts";
import { type Database, median, type Server, since, stop, waitFor } from "./harness.ts";
import { drained, serve, type ServeSetting } from "./pgbg.ts";
import type { DrainResult } from "./subject.ts";
import { noop } from "./tasks.js";

/** What depth() found. */
export interface DepthResult {
  smallRuns: number[];
  smallRate: number;
  largeWindow: number;
  largeRate: number;
  largeWholeRate: number;
  sizeBefore: number;
  sizeAfter: number;
  sizeAfterDetail: string;
  sizeSettled: number;
  sizeSettledDetail: string;
}

async function sizes(db: Database): Promise<{ total: number; detail: string }> {
  const [row] = await db.sql`SELECT pg_total_relation_size('pgbg.task')::bigint AS total, pg_relation_size('pgbg.task')::bigint AS heap,
    pg_indexes_size('pgbg.task')::bigint AS indexes, n_live_tup::bigint AS live, n_dead_tup::bigint AS dead,
    autovacuum_count::int AS autovacuums
    FROM pg_stat_user_tables WHERE relid = 'pgbg.task'::regclass`;
  const kib = (b: bigint | string) => `${Math.round(Number(b) / 1024).toLocaleString("en")} KiB`;
  return {
    total: Number(row.total),
    detail: `heap ${kib(row.heap)}, indexes ${kib(row.indexes)}; ${row.dead} dead rows; ${row.autovacuums} autovacuum(s)`,
  };
}

// The service of the large drain compacts the indexes this often, so that
// the settle phase sees a compaction within seconds rather than minutes.
const COMPACT_INTERVAL = "10s";
// How long the settle phase waits for autovacuum and the compaction.
const SETTLE_TIMEOUT = 180_000;

/**
 * Drains `small` tasks three times (median), then `large` tasks, timing the
 * first tenth of the large drain (the queue is then 90-100 % deep) and the
 * whole. Then reads the table's size at once and, with the service still
 * running, again once autovacuum has run after the drain and the total size
 * is back within twice the empty table's, or after three minutes.
 */
export async function depth(db: Database, server: Server, options: {
  small: number;
  large: number;
  setting: ServeSetting;
  drainWith: (db: Database, server: Server, n: number, setting: ServeSetting) => Promise<DrainResult>;
  progress: (text: string) => void;
}): Promise<DepthResult> {
  const { small, large, setting } = options;
  const before = await sizes(db);
  const smallRuns: number[] = [];
  for (let i = 0; i < 3; i++) {
    options.progress(`depth · ${small.toLocaleString("en")} queued · run ${i + 1}`);
    const r = await options.drainWith(db, server, small, setting);
    smallRuns.push(r.jobs / r.seconds);
  }

  const service = await serve(db, setting, ["--compact-interval", COMPACT_INTERVAL]);
  let after: { total: number; detail: string } | undefined;
  let settled: { total: number; detail: string } | undefined;
  let largeWindow = Math.round(large / 10);
  let windowSeconds = 0;
  let wholeSeconds = 0;
  try {
    options.progress(`depth · queueing ${large.toLocaleString("en")}`);
    // One transaction, so every task appears at once with one run_at: the claim then takes them in id order.
    const first = await db.sql.begin(async (tx) => {
      let firstId: bigint | undefined;
      for (let done = 0; done < large; done += 10_000) {
        const ids = await enqueueMany(tx, noop, Array.from({ length: Math.min(10_000, large - done) }, (_, i) => ({ i: done + i })));
        firstId ??= BigInt(ids[0]);
      }
      return firstId!;
    });
    const t0 = performance.now();
    await waitFor("the first tenth to drain", async () => {
      const [{ next }] = await db.sql`SELECT min(id) AS next FROM pgbg.task WHERE state = 'queued'`;
      const done = next === null ? large : Number(BigInt(next) - first);
      options.progress(`depth · ${large.toLocaleString("en")} queued · ${done.toLocaleString("en")} claimed`);
      return done >= largeWindow ? done : undefined;
    }, 1_800_000, 50).then((done) => {
      windowSeconds = since(t0);
      largeWindow = done;
    });
    await drained(db);
    wholeSeconds = since(t0);
    after = await sizes(db);
    // The service keeps running: its supervisor rebuilds the indexes once
    // autovacuum has emptied the table (the live-row estimate comes from it).
    const drainedAt = new Date();
    const t1 = performance.now();
    const settledBy = await waitFor("autovacuum and the size to come back", async () => {
      const [row] = await db.sql`SELECT last_autovacuum FROM pg_stat_user_tables WHERE relid = 'pgbg.task'::regclass`;
      const vacuumed = row.last_autovacuum !== null && row.last_autovacuum > drainedAt;
      const now = await sizes(db);
      options.progress(`depth · settling · ${vacuumed ? "autovacuumed" : "waiting for autovacuum"} · ${now.detail}`);
      return vacuumed && now.total <= 2 * before.total ? "settled" : undefined;
    }, SETTLE_TIMEOUT, 1_000).catch(() => "timed out");
    const result = await sizes(db);
    settled = { total: result.total, detail: `${result.detail}; ${settledBy} after ${Math.round(since(t1))} s` };
  } finally {
    await stop(service);
  }
  return {
    smallRuns,
    smallRate: median(smallRuns),
    largeWindow,
    largeRate: largeWindow / windowSeconds,
    largeWholeRate: large / wholeSeconds,
    sizeBefore: before.total,
    sizeAfter: after!.total,
    sizeAfterDetail: after!.detail,
    sizeSettled: settled!.total,
    sizeSettledDetail: settled!.detail,
  };
}
