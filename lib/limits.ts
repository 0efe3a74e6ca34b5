/**
 * Concurrency and rate limits of queues (`setQueueConcurrency`,
 * `setQueueRateLimit`, `setGroupConcurrency`, `setGroupRateLimit`): at
 * most N of a queue's tasks run at once, at most R start in any interval,
 * at most G of each of its groups run at once, and at most S of each group
 * start in any interval, across every worker of every host.
 *
 * The ordinary claim leaves a limited queue alone (OpenLanes, GroupQueueClosed). A
 * worker claims from it with the limited claim: it takes the queue's
 * advisory lock, then counts the queue's running tasks with a snapshot
 * taken after the lock, so the count sees every task the claims before it
 * took (completions meanwhile only free slots), then claims at most the
 * free slots. Only running tasks count: a task waiting for its retry, or
 * released from a dead worker, holds no slot. A limit that cannot bind
 * (the registered workers that claim from the queue run no more in all) is
 * not counted against: QueueFreeSlots and take_queue_slots say why that is
 * safe, given that such a claim takes no more than the worker's free slots
 * less its unwritten outcomes (claimLimited), whose tasks keep their leases.
 *
 * The claim's form depends on the queue's limits (as the worker last read
 * them, each check interval; a claim that finds them changed claims
 * nothing, and the queue waits for the next read):
 * - by its concurrency alone: one statement (ClaimSlotRowTasks, or
 *   ClaimSlotRowTasksFrom from the queue's own claim cursor), whose
 *   take_queue_slots takes the lock and counts, or shares the lock and
 *   counts nothing while the limit cannot bind; its tasks with a group, in
 *   the transaction below;
 * - per group alone (a group concurrency limit, nothing of the queue's
 *   own, no group rate): one statement (claimPerGroup, lib/groups.ts)
 *   that shares the queue's lock and takes each group's own, so the
 *   workers' claims of it run side by side. A group limit does not hold
 *   tasks without a group: the ordinary claim takes those;
 * - otherwise, and wherever the session's default isolation is not READ
 *   COMMITTED: a READ COMMITTED transaction that takes the lock
 *   (LockLimitedQueue), counts (QueueFreeSlots) and claims
 *   (ClaimLimitedRowTasks, ClaimLimitedGroupTasks). A rate limit counts the
 *   starts its queue's log holds within the last interval, and the same
 *   transaction logs the starts it claims (RecordQueueStarts): a claim is
 *   a start, and a task over the limit waits, queued, without using an
 *   attempt. A group rate limit is the same, with a log per group
 *   (ClaimLimitedGroupTasks counts each group's, RecordGroupStarts
 *   appends to them).
 *
 * The ordinary claim leaves a queue alone from the moment its limit is
 * committed (a claim already under way may still take from it once); a
 * worker learns which queues to claim with the limited claim each check
 * interval, so a newly limited queue waits up to that long.
 *
 * @module
 */
import type { Sql } from "postgres";
import type { ClaimScope } from "./claim.ts";
import { ClaimCursor, type ClaimRow, claimWithCursor, RoundTrips } from "./claim-cursor.ts";
import { inTurn } from "./client.ts";
import { claimBothKinds, claimGroups, claimPerGroup, REST_MS } from "./groups.ts";
import { type Database, run } from "./statements.ts";

/** Which queues have a limit (concurrency or rate, of the queue or per group), read again when older than `refreshMs`. */
export class LimitedQueues {
  #names: string[] = [];
  #perGroup = new Set<string>();
  #slotsOnly = new Set<string>();
  #readAt = -Infinity;
  #turn = false;
  #othersEmptyAt = -Infinity;
  #rotation = 0;
  #roomAt = Infinity;
  #heldByWrites = false;
  readonly #cursors = new Map<string, ClaimCursor>();

  /** `restMs`: how long the claim of the other queues goes second after it found nothing (takeTurn). */
  /** `roundTrips`: the worker's heartbeats' round trips, which its limited queues' cursors judge full claims by (ClaimCursor). */
  constructor(private readonly refreshMs: number, private readonly restMs = REST_MS, readonly roundTrips: RoundTrips = new RoundTrips()) {}

  /** Whether `queue` was limited per group alone when last read: its claim is then claimPerGroup's. */
  perGroup(queue: string): boolean {
    return this.#perGroup.has(queue);
  }

  /** Whether `queue` was limited by its concurrency alone when last read: its tasks without a group are then claimed with ClaimSlotRowTasks. */
  slotsOnly(queue: string): boolean {
    return this.#slotsOnly.has(queue);
  }

  /**
   * Whether this claim takes from the limited queues before the others:
   * every other claim, and every claim while the others' claim found
   * nothing in the last `restMs` (it then runs only when the limited claims
   * leave room, rather than cost statements that find nothing).
   */
  takeTurn(): boolean {
    this.#turn = !this.#turn;
    return this.#turn || Date.now() - this.#othersEmptyAt < this.restMs;
  }

  /** Records what the claim of the queues without a limit found, for takeTurn. */
  othersFound(rows: number): void {
    this.#othersEmptyAt = rows ? -Infinity : Date.now();
  }

