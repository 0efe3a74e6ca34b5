/**
 * `getFlow`, `getBatch`, `cancelFlow` and `recentFlows`: a flow's or
 * batch's tasks with their states and dependencies, a batch in numbers, a
 * flow's cancel, and the newest flows.
 *
 * @module
 */
import { cancelByIds, type CancelResult, isTaskId, type TaskState } from "./admin.ts";
import { type AdminOptions, schemaOf } from "./admin-options.ts";
import type { DatabaseClient } from "./client.ts";
import { InvalidOptionsError } from "./errors.ts";
import type { OnParentFailure } from "./flow.ts";
import { formatValue, integer } from "./options.ts";
import { run } from "./statements.ts";

/** One task of a flow as {@link getFlow} shows it. */
export interface FlowTaskInfo {
  id: string;
  name: string | null;
  queue: string | null;
  /**
   * Its state, or `finished` for a task of the flow that left the queue
   * without being kept (it completed, or was cancelled; a task keeps its
   * end for its retention when it has a result schema or a `retention`).
   */
  state: TaskState | "finished";
  attempts: number | null;
  /** The tasks it waits for (a flow's; a batch's completion task waits for every member, not listed). */
  parents: string[];
  /** Of its parents, how many have not ended yet (while `waiting`). */
  waitingOn: number | null;
  lastError: Record<string, unknown> | null;
  /** Its result, while kept. */
  result: unknown;
}

/** A flow or batch, as {@link getFlow} returns it. */
export interface FlowInfo {
  id: string;
  kind: "flow" | "batch";
  onParentFailure: OnParentFailure;
  /** Tasks enqueued in it (a batch's members, without its completion task). */
  size: number;
  /** A batch's completion task. */
  then: string | null;
  createdAt: Date;
  /** A flow's tasks, each known one; a batch's pending members, kept ones and its completion task. */
  tasks: FlowTaskInfo[];
}

interface FlowRow {
  id: unknown;
  kind: "flow" | "batch";
  on_parent_failure: OnParentFailure;
  size: number;
  then_id: unknown;
  created_at: Date;
  task_ids: unknown[] | null;
  edges: unknown[] | null;
  queued: Record<string, unknown>[];
  kept: Record<string, unknown>[];
}

function flowId(where: string, id: unknown): string {
  if (!isTaskId(id)) throw new InvalidOptionsError(`${where}: ${formatValue(id)} is not a flow id (the id enqueueFlow or enqueueBatch returned)`);
  return id;
}

/** A flow or batch by its id, with its tasks' states and dependencies; null for an id not known. */
export async function getFlow(db: DatabaseClient, id: string, options?: AdminOptions): Promise<FlowInfo | null> {
  const schema = schemaOf("getFlow()", options);
  const rows = await run<FlowRow>(db, schema, "GetFlow", [flowId("getFlow()", id)]);
  if (!rows.length) return null;
  const f = rows[0];
  const parents = new Map<string, string[]>();
  const edges = (f.edges ?? []).map(String);
  for (let i = 0; i + 1 < edges.length; i += 2) parents.set(edges[i + 1], [...(parents.get(edges[i + 1]) ?? []), edges[i]]);
  const byId = new Map<string, FlowTaskInfo>();
  const info = (r: Record<string, unknown>): FlowTaskInfo => ({
    id: String(r.id), name: r.name as string, queue: r.queue as string, state: r.state as TaskState, attempts: r.attempts as number,
    parents: parents.get(String(r.id)) ?? ((r.parents as unknown[] | null | undefined) ?? []).map(String), waitingOn: (r.waitingOn as number | undefined) ?? null,
    lastError: (r.lastError as Record<string, unknown> | null) ?? null, result: r.result ?? null,
  });
  for (const r of f.kept) byId.set(String(r.id), info(r));
  for (const r of f.queued) byId.set(String(r.id), info(r));
  for (const t of (f.task_ids ?? []).map(String)) {
    if (!byId.has(t)) {
      byId.set(t, { id: t, name: null, queue: null, state: "finished", attempts: null, parents: parents.get(t) ?? [], waitingOn: null, lastError: null, result: null });
    }
  }
  const tasks = [...byId.values()].sort((a, b) => a.id.length - b.id.length || (a.id < b.id ? -1 : 1));
  return {
    id: String(f.id), kind: f.kind, onParentFailure: f.on_parent_failure, size: f.size, then: f.then_id === null ? null : String(f.then_id),
    createdAt: f.created_at, tasks,
  };
}

