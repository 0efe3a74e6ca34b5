/**
 * The liveness timings: how often a worker heartbeats, when its supervisor
 * kills it for silence, when other hosts may take it for dead, when it
 * stops itself, and how long a task's lease lasts. "A task never runs twice
 * at once while its lease holds" rests on inequalities between these
 * numbers, so they are derived here, in one pure function, and nowhere else
 * (tests/liveness.test.ts checks the inequalities over a table of settings).
 *
 * @module
 */

/** The timings of one host, all in ms, derived by {@link liveness}. */
export interface Liveness {
  /** How often a worker heartbeats and a supervisor checks its workers. */
  readonly heartbeatInterval: number;
  /** A supervisor kills a worker that has not sent it a message for this long (a blocked event loop). */
  readonly killSilence: number;
  /** The longest a worker whose event loop is blocked outlives the block's start: the kill silence plus one check. */
  readonly killWithin: number;
  /** A worker still loading its tasks modules gets this long to become ready. */
  readonly readyWithin: number;
  /** After this long without a heartbeat, any other host may take the worker for dead and release its tasks. */
  readonly staleAfter: number;
  /** A worker whose heartbeat has not succeeded for this long stops itself and its tasks. */
  readonly selfStopAfter: number;
  /**
   * How long a heartbeat that was sent may stay unanswered before its
   * worker judges itself cut off. After a task blocked the event loop, the
   * silence is long already when the next heartbeat goes out; on a busy
   * server its round trip may take more than a tick.
   */
  readonly replyAllowance: number;
}

/**
 * The share of its stale time after which a worker whose heartbeat has not
 * succeeded stops itself. Under a half, so that it is gone in time even for
 * a supervisor from before migration 3, which reaps after 10 × its check
 * interval (half of today's stale time) whatever the worker's row says.
 */
const SELF_STOP_SHARE = 0.4;

/**
 * The share of its stale time a sent heartbeat gets to come back (see
 * {@link Liveness.replyAllowance}). A quarter: after a block near the kill
 * silence, the worker's own event loop has a backlog to work through before
 * it reads the reply, which a loaded 2-core machine stretches to seconds. A
 * cut-off worker still stops before it may be reaped: kill silence (half)
 * plus a quarter plus a tick is under the stale time.
 */
const REPLY_SHARE = 0.25;

/** Safety margin of a lease over the longest a worker can hold a task. */
export const LEASE_MARGIN = 5_000;

/**
 * How long before the lease of a task that ignored its signal ends a worker
 * gives up waiting for it (less the kill time), so that its process is gone
 * before the lease ends.
 */
export const OVERDUE_MARGIN = 2_000;

/**
 * Derives every liveness timing from the check interval. The kill silence
 * is ten check intervals, at least 10 s (a loaded machine may hold a timer
 * back for seconds); the stale time twice that, so a supervisor kills its
 * own silent worker before any other host may reap it.
 */
export function liveness(checkInterval: number): Liveness {
  if (!(checkInterval > 0)) throw new TypeError(`liveness: the check interval must be a positive number of ms, got ${checkInterval}`);
  const killSilence = Math.max(10 * checkInterval, 10_000);
  const staleAfter = 2 * killSilence;
  return {
    heartbeatInterval: checkInterval,
    killSilence,
    killWithin: killSilence + checkInterval,
    readyWithin: Math.max(killSilence, 60_000),
    staleAfter,
    selfStopAfter: staleAfter * SELF_STOP_SHARE,
    replyAllowance: staleAfter * REPLY_SHARE,
  };
}

/**
 * How long a worker lets a task that ignores its abort signal keep its slot
 * after the deadline, before it gives up on it and retires: half the
 * timeout, between 1 and 15 seconds.
 */
export function graceFor(timeout: number): number {
  return Math.min(Math.max(Math.round(timeout / 2), 1000), 15_000);
}

/**
 * The lease of a task with this timeout. A worker aborts the attempt at the
 * timeout, gives up on it after one grace period, and exits after a second
 * at the latest. A task that blocks the event loop stops the worker's own
 * timers, so only its supervisor can end it, within `killWithin` of the
 * block's start; the block may begin at any moment up to the worker's own
 * exit, so the lease covers both in turn, plus a margin.
 */
export function leaseFor(timeout: number, timings: Pick<Liveness, "killWithin">): number {
  return timeout + 2 * graceFor(timeout) + timings.killWithin + LEASE_MARGIN;
}

/**
 * The moment by which a worker holding an attempt that ignored its signal
 * must have ended (its process exits), given when that attempt's lease
 * ends: early enough that should the task block the event loop at the last
 * moment, its supervisor's kill still comes before the lease ends.
 */
export function overdueExitBy(leaseEndsAt: number, timings: Pick<Liveness, "killWithin">): number {
  return leaseEndsAt - timings.killWithin - OVERDUE_MARGIN;
}
