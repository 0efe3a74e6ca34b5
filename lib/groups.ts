/**
 * Groups of tasks within a queue (defineTask's `group`): the group claim
 * (ClaimGroupTasks) takes from a queue's groups in turn, so that one
 * group's backlog does not hold up the others' tasks, and keeps each group
 * within its queue's group limit when it is the limited claim.
 *
 * @module
 */
import type { ClaimScope } from "./claim.ts";
import { type Database, run } from "./statements.ts";

/**
 * How long a kind of task (with a group, or without) that a claim found
 * none of goes after the other kind, so that a worker busy with one kind
 * does not pay a statement per claim for the other (ms). A task of the
 * resting kind waits at most this long more while the other kind fills
 * every claim.
 */
export const REST_MS = 100;

/**
 * A worker's group claim state: the point of the (queue, group) walk where
 * its last group claim stopped, so that the next starts after it and
 * claims go round the groups (each worker keeps its own; together they
 * only need to visit every group, not to agree); and, for its ordinary and
 * each limited claim, which kind of task to claim first.
 */
export class GroupRotation {
  queue = "";
  group = "";
  #turns = new Map<string, boolean>();
  #emptyAt = new Map<string, number>();

  /**
   * Whether the claim `where` ("" for the ordinary claim, else the limited
   * queue) takes tasks with a group first: by turns, but a kind that was
   * found empty in the last REST_MS goes second.
   */
  groupsFirst(where: string): boolean {
    const turn = !this.#turns.get(where);
    this.#turns.set(where, turn);
    const groupsResting = this.#resting(`${where}\0g`);
    const plainResting = this.#resting(`${where}\0p`);
    return groupsResting === plainResting ? turn : plainResting;
  }

  /** Records what a claim of one kind found, for groupsFirst. */
  found(where: string, grouped: boolean, rows: number): void {
    const kind = `${where}\0${grouped ? "g" : "p"}`;
    if (rows) this.#emptyAt.delete(kind);
    else this.#emptyAt.set(kind, Date.now());
  }

  /** Whether the claim `where` found none of a kind (with a group, or without) in the last REST_MS. */
  resting(where: string, grouped: boolean): boolean {
    return this.#resting(`${where}\0${grouped ? "g" : "p"}`);
  }

  #resting(kind: string): boolean {
    const at = this.#emptyAt.get(kind);
    return at !== undefined && Date.now() - at < REST_MS;
  }

  /** Moves on to the group of the latest turn among a group claim's rows. */
  passed(rows: Record<string, unknown>[]): void {
    let last: Record<string, unknown> | undefined;
    for (const r of rows) if (r.turn !== null && (!last || Number(r.turn) > Number(last.turn))) last = r;
    if (!last) return;
    this.queue = last.queue as string;
    this.group = last.group_name as string;
  }
}

/**
 * Claims up to `limit` tasks, of both kinds when the scope has grouped
 * names: first the kind GroupRotation.groupsFirst says, then the other
 * only while there is room. `ungrouped` and `grouped` claim `want` tasks
 * of their kind, or `grouped` null when the limit left it no room.
 * `skipRestingGroups`: tasks with a group, when found none
 * of in the last REST_MS, are not claimed at all (their claim costs much
 * more than the other kind's, whose tasks must not wait on it).
 */
export async function claimBothKinds<T>(
  scope: ClaimScope, where: string, limit: number, ungrouped: (want: number) => Promise<T[]>, grouped: (want: number) => Promise<T[] | null>,
  skipRestingGroups = false,
): Promise<T[]> {
  const rotation = scope.groups;
  if (!rotation) return await ungrouped(limit);
  const groupsFirst = rotation.groupsFirst(where);
  const claimed: T[] = [];
  for (const kindGrouped of groupsFirst ? [true, false] : [false, true]) {
    if (claimed.length >= limit) break;
    if (skipRestingGroups && kindGrouped && rotation.resting(where, true)) continue;
    const rows = await (kindGrouped ? grouped : ungrouped)(limit - claimed.length);
    // null: no room to claim in, which says nothing of what is queued.
    if (rows === null) continue;
    rotation.found(where, kindGrouped, rows.length);
    claimed.push(...rows);
  }
  return claimed;
}

/** The group claim (ClaimGroupTasks) of up to `limit` tasks; `limited`: the limited claim of the one queue in `queues` (ClaimLimitedGroupTasks). */
export async function claimGroups(db: Database, schema: string, scope: ClaimScope, queues: string[] | null, limit: number, limited: boolean): Promise<Record<string, unknown>[]> {
  const rotation = scope.groups!;
  const rows = await run(db, schema, limited ? "ClaimLimitedGroupTasks" : "ClaimGroupTasks", [
    scope.workerId, queues, scope.names, scope.leaseMs, limit, rotation.queue, rotation.group,
  ]);
  rotation.passed(rows);
  return rows;
}

/**
 * The claim of `queue`, limited per group alone (ClaimPerGroupTasks): up to
 * `limit` of its tasks with a group, each group within its limit, from
 * where the worker's last group claim of the queue stopped, in one
 * statement that takes a lock per group rather than the queue's. Its tasks
 * without a group are the ordinary claim's: the limit is not theirs.
 */
export async function claimPerGroup(db: Database, schema: string, scope: ClaimScope, queue: string, limit: number): Promise<Record<string, unknown>[]> {
  const rotation = scope.groups;
  if (!rotation) return [];
  const rows = await run(db, schema, "ClaimPerGroupTasks", [
    scope.workerId, [queue], scope.names, scope.leaseMs, limit, rotation.queue === queue ? rotation.group : null,
  ]);
  rotation.passed(rows);
  return rows;
}
