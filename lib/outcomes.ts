/**
 * Writes the outcomes of attempts back in batches: every success, failure, snooze,
 * hand-back and finished cancel that came while the previous batch was being
 * written goes out in the next one, one statement per kind. Every write is
 * fenced by the attempt's lease token, or by the claim row that holds its
 * task; a claim row is ended once every outcome of its tasks is written.
 *
 * @module
 */
import type { AttemptEvent, TaskEventEmitter } from "./events.ts";
import type { Logger } from "./log.ts";
import { describeError } from "./log.ts";
import type { SeriesCounts } from "./stats.ts";
import type { Database } from "./statements.ts";
import type { QueryName } from "./generated/sql.ts";
import { run } from "./statements.ts";

/** A failed attempt, ready to be written. */
export interface Failure extends AttemptRef {
  /** Wait before the retry, in ms. */
  delay: number;
  /** JSON-safe description of the error, stored as the task's last_error. */
  error: object;
  /** Fail for good, without retries (input no longer valid). */
  permanent: boolean;
}

/** A snoozed attempt (ctx.retryAfter), ready to be written: not counted, the task due again after `delay` ms. */
export interface Snooze extends AttemptRef {
  delay: number;
}

/** A task's attempt, named by its id and lease token (the fence of every write), or by the claim row that holds it. */
export interface AttemptRef {
  id: string;
  leaseToken: number;
  /**
   * The claim row that holds the task, if one does: a success is written
   * fenced by it (CompleteClaimedTasks, CompleteClaimedKeptTasks), any
   * other outcome, and a batch member's success, once the task has a lease
   * of its own (LeaseClaimedTasks), by the token that gives.
   */
  claimId?: string | null;
  /** Where the written outcome is counted, if anywhere. */
  counts?: SeriesCounts;
  /** The attempt, for the events told once the outcome is written; only while someone listens. */
  event?: AttemptEvent & { durationMs: number };
  /** ctx.complete(tx) deleted the task (if `tx` then rolled back, the worker's own completion finds it). */
  completedInTransaction?: boolean;
  /** Written once already and not found: written again once before it counts as a lost lease (see recheck). */
  rechecked?: boolean;
}

/** A success, ready to be written. */
export interface Completion extends AttemptRef {
  /** How long the task is kept in the history once completed, in ms; 0 or none: not kept (deleted only). */
  keep?: number;
  /** Its result as JSON text, for a task with a result schema. */
  result?: string;
  /** A batch member: its success counts its batch down (CompleteBatchTasks, or CompleteKeptTasks for a kept one). */
  batch?: boolean;
  /** When the attempt was claimed (ms since the epoch): a kept task's history shows it as the attempt's start. */
  claimedAtMs?: number;
}

/**
 * Ids or lease tokens as an array's text (`{1,2,3}`), sent as it is for a
 * `bigint[]` or `integer[]` parameter: they are digits, which need no
 * quoting, where postgres.js's serializer escapes each element of a
 * JavaScript array (two regular-expression replaces for each id and each
 * token).
 */
function arrayText(values: readonly (string | number)[]): string {
  return `{${values.join(",")}}`;
}

