/**
 * The claim: takes up to N due tasks for a worker in one prepared statement,
 * and from queues with a limit with the limited claim (lib/limits.ts).
 * Tasks with a group are taken by the group claim (ClaimGroupTasks), from
 * their groups in turn, from where the worker's last group claim stopped
 * (GroupRotation).
 *
 * @module
 */
import type { Sql } from "postgres";
import { type ClaimCursor, claimWithCursor } from "./claim-cursor.ts";
import { claimBothKinds, claimGroups, type GroupRotation } from "./groups.ts";
import { compareIntegerText } from "./integer-text.ts";
import { claimLimited, type LimitedQueues } from "./limits.ts";
import type { Database } from "./statements.ts";

/** A task as a claim hands it to a worker. */
export interface ClaimedTask {
  id: string;
  name: string;
  queue: string;
  /** The task's group in its queue, or null. */
  group: string | null;
  priority: number;
  payload: unknown;
  /** This attempt's number (1 for the first). */
  attempt: number;
  /** The task's own max attempts, or null for the service's default. */
  maxAttempts: number | null;
  /** The lease's fencing token; every write about this attempt carries it (0 while a claim row holds the task). */
  leaseToken: number;
  /**
   * The claim row that holds the task (a claim by claim rows, ClaimRowTasks),
   * the fence of its writes instead of the token; null for a lease of its
   * own.
   */
  claimId: string | null;
  /** Times the task was snoozed before this attempt (ctx.retryAfter). */
  snoozes: number;
  /** The version of the task's definition its input was enqueued for. */
  inputVersion: number;
  /** The trace context active at its enqueue (a W3C traceparent), or null. */
  traceContext: string | null;
  /** A batch member's completion task (its success is written by CompleteBatchTasks), or null. */
  batchThen: string | null;
  /** How long the task waited, in ms, from when it was due to this claim (for metrics). */
  lagMs: number;
  /** Its run_at, epoch microseconds, exact (for the claim cursor). */
  runAtUs: string;
  /** When this claim took it, by the database's clock, epoch ms (for the claim cursor). */
  claimedAtMs: number;
  /** Set once ctx.complete(tx) deleted the task: the worker's own completion then finds no row, and that is no lost lease. */
  completedInTransaction?: boolean;
  /** The result (JSON text) given to that ctx.complete(tx, result), if any. */
  completedResult?: string;
}

/** What a worker claims with: its identity, queues and the tasks it can run. */
export interface ClaimScope {
  workerId: string;
  /** Queues to claim from; null for every queue. */
  queues: string[] | null;
  /** Registered task names, and the lease length (ms) of each. */
  names: string[];
  leaseMs: number[];
  /** The queues with a concurrency or rate limit, claimed from with the limited claim (lib/limits.ts); none without. */
  limits?: LimitedQueues;
  /** Where the group claim goes on from, when some of the names have groups (lib/groups.ts); none without. */
  groups?: GroupRotation;
}

/**
 * Claims up to `limit` due tasks of the scope's names and queues, in claim
 * order (priority, then the order they became due: README, "Claim order").
 * A task without a group is held by its claim row (ClaimRowTasks: its row
 * stays queued, its attempt is counted when it ends otherwise than by
 * success); a task with a group is `running`, leased to the worker with a
 * fresh token, its attempts incremented.
 *
 * With a `cursor`, the claim reads the lanes the cursor knows
 * (ClaimRowTasksFrom) when it can, and records what it
 * took in it; full claims find new lanes (lib/claim-cursor.ts).
 * `unwritten`: the worker's attempts that ended and whose outcomes are not
 * written yet (they keep their leases): a limited claim that does not
 * count the queue's running tasks takes no more than `limit` less those
 * (claimLimited).
 *
 * A claim may run several statements (limited queues, the others, tasks
 * with and without a group). `onClaimed` is given each statement's tasks
 * as soon as it returns, while the next one runs, so that a task's start
 * waits for its own statement alone. When a statement fails after earlier
 * ones took tasks, the claim ends with those (they are leased to this
 * worker and must be started, not left until their leases expire) and the
 * failing statement is tried again, its error thrown, next time.
 */
