/**
 * Index compaction: gives back the disk space the task table's indexes keep
 * after a deep queue drained. Vacuum empties B-tree pages for reuse but never
 * shrinks an index's file, so a million tasks passing through leave ~100 MB
 * of indexes behind an empty table; only a rebuild returns it. The
 * supervisor calls {@link compactIndexes} periodically, `pgbg compact` once.
 *
 * @module
 */
import type { Sql } from "postgres";
import { inTurn } from "./client.ts";
import { defaults } from "./config.ts";
import { checkedLater, checkOptions, integer, ofType } from "./options.ts";
import { checkSchemaName, type Database, run, statement, translateError } from "./statements.ts";

/** One index of the task table. */
export interface TaskIndex {
  name: string;
  /** Size of its file, in bytes. */
  bytes: number;
  /** False while being built or after a failed concurrent build. */
  valid: boolean;
}

/** The task table's indexes as compaction judges them. */
export interface TaskIndexes {
  /**
   * Estimated live rows: the larger of the last vacuum's count and the
   * statistics' running count (see `TaskIndexSizes` in sql/queries/compact.sql).
   */
  liveRows: number;
  /** Total bytes of the valid indexes. */
  indexBytes: number;
  /** How long the oldest snapshot of another session in this database has been held, in s (0: none). */
  snapshotAgeSeconds: number;
  /** Every index of the table, by name. */
  indexes: TaskIndex[];
  /**
   * Invalid indexes an interrupted `REINDEX CONCURRENTLY` left behind
   * (`…_ccnew`, `…_ccold`). They take space and, once ready, slow every
   * write to the table.
   */
  leftovers: string[];
}

/** Options of {@link compactIndexes}. The thresholds' defaults are in lib/config.ts. */
export interface CompactOptions {
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
  /** Rebuild the indexes even when they are not bloated. @default false */
  force?: boolean;
  /** Never rebuild indexes smaller than this in all, in bytes. @default 8 MiB */
  minIndexBytes?: number;
  /** What the indexes of one live row take, in bytes, all indexes together. @default 100 */
  bytesPerLiveRow?: number;
  /** Rebuild when the indexes are more than this many times what the live rows need. @default 4 */
  bloatFactor?: number;
  /** Put off a rebuild (`horizon-held`) while another session's snapshot is older than this, in s. @default 30 */
  heldSnapshotSeconds?: number;
}

/**
 * What {@link compactIndexes} did: `compacted` (rebuilt the indexes),
 * `not-bloated` (nothing to gain; leftovers may still have been dropped),
 * `horizon-held` (bloated, but a transaction open longer than
 * `heldSnapshotSeconds` holds vacuum back: a rebuild would wait for
 * it and keep the rows it holds),
 * `locked` (another compaction of this schema is running) or
 * `not-permitted` (the role does not own the table).
 */
export type CompactOutcome = "compacted" | "not-bloated" | "horizon-held" | "locked" | "not-permitted";

/** A snapshot held this long (s) puts off a compaction that was not forced, unless `heldSnapshotSeconds` says otherwise. */
export const HELD_SNAPSHOT_SECONDS = 30;

/** The result of {@link compactIndexes}. */
export interface CompactResult {
  schema: string;
  outcome: CompactOutcome;
  /** The indexes before (read again once the lock was held, when it was). */
  before: TaskIndexes;
  /** The indexes after, when anything was rebuilt or dropped; else null. */
  after: TaskIndexes | null;
  /** Leftover indexes dropped. */
  dropped: string[];
  /** Time taken, in ms. */
  durationMs: number;
  /** With `not-permitted`: the server's refusal. */
  message?: string;
}

/** Reads the task table's live-row estimate and the size of each of its indexes. Needs no privilege on the table. */
export async function readTaskIndexes(db: Database, schema: string): Promise<TaskIndexes> {
  const rows = await run<{ index: string; bytes: number; valid: boolean; leftover: boolean; live_rows: number; snapshot_age_s: number }>(
    db, checkSchemaName(schema), "TaskIndexSizes", [],
  );
  const indexes = rows.map((r) => ({ name: r.index, bytes: r.bytes, valid: r.valid }));
  return {
    liveRows: Math.round(rows[0]?.live_rows ?? 0),
    indexBytes: indexes.filter((i) => i.valid).reduce((sum, i) => sum + i.bytes, 0),
    snapshotAgeSeconds: rows[0]?.snapshot_age_s ?? 0,
    indexes,
    leftovers: rows.filter((r) => r.leftover).map((r) => r.index),
  };
}

/**
 * True when the valid indexes are over `minIndexBytes` and over
 * `bloatFactor` × `bytesPerLiveRow` × the live rows: well beyond what any
 * layout of the live rows needs, so a rebuild pays for itself.
 */
export function isBloated(indexes: TaskIndexes, limits: Required<Pick<CompactOptions, "minIndexBytes" | "bytesPerLiveRow" | "bloatFactor">>): boolean {
  return indexes.indexBytes > limits.minIndexBytes && indexes.indexBytes > limits.bloatFactor * limits.bytesPerLiveRow * indexes.liveRows;
}

/** The thresholds of {@link isBloated}: those of `options`, else the defaults (lib/config.ts). */
export function bloatLimits(options: CompactOptions = {}): Required<Pick<CompactOptions, "minIndexBytes" | "bytesPerLiveRow" | "bloatFactor">> {
  return {
    minIndexBytes: options.minIndexBytes ?? defaults.compactMinIndexBytes,
    bytesPerLiveRow: options.bytesPerLiveRow ?? defaults.compactBytesPerLiveRow,
    bloatFactor: options.bloatFactor ?? defaults.compactBloatFactor,
  };
}

