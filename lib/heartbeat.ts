/**
 * A worker's row in the database and its heartbeat: registration, the beat
 * every heartbeat interval (which also brings back the cancels asked of its
 * running tasks), the idle flag that turns enqueue wake-ups on, removal, and
 * the judgement that the worker is cut off and must stop itself.
 *
 * @module
 */
import type { Liveness } from "./liveness.ts";
import { describeError, type Logger } from "./log.ts";
import { type Database, run } from "./statements.ts";

/** Why a worker ended at once: `unreachable`, its heartbeat could not get through; `reaped`, another host took it for dead and released its tasks. */
export type LostCause = "unreachable" | "reaped";

/** What a worker's row says about it. */
export interface WorkerIdentity {
  workerId: string;
  /** The supervisor or in-process host the worker belongs to. */
  hostId: string;
  pid: number;
  concurrency: number;
  hostname: string;
  runtime: string;
  queues: string[] | null;
  names: string[];
}

/** What a heartbeat needs. */
export interface HeartbeatOptions {
  /** The worker's pool: registration, idle flag and removal. */
  sql: Database;
  /** A client for the beats alone, so that claims queued on the pool cannot delay them past the self-stop. Default: `sql`. */
  beatSql?: Database;
  schema: string;
  timings: Liveness;
  log: Logger;
  /** Ids of running tasks whose cancel was asked. */
  onCancel(ids: string[]): void;
  /** The worker must stop at once. Called once. */
  onLost(cause: LostCause, reason: string): void;
  /** Called after each beat that got through or failed (the worker reports its counts then). */
  afterBeat(): Promise<void>;
  /** Called with the round trip (ms) of each beat that got through: the time its statement took. */
  onRoundTrip?(ms: number): void;
}

/** Removes worker rows (a stopped worker, or dead workers). */
export async function removeWorkers(db: Database, schema: string, workerIds: string[]): Promise<void> {
  if (workerIds.length) await run(db, schema, "RemoveWorkers", [workerIds]);
}

/** One worker's heartbeat. `register`, then `start`; `end` before removing the row. */
export class Heartbeat {
  readonly #options: HeartbeatOptions;
  #workerId = "";
  #timer: ReturnType<typeof setInterval> | undefined;
  /** performance.now() and Date.now() when the last heartbeat that succeeded was sent. */
  #sentAt = 0;
  #sentWall = 0;
  #beating = false;
  /** performance.now() when the first heartbeat since the last that succeeded was sent; undefined while none is unanswered. */
  #unansweredSince: number | undefined;
  /** Set once the worker removes its own row: an empty heartbeat then means nothing. */
  #ending = false;
  #lost = false;
  /** performance.now() of the last call of {@link beat}: a long gap since means this process was stalled. */
  #tickedAt = performance.now();

  constructor(options: HeartbeatOptions) {
    this.#options = options;
  }

