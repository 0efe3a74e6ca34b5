/**
 * The claim cursor: where a worker's next claim starts reading each lane.
 *
 * A claim leaves the index entry of every task it takes behind it, and only
 * vacuum removes those entries, once no snapshot can still see the task as
 * queued. While something holds vacuum back (a long transaction, an idle
 * session in a transaction, a replication slot), a claim that reads a lane
 * from its head steps over every task claimed since, and slows down as the
 * held time grows (docs/storage.md has the figures). The cursor keeps, per
 * lane, the position (run_at, id) of the latest task this worker claimed,
 * and the worker then reads the lane from there, past the claimed entries,
 * or from {@link CURSOR_MARGIN_MS} before its latest claim when that is
 * earlier.
 *
 * Why that start is safe: a claim at time C takes, in claim order, every
 * task it can see up to the batch; the tasks before the latest it took
 * that it could not see were enqueued by transactions still open at C. Such
 * a task's run_at is its transaction's start (or later), so unless that
 * transaction was open for more than the margin, its run_at is at or after
 * C minus the margin. A task can thus be due before its lane's start and
 * still be queued only when its enqueue committed more than the margin
 * after its run_at (a long transaction, an explicit `runAt` in the past),
 * when another claimer that had it locked rolled back, or when its lane is
 * new to this worker.
 * Full claims, which read every lane from its head, find those: every claim
 * is full while full claims are fast (until {@link SLOW_FULL_CLAIMS} in a
 * row were slow), and while they are slow one runs at
 * least every {@link FULL_CLAIM_EVERY_MS}, or more rarely when a full claim
 * itself takes long, so that full claims take at most a
 * 1/{@link FULL_CLAIM_SHARE} share of the claim time, but never more rarely
 * than every {@link FULL_CLAIM_MAX_GAP_MS}; and a wake-up makes the next one
 * full while the worker knows no lane ({@link ClaimCursor.woken}), at most
 * as often again. Priority order holds among the lanes the worker knows; a
 * new lane, even of a higher priority, waits for the next full claim.
 *
 * @module
 */
import type { QueryName } from "./generated/sql.ts";
import { compareIntegerText } from "./integer-text.ts";
import { type Database, run } from "./statements.ts";

/**
 * How long an enqueue's transaction may stay open, in ms, for the cursor's
 * claims to find its task: a lane is read from no later than this before
 * the latest claim. While tasks are claimed as they come, it is also how
 * many claimed entries (this long's worth of tasks) each of those claims
 * steps over while vacuum is held back; in a backlog, the lane is read from
 * the latest run_at claimed, and they step over none.
 */
export const CURSOR_MARGIN_MS = 1_000;
/**
 * A full claim that takes less than this (ms, as the worker times it) more
 * than a round trip to the database keeps every claim full. The round trip
 * is the shortest of the worker's latest {@link ROUND_TRIPS_KEPT}
 * heartbeats ({@link RoundTrips}); none before the first.
 */
export const FAST_FULL_CLAIM_MS = 10;
/**
 * How many heartbeats' round trips are kept: the shortest stands for the
 * round trip, the others having also waited on a busy server or event loop.
 */
export const ROUND_TRIPS_KEPT = 5;
/**
 * Claims read from the cursor only after this many full claims in a row
 * took FAST_FULL_CLAIM_MS or longer beyond the round trip: one slow claim
 * (the first on a connection, which prepares its statements; a busy
 * neighbour) must not put off for a second the tasks of a lane the cursor
 * does not know yet. A held horizon slows every full claim, and full
 * claims come at every claim until it is judged, so it is judged within a
 * few claims.
 */
export const SLOW_FULL_CLAIMS = 3;
/** While full claims are slow, at most this long (ms) passes between two of them. */
export const FULL_CLAIM_EVERY_MS = 1_000;
/** While full claims are slow, the time between two is at least this many times the last one's duration. */
export const FULL_CLAIM_SHARE = 20;
/**
 * And at most this long (ms): the duration is timed by the worker, so one
 * outlier (a wait for a pool connection or a lock) must not put off for
 * minutes the tasks only a full claim finds.
 */
export const FULL_CLAIM_MAX_GAP_MS = 10_000;
/** A lane no claim has taken a task from for this long (ms) is dropped from the cursor; a full claim finds it again. */
const LANE_KEPT_MS = 60_000;

/** Lanes to claim from, each read from after a position: the parameters of ClaimTasksAfter. */
export interface LaneStarts {
  queues: string[];
  priorities: number[];
  /** run_at of the position, epoch microseconds (bigint as text). */
  afterUs: string[];
  /** id of the position (bigint as text). */
  afterIds: string[];
}

/** What the cursor needs of a claimed task. */
export interface ClaimedPosition {
  queue: string;
  priority: number;
  /** The task's id. */
  id: string;
  /** The task's run_at, epoch microseconds (bigint as text). */
  runAtUs: string;
  /** When the claim took it, by the database's clock, epoch ms. */
  claimedAtMs: number;
}