// The names REINDEX CONCURRENTLY gives its temporary indexes: the index's
// own name (lower case, as pgbg's are) with _ccnew or _ccold, and a number
// when that name was taken. Checked again before a name enters SQL text.
const LEFTOVER_NAME = /^[a-z_][a-z0-9_]{0,62}_cc(new|old)[0-9]*$/;

/**
 * Compacts the task table's indexes when they are bloated (see
 * {@link isBloated}; always with `force`): under this schema's compaction
 * lease taken without waiting (so one host of many compacts at a time), it
 * drops the invalid leftovers of an interrupted `REINDEX CONCURRENTLY`, then
 * runs `REINDEX TABLE CONCURRENTLY` on the task table. Tasks are enqueued,
 * claimed and completed meanwhile; the rebuild waits for transactions older
 * than itself, so it can take a while. Leftovers are dropped even when the
 * indexes are not bloated. The lease is a row, not a session lock, so it
 * holds behind a pooler in transaction mode too.
 *
 * Returns `locked` when another compaction holds the lease and
 * `not-permitted` when the role does not own the table (SQLSTATE 42501);
 * neither throws. Throws `InvalidOptionsError` for bad options,
 * `SchemaError` when the schema is missing, and the database's error when
 * anything else fails (an interrupted rebuild leaves a `_ccnew` leftover,
 * which the next call drops).
 */
// deno-lint-ignore no-explicit-any
export async function compactIndexes(sql: Sql<any>, options?: CompactOptions): Promise<CompactResult> {
  const opts = checkOptions<CompactOptions>("compactIndexes()", options, {
    schema: checkedLater, force: ofType("boolean"),
    minIndexBytes: integer(0, Number.MAX_SAFE_INTEGER), bytesPerLiveRow: integer(0, Number.MAX_SAFE_INTEGER), bloatFactor: integer(1, 1_000_000),
    heldSnapshotSeconds: integer(0, 1_000_000_000),
  });
  const schema = checkSchemaName(opts.schema ?? defaults.schema);
  const limits = bloatLimits(opts);
  const started = performance.now();
  let before = await readTaskIndexes(sql, schema);
  let after: TaskIndexes | null = null;
  const dropped: string[] = [];
  const result = (outcome: CompactOutcome, message?: string): CompactResult => ({
    schema, outcome, before, after, dropped, durationMs: Math.round(performance.now() - started), ...(message === undefined ? {} : { message }),
  });
  // Read without the lease, so that the usual answer costs one catalog query.
  if (!opts.force && !before.leftovers.length && !isBloated(before, limits)) return result("not-bloated");

  let lease: Awaited<ReturnType<typeof takeLease>>;
  try {
    lease = await takeLease(sql, schema);
  } catch (error) {
    // A role that may not take the lease may not rebuild the indexes either.
    if (notPermitted(error)) return result("not-permitted", (error as Error).message);
    throw translateError(error, schema);
  }
  if (!lease) return result("locked");
  try {
    // Another host may have compacted between the first reading and the lease.
    before = await readTaskIndexes(sql, schema);
    for (const name of before.leftovers) {
      if (!LEFTOVER_NAME.test(name)) continue;
      // The only SQL text built here: both names were checked and are quoted.
      await inTurn(sql, () => sql.unsafe(`DROP INDEX CONCURRENTLY IF EXISTS "${schema}"."${name}"`).then(() => {}));
      dropped.push(name);
    }
    const bloated = opts.force || isBloated(before, limits);
    if (bloated && !opts.force && before.snapshotAgeSeconds > (opts.heldSnapshotSeconds ?? HELD_SNAPSHOT_SECONDS)) return result("horizon-held");
    // Outside any transaction (REINDEX CONCURRENTLY refuses one): a statement of the pool's own.
    if (bloated) await inTurn(sql, () => sql.unsafe(statement(schema, "ReindexTask")).then(() => {}));
    if (bloated || dropped.length) after = await readTaskIndexes(sql, schema);
    return result(bloated ? "compacted" : "not-bloated");
  } catch (error) {
    if (notPermitted(error)) return result("not-permitted", (error as Error).message);
    throw translateError(error, schema);
  } finally {
    await lease.end();
  }
}

/** How long a compaction's lease lasts unless renewed, in s, and how often its holder renews it. */
const LEASE_SECONDS = 60;
const RENEW_MS = 10_000;

/**
 * Takes this schema's compaction lease, renewed every RENEW_MS until
 * `end()`; undefined when another compaction holds it. A holder that dies
 * leaves it to expire after LEASE_SECONDS.
 */
// deno-lint-ignore no-explicit-any
async function takeLease(sql: Sql<any>, schema: string): Promise<{ end(): Promise<void> } | undefined> {
  const holder = crypto.randomUUID();
  const taken = await run(sql, schema, "TakeCompaction", [holder, LEASE_SECONDS]);
  if (!taken.length) return undefined;
  // One renewal at a time: behind a rebuild that holds the pool's last
  // connection, renewals would otherwise queue up.
  let renewing: Promise<unknown> | undefined;
  const renewal = setInterval(() => {
    renewing ??= run(sql, schema, "RenewCompaction", [holder, LEASE_SECONDS]).catch(() => {}).finally(() => (renewing = undefined));
  }, RENEW_MS);
  return {
    async end() {
      clearInterval(renewal);
      // Should this fail (the database gone), the lease ends on its own.
      await run(sql, schema, "EndCompaction", [holder]).catch(() => {});
    },
  };
}

/** SQLSTATE 42501, insufficient_privilege. */
function notPermitted(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === "42501";
}