  /** Writes the worker's row; its time counts as the first heartbeat. */
  async register(id: WorkerIdentity): Promise<void> {
    const o = this.#options;
    const sentAt = [performance.now(), Date.now()] as const;
    await run(o.sql, o.schema, "RegisterWorker", [
      id.workerId, id.hostId, id.pid, id.concurrency, id.hostname, id.runtime, id.queues, id.names, o.timings.staleAfter,
    ]);
    this.#workerId = id.workerId;
    [this.#sentAt, this.#sentWall] = sentAt;
  }

  /** Starts beating every heartbeat interval. */
  start(): void {
    this.#tickedAt = performance.now();
    this.#timer = setInterval(() => void this.beat(), this.#options.timings.heartbeatInterval);
  }

  /** Stops beating; the row stays until {@link remove}. */
  stop(): void {
    clearInterval(this.#timer);
  }

  /** Stops beating and removes the worker's row. */
  async remove(): Promise<void> {
    this.stop();
    this.#ending = true;
    await removeWorkers(this.#options.sql, this.#options.schema, [this.#workerId]);
  }

  /**
   * Records one more (1) or one fewer (-1) attempt the worker let run on
   * detached (they keep their leases but not their slots: QueueFreeSlots
   * counts them); whether it got through.
   */
  async addDetached(change: 1 | -1): Promise<boolean> {
    return await run(this.#options.sql, this.#options.schema, "AddWorkerDetached", [this.#workerId, change]).then(() => true, (error) => {
      this.#options.log.warn("could not record the worker's detached attempts", { error: describeError(error).message });
      return false;
    });
  }

  /** Sets the idle flag: while it is up, enqueues send a wake-up (NOTIFY). */
  async setIdle(idle: boolean): Promise<void> {
    await run(this.#options.sql, this.#options.schema, "SetWorkerIdle", [this.#workerId, idle]).catch((error) => {
      this.#options.log.warn("could not update the worker's idle flag", { error: describeError(error).message });
    });
  }

  /** One beat: judges the silence first, then sends (one at a time). */
  async beat(): Promise<void> {
    if (this.#lost) return;
    this.#noteStall();
    const cutOff = this.#cutOff();
    if (cutOff !== undefined) return this.#lose("unreachable", cutOff);
    // Beats that hang (an unreachable server) must not pile up.
    if (this.#beating) return;
    this.#beating = true;
    try {
      await this.#send();
    } finally {
      this.#beating = false;
    }
    await this.#options.afterBeat();
  }

  /**
   * Why the worker must stop, if it must: heartbeats it sent did not get
   * through for the reply allowance, and the last that did was sent more
   * than the self-stop time ago. Measured from when that heartbeat was sent,
   * no later than the time the database stamped on it, so the worker stops
   * before any other host's clock says it is stale; by the larger of the
   * monotonic gap (the wall clock may step back) and the wall-clock gap (the
   * monotonic clock stands still while the host is suspended). Silence with
   * no unanswered heartbeat was this process's own (a task blocked the event
   * loop): beat now, and judge once that beat had time to come back.
   */
  #cutOff(): string | undefined {
    const t = this.#options.timings;
    const silentFor = Math.max(performance.now() - this.#sentAt, Date.now() - this.#sentWall);
    const unansweredFor = this.#unansweredSince === undefined ? 0 : performance.now() - this.#unansweredSince;
    if (unansweredFor <= t.replyAllowance || silentFor <= t.selfStopAfter) return undefined;
    return `its heartbeat has not succeeded for ${Math.round(silentFor)} ms (other hosts may take it for dead after ${t.staleAfter} ms)`;
  }

  /**
   * A heartbeat in flight when this process stalled (a task blocked the
   * event loop) may have been answered during the stall, its reply still
   * queued: timers run before I/O callbacks, so this tick would see it as
   * unanswered for the whole stall. After a stall of half the reply
   * allowance or more, it gets its allowance again from now. A stall is
   * bounded by its supervisor's kill (the kill silence), so a worker cut off
   * right after one still stops within the kill silence plus the allowance.
   */
  #noteStall(): void {
    const now = performance.now();
    const stalled = now - this.#tickedAt >= this.#options.timings.replyAllowance / 2;
    this.#tickedAt = now;
    if (stalled && this.#unansweredSince !== undefined) this.#unansweredSince = now;
  }

  async #send(): Promise<void> {
    const o = this.#options;
    const sentAt = [performance.now(), Date.now()] as const;
    this.#unansweredSince ??= sentAt[0];
    try {
      const rows = await run<{ cancelled: unknown[] }>(o.beatSql ?? o.sql, o.schema, "HeartbeatWorker", [this.#workerId]);
      if (!rows.length) {
        if (!this.#ending) this.#lose("reaped", "another host declared it dead (its heartbeat was late) and released its tasks");
        return;
      }
      [this.#sentAt, this.#sentWall] = sentAt;
      this.#unansweredSince = undefined;
      o.onRoundTrip?.(performance.now() - sentAt[0]);
      const cancelled = (rows[0].cancelled ?? []).map(String);
      if (cancelled.length) o.onCancel(cancelled);
    } catch (error) {
      o.log.warn("heartbeat failed", { error: describeError(error).message });
    }
  }

  #lose(cause: LostCause, reason: string): void {
    this.#lost = true;
    this.stop();
    this.#options.onLost(cause, reason);
  }
}
