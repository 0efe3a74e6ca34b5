/**
 * The claim cursor: where a worker's next claim starts reading each lane.
 *
 * A claim leaves the index entry of every task it takes behind it, and only
 * vacuum removes those entries, once no snapshot can still see the task as
 * queued. While something holds vacuum back (a long transaction, an idle
 * session in a transaction, a replication slot), a claim that reads a lane
 * from its head steps over every task claimed since, and slows down as the
 * held time grows (docs/storage.md has the figures). The cursor keeps, per
 * lane, the latest run_at this worker claimed, and the worker then reads the
 * lane from a little before it, past the claimed entries.
 *
 * A task can be due before its lane's cursor and still be queued: its
 * enqueue committed more than {@link CURSOR_MARGIN_MS} after its run_at (a
 * long transaction, an explicit `runAt` in the past), or its lane is new.
 * Full claims, which read every lane from its head, find those: every claim
 * is full while full claims are fast, and while they are slow one runs at
 * least every {@link FULL_CLAIM_EVERY_MS}, or more rarely when a full claim
 * itself takes long, so that full claims take at most a
 * 1/{@link FULL_CLAIM_SHARE} share of the claim time.
 *
 * @module
 */

/**
 * How far before the latest claimed run_at a lane is read from, in ms: a
 * task whose enqueue commits within this of its run_at is found by the
 * cursor's claims. It is also how many claimed entries (this long's worth
 * of tasks) each of those claims steps over while vacuum is held back.
 */
export const CURSOR_MARGIN_MS = 1_000;
/** A full claim that takes less than this (ms, as the worker times it, round trip included) keeps every claim full. */
export const FAST_FULL_CLAIM_MS = 10;
/** While full claims are slow, at most this long (ms) passes between two of them. */
export const FULL_CLAIM_EVERY_MS = 1_000;
/** While full claims are slow, the time between two is at least this many times the last one's duration. */
export const FULL_CLAIM_SHARE = 20;
/** A lane no claim has taken a task from for this long (ms) is dropped from the cursor; a full claim finds it again. */
const LANE_KEPT_MS = 60_000;

/** Lanes to claim from, each read from a start: the parameters of ClaimTasksAfter. */
export interface LaneStarts {
  queues: string[];
  priorities: number[];
  /** Epoch ms. */
  after: number[];
}

/** What the cursor needs of a claimed task. */
export interface ClaimedPosition {
  queue: string;
  priority: number;
  /** The task's run_at, epoch ms. */
  runAtMs: number;
}

interface Lane {
  queue: string;
  priority: number;
  /** The latest run_at claimed in this lane, epoch ms. */
  latest: number;
  /** When this worker last claimed from the lane (its clock, ms). */
  seenAt: number;
}

/** One worker's claim cursor. Not shared: each worker keeps its own, in memory. */
export class ClaimCursor {
  readonly #lanes = new Map<string, Lane>();
  #lastFullAt = -Infinity;
  #lastFullMs = 0;
  #fullNext = true;

  /**
   * The lanes and starts for the next claim, or null when it must be a full
   * claim: the first one, one asked for with {@link fullNext}, every claim
   * while the last full one was fast, and one now and then otherwise.
   */
  next(now: number): LaneStarts | null {
    if (this.#fullNext || this.#lastFullMs < FAST_FULL_CLAIM_MS || this.#lanes.size === 0) return null;
    if (now - this.#lastFullAt >= Math.max(FULL_CLAIM_EVERY_MS, FULL_CLAIM_SHARE * this.#lastFullMs)) return null;
    const starts: LaneStarts = { queues: [], priorities: [], after: [] };
    for (const [key, lane] of this.#lanes) {
      if (now - lane.seenAt > LANE_KEPT_MS) {
        this.#lanes.delete(key);
        continue;
      }
      starts.queues.push(lane.queue);
      starts.priorities.push(lane.priority);
      starts.after.push(lane.latest - CURSOR_MARGIN_MS);
    }
    return starts.queues.length ? starts : null;
  }

  /** Records a claim: whether it was full, how long it took (ms), and what it took. */
  record(full: boolean, durationMs: number, claimed: readonly ClaimedPosition[], now: number): void {
    if (full) {
      this.#fullNext = false;
      this.#lastFullAt = now;
      this.#lastFullMs = durationMs;
    }
    for (const task of claimed) {
      const key = `${task.priority}\u0000${task.queue}`;
      const lane = this.#lanes.get(key);
      if (!lane) this.#lanes.set(key, { queue: task.queue, priority: task.priority, latest: task.runAtMs, seenAt: now });
      else {
        lane.latest = Math.max(lane.latest, task.runAtMs);
        lane.seenAt = now;
      }
    }
  }

  /**
   * Makes the next claim a full one: for a check that must not miss a due
   * task, such as the drain's last look before it stops.
   */
  fullNext(): void {
    this.#fullNext = true;
  }
}