  /**
   * The limited queues among `queues` (null: every queue), read from the
   * database when the last read is stale; each call starts the list one
   * queue further on, so that the first ones cannot take every free slot.
   */
  async among(db: Database, schema: string, queues: string[] | null): Promise<string[]> {
    if (Date.now() - this.#readAt >= this.refreshMs) {
      const rows = await run(db, schema, "LimitedQueues", []);
      this.#names = rows.map((r) => r.name as string);
      this.#perGroup = new Set(rows.filter((r) => r.per_group).map((r) => r.name as string));
      this.#slotsOnly = new Set(rows.filter((r) => r.slots_only).map((r) => r.name as string));
      this.#readAt = Date.now();
    }
    const mine = queues ? this.#names.filter((q) => queues.includes(q)) : this.#names;
    const start = mine.length ? this.#rotation++ % mine.length : 0;
    return [...mine.slice(start), ...mine.slice(0, start)];
  }

  /**
   * The claim cursor of the limited claim of `queue` (lib/claim-cursor.ts):
   * each limited queue has its own, as its lanes are claimed by its
   * limited claim alone, never by the ordinary claim.
   */
  cursorOf(queue: string): ClaimCursor {
    let cursor = this.#cursors.get(queue);
    if (!cursor) this.#cursors.set(queue, cursor = new ClaimCursor(this.roundTrips));
    return cursor;
  }

