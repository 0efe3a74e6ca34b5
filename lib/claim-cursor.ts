/**
 * The claim cursor: which lanes a worker's next claim reads, when finding
 * them costs too much.
 *
 * A claim by claim rows starts each lane past every task taken before (its
 * pair of snapshots, from the lane's newest claim row), so it steps over no
 * task claimed since. Finding which lanes hold tasks is what steps over
 * them: a full claim finds the lanes by a skip scan of the lane index, one
 * probe per (queue, name, priority), and a probe starts at its lane's head,
 * where the entries of the completed tasks stay while something holds
 * vacuum back (a long transaction, an idle session in a transaction, a
 * replication slot). The full claims then slow down as the held time grows
 * (docs/storage.md has the figures). The cursor keeps the lanes (queue,
 * name, priority) this worker took tasks from lately, and the worker then
 * claims from those (ClaimRowTasksFrom), without looking for others.
 *
 * Full claims find new lanes: every claim is full while full claims are
 * fast (until {@link SLOW_FULL_CLAIMS} in a row were slow), and while they
 * are slow one runs at
 * least every {@link FULL_CLAIM_EVERY_MS}, or more rarely when a full claim
 * itself takes long, so that full claims take at most a
 * 1/{@link FULL_CLAIM_SHARE} share of the claim time, but never more rarely
 * than every {@link FULL_CLAIM_MAX_GAP_MS}; and a wake-up makes the next one
 * full while the worker knows no lane ({@link ClaimCursor.woken}), at most
 * as often again. Priority order holds among the lanes the worker knows; a
 * new lane, even of a higher priority or of a new name in a queue it
 * knows, waits for the next full claim. Each lane a claim reads costs it a
 * probe and the lane's lock until its commit, which every other claim of
 * the lane waits for, so the cursor gives only lanes it took tasks from:
 * given as (queue, priority) pairs crossed with every name the worker
 * runs, a claim from the cursor cost one probe and one lock per name, an
 * empty lane too, and took longer than the full claim it stood for.
 *
 * @module
 */
import type { QueryName } from "./generated/sql.ts";
import { type Database, run } from "./statements.ts";

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

/** The lanes a claim from the cursor reads, column by column: the parameters ClaimRowTasksFrom adds. */
export interface KnownLanes {
  queues: string[];
  names: string[];
  priorities: number[];
}

/** What the cursor needs of a claimed task: its lane. */
export interface ClaimedLane {
  queue: string;
  name: string;
  priority: number;
}

/** A row of a claim statement, as claimWithCursor returns it unless told how to read it. */
export type ClaimRow = ClaimedLane & Record<string, unknown>;

/**
 * Runs one claim of a pair of claim statements with `cursor`: `from` with
 * the cursor's lanes when it gives them, `full` when it must be a full
 * claim (or there is no cursor), none when it knows no lane; then records
 * what it took in the cursor. `params` are the first five of both, and
 * `tail` follows them in `full`, and the lanes (queues, names, priorities)
 * in `from`. `read` turns the statement's rows into what is returned (the
 * rows themselves by default), each with its lane for the cursor.
 */
export async function claimWithCursor<T extends ClaimedLane = ClaimRow>(
  db: Database, schema: string, cursor: ClaimCursor | undefined, [full, from]: [QueryName, QueryName], params: unknown[], tail: unknown[] = [],
  read: (rows: Record<string, unknown>[]) => T[] = (rows) => rows as T[],
): Promise<T[]> {
  const started = performance.now();
  const lanes = cursor?.next(Date.now());
  if (lanes && !lanes.queues.length) return [];
  const raw = lanes
    ? await run(db, schema, from, [...params, lanes.queues, lanes.names, lanes.priorities, ...tail])
    : await run(db, schema, full, [...params, ...tail]);
  // The statement's time, not the reading of its rows, judges a full claim.
  const ms = performance.now() - started;
  const rows = read(raw);
  cursor?.record(!lanes, ms, rows, Date.now());
  return rows;
}

interface Lane {
  queue: string;
  name: string;
  priority: number;
  /** When this worker last claimed from the lane (its clock, ms). */
  seenAt: number;
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
   * The lanes for the next claim, or null when it must be a full claim:
   * the first one, one asked for with {@link fullNext}, every claim until
   * full claims are judged slow, and one now and then after. The lanes may
   * be none (a slow full claim found nothing, or only lanes of limited
   * queues, which are not this cursor's): the claim then reads nothing
   * until the next full one.
   */
  next(now: number): KnownLanes | null {
    this.#claimAt = now;
    if (this.#fullNext || !this.fullClaimsSlow) return null;
    const gap = Math.min(Math.max(FULL_CLAIM_EVERY_MS, FULL_CLAIM_SHARE * this.#fullMs.at(-1)!), FULL_CLAIM_MAX_GAP_MS);
    if (now - this.#lastFullAt >= gap) return null;
    if (this.#wokenAt !== undefined) {
      this.#wokenFullAt = now;
      return null;
    }
    const lanes: KnownLanes = { queues: [], names: [], priorities: [] };
    for (const [key, lane] of this.#lanes) {
      if (now - lane.seenAt > LANE_KEPT_MS) {
        this.#lanes.delete(key);
        continue;
      }
      lanes.queues.push(lane.queue);
      lanes.names.push(lane.name);
      lanes.priorities.push(lane.priority);
    }
    return lanes;
  }

  /** Records a claim: whether it was full, how long it took (ms), and what it took. */
  record(full: boolean, durationMs: number, claimed: readonly ClaimedLane[], now: number): void {
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
    // where the lane changes: a key made per task was about 2 % of a
    // draining worker's busy time in a profile (bench/RESULTS.md, "A
    // worker's CPU a task").
    let lane: Lane | undefined;
    for (const task of claimed) {
      if (lane && task.queue === lane.queue && task.name === lane.name && task.priority === lane.priority) continue;
      const key = `${task.priority}\u0000${task.queue}\u0000${task.name}`;
      lane = this.#lanes.get(key);
      if (lane) lane.seenAt = now;
      else this.#lanes.set(key, lane = { queue: task.queue, name: task.name, priority: task.priority, seenAt: now });
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
