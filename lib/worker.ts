/**
 * The worker engine: claims tasks in batches for its free slots, runs up to
 * `concurrency` at once, writes their outcomes back in batches, heartbeats,
 * and sleeps on an empty queue until a wake-up (LISTEN/NOTIFY) or the idle
 * sleep ends. The same engine runs in each subprocess of `pgbg serve`, in an
 * application's own process (`createWorker`) and in `drain`.
 *
 * @module
 */
import type { Sql } from "postgres";
import { LazyAbort, type Outcome, startAttempt } from "./attempt.ts";
import { type ClaimedTask, claimTasks, type ClaimScope } from "./claim.ts";
import { GroupRotation } from "./groups.ts";
import { ClaimCursor } from "./claim-cursor.ts";
import { LimitedQueues } from "./limits.ts";
import { CountReporter, type WorkerReport } from "./count-reporter.ts";
import { type AnyTask, MAX_DURATION } from "./define.ts";
import { Heartbeat, type LostCause, type WorkerIdentity } from "./heartbeat.ts";
import { graceFor, leaseFor, type Liveness, overdueExitBy } from "./liveness.ts";
import type { AttemptEvent, TaskEventEmitter } from "./events.ts";
import { describeError, type Logger } from "./log.ts";
import { OutcomeWriter } from "./outcomes.ts";
import { completedRetention } from "./retention.ts";
import { type Database, run } from "./statements.ts";
import { loadTracing } from "./tracing.ts";
import { observe, type SeriesCounts, TaskStats } from "./stats.ts";
import { settledWithin } from "./settle.ts";

export type { LostCause } from "./heartbeat.ts";
export type { WorkerReport } from "./count-reporter.ts";

/** A worker's settings. Durations in ms. */
export interface WorkerSettings {
  schema: string;
  /** Queues to claim from; null for every queue. */
  queues: string[] | null;
  concurrency: number;
  timeout: number;
  retryDelay: number;
  maxAttempts: number;
  idleSleep: number;
  /** How long a stopping worker lets running tasks finish before it hands them back. */
  shutdownTimeout: number;
  /** How long completed tasks are kept in the history, for definitions that set none (ms); 0 or none: not kept. */
  completedRetention?: number;
  /** Heartbeat, self-stop and lease timings, from {@link liveness}. */
  timings: Liveness;
}

/** Everything a worker needs. */
export interface WorkerOptions extends WorkerSettings {
  /** The worker's pool (a root client: LISTEN needs one). */
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>;
  /** A client for the heartbeat alone (one connection). Default: `sql`. */
  beatSql?: Database;
  /**
   * The client to LISTEN for wake-ups on; `false`: none (behind a pooler in
   * transaction mode, where a LISTEN is lost with its server session), and
   * the worker then finds new tasks by polling, at most `idleSleep` apart.
   * @default sql
   */
  // deno-lint-ignore no-explicit-any
  listenSql?: Sql<any> | false;
  tasks: readonly AnyTask[];
  /** Who the worker is, for its row. */
  identity: Omit<WorkerIdentity, "concurrency" | "queues" | "names">;
  log: Logger;
  /** Called once the worker is registered and listening, before its first claim. */
  onReady?: () => void;
  /**
   * Called when the worker must end at once: its heartbeat has not
   * succeeded for its self-stop time, or another host declared it dead. Its
   * running attempts are aborted first; a served worker then ends its
   * process, which also ends a task that ignores its signal.
   */
  onLost?: (cause: LostCause, reason: string) => void;
  /** Called at each heartbeat, and once more when the worker ends, with what its tasks did since. */
  onReport?: (report: WorkerReport) => void;
  /** Listeners of the attempts' lifecycle events (an in-process host's `on`). */
  events?: TaskEventEmitter;
  /** Called when the worker, idle, found the queue empty and goes to sleep for `ms` (unless woken): for tests that must act after its last claim. */
  onIdleSleep?: (ms: number) => void;
  /** Its claim cursor (lib/claim-cursor.ts), for tests that start it in a given state. Default: a new one. */
  cursor?: ClaimCursor;
  /**
   * Its limited queues (lib/limits.ts), for tests that start their cursors
   * in a given state. Default: new ones, whose cursors share the round
   * trips of `cursor` (the heartbeat's); given ones share those they were
   * made with.
   */
  limits?: LimitedQueues;
  /**
   * An attempt that ignores its abort signal past its grace period:
   * `retire` (a served worker) stops claiming and ends, so that its process
   * can be replaced and the task with it; `detach` (in-process, where
   * nothing can end it) frees its slot and leaves it to run out its lease,
   * after which any host rescues the task, and its late writes are refused.
   * @default "retire"
   */
  overdue?: "retire" | "detach";
  /** Set by `drain`: no LISTEN; stop once nothing is due now nor within `maxWait` ms. */
  untilIdle?: { maxWait: number };
}

