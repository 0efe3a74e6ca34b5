/**
 * The worker: claims tasks in batches for its free slots, runs up to
 * `concurrency` at once, writes their outcomes back in batches, heartbeats,
 * and sleeps on an empty queue until a wake-up (LISTEN/NOTIFY) or the idle
 * sleep ends. One worker runs in each worker subprocess of `pgbg serve`.
 *
 * @module
 */
import type { Sql } from "postgres";
import { LazyAbort, type Outcome, startAttempt } from "./attempt.ts";
import { type ClaimedTask, claimTasks, type ClaimScope } from "./claim.ts";
import type { AnyTask } from "./define.ts";
import { graceFor, killWithin, leaseFor, removeWorkers } from "./lease.ts";
import { describeError, type Logger } from "./log.ts";
import { ResultWriter } from "./results.ts";
import { run } from "./statements.ts";
import { observe, type SeriesCounts, TaskStats } from "./stats.ts";

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
  heartbeatInterval: number;
  /**
   * After this long without a heartbeat any supervisor may take the worker
   * for dead and release its tasks. The worker stops itself, and its tasks,
   * when its heartbeat has not succeeded for 40 % of it (see
   * {@link SELF_STOP_FRACTION}), so a worker cut off from the database never
   * runs a task beside its re-run.
   */
  staleAfter: number;
  shutdownTimeout: number;
}

/** Everything a worker needs. */
export interface WorkerOptions extends WorkerSettings {
  /** A postgres.js client of its own (LISTEN needs a root client). */
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>;
  tasks: readonly AnyTask[];
  workerId: string;
  supervisorId: string;
  hostname: string;
  runtime: string;
  pid: number;
  log: Logger;
  /** Called once the worker is registered and listening, before its first claim. */
  onReady?: () => void;
  /**
   * Called when the worker must end at once: its heartbeat has not
   * succeeded for 40 % of its stale time, or another supervisor declared it
   * dead. Its running tasks are aborted first; the caller ends the process,
   * which also ends a task that ignores its signal. Without it the worker
   * only stops as on `stop()`.
   */
  onLost?: (cause: LostCause, reason: string) => void;
  /**
   * A client for the heartbeat alone (one connection), so that claims and
   * write-backs queued on the main pool cannot delay it past the worker's
   * self-stop. Default: `sql`.
   */
  // deno-lint-ignore no-explicit-any
  heartbeatSql?: Sql<any>;
  /** Called at each heartbeat, and once more when the worker ends, with what its tasks did since the last call. */
  onStats?: (report: WorkerReport) => void;
}

/** What a worker's tasks did since its last report, and what runs now. */
export interface WorkerReport {
  /** Outcomes, durations and lags since the last report, per queue and task name. */
  counts: SeriesCounts[];
  /** Attempts running now, per queue and task name. */
  running: { queue: string; name: string; count: number }[];
}

/**
 * Why a worker ended: `stopped` on request; `retired` because a task ignored
 * its abort signal past the grace period (its process must exit so the task
 * is freed); `lost` because another supervisor declared it dead.
 */
export type WorkerExit = "stopped" | "retired" | "lost";

/**
 * Why a worker ended at once: `unreachable`, its heartbeat could not get
 * through (its tasks did not fail: their attempts need not count);
 * `reaped`, a supervisor took it for dead and released its tasks.
 */
export type LostCause = "unreachable" | "reaped";

/** The abort reason given to a task that `pgbg cancel` asked to stop. */
export class TaskCancelledError extends Error {
  constructor() {
    super("the task was cancelled by an operator; it is deleted when this attempt ends");
    this.name = "TaskCancelledError";
  }
}

