/**
 * Storage designs for the claim, in hand-written SQL, for a design decision
 * (docs/storage.md, "What the drain target needs"): what a claim costs the
 * server by what it writes, against the floor of bench/raw.ts
 * (measure.ts), and whether a design takes every
 * committed task exactly once (check.ts).
 *
 * They are prototypes, not queues: one lane (queue "default", priority 0),
 * a fence by the holder's id or the claim row alone, no retries. Each
 * table has `pgbg.task`'s columns (through `LIKE`), so the rows are as
 * wide as pgbg's.
 */
import type postgres from "postgres";
import type { Sql } from "../harness.ts";
import { migrate } from "../../mod.ts";

/** The holder every prototype claim names. */
export const WORKER = "00000000-0000-0000-0000-000000000001";

/** A task a claim took: its id, and the claim row's token where the design has one. */
export interface Taken {
  id: string;
  token?: string;
}

/**
 * Begins a claim's transaction at READ COMMITTED, whatever the server's
 * default: the claim's statement must take its snapshot after the lane's
 * lock is granted, and under REPEATABLE READ the lock's own statement
 * would fix the snapshot before it.
 */
const claimTransaction = "isolation level read committed";

/** Where a claimer's own reading of the lane stands, for designs that keep one. */
export interface Cursor {
  at: number;
}

/** A design: the table its tasks are in, its claim of up to `batch` tasks, and its completion of them. */
export interface Design {
  table: "proto.log" | "proto.xlog";
  claim(sql: Sql, batch: number, cursor: Cursor): Promise<Taken[]>;
  finish(sql: Sql, taken: Taken[]): Promise<void>;
}

/** pgbg's schema, and the prototype tables beside it. */
export async function setup(sql: Sql): Promise<void> {
  await migrate(sql);
  await sql.unsafe(`CREATE SCHEMA proto;
    -- The tasks, with pgbg.task's columns; a lane is read in id order.
    CREATE TABLE proto.log (LIKE pgbg.task INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = 50);
    ALTER TABLE proto.log ADD PRIMARY KEY (id);
    CREATE INDEX log_lane_idx ON proto.log (queue, priority, id);
    -- One row per claim: the lane's range of ids it took, its holder and its end.
    CREATE TABLE proto.claim (lane text NOT NULL, hi bigint NOT NULL, lo bigint NOT NULL,
      token bigint GENERATED ALWAYS AS IDENTITY UNIQUE, worker_id uuid NOT NULL, expires_at timestamptz NOT NULL,
      PRIMARY KEY (lane, hi));
    -- One row per running task (the narrow lease table).
    CREATE TABLE proto.running (id bigint PRIMARY KEY, token integer NOT NULL, worker_id uuid NOT NULL, expires_at timestamptz NOT NULL);
    -- One row per completion statement: the tasks it finished.
    CREATE TABLE proto.done (token bigint NOT NULL, ids bigint[] NOT NULL);
    -- The tasks again, each with its enqueue's transaction; a lane is read in (transaction, id) order.
    CREATE TABLE proto.xlog (LIKE pgbg.task INCLUDING DEFAULTS INCLUDING IDENTITY) WITH (fillfactor = 50);
    ALTER TABLE proto.xlog ADD PRIMARY KEY (id), ADD COLUMN x xid8 NOT NULL DEFAULT pg_current_xact_id();
    CREATE INDEX xlog_lane_idx ON proto.xlog (queue, priority, x, id);
    -- One row per claim: the tasks visible to hi and not to lo, after (after_x, after_id), up to (upto_x, upto_id).
    CREATE TABLE proto.xclaim (token bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, lo pg_snapshot, hi pg_snapshot NOT NULL,
      after_x xid8 NOT NULL, after_id bigint NOT NULL, upto_x xid8, upto_id bigint, full_batch boolean NOT NULL,
      worker_id uuid NOT NULL, expires_at timestamptz NOT NULL);`);
}

/** The tables a design may keep its tasks in: the only names the scripts put into SQL text. */
const TABLES: readonly Design["table"][] = ["proto.log", "proto.xlog"];