/**
 * Why a worker ended: `stopped` on request (or, under `untilIdle`, with
 * nothing left to run); `retired` because a task ignored its abort signal
 * past the grace period (its process must exit so the task is freed);
 * `lost` because it was cut off or another host declared it dead.
 */
export type WorkerExit = "stopped" | "retired" | "lost";

/**
 * How many finished attempts whose outcome is not written yet a worker of
 * `concurrency` slots lets wait before it stops claiming: enough that its
 * claims go on while a write is in flight (a bound of one concurrency's
 * worth cost a drain of 64 slots 15 %), few enough that a worker whose
 * writes fall behind does not claim the queue.
 */
export function unwrittenLimit(concurrency: number): number {
  return Math.max(4 * concurrency, 1_000);
}

/** The abort reason given to a task that `pgbg cancel` asked to stop. */
export class TaskCancelledError extends Error {
  constructor() {
    super("the task was cancelled by an operator; it is deleted when this attempt ends");
    this.name = "TaskCancelledError";
  }
}

/** The abort reason given to tasks still running when their worker stops. */
export class ShutdownError extends Error {
  constructor() {
    super("the worker is stopping; the task was handed back to the queue");
    this.name = "ShutdownError";
  }
}

interface Running {
  claimed: ClaimedTask;
  task: AnyTask;
  controller: LazyAbort;
  startedAt: number;
  leaseEndsAt: number;
  settled: Promise<void>;
  overdue: boolean;
  handedBack: boolean;
  cancelled: boolean;
  counts: SeriesCounts;
}

/** The `settled` of an attempt that ended before startAttempt returned. */
const SETTLED: Promise<void> = Promise.resolve();

/** The log fields of an attempt that ended. */
function fields(claimed: ClaimedTask, durationMs?: number) {
  return { task: claimed.name, id: claimed.id, attempt: claimed.attempt, queue: claimed.queue, durationMs };
}

/** What an event says of an attempt. */
function attemptEvent(claimed: ClaimedTask): AttemptEvent {
  return { id: claimed.id, name: claimed.name, queue: claimed.queue, attempt: claimed.attempt };
}

/** Resolves after `ms`, or at once for 0. */
const pause = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/** The wait before the next attempt of a task that just failed attempt `attempt`. */
export function retryDelayFor(task: AnyTask, attempt: number, fallback: number, error?: unknown, log?: Logger, random = Math.random): number {
  const delay = backoffOf(task, attempt, task.retryDelay ?? fallback, error, log);
  return task.retryJitter ? Math.round(delay * (1 - task.retryJitter * random())) : delay;
}

/** The wait the task's backoff gives before jitter; a backoff function that fails falls back to `base`. */
function backoffOf(task: AnyTask, attempt: number, base: number, error: unknown, log: Logger | undefined): number {
  const backoff = task.retryBackoff;
  if (backoff === "exponential") return Math.min(base * 2 ** Math.min(attempt - 1, 30), task.retryDelayMax ?? 3_600_000);
  if (typeof backoff !== "function") return base;
  let delay: unknown;
  try {
    delay = backoff(attempt, error);
  } catch (thrown) {
    log?.warn(`task "${task.name}": retryBackoff threw; waiting retryDelay (${base} ms) instead`, { error: describeError(thrown).message });
    return base;
  }
  if (typeof delay === "number" && Number.isInteger(delay) && delay >= 0 && delay <= MAX_DURATION) return delay;
  log?.warn(`task "${task.name}": retryBackoff returned ${String(delay)}, not a whole number of ms from 0 to ${MAX_DURATION}; waiting retryDelay (${base} ms) instead`);
  return base;
}

/**
 * The first sleep of an idle spell, in ms, after which the sleeps double up
 * to the idle sleep: an enqueue that checked the idle flag just before it
 * went up commits within a statement and a WAL flush, mostly.
 */
