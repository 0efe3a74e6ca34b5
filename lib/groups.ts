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
 * The point of the (queue, group) walk where this worker's last group claim
 * stopped: the next one starts after it, so claims go round the groups.
 * Each worker keeps its own; together they only need to visit every
 * group, not to agree.
 */
export class GroupRotation {
  queue = "";
  group = "";
  #turn = false;

  /** Whether this claim takes grouped tasks before the others: every other claim. */
  takeTurn(): boolean {
    return (this.#turn = !this.#turn);
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

/** The group claim (ClaimGroupTasks) of up to `limit` tasks; `limited`: the limited claim of the one queue in `queues`. */
export async function claimGroups(db: Database, schema: string, scope: ClaimScope, queues: string[] | null, limit: number, limited: boolean): Promise<Record<string, unknown>[]> {
  const rotation = scope.groups!;
  const rows = await run(db, schema, "ClaimGroupTasks", [
    scope.workerId, queues, scope.names, scope.leaseMs, limit, limited, rotation.queue, rotation.group,
  ]);
  rotation.passed(rows);
  return rows;
}