/** The abort reason given to tasks still running when the service stops. */
export class ShutdownError extends Error {
  constructor() {
    super("the service is shutting down; the task was handed back to the queue");
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

/**
 * The key of an attempt in the running map: task id and lease token. A task
 * released from under this worker (its lease revoked) may be claimed again
 * by this same worker while the old attempt still runs.
 */
const attemptKey = (claimed: ClaimedTask) => `${claimed.id}:${claimed.leaseToken}`;

/** The `settled` of an attempt that ended before startAttempt returned. */
const SETTLED: Promise<void> = Promise.resolve();

/** The log fields of an attempt that ended. */
function fields(claimed: ClaimedTask, durationMs: number) {
  return { task: claimed.name, id: claimed.id, attempt: claimed.attempt, queue: claimed.queue, durationMs };
}

/** The wait before the next attempt of a task that just failed attempt `attempt`. */
export function retryDelayFor(task: AnyTask, attempt: number, fallback: number): number {
  const base = task.retryDelay ?? fallback;
  if (task.retryBackoff !== "exponential") return base;
  return Math.min(base * 2 ** Math.min(attempt - 1, 30), task.retryDelayMax ?? 3_600_000);
}

/**
 * The share of its stale time after which a worker whose heartbeat has not
 * succeeded stops itself. Under a half, so that it is gone in time even for
 * a supervisor from before migration 3, which reaps after 10 × its check
 * interval (half of today's stale time) whatever the worker's row says.
 */
export const SELF_STOP_FRACTION = 0.4;

/**
 * The share of its stale time a heartbeat gets to come back before its
 * worker judges itself cut off. In an outage the first unanswered heartbeat
 * went out one heartbeat interval (at most 5 % of the stale time) after the
 * last that succeeded, so this has passed when the silence reaches
 * {@link SELF_STOP_FRACTION}. After a task blocked the event loop for a
 * while, the silence is already long when the next heartbeat goes out: on
 * a busy server its round trip may take more than one tick, and without
 * this allowance the worker would stop though the database was reachable.
 * A block is under half the stale time (its supervisor kills it after
 * that), so a worker cut off right after one still stops within 60 % of
 * it, plus a tick, before any supervisor of this version may reap it.
 */
export const REPLY_FRACTION = 0.1;

/** Runs tasks until stopped. Create it, `start()` it, `stop()` it. */
export class Worker {
  readonly #o: WorkerOptions;
  readonly #tasks = new Map<string, AnyTask>();
  readonly #scope: ClaimScope;
  readonly #running = new Map<string, Running>();
  readonly #results: ResultWriter;
  readonly #stats = new TaskStats();
  /** Counts not yet added to the database's task_count (a write failed). */
  #unrecorded: SeriesCounts[] = [];
  #reporting: Promise<void> | undefined;
  #stopping = false;
  #exit: WorkerExit = "stopped";
  #idle = false;
  #wake: (() => void) | undefined;
  #wakeOnSlot = false;
  #notified = false;
  /** performance.now() and Date.now() when the last heartbeat that succeeded was sent. */
  #beatSentAt = 0;
  #beatSentWall = 0;
  #beating = false;
  /** performance.now() when the first heartbeat since the last that succeeded was sent; undefined while none is unanswered. */
  #unansweredSince: number | undefined;
  /** Set once the worker removes its own row: an empty heartbeat then means nothing. */
  #ending = false;
  readonly #killWithin: number;
  readonly #debug: boolean;

  constructor(options: WorkerOptions) {
    this.#o = options;
    this.#debug = options.log.isEnabled?.("debug") ?? true;
    for (const key of ["staleAfter", "heartbeatInterval"] as const) {
      // A missing value would make every comparison false: no self-stop, no lease floor.
      if (!(options[key] > 0)) throw new TypeError(`Worker: ${key} must be a positive number of ms, got ${options[key]}`);
    }
    this.#killWithin = killWithin(options.staleAfter, options.heartbeatInterval);
    for (const task of options.tasks) this.#tasks.set(task.name, task);
    const names = [...this.#tasks.keys()];
    this.#scope = {
      workerId: options.workerId,
      queues: options.queues,
      names,
      leaseMs: names.map((n) => leaseFor(this.#timeoutOf(this.#tasks.get(n)!), this.#killWithin)),
    };
    this.#results = new ResultWriter(options.sql, options.schema, options.maxAttempts, options.log);
  }

  /** Number of attempts running now. */
  get running(): number {
    return this.#running.size;
  }

  /** Asks the worker to stop: it claims no more, lets running tasks finish up to the shutdown timeout, and hands back the rest. */
  stop(): void {
    this.#stopping = true;
    this.#wakeUp(true);
  }

  /**
   * Registers the worker, listens for wake-ups and runs the claim loop until
   * stopped, retired or lost. Resolves with the reason once every outcome is
   * written and the worker's row is gone. Rejects when it cannot start
   * (database unreachable, schema missing).
   */
  async start(): Promise<WorkerExit> {
    const o = this.#o;
    const registering = [performance.now(), Date.now()] as const;
    await run(o.sql, o.schema, "RegisterWorker", [
      o.workerId, o.supervisorId, o.pid, o.concurrency, o.hostname, o.runtime, o.queues, this.#scope.names, o.staleAfter,
    ]);
    [this.#beatSentAt, this.#beatSentWall] = registering;
    const listening = await o.sql.listen(`pgbg:${o.schema}`, () => {
      this.#notified = true;
      this.#wakeUp(true);
    });
    const heartbeat = setInterval(() => this.#heartbeat(), o.heartbeatInterval);
    o.onReady?.();
    try {
      await this.#claimLoop();
      await this.#finishRunning();
      await this.#results.drain(this.#deadline(Date.now() + 10_000));
    } finally {
      clearInterval(heartbeat);
      // The last counts, after any report a heartbeat left in flight; bounded,
      // so an unreachable database cannot hold the worker's exit.
      const reported = this.#reporting ? this.#reporting.then(() => this.#report()) : this.#report();
      await Promise.race([reported, new Promise((r) => setTimeout(r, 2_000).unref?.())]);
      await listening.unlisten().catch(() => {});
      this.#ending = true;
      if (this.#exit !== "retired") await removeWorkers(o.sql, o.schema, [o.workerId]).catch(() => {});
    }
    return this.#exit;
  }

  #timeoutOf(task: AnyTask): number {
    return task.timeout ?? this.#o.timeout;
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
    const o = this.#o;
    let backoff = 100;
    while (!this.#stopping) {
      const free = o.concurrency - this.#running.size;
      if (free <= 0) {
        await this.#sleep(undefined, true);
        // Let the other tasks finishing in this tick free their slots too, so
        // the next claim takes a batch rather than one task at a time.
        await new Promise((r) => setTimeout(r, 0));
        continue;
      }
      this.#notified = false;
      let claimed: ClaimedTask[];
      try {
        claimed = await claimTasks(o.sql, o.schema, this.#scope, free);
        backoff = 100;
      } catch (error) {
        o.log.warn(`claim failed; retrying in ${backoff} ms`, { error: describeError(error).message });
        await this.#sleep(backoff, false);
        backoff = Math.min(backoff * 2, 5_000);
        continue;
      }
      for (const task of claimed) this.#start(task);
      if (claimed.length === free) {
        if (this.#idle) this.#setIdle(false);
        continue;
      }
      if (!this.#idle) {
        // Raise the flag first, then claim once more: a task enqueued before
        // the flag was visible is found by that claim, and one enqueued after
        // it sends a wake-up.
        await this.#setIdle(true);
        continue;
      }
      if (!this.#notified) await this.#sleep(o.idleSleep, false);
    }
  }

  async #setIdle(idle: boolean): Promise<void> {
    this.#idle = idle;
    await run(this.#o.sql, this.#o.schema, "SetWorkerIdle", [this.#o.workerId, idle]).catch((error) => {
      this.#o.log.warn("could not update the worker's idle flag", { error: describeError(error).message });
    });
  }

  #start(claimed: ClaimedTask): void {
    const task = this.#tasks.get(claimed.name)!;
    const timeout = this.#timeoutOf(task);
    const controller = new LazyAbort();
    const now = Date.now();
    const counts = this.#stats.series(claimed.queue, claimed.name);
    observe(counts.lag, claimed.lagMs);
    const entry = {
      claimed, task, controller, startedAt: now, leaseEndsAt: now + leaseFor(timeout, this.#killWithin), overdue: false, handedBack: false, cancelled: false, counts,
    } as Running;
    if (this.#debug) this.#o.log.debug(`task ${claimed.id} started`, { task: claimed.name, id: claimed.id, attempt: claimed.attempt, queue: claimed.queue });
    // Registered before the attempt starts: one that ends at once calls
    // #finish before startAttempt returns.
    this.#running.set(attemptKey(claimed), entry);
    const pending = startAttempt(
      { task, claimed, schema: this.#o.schema, timeout, grace: graceFor(timeout), controller, onOverdue: () => this.#overdue(entry) },
      (outcome) => this.#finish(entry, outcome),
    );
    entry.settled = pending ?? SETTLED;
  }

  #finish(entry: Running, outcome: Outcome): void {
    this.#running.delete(attemptKey(entry.claimed));
    this.#wakeUp(false);
    if (entry.handedBack || this.#exit === "lost") return;
    // Aborted by the shutdown: handed back (uncounted) instead of failed.
    if (entry.controller.reason instanceof ShutdownError) return;
    const { claimed, task } = entry;
    const durationMs = Date.now() - entry.startedAt;
    if (entry.cancelled) {
      this.#o.log.info(`task ${claimed.id} was cancelled; its attempt ended and the task is deleted`, fields(claimed, durationMs));
      this.#results.cancel({ id: claimed.id, leaseToken: claimed.leaseToken });
      return;
    }
    observe(entry.counts.duration, durationMs);
    const lease = { id: claimed.id, leaseToken: claimed.leaseToken, counts: entry.counts };
    if (outcome.kind === "success") {
      if (this.#debug) this.#o.log.debug(`task ${claimed.id} succeeded`, fields(claimed, durationMs));
      this.#results.complete(lease);
      return;
    }
    const error = { ...describeError(outcome.error), attempt: claimed.attempt, at: new Date().toISOString(), timedOut: outcome.timedOut };
    const maxAttempts = claimed.maxAttempts ?? this.#o.maxAttempts;
    const final = outcome.permanent || claimed.attempt >= maxAttempts;
    const delay = retryDelayFor(task, claimed.attempt, this.#o.retryDelay);
    this.#o.log[final ? "error" : "warn"](
      `task ${claimed.id} failed${final ? (outcome.permanent ? " permanently" : ` after ${claimed.attempt} attempts`) : `; retry in ${delay} ms`}: ${error.message}`,
      { ...fields(claimed, durationMs), error },
    );
    this.#results.fail({ ...lease, delay, error, permanent: outcome.permanent });
  }

  #overdue(entry: Running): void {
    entry.overdue = true;
    this.#o.log.error(
      `task ${entry.claimed.id} ignored its abort signal past its timeout; this worker stops claiming and retires so that its process can be replaced`,
      { task: entry.claimed.name, id: entry.claimed.id, attempt: entry.claimed.attempt },
    );
    if (this.#exit === "stopped") this.#exit = "retired";
    this.stop();
  }

  async #heartbeat(): Promise<void> {
    // Measured from when the last successful heartbeat was sent, which is no
    // later than the time the database stamped on it, so the worker stops
    // before any supervisor's clock says that it is stale. The larger of the
    // monotonic and the wall-clock gap: the monotonic clock stands still
    // while the host is suspended, and the wall clock may step back.
    // Only heartbeats that were sent and did not get through (in flight, or
    // failed) for a while (REPLY_FRACTION) say the database is out of reach.
    // Without them, the silence was this process's own (a task that blocked
    // the event loop held the timer back): beat now, and judge once that
    // heartbeat had time to come back. A block long enough to matter is its
    // supervisor's to end (silentAfter), and counts as the task's attempt.
    const silentFor = Math.max(performance.now() - this.#beatSentAt, Date.now() - this.#beatSentWall);
    const unansweredFor = this.#unansweredSince === undefined ? 0 : performance.now() - this.#unansweredSince;
    if (unansweredFor > this.#o.staleAfter * REPLY_FRACTION && silentFor > this.#o.staleAfter * SELF_STOP_FRACTION) {
      this.#lost("unreachable", `its heartbeat has not succeeded for ${Math.round(silentFor)} ms (other supervisors may take it for dead after ${this.#o.staleAfter} ms)`);
      return;
    }
    // One at a time: heartbeats that hang (an unreachable server) must not pile up.
    if (this.#beating) return;
    this.#beating = true;
    const sentAt = [performance.now(), Date.now()] as const;
    this.#unansweredSince ??= sentAt[0];
    try {
      const rows = await run<{ cancelled: unknown[] }>(this.#o.heartbeatSql ?? this.#o.sql, this.#o.schema, "HeartbeatWorker", [this.#o.workerId]);
      if (!rows.length) {
        if (!this.#ending) this.#lost("reaped", "a supervisor declared it dead (its heartbeat was late) and released its tasks");
        return;
      }
      [this.#beatSentAt, this.#beatSentWall] = sentAt;
      this.#unansweredSince = undefined;
      for (const id of rows[0].cancelled ?? []) this.#cancel(String(id));
    } catch (error) {
      this.#o.log.warn("heartbeat failed", { error: describeError(error).message });
    } finally {
      this.#beating = false;
    }
    await this.#report();
  }

  /** Ends the worker at once: its tasks may be released to other workers. */
  #lost(cause: LostCause, reason: string): void {
    if (this.#exit === "lost") return;
    this.#exit = "lost";
    this.#o.log.error(`this worker stops at once, aborting its ${this.#running.size} running task(s): ${reason}`);
    for (const entry of this.#running.values()) entry.controller.abort(new ShutdownError());
    this.stop();
    this.#o.onLost?.(cause, reason);
  }

  /** Aborts the attempts of a task whose cancel was requested; #finish deletes the task. */
  #cancel(id: string): void {
    for (const entry of this.#running.values()) {
      if (entry.claimed.id !== id || entry.cancelled || entry.handedBack) continue;
      entry.cancelled = true;
      this.#o.log.warn(`task ${id} was cancelled by an operator; aborting its attempt`, { task: entry.claimed.name, id, attempt: entry.claimed.attempt, queue: entry.claimed.queue });
      entry.controller.abort(new TaskCancelledError());
    }
  }

  /** Reports (below) unless a report is in flight; resolves when that report is done. */
  #report(): Promise<void> {
    this.#reporting ??= this.#writeReport().finally(() => (this.#reporting = undefined));
    return this.#reporting;
  }

  /** Hands the counts since the last report to onStats and adds the outcomes to the database's task_count. */
  async #writeReport(): Promise<void> {
    const counts = this.#stats.take();
    if (this.#o.onStats) {
      const running = new Map<string, { queue: string; name: string; count: number }>();
      for (const { claimed } of this.#running.values()) {
        const key = `${claimed.queue}\u0000${claimed.name}`;
        const slot = running.get(key) ?? running.set(key, { queue: claimed.queue, name: claimed.name, count: 0 }).get(key)!;
        slot.count++;
      }
      this.#o.onStats({ counts, running: [...running.values()] });
    }
    const todo = [...this.#unrecorded, ...counts.filter((c) => c.completed || c.failed || c.retried)];
    if (!todo.length) return;
    try {
      await run(this.#o.sql, this.#o.schema, "RecordTaskCounts", [
        todo.map((c) => c.queue), todo.map((c) => c.name), todo.map((c) => c.completed), todo.map((c) => c.failed), todo.map((c) => c.retried),
      ]);
      this.#unrecorded = [];
    } catch (error) {
      // Kept for the next heartbeat; a bounded list, merged by the statement.
      this.#unrecorded = todo.slice(-1000);
      this.#o.log.warn("could not record task counts; will retry", { error: describeError(error).message });
    }
  }

  /**
   * Waits for running attempts: up to the shutdown timeout, never past the
   * point where a task that ignored its signal could outlive its lease. Then
   * aborts the rest and hands back those whose handlers stopped. Tasks whose
   * handlers keep running stay leased: this process exits and its supervisor
   * releases them, so no other worker starts one while it may still run here.
   */
  async #finishRunning(): Promise<void> {
    const o = this.#o;
    const shutdownDeadline = this.#exit === "lost" ? Date.now() : Date.now() + o.shutdownTimeout;
    const entries = () => [...this.#running.values()];
    for (;;) {
      const others = entries().filter((e) => !e.overdue);
      const deadline = this.#deadline(shutdownDeadline);
      if (!others.length || Date.now() >= deadline) break;
      // Wake on any settled attempt, and at least every 250 ms to notice a
      // task that became overdue meanwhile.
      await Promise.race([...others.map((e) => e.settled), new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, deadline - Date.now()))))]);
    }
    const left = entries().filter((e) => !e.handedBack);
    for (const entry of left) entry.controller.abort(new ShutdownError());
    if (this.#exit === "lost") return;
    // Give aborted handlers a moment to stop before their tasks are released.
    const settleBy = Math.min(this.#deadline(Number.POSITIVE_INFINITY), Date.now() + 1_000);
    await Promise.race([Promise.all(left.map((e) => e.settled)), new Promise((r) => setTimeout(r, Math.max(0, settleBy - Date.now())))]);
    for (const entry of left) {
      if (this.#running.has(attemptKey(entry.claimed))) continue; // still running: left to the supervisor
      entry.handedBack = true;
      this.#results.release({ id: entry.claimed.id, leaseToken: entry.claimed.leaseToken });
      o.log.warn(`task ${entry.claimed.id} was still running at shutdown; handed back to the queue`, { task: entry.claimed.name, id: entry.claimed.id });
    }
    if (this.#running.size && this.#exit === "stopped") this.#exit = "retired";
  }

  /**
   * The earlier of `limit` and 2 s before the lease of any overdue task
   * ends, less the time the lease keeps for a supervisor's kill: should the
   * task block the event loop at the last moment, the kill still comes
   * before the lease ends.
   */
  #deadline(limit: number): number {
    let deadline = limit;
    for (const e of this.#running.values()) if (e.overdue) deadline = Math.min(deadline, e.leaseEndsAt - this.#killWithin - 2_000);
    return deadline;
  }
}