/**
 * Where a claim statement's row (ClaimFromLanes' columns) stands in its
 * lane: its run_at exact, and when the claim took it by the database's
 * clock (run_at plus how long it waited since).
 */
export function positionOf(r: Record<string, unknown>): ClaimedPosition {
  return {
    queue: r.queue as string, priority: r.priority as number, id: String(r.id), runAtUs: String(r.run_at_us),
    claimedAtMs: Number(r.run_at_us) / 1000 + (r.lag_ms as number),
  };
}

/**
 * Runs one claim of a pair of claim statements with `cursor`: `after` from
 * the cursor's starts when it has them, `full` when it must be a full
 * claim (or there is no cursor), none when it knows no lane; then records
 * what it took in the cursor. `params` are the first five of both; `tail`
 * follows them in `full`, and what `startsOf` makes of the cursor's starts
 * (its four arrays, by default) in `after`.
 */
export async function claimWithCursor(
  db: Database, schema: string, cursor: ClaimCursor | undefined, [full, after]: [QueryName, QueryName], params: unknown[], tail: unknown[] = [],
  startsOf: (starts: LaneStarts) => unknown[] = (s) => [s.queues, s.priorities, s.afterUs, s.afterIds],
): Promise<Record<string, unknown>[]> {
  const started = performance.now();
  const starts = cursor?.next(Date.now());
  if (starts && !starts.queues.length) return [];
  const rows = starts
    ? await run(db, schema, after, [...params, ...startsOf(starts), ...tail])
    : await run(db, schema, full, [...params, ...tail]);
  cursor?.record(!starts, performance.now() - started, rows.map(positionOf), Date.now());
  return rows;
}

/**
 * What a claim by claim rows is given from a cursor (claimWithCursor's
 * `startsOf`): the lanes' (queue, priority) pairs alone, without positions,
 * since a claim row's pair starts past every task taken before.
 */
export function pairsOf(starts: LaneStarts): unknown[] {
  return [starts.queues, starts.priorities];
}

interface Lane {
  queue: string;
  priority: number;
  /** The latest position claimed in this lane: run_at in epoch microseconds, and id (bigints as text, compared as such). */
  latestUs: string;
  latestId: string;
  /** The latest claim in this lane, by the database's clock, epoch ms. */
  claimedAt: number;
  /** When this worker last claimed from the lane (its clock, ms). */
  seenAt: number;
}

/** Where a lane's claims start: after its latest claimed task, or a margin before its latest claim if that is earlier. */
function startOf(lane: Lane): [bigint, bigint] {
  const marginUs = BigInt(Math.floor((lane.claimedAt - CURSOR_MARGIN_MS) * 1000));
  const latestUs = BigInt(lane.latestUs);
  return latestUs <= marginUs ? [latestUs, BigInt(lane.latestId)] : [marginUs, 0n];
}

/**
 * The round trips (ms) of a worker's latest heartbeats, the time each one's
 * statement took as the worker timed it: shared by the worker's claim
 * cursors, which judge full claims net of the shortest.
 */
export class RoundTrips {
  readonly #ms: number[] = [];

  /** Records one heartbeat's round trip. */
  add(ms: number): void {
    this.#ms.push(ms);
    if (this.#ms.length > ROUND_TRIPS_KEPT) this.#ms.shift();
  }

  /** The shortest of the latest ROUND_TRIPS_KEPT, or 0 before the first. */
  get shortest(): number {
    return this.#ms.length ? Math.min(...this.#ms) : 0;
  }
}

/** One worker's claim cursor. Not shared: each worker keeps its own, in memory. */
export class ClaimCursor {
  readonly #lanes = new Map<string, Lane>();
  #lastFullAt = -Infinity;
  /** The durations (ms) of the latest full claims, at most SLOW_FULL_CLAIMS, the latest last. */
  readonly #fullMs: number[] = [];
  #fullNext = true;
  /** When a wake-up asked for a full claim that no claim started after yet (ms), or undefined. */
  #wokenAt: number | undefined;
  /** When the latest full claim a wake-up asked for started (ms). */
  #wokenFullAt = -Infinity;
  /** When the latest claim started: when next() was last asked (ms). */
  #claimAt = -Infinity;

  /** `roundTrips`: the worker's heartbeats' round trips, shared with its other cursors (default: a set of its own). */
  constructor(readonly roundTrips: RoundTrips = new RoundTrips()) {}