export async function claimTasks(
  db: Database, schema: string, scope: ClaimScope, limit: number, cursor?: ClaimCursor, unwritten = 0,
  onClaimed: (tasks: ClaimedTask[]) => void = () => {},
): Promise<ClaimedTask[]> {
  const claimed: ClaimedTask[] = [];
  const take = (tasks: ClaimedTask[]) => {
    inClaimOrder(tasks);
    claimed.push(...tasks);
    if (tasks.length) onClaimed(tasks);
    return tasks;
  };
  try {
    await claimEach(db, schema, scope, limit, cursor, unwritten, take);
  } catch (error) {
    if (!claimed.length) throw error;
  }
  return claimed;
}

/**
 * Puts one claim statement's tasks in claim order (priority, then run_at,
 * then id), in place. The statements return them unsorted (a sort there
 * cost the server more than this check costs the worker: ClaimCandidates),
 * nearly always already in that order, which one pass confirms; a group
 * claim's come by turns, and are sorted.
 */
function inClaimOrder(tasks: ClaimedTask[]): ClaimedTask[] {
  for (let i = 1; i < tasks.length; i++) if (compareClaimOrder(tasks[i - 1], tasks[i]) > 0) return tasks.sort(compareClaimOrder);
  return tasks;
}

function compareClaimOrder(a: ClaimedTask, b: ClaimedTask): number {
  return a.priority - b.priority || compareIntegerText(a.runAtUs, b.runAtUs) || compareIntegerText(a.id, b.id);
}

/** Hands each statement's tasks to `take`: see claimTasks. */
type Take = (tasks: ClaimedTask[]) => ClaimedTask[];

/** claimTasks' statements, each one's tasks given to `take` as it returns. */
async function claimEach(
  db: Database, schema: string, scope: ClaimScope, limit: number, cursor: ClaimCursor | undefined, unwritten: number, take: Take,
): Promise<void> {
  const limited = scope.limits ? await scope.limits.among(db, schema, scope.queues) : [];
  if (!limited.length) return void await claimUnlimited(db, schema, scope, limit, cursor, take);
  // Limited queues first and last by turns: either, always first, could
  // take every free slot from the other while its backlog lasts (but first
  // while the others found nothing lately: LimitedQueues.takeTurn).
  const limitedFirst = scope.limits!.takeTurn();
  let taken = limitedFirst ? 0 : (await claimOthers(db, schema, scope, limit, cursor, take)).length;
  // What the limited claims take does not move the cursor: their lanes are not its.
  for (const queue of limited) {
    if (taken >= limit) return;
    // deno-lint-ignore no-explicit-any
    taken += (await claimLimited(db as Sql<any>, schema, queue, scope, limit - taken, unwritten, (rows) => {
      take(rows.map(claimedTask));
      return rows;
    })).length;
  }
  if (limitedFirst && taken < limit) await claimOthers(db, schema, scope, limit - taken, cursor, take);
}

/** claimUnlimited beside limited queues: what it found is recorded for LimitedQueues.takeTurn. */
async function claimOthers(db: Database, schema: string, scope: ClaimScope, limit: number, cursor: ClaimCursor | undefined, take: Take): Promise<ClaimedTask[]> {
  const claimed = await claimUnlimited(db, schema, scope, limit, cursor, take);
  scope.limits!.othersFound(claimed.length);
  return claimed;
}

/**
 * The claim of every queue but the limited ones: tasks without a group
 * (ClaimRowTasks, or ClaimRowTasksFrom from the cursor) and, when some names
 * have groups, tasks with one (claimGroups), in the order claimBothKinds
 * gives.
 */
async function claimUnlimited(db: Database, schema: string, scope: ClaimScope, limit: number, cursor: ClaimCursor | undefined, take: Take): Promise<ClaimedTask[]> {
  return await claimBothKinds(
    scope, "", limit,
    async (want) => take(await claimUngrouped(db, schema, scope, want, cursor)),
    async (want) => take((await claimGroups(db, schema, scope, scope.queues, want, false)).map(claimedTask)),
  );
}