/** `table`, once checked to be one of TABLES (the type alone does not hold at run time). */
export function tableName(table: string): Design["table"] {
  const known = TABLES.find((t) => t === table);
  if (!known) throw new Error(`unknown prototype table ${JSON.stringify(table)}: expected one of ${TABLES.join(", ")}`);
  return known;
}

/** Inserts `payloads` into `table` as tasks of the lane, returning their ids. */
export async function insertTasks(sql: Sql | postgres.TransactionSql<any>, table: Design["table"], payloads: string[]): Promise<string[]> {
  const rows = await sql.unsafe(`INSERT INTO ${tableName(table)} (queue, name, payload)
    SELECT 'default', 'noop', p::jsonb FROM unnest($1::text[]) p RETURNING id`, [payloads]);
  return rows.map((r) => r.id as string);
}

const ids = (taken: Taken[]) => taken.map((t) => t.id);

/**
 * The claim of a lane's range of ids after the newest claim row's: one row
 * inserted, no task written. Claims of a lane run one at a time, under a
 * lock taken before the claim's snapshot.
 */
function claimRange(sql: Sql, batch: number): Promise<Taken[]> {
  return sql.begin(claimTransaction, async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(1)`;
    return tx<Taken[]>`WITH head AS (SELECT coalesce((SELECT hi FROM proto.claim WHERE lane = 'default/0' ORDER BY hi DESC LIMIT 1), 0) AS hi),
      c AS MATERIALIZED (SELECT t.id, t.payload FROM proto.log t
        WHERE t.queue = 'default' AND t.priority = 0 AND t.id > (SELECT hi FROM head) AND t.run_at <= now() ORDER BY t.id LIMIT ${batch}),
      taken AS (INSERT INTO proto.claim (lane, lo, hi, worker_id, expires_at)
        SELECT 'default/0', (SELECT hi FROM head) + 1, max(id), ${WORKER}, now() + interval '30 seconds' FROM c HAVING count(*) > 0 RETURNING token)
      SELECT c.id, c.payload, (SELECT token FROM taken) AS token FROM c`;
  });
}

/** The fence of a claim row by id range: its holder still holds it. */
const rangeHeld = (sql: Sql, token: string | undefined) =>
  sql`EXISTS (SELECT FROM proto.claim WHERE token = ${token ?? null} AND worker_id = ${WORKER} AND expires_at > now() FOR SHARE)`;

/** A claim row per claim (an id range); the completion deletes the tasks. */
export const rangeRows: Design = {
  table: "proto.log",
  claim: (sql, batch) => claimRange(sql, batch),
  finish: async (sql, taken) =>
    void await sql`DELETE FROM proto.log WHERE id = ANY(${ids(taken)}::bigint[]) AND ${rangeHeld(sql, taken[0].token)}`,
};

/** A claim row per claim (an id range); the completion inserts one row listing the tasks, for a design that empties whole tables. */
export const rangeRowsListed: Design = {
  table: "proto.log",
  claim: (sql, batch) => claimRange(sql, batch),
  finish: async (sql, taken) =>
    void await sql`INSERT INTO proto.done (token, ids) SELECT ${taken[0].token ?? null}, ${ids(taken)}::bigint[] WHERE ${rangeHeld(sql, taken[0].token)}`,
};

/** Where a claim of a lane by snapshot pairs reads: the pair, and the place in it after which it starts. */
interface Pair {
  lo: string | null;
  hi: string;
  after_x: string;
  after_id: string;
  lo_xmax: string;
  hi_xmax: string;
  lo_xip: string[];
}

/**
 * A claim row per claim, its range a pair of snapshots (as PgQ's batches
 * are): the claim takes the tasks whose enqueue's transaction its snapshot
 * sees and the previous claim's did not, in (transaction, id) order: those
 * of transactions from the previous snapshot's xmax on (one index range)
 * and those it saw in progress (one probe each). A claim that filled its
 * batch leaves the rest of its pair to the next. So a task whose enqueue
 * commits late falls in a later pair, and none is ever behind a claim.
 */
export const snapshotPairs: Design = {
  table: "proto.xlog",
  claim: (sql, batch) =>
    sql.begin(claimTransaction, async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(1)`;
      const [pair] = await tx<Pair[]>`SELECT p.lo::text, p.hi::text, p.after_x::text, p.after_id,
          coalesce(pg_snapshot_xmax(p.lo), '0'::xid8)::text AS lo_xmax, pg_snapshot_xmax(p.hi)::text AS hi_xmax,
          ARRAY(SELECT pg_snapshot_xip(p.lo))::text[] AS lo_xip
        FROM (SELECT CASE WHEN c.full_batch THEN c.lo ELSE c.hi END AS lo,
            CASE WHEN c.full_batch THEN c.hi ELSE pg_current_snapshot() END AS hi,
            CASE WHEN c.full_batch THEN c.upto_x ELSE '0'::xid8 END AS after_x, CASE WHEN c.full_batch THEN c.upto_id ELSE 0 END AS after_id
          FROM (SELECT * FROM proto.xclaim ORDER BY token DESC LIMIT 1) c
          UNION ALL SELECT NULL, pg_current_snapshot(), '0'::xid8, 0 WHERE NOT EXISTS (SELECT FROM proto.xclaim)) p`;
      // Planned for these values: on a generic plan the branches were bitmap
      // scans of the whole pair, sorted (4.7 µs a task against 3.5).
      await tx`SET LOCAL plan_cache_mode = force_custom_plan`;
      return tx<Taken[]>`WITH c AS MATERIALIZED (SELECT * FROM (
          (SELECT t.id, t.x, t.payload FROM proto.xlog t WHERE t.queue = 'default' AND t.priority = 0
             AND t.x >= ${pair.lo_xmax}::xid8 AND t.x < ${pair.hi_xmax}::xid8
             AND (t.x, t.id) > (${pair.after_x}::xid8, ${pair.after_id}::bigint) AND pg_visible_in_snapshot(t.x, ${pair.hi}::pg_snapshot)
           ORDER BY t.x, t.id LIMIT ${batch})
          UNION ALL
          (SELECT t.id, t.x, t.payload FROM proto.xlog t WHERE t.queue = 'default' AND t.priority = 0
             AND t.x = ANY (${pair.lo_xip}::xid8[]) AND (t.x, t.id) > (${pair.after_x}::xid8, ${pair.after_id}::bigint)
             AND pg_visible_in_snapshot(t.x, ${pair.hi}::pg_snapshot)
           ORDER BY t.x, t.id LIMIT ${batch})) u ORDER BY x, id LIMIT ${batch}),
        last AS (SELECT x, id FROM c ORDER BY x DESC, id DESC LIMIT 1),
        taken AS (INSERT INTO proto.xclaim (lo, hi, after_x, after_id, upto_x, upto_id, full_batch, worker_id, expires_at)
          SELECT ${pair.lo}::pg_snapshot, ${pair.hi}::pg_snapshot, ${pair.after_x}::xid8, ${pair.after_id}, (SELECT x FROM last), (SELECT id FROM last),
            (SELECT count(*) FROM c) = ${batch}, ${WORKER}, now() + interval '30 seconds'
          -- An empty claim of a new pair writes nothing: the next one takes
          -- the same lower snapshot. One that went on inside a pair does:
          -- its row says the pair is done, or the next would go on in it.
          WHERE EXISTS (SELECT FROM c) OR ${pair.after_id}::bigint > 0 RETURNING token)
        SELECT c.id, c.payload, (SELECT token FROM taken) AS token FROM c`;
    }),
  // The fence: each task is in its claim row's pair and bounds, and the row's holder still holds it.
  finish: async (sql, taken) =>
    void await sql`DELETE FROM proto.xlog t USING proto.xclaim c
      WHERE t.id = ANY(${ids(taken)}::bigint[]) AND c.token = ${taken[0].token ?? null} AND c.worker_id = ${WORKER} AND c.expires_at > now()
        AND pg_visible_in_snapshot(t.x, c.hi) AND (c.lo IS NULL OR NOT pg_visible_in_snapshot(t.x, c.lo))
        AND (t.x, t.id) > (c.after_x, c.after_id) AND (t.x, t.id) <= (c.upto_x, c.upto_id)`,
};