/** Batches the completions, failures, snoozes, hand-backs and finished cancels of one worker. */
export class OutcomeWriter {
  #done: Completion[] = [];
  #failed: Failure[] = [];
  #handedBack: AttemptRef[] = [];
  #snoozed: Snooze[] = [];
  #cancelled: AttemptRef[] = [];
  /** Claim rows' tasks whose outcomes are not recorded yet, by claim id. */
  readonly #claims = new Map<string, number>();
  /** Claims whose every outcome is recorded: ended (EndClaims) once those are written. */
  #ending: string[] = [];
  /**
   * Claims with a task whose outcome the fence did not let through: their
   * end reads their stretch for tasks left in it. The others' stretches
   * hold nothing left (EndClaims).
   */
  readonly #unsettled = new Set<string>();
  #flushing: Promise<void> | undefined;
  /** The outcomes in the write in flight. */
  #writing = 0;
  /** The failures among them. */
  #writingFailures = 0;
  #retryDelay = 100;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly maxAttempts: number,
    private readonly log: Logger,
    private readonly events?: TaskEventEmitter,
    /** The worker, whose claim rows fence the writes of their tasks. */
    private readonly workerId = "",
  ) {}

  /** Counts the tasks of claims by claim rows as they are claimed, so that each claim ends once all its outcomes are written. */
  claimed(tasks: readonly { claimId: string | null }[]): void {
    for (const t of tasks) if (t.claimId !== null) this.#claims.set(t.claimId, (this.#claims.get(t.claimId) ?? 0) + 1);
  }

  /** Counts an outcome of a claim row's task: the claim's last ends it. */
  #recorded(attempt: AttemptRef): void {
    if (!attempt.claimId || !this.#claims.has(attempt.claimId)) return;
    const left = this.#claims.get(attempt.claimId)! - 1;
    if (left > 0) return void this.#claims.set(attempt.claimId, left);
    this.#claims.delete(attempt.claimId);
    this.#ending.push(attempt.claimId);
  }

  /** Records a success: the task will be deleted, and kept in the history when it keeps any. */
  complete(attempt: Completion): void {
    this.#done.push(attempt);
    this.#recorded(attempt);
    this.#schedule();
  }

  /** Records a failed attempt. */
  fail(failure: Failure): void {
    this.#failed.push(failure);
    this.#recorded(failure);
    this.#schedule();
  }

  /** Records a snooze: the task is queued again after its delay, the attempt not counted. */
  snooze(snooze: Snooze): void {
    this.#snoozed.push(snooze);
    this.#recorded(snooze);
    this.#schedule();
  }

  /** Hands a task back to the queue, claimable at once, without counting the attempt (a shutdown). */
  handBack(attempt: AttemptRef): void {
    this.#handedBack.push(attempt);
    this.#recorded(attempt);
    this.#schedule();
  }

  /** Deletes a task whose cancel was requested, once its attempt ended. */
  finishCancelled(attempt: AttemptRef): void {
    this.#cancelled.push(attempt);
    this.#recorded(attempt);
    this.#schedule();
  }

  /** Resolves when the write in flight (started now if none is and outcomes wait) ends, whether it wrote or failed. */
  async written(): Promise<void> {
    this.#schedule();
    await this.#flushing;
  }

  /** Number of outcomes not yet written, waiting for the next write. */
  get pending(): number {
    return this.#done.length + this.#failed.length + this.#handedBack.length + this.#snoozed.length + this.#cancelled.length;
  }

  /** Number of outcomes not yet written, the write in flight's included: their tasks hold their leases. */
  get unwritten(): number {
    return this.pending + this.#writing;
  }

  /** Number of failed attempts not yet written, the write in flight's included. */
  get failuresUnwritten(): number {
    return this.#failed.length + this.#writingFailures;
  }

  /**
   * Resolves once everything recorded so far is written (retrying on errors),
   * or at `deadline`, even with a write in flight: a statement on a
   * connection the network dropped can hang until the driver's connect
   * timeout.
   */
  async flush(deadline = Number.POSITIVE_INFINITY): Promise<void> {
    while ((this.pending || this.#flushing) && Date.now() < deadline) {
      this.#schedule();
      await withDeadline(this.#flushing, deadline);
      if (this.pending) await new Promise((r) => setTimeout(r, Math.min(this.#retryDelay, Math.max(0, deadline - Date.now()))));
    }
  }

  #schedule(): void {
    if (this.#flushing) return;
    // setImmediate-like coalescing: outcomes of the same tick share a batch.
    this.#flushing = new Promise<void>((resolve) => setTimeout(resolve, 0))
      .then(() => this.#write())
      .finally(() => {
        this.#flushing = undefined;
        if (this.pending) this.#schedule();
      });
  }

  async #write(): Promise<void> {
    const done = this.#done.splice(0);
    const failed = this.#failed.splice(0);
    const handedBack = this.#handedBack.splice(0);
    const snoozed = this.#snoozed.splice(0);
    const cancelled = this.#cancelled.splice(0);
    const ending = this.#ending.splice(0);
    this.#writing = done.length + failed.length + handedBack.length + snoozed.length + cancelled.length;
    this.#writingFailures = failed.length;
    try {
      // A batch member's success counts its batch down by its lease token (CompleteBatchTasks), as any outcome but a plain success is written.
      await this.#leaseClaimed([...failed, ...handedBack, ...snoozed, ...cancelled, ...done.filter((d) => d.batch)]);
      const [completedRows, failedRows, snoozedRows, cancelledRows] = await Promise.all([
        this.#complete(done),
        failed.length
          ? run<{ id: unknown; state: string }>(this.db, this.schema, "FailTasks", [
            idsOf(failed),
            tokensOf(failed),
            failed.map((f) => f.delay),
            failed.map((f) => JSON.stringify(f.error)),
            // postgres.js mis-types boolean arrays; the statement takes 0/1.
            failed.map((f) => (f.permanent ? 1 : 0)),
            this.maxAttempts,
          ])
          : [],
        snoozed.length ? run<{ id: unknown }>(this.db, this.schema, "SnoozeTasks", [idsOf(snoozed), tokensOf(snoozed), snoozed.map((s) => s.delay)]) : [],
        cancelled.length ? run<{ id: unknown }>(this.db, this.schema, "FinishCancelledTasks", [idsOf(cancelled), tokensOf(cancelled)]) : [],
        handedBack.length ? run(this.db, this.schema, "HandBackTasks", [idsOf(handedBack), tokensOf(handedBack)]) : [],
      ]);
      // A write can miss a row another statement updated while it waited
      // (enqueueFlow marking a running parent): its row moved, and the fence
      // finds it by its address. Written once more, by a new statement,
      // before it counts as a lost lease.
      const [doneNow, failedNow] = [recheck(done, completedRows, this.#done), recheck(failed, failedRows, this.#failed)];
      countCompleted(doneNow, completedRows);
      countFailed(failedNow, failedRows);
      if (this.events?.listening) tellWritten(this.events, { done: doneNow, completedRows, failed: failedNow, failedRows, snoozed, snoozedRows, cancelled, cancelledRows });
      this.#retryDelay = 100;
      if (ending.length) await this.#endClaims(ending);
    } catch (error) {
      // Keep them for the next batch: the writes are fenced by the lease, so
      // writing one twice, or after the lease moved on, changes nothing.
      this.#writing = this.#writingFailures = 0;
      this.#done.unshift(...done);
      this.#failed.unshift(...failed);
      this.#handedBack.unshift(...handedBack);
      this.#snoozed.unshift(...snoozed);
      this.#cancelled.unshift(...cancelled);
      this.#ending.unshift(...ending);
      this.log.warn(`could not write ${done.length + failed.length + handedBack.length + snoozed.length + cancelled.length} outcomes; retrying in ${this.#retryDelay} ms`, { error: describeError(error).message });
      await new Promise((r) => setTimeout(r, this.#retryDelay));
      this.#retryDelay = Math.min(this.#retryDelay * 2, 5_000);
    } finally {
      this.#writing = this.#writingFailures = 0;
    }
  }

  /**
   * Writes the successes `done`, each kind by its statement, at once: those
   * claim rows hold (CompleteClaimedTasks, and CompleteClaimedKeptTasks for
   * those kept in the history), and by their lease tokens the plain ones
   * (CompleteTasks), the kept ones (CompleteKeptTasks) and batch members
   * (CompleteBatchTasks). Resolves with the rows the fences let through.
   */
  async #complete(done: Completion[]): Promise<{ id: unknown }[]> {
    const [byClaim, byToken] = split(done, (d) => !!d.claimId);
    const [claimedKept, claimed] = split(byClaim, (d) => !!d.keep);
    const [kept, unkept] = split(byToken, (d) => !!d.keep);
    const [members, plain] = split(unkept, (d) => !!d.batch);
    const keptValues = (k: Completion[]) => [k.map((c) => c.result ?? null), k.map((c) => c.keep), k.map((c) => c.claimedAtMs ?? Date.now())];
    const rows = await Promise.all([
      claimed.length ? this.#completeClaimed("CompleteClaimedTasks", claimed, []) : [],
      claimedKept.length ? this.#completeClaimed("CompleteClaimedKeptTasks", claimedKept, keptValues(claimedKept)) : [],
      plain.length ? run<{ id: unknown }>(this.db, this.schema, "CompleteTasks", [idsOf(plain), tokensOf(plain)]) : [],
      kept.length ? run<{ id: unknown }>(this.db, this.schema, "CompleteKeptTasks", [idsOf(kept), tokensOf(kept), ...keptValues(kept)]) : [],
      members.length ? run<{ id: unknown }>(this.db, this.schema, "CompleteBatchTasks", [idsOf(members), tokensOf(members)]) : [],
    ]);
    return rows.flat();
  }

  /**
   * Writes the successes `done` of tasks claim rows hold by `statement`,
   * fenced by their claims; the claims of those the fence did not let
   * through are unsettled. (One completed in the attempt's own
   * transaction is gone already, or its transaction rolled back and this
   * deletes it.)
   */
  async #completeClaimed(statement: QueryName, done: Completion[], values: unknown[]): Promise<{ id: unknown }[]> {
    const rows = completedRows(done, await run(this.db, this.schema, statement, [idsOf(done), distinctClaims(done), this.workerId, ...values]));
    if (rows.length < done.length) {
      const written = new Set(rows.map((r) => String(r.id)));
      for (const d of done) if (!written.has(d.id) && !d.completedInTransaction) this.#unsettled.add(d.claimId!);
    }
    return rows;
  }

  /**
   * Gives each task a claim row holds among `attempts` a lease of its own
   * (LeaseClaimedTasks), so that its outcome is written by the statements
   * of row leases, fenced by the token: a task no longer its claim's gets
   * none that can match, and its outcome is refused as a lost lease.
   */
  async #leaseClaimed(attempts: AttemptRef[]): Promise<void> {
    const held = attempts.some((a) => a.claimId) ? attempts.filter((a) => a.claimId) : [];
    if (!held.length) return;
    const rows = await run<{ id: unknown; lease_token: number }>(this.db, this.schema, "LeaseClaimedTasks", [
      idsOf(held), arrayText(held.map((a) => a.claimId!)), this.workerId,
    ]);
    const tokens = new Map(rows.map((r) => [String(r.id), r.lease_token]));
    for (const a of held) {
      a.leaseToken = tokens.get(a.id) ?? -1;
      if (a.leaseToken === -1) this.#unsettled.add(a.claimId!);
      a.claimId = null;
    }
  }

  /**
   * Ends claims whose outcomes are all written (EndClaims); one whose
   * success is to be written once more (see recheck) waits for it. A claim
   * whose end fails is ended with a later write.
   */
  async #endClaims(ending: string[]): Promise<void> {
    const waiting = new Set(this.#done.map((d) => d.claimId).filter((c) => c));
    const now = waiting.size ? ending.filter((c) => !waiting.has(c)) : ending;
    if (waiting.size) this.#ending.push(...ending.filter((c) => waiting.has(c)));
    if (!now.length) return;
    try {
      await run(this.db, this.schema, "EndClaims", [arrayText(now), this.workerId, arrayText(now.filter((c) => !this.#unsettled.has(c)))]);
      for (const c of now) this.#unsettled.delete(c);
    } catch (error) {
      this.#ending.push(...now);
      this.log.warn(`could not end ${now.length} claims; retrying with a later write`, { error: describeError(error).message });
    }
  }
}

/** The ids of `attempts`, as an array's text. */
function idsOf(attempts: readonly AttemptRef[]): string {
  return arrayText(attempts.map((a) => a.id));
}

/** The lease tokens of `attempts`, as an array's text. */
function tokensOf(attempts: readonly AttemptRef[]): string {
  return arrayText(attempts.map((a) => a.leaseToken));
}

/** `items` split by `test`: those it holds for, and the others (`items` itself when it holds for none, the common case). */
function split<T>(items: T[], test: (item: T) => boolean): [T[], T[]] {
  if (!items.some(test)) return [[], items];
  return [items.filter(test), items.filter((item) => !test(item))];
}

/** The claims of `attempts`, each once, as an array's text. */
function distinctClaims(attempts: readonly AttemptRef[]): string {
  return arrayText([...new Set(attempts.map((a) => a.claimId!))]);
}

/** The outcomes of `written` to report now; those the statement did not find, written for the first time, go back into `queue` to be written once more. */
function recheck<T extends AttemptRef>(written: T[], rows: { id: unknown }[], queue: T[]): T[] {
  if (rows.length >= written.length) return written;
  const found = new Set(rows.map((r) => String(r.id)));
  const again = written.filter((w) => !found.has(w.id) && !w.completedInTransaction && !w.rechecked);
  if (!again.length) return written;
  for (const w of again) w.rechecked = true;
  queue.push(...again);
  return written.filter((w) => !again.includes(w));
}

/** Resolves with `promise`, or at `deadline` (epoch ms), whichever comes first. */
function withDeadline(promise: Promise<void> | undefined, deadline: number): Promise<void> | undefined {
  if (!promise || deadline === Number.POSITIVE_INFINITY) return promise;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<void>((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now()))));
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * The tasks a completion deleted, as rows of their ids: its statement's
 * own rows, one a task (CompleteClaimedKeptTasks), or its one row of a
 * count and, when the fence refused some, the ids (CompleteClaimedTasks).
 */
function completedRows(done: readonly AttemptRef[], rows: Record<string, unknown>[]): { id: unknown }[] {
  const [first] = rows;
  if (rows.length !== 1 || !first || !("completed" in first)) return rows as { id: unknown }[];
  if (Number(first.completed) === done.length) return done.map((d) => ({ id: d.id }));
  return first.ids ? String(first.ids).split(",").map((id) => ({ id })) : [];
}

/** Counts the completions the fence let through: all of them, nearly always. */
function countCompleted(done: AttemptRef[], rows: { id: unknown }[]): void {
  if (rows.length === done.length) {
    for (const d of done) if (d.counts) d.counts.completed++;
    return;
  }
  const written = new Set(rows.map((r) => String(r.id)));
  for (const d of done) if (d.counts && written.has(d.id)) d.counts.completed++;
}

/** Counts the failures the fence let through, as final or retried by the state they left. */
function countFailed(failed: Failure[], rows: { id: unknown; state: string }[]): void {
  if (!rows.length) return;
  const byId = new Map(failed.map((f) => [f.id, f]));
  for (const row of rows) {
    const counts = byId.get(String(row.id))?.counts;
    if (counts) counts[row.state === "failed" ? "failed" : "retried"]++;
  }
}

/** What one batch wrote, for the events. */
interface Written {
  done: Completion[];
  completedRows: { id: unknown }[];
  failed: Failure[];
  failedRows: { id: unknown; state: string }[];
  snoozed: Snooze[];
  snoozedRows: { id: unknown }[];
  cancelled: AttemptRef[];
  cancelledRows: { id: unknown }[];
}

/** Tells the listeners what each outcome of a batch became: its event if the fence let it through, leaseLost if not. */
function tellWritten(events: TaskEventEmitter, w: Written): void {
  const ids = (rows: { id: unknown }[]) => new Set(rows.map((r) => String(r.id)));
  const lost = (e: AttemptRef["event"]) => events.emit("leaseLost", { id: e!.id, name: e!.name, queue: e!.queue, attempt: e!.attempt });
  const completed = ids(w.completedRows);
  for (const d of w.done) {
    if (!d.event) continue;
    if (completed.has(d.id) || d.completedInTransaction) events.emit("completed", d.result === undefined ? d.event : { ...d.event, result: JSON.parse(d.result) });
    else lost(d.event);
  }
  const states = new Map(w.failedRows.map((r) => [String(r.id), r.state]));
  for (const f of w.failed) {
    if (!f.event) continue;
    const state = states.get(f.id);
    const error = f.error as { name: string; message: string; code?: string };
    const info = { name: error.name, message: error.message, ...(error.code ? { code: error.code } : {}) };
    if (state === "failed") events.emit("failed", { ...f.event, error: info });
    else if (state) events.emit("retrying", { ...f.event, error: info, delayMs: f.delay });
    else lost(f.event);
  }
  const snoozed = ids(w.snoozedRows);
  for (const s of w.snoozed) {
    if (!s.event) continue;
    if (snoozed.has(s.id)) events.emit("snoozed", { ...s.event, delayMs: s.delay });
    else lost(s.event);
  }
  const cancelled = ids(w.cancelledRows);
  for (const c of w.cancelled) if (c.event && cancelled.has(c.id)) events.emit("cancelled", { id: c.event.id, name: c.event.name, queue: c.event.queue, attempt: c.event.attempt });
}