/**
 * The ordinary claim of tasks without a group, with a cursor when it can
 * (see claimTasks): by claim rows when the scope says so, from the lanes
 * the cursor knows without their positions (a claim row's pair starts
 * past every task taken before), else row by row.
 */
async function claimUngrouped(db: Database, schema: string, scope: ClaimScope, limit: number, cursor?: ClaimCursor): Promise<ClaimedTask[]> {
  const params = [scope.workerId, scope.queues, scope.names, scope.leaseMs, limit];
  return await claimWithCursor(db, schema, cursor, ["ClaimRowTasks", "ClaimRowTasksFrom"], params, [], laneClaimedTasks);
}

/** A claim row's lane as pgbg.claim_lanes_lean sends it: queue, name, priority, the row's id, when the claim took it (epoch µs). */
type ClaimLane = [queue: string, name: string, priority: number, claimId: string, claimedAtUs: string];
/** The columns pgbg.claim_lanes_lean sends as `rare`: max attempts, snoozes, input version, batch_then. */
type RareColumns = [maxAttempts: number | null, snoozes: number, inputVersion: number, batchThen: string | null];

/**
 * The rows of an ordinary claim (ClaimRowTasks: pgbg.claim_lanes_lean's
 * seven columns, migration 033) as the worker holds them. A row's `lane`
 * is set on the first task returned of each claim row and holds for the
 * tasks after it; `rare` is NULL while its four columns hold their defaults.
 * Each task is built with claimedTask's fields in claimedTask's order, so
 * that tasks of both kinds share one shape.
 */
// deno-lint-ignore no-explicit-any
function laneClaimedTasks(rows: Record<string, any>[]): ClaimedTask[] {
  const tasks: ClaimedTask[] = new Array(rows.length);
  // Set by the first row, which is always a claim row's first.
  let lane!: ClaimLane;
  let claimedAtUs = 0;
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (r.lane !== null) {
      lane = JSON.parse(r.lane) as ClaimLane;
      claimedAtUs = Number(lane[4]);
    }
    const rare = r.rare === null ? null : JSON.parse(r.rare) as RareColumns;
    const runAtUs = String(r.run_at_us);
    const lagMs = (claimedAtUs - Number(runAtUs)) / 1000;
    tasks[i] = {
      queue: lane[0], priority: lane[2], id: String(r.id), runAtUs,
      claimedAtMs: claimedAtUs / 1000,
      name: lane[1],
      group: null,
      payload: r.payload as unknown,
      attempt: r.attempts as number,
      maxAttempts: rare ? rare[0] : null,
      leaseToken: 0,
      snoozes: rare ? rare[1] : 0,
      inputVersion: rare ? rare[2] : 1,
      traceContext: r.trace_context as string | null,
      batchThen: rare ? rare[3] : null,
      lagMs,
      claimId: lane[3],
    };
  }
  return tasks;
}

/** A row of a claim statement in ClaimOpenLanes' or a group claim's columns (the limited and group claims) as the worker holds it. */
// deno-lint-ignore no-explicit-any
function claimedTask(r: Record<string, any>): ClaimedTask {
  // The fields are copied one by one: an object spread here cost
  // about 12 µs a task (over a quarter of a served worker's busy CPU in a drain), the rows of
  // postgres.js being dictionary-mode objects (bench/RESULTS.md, "The
  // worker's CPU per task").
  const runAtUs = String(r.run_at_us);
  return {
    queue: r.queue as string, priority: r.priority as number, id: String(r.id), runAtUs,
    // When the claim took it, by the database's clock: its run time and how long it waited since.
    claimedAtMs: Number(runAtUs) / 1000 + (r.lag_ms as number),
    name: r.name as string,
    group: r.group_name as string | null,
    payload: r.payload as unknown,
    attempt: r.attempts as number,
    maxAttempts: r.max_attempts as number | null,
    leaseToken: r.lease_token as number,
    snoozes: r.snoozes as number,
    inputVersion: r.input_version as number,
    traceContext: r.trace_context as string | null,
    batchThen: r.batch_then === null ? null : String(r.batch_then),
    lagMs: r.lag_ms as number,
    claimId: r.claim_id == null ? null : String(r.claim_id),
  };
}