/**
 * A narrow lease table: the claim inserts a row per task there and leaves
 * the task's row alone; the completion deletes both. Claims of a lane run
 * one at a time (an insert that lost a race with a completion took a
 * finished task again), each claimer from after its own latest task.
 */
export const narrowLeases: Design = {
  table: "proto.log",
  async claim(sql, batch, cursor) {
    const taken = await sql.begin(claimTransaction, async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(1)`;
      return tx<Taken[]>`WITH c AS MATERIALIZED (SELECT t.id, t.payload, t.lease_token FROM proto.log t
          WHERE t.queue = 'default' AND t.priority = 0 AND t.id > ${cursor.at} AND t.run_at <= now()
            AND NOT EXISTS (SELECT FROM proto.running r WHERE r.id = t.id) ORDER BY t.id LIMIT ${batch}),
        taken AS (INSERT INTO proto.running (id, token, worker_id, expires_at)
          SELECT id, lease_token + 1, ${WORKER}, now() + interval '30 seconds' FROM c ON CONFLICT DO NOTHING RETURNING id)
        SELECT c.id, c.payload FROM c JOIN taken USING (id)`;
    });
    if (taken.length) {
      cursor.at = Math.max(...taken.map((t) => Number(t.id)));
    } else if (cursor.at !== 0) {
      cursor.at = 0;
      return narrowLeases.claim(sql, batch, cursor);
    }
    return taken;
  },
  finish: async (sql, taken) =>
    void await sql`WITH r AS (DELETE FROM proto.running WHERE id = ANY(${ids(taken)}::bigint[]) AND worker_id = ${WORKER} RETURNING id)
      DELETE FROM proto.log WHERE id IN (SELECT id FROM r)`,
};

/**
 * The in-place claim behind a claim row: the claim reads after the newest
 * claim row's range as rangeRows does, and also writes each task's lease
 * into its row, changing no indexed column (a heap-only update where the
 * page has room: the log's fillfactor is 50).
 */
export const inPlace: Design = {
  table: "proto.log",
  claim: (sql, batch) =>
    sql.begin(claimTransaction, async (tx) => {
      await tx`SELECT pg_advisory_xact_lock(1)`;
      return tx<Taken[]>`WITH head AS (SELECT coalesce((SELECT hi FROM proto.claim WHERE lane = 'default/0' ORDER BY hi DESC LIMIT 1), 0) AS hi),
        c AS MATERIALIZED (SELECT t.id FROM proto.log t
          WHERE t.queue = 'default' AND t.priority = 0 AND t.id > (SELECT hi FROM head) AND t.run_at <= now() ORDER BY t.id LIMIT ${batch}),
        taken AS (INSERT INTO proto.claim (lane, lo, hi, worker_id, expires_at)
          SELECT 'default/0', (SELECT hi FROM head) + 1, max(id), ${WORKER}, now() + interval '30 seconds' FROM c HAVING count(*) > 0 RETURNING token)
        UPDATE proto.log t SET attempts = t.attempts + 1, lease_token = t.lease_token + 1, worker_id = ${WORKER},
          lease_expires_at = now() + interval '30 seconds'
        FROM c WHERE t.id = c.id AND EXISTS (SELECT FROM taken) RETURNING t.id, t.payload`;
    }),
  finish: async (sql, taken) => void await sql`DELETE FROM proto.log WHERE id = ANY(${ids(taken)}::bigint[]) AND worker_id = ${WORKER}`,
};

/** Every design, by the name the reports give it (the floor, pgbg's own table, is bench/raw.ts's). */
export const designs: Record<string, Design> = {
  "in place behind a claim row": inPlace,
  "a narrow lease table": narrowLeases,
  "a claim row per claim, delete": rangeRows,
  "a claim row per claim, a done list": rangeRowsListed,
  "a claim row per pair of snapshots, delete": snapshotPairs,
};