/** A batch in numbers, as {@link getBatch} returns it. */
export interface BatchInfo {
  id: string;
  /** Members in all. */
  size: number;
  createdAt: Date;
  /** Members that have not ended yet (in the queue, not failed). */
  pending: number;
  /**
   * Members that succeeded, and those that failed for good or were
   * cancelled (with their ids): known while the completion task is in the
   * queue (it carries the count), null once it left it.
   */
  succeeded: number | null;
  failed: number | null;
  failedIds: string[] | null;
  /** The completion task: its id, and its state (`finished` once it left the queue without being kept). */
  then: { id: string; state: TaskState | "finished" };
}

/**
 * A batch by its id, in numbers: how many members are pending, succeeded
 * and failed, and its completion task's state, without listing its members
 * (getFlow lists them). Null for an id that is not a batch's.
 */
export async function getBatch(db: DatabaseClient, id: string, options?: AdminOptions): Promise<BatchInfo | null> {
  const schema = schemaOf("getBatch()", options);
  type Row = { id: unknown; size: number; then_id: unknown; created_at: Date; pending: number; then_state: TaskState | null; failed_parents: unknown[] | null; then_kept: TaskState | null };
  const rows = await run<Row>(db, schema, "GetBatch", [flowId("getBatch()", id)]);
  if (!rows.length) return null;
  const b = rows[0];
  const failedIds = b.then_state === null ? null : (b.failed_parents ?? []).map(String);
  return {
    id: String(b.id), size: b.size, createdAt: b.created_at, pending: b.pending,
    succeeded: failedIds && b.size - b.pending - failedIds.length, failed: failedIds && failedIds.length, failedIds,
    then: { id: String(b.then_id), state: b.then_state ?? b.then_kept ?? "finished" },
  };
}

/**
 * Cancels what has not ended of a flow or batch: its queued and waiting
 * tasks are deleted (kept as cancelled when they keep their history), its
 * running ones are stopped through their workers, as `cancel` does.
 */
export async function cancelFlow(db: DatabaseClient, id: string, options?: AdminOptions): Promise<CancelResult> {
  const schema = schemaOf("cancelFlow()", options);
  const rows = await run<{ id: unknown }>(db, schema, "FlowTaskIds", [flowId("cancelFlow()", id)]);
  return cancelByIds(db, schema, rows.map((r) => String(r.id)));
}

/** A flow or batch as {@link recentFlows} lists it. */
export interface FlowSummary {
  id: string;
  kind: "flow" | "batch";
  size: number;
  then: string | null;
  createdAt: Date;
  /** Its tasks still in the queue, not failed. */
  pending: number;
}

/** The newest flows and batches (at most `limit`, default 20), newest first. */
export async function recentFlows(db: DatabaseClient, options?: AdminOptions & { limit?: number }): Promise<FlowSummary[]> {
  const schema = schemaOf("recentFlows()", options, { limit: integer(1, 1_000) });
  const rows = await run<{ id: unknown; kind: "flow" | "batch"; size: number; then_id: unknown; created_at: Date; pending: number }>(
    db, schema, "RecentFlows", [options?.limit ?? 20],
  );
  return rows.map((r) => ({ id: String(r.id), kind: r.kind, size: r.size, then: r.then_id === null ? null : String(r.then_id), createdAt: r.created_at, pending: r.pending }));
}