  /** Makes the next limited claim of every queue a full one (ClaimCursor.fullNext). */
  fullNext(): void {
    for (const cursor of this.#cursors.values()) cursor.fullNext();
  }

  /** A wake-up: tells each limited queue's cursor (ClaimCursor.woken). */
  woken(now: number): void {
    for (const cursor of this.#cursors.values()) cursor.woken(now);
  }

  /** A rate-limited queue was found full: it has room again at `at` (epoch ms). */
  fullUntil(at: number): void {
    this.#roomAt = Math.min(this.#roomAt, at);
  }

  /** A limited claim may have come back short for the worker's unwritten outcomes (claimLimited). */
  heldByWrites(): void {
    this.#heldByWrites = true;
  }

  /**
   * Whether a limited claim came back short for the worker's unwritten
   * outcomes since this was last asked, and forgets it. The worker asks
   * after every claim, so it tells of that claim alone: if it is short,
   * the worker claims again once the write in flight ends, rather than go
   * idle with tasks queued.
   */
  takeHeldByWrites(): boolean {
    const held = this.#heldByWrites;
    this.#heldByWrites = false;
    return held;
  }

  /**
   * How long until a rate-limited queue found full has room again (ms), and
   * forgets it: an idle worker sleeps no longer than that, so the limit's
   * rate is reached. Infinity when none was found full.
   */
  takeRoomIn(): number {
    const at = this.#roomAt;
    this.#roomAt = Infinity;
    return Math.max(0, at - Date.now());
  }
}

/**
 * Claims up to `want` tasks of `scope`'s names from the limited `queue`,
 * within its limits (see the module's comment); returns the claim
 * statements' rows. A queue limited per group alone, or by its
 * concurrency alone (as last read), is claimed in one statement: its tasks
 * with a group in the latter case still in the transaction, at most every
 * REST_MS while it finds none. `unwritten`: the worker's attempts that
 * ended and whose outcomes are not written yet; they keep their leases, so
 * a claim that does not count the queue's running tasks takes `want` less
 * those (take_queue_slots, QueueFreeSlots). A claim that may have come
 * back short for them says so (LimitedQueues.takeHeldByWrites). `take` is
 * given each statement's rows as it returns (claimTasks' onClaimed).
 */
export async function claimLimited(
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>, schema: string, queue: string, scope: ClaimScope, want: number, unwritten: number, take: TakeRows,
): Promise<Record<string, unknown>[]> {
  const claimed = await claimInItsForm(sql, schema, queue, scope, want, unwritten, take);
  // Short, but no shorter than the unwritten outcomes: they may be why (taken
  // off an uncounted claim, or counted as running in a counted one, a
  // group's too).
  if (unwritten > 0 && claimed.length < want && claimed.length >= want - unwritten) scope.limits?.heldByWrites();
  return claimed;
}

/** Given the rows of each statement that took tasks, as it returns (claimTasks' onClaimed); returns them. */
export type TakeRows = (rows: Record<string, unknown>[]) => Record<string, unknown>[];

/** claimLimited's claim, in the form the queue's limits (as last read) take; each statement's rows given to `take`. */
async function claimInItsForm(
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>, schema: string, queue: string, scope: ClaimScope, want: number, unwritten: number, take: TakeRows,
): Promise<Record<string, unknown>[]> {
  if (scope.limits?.perGroup(queue)) return take(await claimPerGroup(sql, schema, scope, queue, want));
  if (!scope.limits?.slotsOnly(queue)) return take(await claimInTransaction(sql, schema, queue, scope, want, unwritten, false) ?? []);
  // Two statements, each its own transaction: the first's tasks are taken
  // before the second runs, so that its failure cannot strand them.
  return await claimBothKinds(
    scope, queue, want,
    async (n) => take(await claimSlots(sql, schema, queue, scope, n, unwritten)),
    async (n) => {
      const rows = await claimInTransaction(sql, schema, queue, scope, n, unwritten, true);
      return rows && take(rows);
    },
    true,
  );
}

/**
 * The limited claim in a transaction: the queue's lock, its free slots
 * counted (QueueFreeSlots; less `unwritten` when it counted nothing), and
 * tasks of both kinds (claimWithin), or with a group alone
 * (`groupedOnly`), within them; null when there were none.
 */
async function claimInTransaction(
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>, schema: string, queue: string, scope: ClaimScope, want: number, unwritten: number, groupedOnly: boolean,
): Promise<Record<string, unknown>[] | null> {
  // READ COMMITTED whatever the server's default: under REPEATABLE READ the
  // lock's statement would fix the snapshot before the lock was granted.
  return await inTurn(sql, () => sql.begin("isolation level read committed", async (tx) => {
    await run(tx, schema, "LockLimitedQueue", [queue]);
    const [slots] = await run(tx, schema, "QueueFreeSlots", [queue]);
    const free = Math.min(slots?.uncounted ? want - unwritten : want, slots?.free ?? 0);
    if (free <= 0) {
      // Held back by its rate (not only by its concurrency limit, nor paused).
      if (slots?.free !== null && slots?.room_in_ms > 0) scope.limits?.fullUntil(Date.now() + slots.room_in_ms);
      return null;
    }
    const claimed = groupedOnly ? await claimGroups(tx, schema, scope, [queue], free, true) : await claimWithin(tx, schema, queue, scope, free);
    if (slots.rated && claimed.length) await run(tx, schema, "RecordQueueStarts", [queue, claimed.length]);
    if (slots.group_rated) await recordGroupStarts(tx, schema, queue, claimed);
    // Some group's rate is used up: an idle worker looks again when it has room.
    if (slots.group_room_in_ms > 0 && claimed.length < free) scope.limits?.fullUntil(Date.now() + slots.group_room_in_ms);
    return claimed;
  }) as Promise<Record<string, unknown>[] | null>);
}

/** Logs the starts of each group among `claimed` in its group's rate log (RecordGroupStarts), in one statement. */
async function recordGroupStarts(tx: Database, schema: string, queue: string, claimed: Record<string, unknown>[]): Promise<void> {
  const starts = new Map<string, number>();
  for (const row of claimed) if (row.group_name !== null) starts.set(row.group_name as string, (starts.get(row.group_name as string) ?? 0) + 1);
  if (starts.size) await run(tx, schema, "RecordGroupStarts", [queue, [...starts.keys()], [...starts.values()]]);
}

/**
 * In claimLimited's transaction: up to `free` tasks of `queue`, those
 * without a group (ClaimLimitedRowTasks) and, when some names have groups,
 * those with one (ClaimLimitedGroupTasks, which keeps each group within the
 * queue's group limit), in the order claimBothKinds gives.
 */
async function claimWithin(tx: Database, schema: string, queue: string, scope: ClaimScope, free: number): Promise<Record<string, unknown>[]> {
  return await claimBothKinds(
    scope, queue, free,
    (want) => claimUngroupedLimited(tx, schema, queue, scope, want),
    (want) => claimGroups(tx, schema, scope, [queue], want, true),
  );
}

/**
 * In claimLimited's transaction: up to `want` tasks of `queue` without a
 * group, from the queue's claim cursor's lanes when it can
 * (ClaimLimitedRowTasksFrom) and else from the lanes it finds
 * (ClaimLimitedRowTasks), as the ordinary
 * claim does (lib/claim.ts).
 */
async function claimUngroupedLimited(tx: Database, schema: string, queue: string, scope: ClaimScope, want: number): Promise<Record<string, unknown>[]> {
  const params = [scope.workerId, [queue], scope.names, scope.leaseMs, want];
  const cursor = scope.limits?.cursorOf(queue);
  return await claimWithCursor<ClaimRow>(tx, schema, cursor, ["ClaimLimitedRowTasks", "ClaimLimitedRowTasksFrom"], params);
}

/**
 * The claim of up to `want` tasks without a group from `queue`, limited by
 * its concurrency alone, in one statement: ClaimSlotRowTasks, from the
 * queue's claim cursor's lanes when it can (ClaimSlotRowTasksFrom). Every
 * claim of a lane is by claim rows, limited or not: a row-by-row claim
 * reads a lane from its head and would take a task a claim row holds,
 * still queued in its row, and run it twice.
 */
async function claimSlots(
  // deno-lint-ignore no-explicit-any
  sql: Sql<any>, schema: string, queue: string, scope: ClaimScope, want: number, unwritten: number,
): Promise<Record<string, unknown>[]> {
  const params = [scope.workerId, [queue], scope.names, scope.leaseMs, want];
  const cursor = scope.limits!.cursorOf(queue);
  return await claimWithCursor<ClaimRow>(sql, schema, cursor, ["ClaimSlotRowTasks", "ClaimSlotRowTasksFrom"], params, [unwritten]);
}