  /**
   * The lanes and starts for the next claim, or null when it must be a full
   * claim: the first one, one asked for with {@link fullNext}, every claim
   * until full claims are judged slow, and one now and then after. The
   * lanes may be none (a slow full claim found nothing, or only lanes of
   * limited queues, which are not this cursor's): the claim then reads
   * nothing until the next full one.
   */
  next(now: number): LaneStarts | null {
    this.#claimAt = now;
    if (this.#fullNext || !this.fullClaimsSlow) return null;
    const gap = Math.min(Math.max(FULL_CLAIM_EVERY_MS, FULL_CLAIM_SHARE * this.#fullMs.at(-1)!), FULL_CLAIM_MAX_GAP_MS);
    if (now - this.#lastFullAt >= gap) return null;
    if (this.#wokenAt !== undefined) {
      this.#wokenFullAt = now;
      return null;
    }
    const starts: LaneStarts = { queues: [], priorities: [], afterUs: [], afterIds: [] };
    for (const [key, lane] of this.#lanes) {
      if (now - lane.seenAt > LANE_KEPT_MS) {
        this.#lanes.delete(key);
        continue;
      }
      starts.queues.push(lane.queue);
      starts.priorities.push(lane.priority);
      const [afterUs, afterId] = startOf(lane);
      starts.afterUs.push(String(afterUs));
      starts.afterIds.push(String(afterId));
    }
    return starts;
  }

  /** Records a claim: whether it was full, how long it took (ms), and what it took. */
  record(full: boolean, durationMs: number, claimed: readonly ClaimedPosition[], now: number): void {
    if (full) {
      this.#fullNext = false;
      // A wake-up that came while this claim ran may be for a task its
      // snapshot did not see: it still asks for the next claim.
      if (this.#wokenAt !== undefined && this.#wokenAt < this.#claimAt) this.#wokenAt = undefined;
      this.#lastFullAt = now;
      this.#fullMs.push(durationMs);
      if (this.#fullMs.length > SLOW_FULL_CLAIMS) this.#fullMs.shift();
    }
    // A claim's tasks come lane after lane, so a lane is looked up only
    // where the lane changes, and positions are compared as text: a key and
    // two BigInts made per task were about 2 % of a draining worker's busy
    // time in a profile (bench/RESULTS.md, "A worker's CPU a task").
    let lane: Lane | undefined;
    for (const task of claimed) {
      if (!lane || task.queue !== lane.queue || task.priority !== lane.priority) {
        const key = `${task.priority}\u0000${task.queue}`;
        lane = this.#lanes.get(key);
        if (!lane) {
          this.#lanes.set(key, lane = { queue: task.queue, priority: task.priority, latestUs: task.runAtUs, latestId: task.id, claimedAt: task.claimedAtMs, seenAt: now });
          continue;
        }
      }
      const byRunAt = compareIntegerText(task.runAtUs, lane.latestUs);
      if (byRunAt > 0 || (byRunAt === 0 && compareIntegerText(task.id, lane.latestId) > 0)) [lane.latestUs, lane.latestId] = [task.runAtUs, task.id];
      lane.claimedAt = Math.max(lane.claimedAt, task.claimedAtMs);
      lane.seenAt = now;
    }
  }

  /**
   * Whether full claims are judged slow: the latest SLOW_FULL_CLAIMS of
   * them all took FAST_FULL_CLAIM_MS or longer beyond the round trip.
   * Without the round trip taken off, a worker 10 ms or more from its
   * database judged every full claim slow, however healthy the table, and
   * left a task in a lane it did not know for the next full claim. Claims
   * timed before the first heartbeat are judged again with it.
   */
  get fullClaimsSlow(): boolean {
    const allowed = FAST_FULL_CLAIM_MS + this.roundTrips.shortest;
    return this.#fullMs.length === SLOW_FULL_CLAIMS && this.#fullMs.every((ms) => ms >= allowed);
  }

  /**
   * Makes the next claim a full one: for a check that must not miss a due
   * task, such as the drain's last look before it stops.
   */
  fullNext(): void {
    this.#fullNext = true;
  }

  /**
   * A wake-up: tasks were enqueued. While this worker knows no lane (it
   * took nothing in the last {@link LANE_KEPT_MS}, or never), a claim from
   * the cursor reads nothing, so only a full claim can find them: the next
   * claim is full. Otherwise the wake-up waited out the gap between full
   * claims (a second or more) whenever full claims had been judged slow,
   * as a worker's first claims often are (each new connection prepares its
   * statements). But at most one full claim in {@link FULL_CLAIM_EVERY_MS},
   * or in {@link FULL_CLAIM_SHARE} times the last full claim's duration when
   * that is longer, comes of wake-ups: every enqueue wakes every idle
   * worker, and a worker that knows no lane (one of a queue that gets no
   * tasks) would otherwise answer each with a full claim, which under a
   * held horizon steps over every held entry. A worker that knows a lane
   * reads it from the cursor, as before.
   */
  woken(now: number): void {
    for (const lane of this.#lanes.values()) if (now - lane.seenAt <= LANE_KEPT_MS) return;
    if (now - this.#wokenFullAt < Math.max(FULL_CLAIM_EVERY_MS, FULL_CLAIM_SHARE * (this.#fullMs.at(-1) ?? 0))) return;
    this.#wokenAt ??= now;
  }
}