export const IDLE_RECHECK_MS = 25;

/** Snoozes of a task that sets no maxSnoozes before further ones count as attempts. */
export const DEFAULT_MAX_SNOOZES = 100;

/** Runs tasks until stopped. Create it, `start()` it, `stop()` it. */
export class Worker {
  readonly #options: WorkerOptions;
  readonly #tasks = new Map<string, AnyTask>();
  /** How long each task is kept once completed (ms; 0: not), by name. */
  readonly #keep = new Map<string, number>();
  readonly #scope: ClaimScope;
  readonly #cursor: ClaimCursor;
  /**
   * The attempts holding a slot, each its own entry: a task released from under
   * this worker may be claimed again by it while the old attempt runs, and
   * the two are two entries. (Not a map keyed by id and lease token: a key
   * made per attempt cost a string and its hash twice a task.)
   */
  readonly #running = new Set<Running>();
  /** Attempts that ignored their signal, detached from their slot (`overdue: "detach"`). */
  readonly #detached = new Set<Running>();
  readonly #outcomes: OutcomeWriter;
  readonly #stats = new TaskStats();
  readonly #reporter: CountReporter;
  readonly #heartbeat: Heartbeat;
  #stopping = false;
  /** When stop() was first called (Date.now()). */
  #stopAskedAt = 0;
  /** Called by stop(): starts the wait that gives up a claim still in flight (#claimLoopOrStop). */
  #onStop?: () => void;
  /** Set once the stop gave up the claim in flight: what it returns is not started. */
  #claimGivenUp = false;
  #exit: WorkerExit = "stopped";
  #idle = false;
  /** Whether it LISTENs for wake-ups; one that does not leaves its row's idle flag down, so enqueues notify nobody for it. */
  #listens = false;
  #wake: (() => void) | undefined;
  #wakeOnSlot = false;
  #notified = false;
  /** The next sleep on an empty queue, in ms (see #afterShortClaim). */
  #idleBackoff: number;
  #shutdownTimeout: number;
  /** Under `untilIdle`: the latest time a task may fall due and still be waited for. */
  #dueBy = 0;
  readonly #debug: boolean;

  constructor(options: WorkerOptions) {
    this.#options = options;
    this.#shutdownTimeout = options.shutdownTimeout;
    this.#idleBackoff = this.#firstIdleSleep;
    this.#debug = options.log.isEnabled?.("debug") ?? true;
    this.#cursor = options.cursor ?? new ClaimCursor();
    for (const task of options.tasks) {
      this.#tasks.set(task.name, task);
      this.#keep.set(task.name, completedRetention(task, options.completedRetention ?? 0));
    }
    const names = [...this.#tasks.keys()];
    this.#scope = {
      workerId: options.identity.workerId,
      queues: options.queues,
      names,
      leaseMs: names.map((n) => leaseFor(this.#timeoutOf(this.#tasks.get(n)!), options.timings)),
      // Its limited queues' cursors judge full claims by the same round trips.
      limits: options.limits ?? new LimitedQueues(options.timings.heartbeatInterval, undefined, this.#cursor.roundTrips),
      groups: options.tasks.some((t) => t.group) ? new GroupRotation() : undefined,
    };
    this.#outcomes = new OutcomeWriter(options.sql, options.schema, options.maxAttempts, options.log, options.events, options.identity.workerId);
    this.#reporter = new CountReporter(
      options.sql, options.schema, this.#stats, () => [...this.#running.values()].map((e) => e.claimed), options.log, options.onReport,
    );
    this.#heartbeat = new Heartbeat({
      sql: options.sql, beatSql: options.beatSql, schema: options.schema, timings: options.timings, log: options.log,
      onCancel: (ids) => this.#cancel(ids),
      onLost: (cause, reason) => this.#lost(cause, reason),
      afterBeat: () => this.#reporter.report(),
      // Every claim cursor of the worker judges full claims net of it (lib/claim-cursor.ts).
      onRoundTrip: (ms) => this.#cursor.roundTrips.add(ms),
    });
  }

  /** The worker's id, as its row and its tasks' leases name it. */
  get id(): string {
    return this.#options.identity.workerId;
  }

  /** Number of attempts holding a slot now. */
  get running(): number {
    return this.#running.size;
  }

  /**
   * Whether every attempt has ended, no failed one waits to be written and
   * no claim was given up: the tasks the worker still holds may then be
   * handed back, uncounted, by its host, as the worker would have (a served
   * worker past its stop's bound exits before its writes end:
   * cli/worker.ts). A claim given up may lease tasks after the worker's row
   * is gone, which only a release (counted) finds.
   */
  get mayHandBack(): boolean {
    return this.#running.size === 0 && this.#detached.size === 0 && this.#outcomes.failuresUnwritten === 0 && !this.#claimGivenUp;
  }

  /**
   * Asks the worker to stop: it claims no more, lets running tasks finish up
   * to the shutdown timeout (`shutdownTimeout` overrides the setting), and
   * hands back the rest, uncounted.
   */
  stop(shutdownTimeout?: number): void {
    if (shutdownTimeout !== undefined) this.#shutdownTimeout = shutdownTimeout;
    if (!this.#stopping) this.#stopAskedAt = Date.now();
    this.#stopping = true;
    this.#wakeUp(true);
    this.#onStop?.();
  }

  /**
   * The claim loop's end, or, when it is still in a claim statement the
   * shutdown timeout after stop() (a statement on a connection a pooler or
   * the network stalled can wait forever), the stop's: the claim is given
   * up, and what it may still lease is left to the release of this
   * worker's tasks once its row is gone (#startAll starts nothing more).
   */
  async #claimLoopOrStop(): Promise<void> {
    const loop = this.#claimLoop();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const givenUp = new Promise<"given up">((resolve) => {
      this.#onStop = () => {
        timer ??= setTimeout(() => resolve("given up"), Math.max(0, this.#stopAskedAt + this.#shutdownTimeout - Date.now()));
      };
      if (this.#stopping) this.#onStop();
    });
    try {
      if (await Promise.race([loop, givenUp]) !== "given up") return;
      this.#claimGivenUp = true;
      this.#options.log.warn(`a claim did not return within the shutdown timeout (${this.#shutdownTimeout} ms); stopping without it`);
      loop.catch(() => {});
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Registers the worker, listens for wake-ups and runs the claim loop until
   * stopped, retired or lost. Resolves with the reason once every outcome is
   * written and the worker's row is gone. Rejects when it cannot start
   * (database unreachable, schema missing).
   */
  async start(): Promise<WorkerExit> {
    const o = this.#options;
    this.#dueBy = Date.now() + (o.untilIdle?.maxWait ?? 0);
    // Before the first attempt: its span needs @opentelemetry/api loaded, if the app has it.
    await loadTracing();
    await this.#heartbeat.register({ ...o.identity, concurrency: o.concurrency, queues: o.queues, names: this.#scope.names });
    const listenSql = o.untilIdle || o.listenSql === false ? undefined : (o.listenSql ?? o.sql);
    this.#listens = Boolean(listenSql);
    const listening = listenSql && await listenSql.listen(`pgbg:${o.schema}`, () => {
      this.#notified = true;
      // A wake-up starts the back-off over: should this claim miss the new
      // task (a lane the claim cursor does not know yet), the next look,
      // which may be a full claim, comes soon.
      this.#idleBackoff = this.#firstIdleSleep;
      // And a cursor that knows no lane reads nothing: the next claim is full.
      const now = Date.now();
      this.#cursor.woken(now);
      this.#scope.limits?.woken(now);
      this.#wakeUp(true);
    }).catch(async (error) => {
      await this.#heartbeat.remove().catch(() => {});
      throw error;
    });
    this.#heartbeat.start();
    o.onReady?.();
    try {
      await this.#claimLoopOrStop();
      await this.#finishRunning();
      await this.#outcomes.flush(this.#deadline(Date.now() + 10_000));
    } finally {
      this.#heartbeat.stop();
      await this.#reporter.last(2_000);
      // Bounded: postgres.js 3.4.9's unlisten never settles when called as
      // its LISTEN connection is being reset, and a statement on a dropped
      // connection waits out the connect timeout; neither may hold the exit.
      if (listening) await settledWithin(listening.unlisten().catch(() => {}), 2_000);
      // A retired or lost worker's row stays: its host hands back or
      // releases what it left leased, then removes the row (a hand-back
      // needs the row, to tell the worker from one another host reaped).
      if (this.#exit === "stopped") await settledWithin(this.#heartbeat.remove().catch(() => {}), 5_000);
    }
    return this.#exit;
  }

  /** The first sleep of an idle spell: IDLE_RECHECK_MS, or the idle sleep when shorter. */
  get #firstIdleSleep(): number {
    return Math.min(IDLE_RECHECK_MS, this.#options.idleSleep);
  }

  #timeoutOf(task: AnyTask): number {
    return task.timeout ?? this.#options.timeout;
  }

  #wakeUp(always: boolean): void {
    if (!this.#wake || (!always && !this.#wakeOnSlot)) return;
    const wake = this.#wake;
    this.#wake = undefined;
    wake();
  }

  /** Sleeps until woken (wake-up, stop, and a freed slot when `onSlot`) or `ms` pass. */
  #sleep(ms: number | undefined, onSlot: boolean): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(() => this.#wakeUp(true), ms);
      this.#wakeOnSlot = onSlot;
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async #claimLoop(): Promise<void> {
    let backoff = 100;
    while (!this.#stopping) {
      const free = this.#options.concurrency - this.#running.size;
      // A finished attempt holds its task's lease until its outcome is
      // written. Past unwrittenLimit of them, claim nothing until the writes
      // catch up: the backlog, and each write's batch, stay bounded however
      // fast the handlers end (bench/RESULTS.md, "Write-backs in linear time").
      if (free > 0 && this.#outcomes.pending > unwrittenLimit(this.#options.concurrency)) {
        await this.#untilWritten();
        continue;
      }
      if (free <= 0) {
        await this.#sleep(undefined, true);
        // Let the other tasks finishing in this tick free their slots too, so
        // the next claim takes a batch rather than one task at a time.
        await pause(0);
        continue;
      }
      this.#notified = false;
      let claimed: ClaimedTask[];
      try {
        // Each statement's tasks start as it returns, not after the claim's last.
        claimed = await claimTasks(this.#options.sql, this.#options.schema, this.#scope, free, this.#cursor, this.#outcomes.unwritten, (tasks) => this.#startAll(tasks));
        backoff = 100;
      } catch (error) {
        this.#options.log.warn(`claim failed; retrying in ${backoff} ms`, { error: describeError(error).message });
        // A mark a statement before the failing one set tells of this claim alone.
        this.#scope.limits!.takeHeldByWrites();
        await this.#sleep(backoff, false);
        backoff = Math.min(backoff * 2, 5_000);
        continue;
      }
      if (claimed.length) this.#idleBackoff = this.#firstIdleSleep;
      // Short for the outcomes not written yet, whose tasks keep their
      // leases (claimLimited): claim again once they are, not idle.
      const heldByWrites = this.#scope.limits!.takeHeldByWrites();
      if (claimed.length < free && heldByWrites) await this.#untilWritten();
      else if (claimed.length < free) await this.#afterShortClaim();
      // Not awaited: the next claim need not wait for the flag to go down.
      else if (this.#idle) void this.#setIdle(false);
    }
  }

  /**
   * Until the outcomes' write in flight ends, or the worker stops (a write
   * on a dropped connection may hang until the driver gives up).
   */
  async #untilWritten(): Promise<void> {
    if (this.#debug) this.#options.log.debug(`claims wait for the writes: ${this.#outcomes.unwritten} outcomes not written yet`);
    void this.#outcomes.written().then(() => this.#wakeUp(true));
    await this.#sleep(undefined, false);
  }

  /** The claim found fewer tasks than free slots: go idle, or under `untilIdle` see whether anything is left. */
  async #afterShortClaim(): Promise<void> {
    if (this.#options.untilIdle) return this.#waitForDue();
    // Raise the flag first, then claim once more: a task enqueued before the
    // flag was visible is found by that claim, and one enqueued after it
    // sends a wake-up. One whose enqueue checked the flag before it was up
    // but committed after that claim does neither: so the sleeps of an idle
    // spell start short and double up to the idle sleep, and a task that
    // committed t ms after the last claim is found within about 2t.
    if (!this.#idle) return this.#setIdle(true);
    if (this.#notified) return;
    // No longer than until a rate-limited queue found full has room again.
    const sleep = Math.min(this.#idleBackoff, this.#scope.limits!.takeRoomIn());
    this.#idleBackoff = Math.min(this.#idleBackoff * 2, this.#options.idleSleep);
    this.#options.onIdleSleep?.(sleep);
    await this.#sleep(sleep, false);
  }

  async #setIdle(idle: boolean): Promise<void> {
    this.#idle = idle;
    if (this.#listens) await this.#heartbeat.setIdle(idle);
  }

  /**
   * Under `untilIdle`: waits for running attempts to end (their retries may
   * fall due), then for the next task due within `maxWait` of the start,
   * and stops when there is none.
   */
  async #waitForDue(): Promise<void> {
    if (this.#running.size) return this.#sleep(undefined, true);
    await this.#outcomes.flush();
    const [next] = await run<{ next_due_ms: number | null }>(this.#options.sql, this.#options.schema, "ScheduledTasks", [this.#options.queues, this.#scope.names]);
    // A task due now that the claim did not take may sit before the claim
    // cursor: the next claim reads every lane from its head.
    if (next.next_due_ms !== null && next.next_due_ms <= 0) {
      this.#cursor.fullNext();
      this.#scope.limits?.fullNext();
    }
    // One due now is claimed whenever it became due (a retry just written, a
    // flow's task its parent's success just released); one due later only
    // within maxWait of the start.
    if (next.next_due_ms !== null && (next.next_due_ms <= 0 || Date.now() + next.next_due_ms <= this.#dueBy)) {
      return this.#sleep(Math.max(0, next.next_due_ms), false);
    }
    this.stop();
  }

  /** Starts one statement's tasks: each is leased to this worker, so one that cannot start must not keep the rest from it. */
  #startAll(tasks: ClaimedTask[]): void {
    if (this.#claimGivenUp) return;
    this.#outcomes.claimed(tasks);
    if (this.#debug) this.#options.log.debug(`claimed ${tasks.length}: ${tasks.map((t) => t.id).join(", ")}`);
    for (const task of tasks) {
      try {
        this.#start(task);
      } catch (error) {
        this.#options.log.error(`task ${task.id} could not be started; it runs again once its lease expires`, { ...fields(task), error: describeError(error) });
      }
    }
  }

  #start(claimed: ClaimedTask): void {
    const task = this.#tasks.get(claimed.name)!;
    const timeout = this.#timeoutOf(task);
    const now = Date.now();
    const counts = this.#stats.series(claimed.queue, claimed.name);
    observe(counts.lag, claimed.lagMs);
    const entry = {
      claimed, task, controller: new LazyAbort(), startedAt: now, leaseEndsAt: now + leaseFor(timeout, this.#options.timings),
      overdue: false, handedBack: false, cancelled: false, counts,
    } as Running;
    if (this.#debug) this.#options.log.debug(`task ${claimed.id} started`, fields(claimed));
    if (this.#options.events?.has("started")) this.#options.events.emit("started", attemptEvent(claimed));
    // Registered before the attempt starts: one that ends at once calls
    // #finish before startAttempt returns.
    this.#running.add(entry);
    const pending = startAttempt(
      {
        task, claimed, schema: this.#options.schema, sql: this.#options.sql, keep: this.#keep.get(task.name)!, workerId: this.#scope.workerId, timeout, grace: graceFor(timeout), controller: entry.controller,
        onOverdue: () => this.#overdue(entry),
      },
      (outcome) => this.#finish(entry, outcome),
    );
    entry.settled = pending ?? SETTLED;
  }

  #finish(entry: Running, outcome: Outcome): void {
    this.#running.delete(entry);
    if (this.#detached.delete(entry)) void this.#heartbeat.addDetached(-1);
    this.#wakeUp(false);
    if (entry.handedBack || this.#exit === "lost") return;
    // Aborted by the shutdown: handed back (uncounted) instead of failed.
    if (entry.controller.reason instanceof ShutdownError) return;
    const { claimed } = entry;
    const durationMs = Date.now() - entry.startedAt;
    if (entry.cancelled) {
      this.#options.log.info(`task ${claimed.id} was cancelled; its attempt ended and the task is deleted`, fields(claimed, durationMs));
      this.#outcomes.finishCancelled({ id: claimed.id, leaseToken: claimed.leaseToken, claimId: claimed.claimId, event: this.#eventOf(claimed, durationMs) });
      return;
    }
    observe(entry.counts.duration, durationMs);
    if (outcome.kind === "snooze") return this.#snooze(entry, outcome.delay, durationMs);
    if (outcome.kind === "failure") return this.#fail(entry, outcome, durationMs);
    if (this.#debug) this.#options.log.debug(`task ${claimed.id} succeeded`, fields(claimed, durationMs));
    this.#outcomes.complete({
      id: claimed.id, leaseToken: claimed.leaseToken, claimId: claimed.claimId, counts: entry.counts, event: this.#eventOf(claimed, durationMs),
      completedInTransaction: claimed.completedInTransaction, keep: this.#keep.get(claimed.name)!, result: outcome.result, batch: claimed.batchThen !== null,
      claimedAtMs: claimed.claimedAtMs,
    });
  }

  /** The attempt for the events told once its outcome is written; undefined while nobody listens, so a drain pays nothing. */
  #eventOf(claimed: ClaimedTask, durationMs: number): (AttemptEvent & { durationMs: number }) | undefined {
    return this.#options.events?.listening ? { ...attemptEvent(claimed), durationMs } : undefined;
  }

  /** A snooze (ctx.retryAfter): queued again after `delay`, uncounted; past the task's maxSnoozes, a failed attempt retried after `delay`. */
  #snooze(entry: Running, delay: number, durationMs: number): void {
    const { claimed, task } = entry;
    const max = task.maxSnoozes ?? DEFAULT_MAX_SNOOZES;
    if (claimed.snoozes >= max) {
      const error = new Error(`snoozed ${claimed.snoozes} times, its maxSnoozes: further snoozes count as attempts`);
      error.name = "SnoozeLimitError";
      return this.#fail(entry, { kind: "failure", error, permanent: false, timedOut: false }, durationMs, delay);
    }
    this.#options.log.info(`task ${claimed.id} snoozed for ${delay} ms`, fields(claimed, durationMs));
    this.#outcomes.snooze({ id: claimed.id, leaseToken: claimed.leaseToken, claimId: claimed.claimId, delay, event: this.#eventOf(claimed, durationMs) });
  }

  #fail(entry: Running, outcome: Extract<Outcome, { kind: "failure" }>, durationMs: number, retryAfter?: number): void {
    const { claimed, task } = entry;
    const now = Date.now();
    const error = {
      ...describeError(outcome.error), attempt: claimed.attempt, startedAt: new Date(now - durationMs).toISOString(), at: new Date(now).toISOString(),
      timedOut: outcome.timedOut,
    };
    const final = outcome.permanent || claimed.attempt >= (claimed.maxAttempts ?? this.#options.maxAttempts);
    const delay = final ? 0 : retryAfter ?? retryDelayFor(task, claimed.attempt, this.#options.retryDelay, outcome.error, this.#options.log);
    const how = final ? (outcome.permanent ? " permanently" : ` after ${claimed.attempt} attempts`) : `; retry in ${delay} ms`;
    this.#options.log[final ? "error" : "warn"](`task ${claimed.id} failed${how}: ${error.message}`, { ...fields(claimed, durationMs), error });
    this.#outcomes.fail({
      id: claimed.id, leaseToken: claimed.leaseToken, claimId: claimed.claimId, counts: entry.counts, delay, error, permanent: outcome.permanent, event: this.#eventOf(claimed, durationMs),
    });
  }

  /**
   * Frees an overdue attempt's slot, leaving it running: once the worker's
   * row counts it among its detached attempts, which keep their leases, so
   * that a limit judged out of reach by the workers' concurrency still is
   * (QueueFreeSlots). Until that is recorded it keeps its slot.
   */
  async #detach(entry: Running): Promise<void> {
    if (!this.#running.has(entry) || !await this.#heartbeat.addDetached(1)) return;
    if (this.#running.delete(entry)) this.#detached.add(entry);
    // It ended while the row was written: it holds no lease of this worker's any more.
    else void this.#heartbeat.addDetached(-1);
    this.#wakeUp(false);
  }

  #overdue(entry: Running): void {
    entry.overdue = true;
    const what = { task: entry.claimed.name, id: entry.claimed.id, attempt: entry.claimed.attempt };
    if (this.#options.overdue === "detach") {
      this.#options.log.error(
        `task ${entry.claimed.id} ignored its abort signal past its timeout; it keeps running in the background without its slot, and once its lease ends another worker retries it and its writes are refused`,
        what,
      );
      void this.#detach(entry);
      return;
    }
    this.#options.log.error(`task ${entry.claimed.id} ignored its abort signal past its timeout; this worker stops claiming and retires so that its process can be replaced`, what);
    if (this.#exit === "stopped") this.#exit = "retired";
    this.stop();
  }

  /** Ends the worker at once: its tasks may be released to other workers. */
  #lost(cause: LostCause, reason: string): void {
    if (this.#exit === "lost") return;
    this.#exit = "lost";
    const unwritten = this.#outcomes.pending;
    this.#options.log.error(
      `this worker stops at once: ${reason}. Its ${this.#running.size} running attempt(s) are aborted` +
        (unwritten ? `; ${unwritten} finished attempt(s) whose outcome is not written yet are written if the database answers before this worker ends, else those tasks run again` : ""),
    );
    const events = this.#options.events?.has("leaseLost") ? this.#options.events : undefined;
    for (const entry of this.#running.values()) {
      entry.controller.abort(new ShutdownError());
      // Its lease goes to whichever host releases this worker's tasks.
      events?.emit("leaseLost", attemptEvent(entry.claimed));
    }
    this.stop();
    this.#options.onLost?.(cause, reason);
  }

  /** Aborts the attempts of tasks whose cancel was requested; #finish deletes the tasks. */
  #cancel(ids: string[]): void {
    const wanted = new Set(ids);
    for (const entry of [...this.#running.values(), ...this.#detached.values()]) {
      if (!wanted.has(entry.claimed.id) || entry.cancelled || entry.handedBack) continue;
      entry.cancelled = true;
      this.#options.log.warn(`task ${entry.claimed.id} was cancelled by an operator; aborting its attempt`, fields(entry.claimed));
      entry.controller.abort(new TaskCancelledError());
    }
  }

  /**
   * Waits for running attempts: up to the shutdown timeout, never past the
   * point where a task that ignored its signal could outlive its lease. Then
   * aborts the rest and hands back those whose handlers stopped. Tasks whose
   * handlers keep running stay leased: a served worker's process exits and
   * its supervisor releases them; in-process, their leases run out.
   */
  async #finishRunning(): Promise<void> {
    // The timeout counts from stop(), a claim it waited for included.
    await this.#waitForRunning(this.#exit === "lost" ? Date.now() : this.#stopAskedAt + this.#shutdownTimeout);
    const left = [...this.#running.values()].filter((e) => !e.handedBack);
    for (const entry of left) entry.controller.abort(new ShutdownError());
    if (this.#exit === "lost") return;
    // Give aborted handlers a moment to stop before their tasks are handed back.
    const settleBy = Math.min(this.#deadline(Number.POSITIVE_INFINITY), Date.now() + 1_000);
    await Promise.race([Promise.all(left.map((e) => e.settled)), pause(Math.max(0, settleBy - Date.now()))]);
    for (const entry of left) {
      if (this.#running.has(entry)) continue; // still running: left to the supervisor or the lease
      entry.handedBack = true;
      this.#outcomes.handBack({ id: entry.claimed.id, leaseToken: entry.claimed.leaseToken, claimId: entry.claimed.claimId });
      this.#options.log.warn(`task ${entry.claimed.id} was still running at shutdown; handed back to the queue`, fields(entry.claimed));
    }
    if (this.#running.size && this.#exit === "stopped" && this.#options.overdue !== "detach") this.#exit = "retired";
  }

  /** Waits until no attempt that may still finish runs, or `limit` (or an overdue task's deadline) passes. */
  async #waitForRunning(limit: number): Promise<void> {
    for (;;) {
      const others = [...this.#running.values()].filter((e) => !e.overdue);
      const deadline = this.#deadline(limit);
      if (!others.length || Date.now() >= deadline) return;
      // Wake on any settled attempt, and at least every 250 ms to notice a
      // task that became overdue meanwhile.
      await Promise.race([...others.map((e) => e.settled), pause(Math.min(250, Math.max(0, deadline - Date.now())))]);
    }
  }

  /** The earlier of `limit` and the moment an overdue task's worker must have ended (see overdueExitBy). */
  #deadline(limit: number): number {
    let deadline = limit;
    for (const e of this.#running.values()) if (e.overdue) deadline = Math.min(deadline, overdueExitBy(e.leaseEndsAt, this.#options.timings));
    return deadline;
  }
}
