/**
 * Flows and batches: tasks enqueued to run after other tasks succeed
 * (`enqueueFlow`), and many tasks with one completion task that runs once
 * they all ended (`enqueueBatch`). A task that waits is `waiting`, out of
 * every claim's way; the statement that settles its last parent makes it
 * `queued` in the same transaction (migration 014).
 *
 * @module
 */
import { isTaskId } from "./admin.ts";
import { type DatabaseClient } from "./client.ts";
import { defaults, MAX_BATCH_INPUTS } from "./config.ts";
import { type AnyTask, type TaskInput, taskGroup } from "./define.ts";
import { checkTaskOnce, commonChecks, type EnqueueOptions, inTransaction, shared, type Shared, sortIds } from "./enqueue.ts";
import { FlowError, InvalidOptionsError } from "./errors.ts";
import { isThenable, validateInput } from "./input.ts";
import { checkOptions, formatValue, type OptionCheck } from "./options.ts";
import { encodePayload } from "./payload.ts";
import { checkSchemaName, run } from "./statements.ts";
import { activeTraceContext } from "./tracing.ts";

/** What a task waiting in a flow does when a parent fails for good or is cancelled. */
export type OnParentFailure = "fail" | "cancel" | "run";

/** Options of one task of a flow: those of `enqueue`, without a dedup key, and its parents. */
export interface FlowTaskOptions extends Omit<EnqueueOptions, "key" | "keyWindow" | "replace" | "schema"> {
  /**
   * The tasks it runs after: names of other tasks of the same flow, or
   * `{ id }` of a task enqueued before (pending, or succeeded and still
   * kept in the history).
   */
  dependsOn?: readonly (string | { id: string })[];
}

/** One task of a flow, made by {@link flowTask}. */
export interface FlowTask<T extends AnyTask = AnyTask> {
  readonly task: T;
  readonly input: TaskInput<T>;
  readonly options: FlowTaskOptions;
}

/** Options of {@link enqueueFlow}. */
export interface EnqueueFlowOptions {
  /**
   * What a waiting task does when a parent fails for good or is cancelled:
   * `fail` (it fails too, with the error code `PGBG_PARENT_FAILED`, and so
   * on down the graph), `cancel` (it is cancelled, and so on down), or
   * `run` (it runs once its other parents ended; `ctx.batch()` and
   * `ctx.parentResults()` tell what succeeded). @default "fail"
   */
  onParentFailure?: OnParentFailure;
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
}

/** What {@link enqueueFlow} wrote: the flow's id and each task's id by its name in the flow. */
export interface EnqueuedFlow<K extends string> {
  id: string;
  tasks: Record<K, string>;
}

/** Options of {@link enqueueBatch}: those of `enqueueMany` without keys, and the completion task. */
export interface EnqueueBatchOptions extends Omit<EnqueueOptions, "key" | "keyWindow" | "replace"> {
  /** The task that runs once, after every member succeeded or failed for good; `ctx.batch()` tells it the counts. */
  then: FlowTask;
}

/** What {@link enqueueBatch} wrote. */
export interface EnqueuedBatch {
  /** The batch's id (a flow's, for getFlow and cancelFlow). */
  id: string;
  /** The members' ids, in input order. */
  members: string[];
  /** The completion task's id. */
  then: string;
}

const POLICIES: readonly string[] = ["fail", "cancel", "run"];
const policyCheck: OptionCheck = (value) => POLICIES.includes(value as string) ? undefined : `must be "fail", "cancel" or "run", got ${formatValue(value)}`;
const flowChecks = { onParentFailure: policyCheck, schema: commonChecks.schema };
// A flow's tasks go to the flow's schema: `schema` is an option of enqueueFlow, refused here as unknown.
const { schema: _flowSchema, ...taskChecks } = commonChecks;
const flowTaskChecks = {
  ...taskChecks,
  dependsOn: (value: unknown) => Array.isArray(value) ? undefined : `must be an array of task names of the flow or { id }, got ${formatValue(value)}`,
};
const batchChecks = { ...commonChecks, then: (value: unknown) => typeof value === "object" && value !== null ? undefined : `must be flowTask(task, input), got ${formatValue(value)}` };

/** One task of a flow: `task` with `input`, typed, and its options (its parents in `dependsOn`). */
export function flowTask<T extends AnyTask>(task: T, input: TaskInput<T>, options?: FlowTaskOptions): FlowTask<T> {
  checkTaskOnce(task);
  return { task, input, options: checkOptions<FlowTaskOptions>(`flowTask("${task.name}")`, options, flowTaskChecks) };
}

/** One row of EnqueueFlowTasks. */
interface Row {
  task: AnyTask;
  s: Shared;
  payload: string;
  group: string | null;
}

/**
 * Enqueues a graph of tasks in one transaction: each named task of `tasks`
 * (made with {@link flowTask}) runs once every task in its `dependsOn` has
 * succeeded. A cycle, or a name not in the flow, throws `FlowError`
 * (`PGBG_INVALID_FLOW`) and writes nothing; a `{ id }` that is neither
 * pending nor kept as succeeded throws `FlowError` (`PGBG_UNKNOWN_PARENT`).
 * Pass a transaction to enqueue the flow with your own writes.
 */
export async function enqueueFlow<const K extends string>(
  db: DatabaseClient,
  tasks: Record<K, FlowTask>,
  options?: EnqueueFlowOptions,
): Promise<EnqueuedFlow<K>> {
  const opts = checkOptions<EnqueueFlowOptions>("enqueueFlow()", options, flowChecks);
  if (typeof tasks !== "object" || tasks === null) throw new InvalidOptionsError("enqueueFlow(): tasks must be an object of flowTask(...) by name");
  const names = Object.keys(tasks) as K[];
  if (!names.length || names.length > MAX_BATCH_INPUTS) throw new InvalidOptionsError(`enqueueFlow(): a flow holds 1 to ${MAX_BATCH_INPUTS} tasks, got ${names.length}`);
  const specs = names.map((name) => checkFlowTask(`enqueueFlow(): task "${name}"`, tasks[name]));
  const edges = flowEdges(names, specs);
  const rows = await flowRows((i) => `enqueueFlow(): task "${names[i]}"`, specs);
  const policy = opts.onParentFailure ?? "fail";
  const schema = checkSchemaName(opts.schema ?? defaults.schema);
  const written = await inTransaction(db, (tx) => writeFlow(tx, { kind: "flow", policy, rows, edges, schema, then: -1 }));
  return { id: written.flow, tasks: Object.fromEntries(names.map((n, i) => [n, written.ids[i]])) as Record<K, string> };
}

/**
 * Enqueues many tasks of one kind as a batch, with a completion task
 * (`then`) that runs exactly once, after every member succeeded or failed
 * for good, told the counts and the failed members' ids by `ctx.batch()`.
 * One transaction; inputs are validated first, as `enqueueMany`'s.
 */
export async function enqueueBatch<T extends AnyTask>(
  db: DatabaseClient,
  task: T,
  inputs: readonly TaskInput<T>[],
  options: EnqueueBatchOptions,
): Promise<EnqueuedBatch> {
  checkTaskOnce(task);
  if (!Array.isArray(inputs) || !inputs.length || inputs.length > MAX_BATCH_INPUTS) {
    throw new InvalidOptionsError(`enqueueBatch(): inputs must be an array of 1 to ${MAX_BATCH_INPUTS} inputs`);
  }
  const opts = checkOptions<EnqueueBatchOptions>("enqueueBatch()", options, batchChecks);
  if (!opts.then) throw new InvalidOptionsError("enqueueBatch(): option \"then\" (the completion task, made with flowTask) is required");
  const then = checkFlowTask("enqueueBatch(): then", opts.then);
  if (then.options.dependsOn?.length) throw new InvalidOptionsError("enqueueBatch(): the completion task runs after the members; give it no dependsOn");
  const s = shared("enqueueBatch()", task, opts);
  const rows: Row[] = new Array(inputs.length + 1);
  for (let i = 0; i < inputs.length; i++) {
    const validated = validateInput(task, inputs[i], i);
    if (isThenable(validated)) await validated;
    rows[i] = { task, s, payload: encodePayload(task.name, inputs[i], s.maxPayloadBytes, i), group: task.group ? taskGroup(task, inputs[i], i) : null };
  }
  [rows[inputs.length]] = await flowRows(() => "enqueueBatch(): then", [then]);
  const written = await inTransaction(db, (tx) => writeFlow(tx, { kind: "batch", policy: "run", rows, edges: [], schema: s.schema, then: inputs.length }));
  return { id: written.flow, members: written.ids.slice(0, inputs.length), then: written.ids[inputs.length] };
}

function checkFlowTask(where: string, spec: unknown): FlowTask {
  const t = spec as FlowTask;
  if (typeof t !== "object" || t === null || typeof t.task !== "object" || typeof t.options !== "object") {
    throw new InvalidOptionsError(`${where}: must be made with flowTask(task, input, options), got ${formatValue(spec)}`);
  }
  return t;
}

/** A place's parents: other places (numbers) or existing task ids (strings). */
type Edge = [parent: number | string, child: number];

/** The flow's edges by place, refusing unknown names, malformed ids and cycles. */
function flowEdges(names: string[], specs: FlowTask[]): Edge[] {
  const place = new Map(names.map((n, i) => [n, i]));
  const edges: Edge[] = [];
  specs.forEach((spec, child) => {
    const seen = new Set<number | string>();
    for (const parent of spec.options.dependsOn ?? []) {
      if (typeof parent === "string") {
        const p = place.get(parent);
        if (p === undefined) throw new FlowError("PGBG_INVALID_FLOW", `enqueueFlow(): task "${names[child]}" depends on "${parent}", which is not a task of the flow`);
        if (!seen.has(p)) edges.push([p, child]);
        seen.add(p);
      } else if (typeof parent === "object" && parent !== null && isTaskId(parent.id)) {
        if (!seen.has(parent.id)) edges.push([parent.id, child]);
        seen.add(parent.id);
      } else {
        throw new FlowError("PGBG_INVALID_FLOW", `enqueueFlow(): task "${names[child]}" has ${formatValue(parent)} in dependsOn; give a task name of the flow or { id: "<task id>" }`);
      }
    }
  });
  const cycle = findCycle(names.length, edges);
  if (cycle) throw new FlowError("PGBG_INVALID_FLOW", `enqueueFlow(): the flow has a cycle: ${cycle.map((i) => names[i]).join(" -> ")}`);
  return edges;
}

/**
 * A cycle among places (as a path that ends where it starts), or undefined.
 * Kahn's order: the places left once every place without a waiting parent
 * is taken away lie on or behind a cycle; from one of them, following
 * parents that are left comes back to a place already seen. No recursion,
 * so a chain of 100,000 tasks needs no deep stack.
 */
function findCycle(count: number, edges: Edge[]): number[] | undefined {
  const waiting = new Int32Array(count);
  const children: number[][] = Array.from({ length: count }, () => []);
  const parents: number[][] = Array.from({ length: count }, () => []);
  for (const [p, c] of edges) {
    if (typeof p !== "number") continue;
    children[p].push(c);
    parents[c].push(p);
    waiting[c]++;
  }
  const ready: number[] = [];
  for (let i = 0; i < count; i++) if (!waiting[i]) ready.push(i);
  let taken = 0;
  while (ready.length) {
    const node = ready.pop()!;
    taken++;
    for (const child of children[node]) if (--waiting[child] === 0) ready.push(child);
  }
  if (taken === count) return undefined;
  // Walk up from a place left through parents left until one repeats.
  let node = waiting.findIndex((w) => w > 0);
  const seen = new Map<number, number>();
  const path: number[] = [];
  while (!seen.has(node)) {
    seen.set(node, path.length);
    path.push(node);
    node = parents[node].find((p) => waiting[p] > 0)!;
  }
  const cycle = path.slice(seen.get(node)!).reverse();
  return [...cycle, cycle[0]];
}

/**
 * The row of one task of a flow: validated and encoded. Tasks given no
 * option but `dependsOn` share their definition's parameters (`cache`), so
 * a flow of 100,000 tasks works them out once per definition.
 */
function flowRow(where: string, spec: FlowTask, cache: Map<AnyTask, Shared>): Row | Promise<Row> {
  const { task, input, options } = spec;
  const plain = Object.keys(options).every((k) => k === "dependsOn");
  let s = plain ? cache.get(task) : undefined;
  if (!s) {
    s = shared(where, task, options);
    if (plain) cache.set(task, s);
  }
  if (options.dependsOn?.length && (options.delay !== undefined || options.runAt !== undefined)) {
    throw new InvalidOptionsError(`${where}: a task with dependsOn runs when its parents end; delay and runAt are for tasks without parents`);
  }
  const row = (shared: Shared): Row => ({ task, s: shared, payload: encodePayload(task.name, input, shared.maxPayloadBytes), group: taskGroup(task, input) });
  const validated = validateInput(task, input);
  const ready = s;
  return isThenable(validated) ? Promise.resolve(validated).then(() => row(ready)) : row(ready);
}

/** The rows of `specs`, in order; awaits only the schemas that validate asynchronously. */
async function flowRows(where: (i: number) => string, specs: FlowTask[]): Promise<Row[]> {
  const cache = new Map<AnyTask, Shared>();
  const rows: Row[] = new Array(specs.length);
  for (let i = 0; i < specs.length; i++) {
    const row = flowRow(where(i), specs[i], cache);
    rows[i] = isThenable(row) ? await row : row;
  }
  return rows;
}

/** What writeFlow writes. */
interface FlowWrite {
  kind: "flow" | "batch";
  policy: OnParentFailure;
  rows: Row[];
  edges: Edge[];
  schema: string;
  /** A batch's completion task's place (-1: none). */
  then: number;
}

/** Flows of up to this many tasks keep their graph in their row, for getFlow after their tasks left the queue. */
const KEPT_GRAPH = 1_000;

/** Checks the existing parents, draws the ids, and writes the flow's row, tasks and edges. */
async function writeFlow(tx: DatabaseClient, w: FlowWrite): Promise<{ flow: string; ids: string[] }> {
  const { schema, rows, edges } = w;
  const pendingIds = await existingParents(tx, schema, edges);
  const [{ ids: drawn }] = await run<{ ids: string }>(tx, schema, "ReserveTaskIds", [rows.length]);
  const ids = sortIds(drawn.split(","));
  const idOf = (p: number | string) => typeof p === "number" ? ids[p] : p;
  const graph = w.kind === "flow" && rows.length <= KEPT_GRAPH;
  const [{ id: flow }] = await run<{ id: unknown }>(tx, schema, "InsertFlow", [
    w.kind, w.policy, w.then >= 0 ? rows.length - 1 : rows.length, w.then >= 0 ? ids[w.then] : null,
    graph ? ids : null, graph ? edges.flatMap(([p, c]) => [idOf(p), ids[c]]) : null,
  ]);
  const trace = activeTraceContext();
  const templateOf = new Map<Shared, number>();
  const templates: { s: Shared; name: string }[] = [];
  for (const r of rows) {
    if (!templateOf.has(r.s)) templateOf.set(r.s, templates.push({ s: r.s, name: r.task.name }));
  }
  await run(tx, schema, "EnqueueFlowTasks", [
    ids, rows.map((r) => templateOf.get(r.s)), rows.map((r) => r.payload).join("\n"), rows.some((r) => r.group !== null) ? rows.map((r) => r.group) : [],
    templates.map((t) => t.s.queue), templates.map((t) => t.name), templates.map((t) => t.s.priority), templates.map((t) => t.s.runAt),
    templates.map((t) => t.s.delay), templates.map((t) => t.s.maxAttempts), templates.map((t) => t.s.version), templates.map((t) => (t.s.onFailed ? 1 : 0)),
    templates.map((t) => t.s.retention[0]), templates.map((t) => t.s.retention[1]),
    isThenable(trace) ? await trace : trace, flow,
    edges.map(([p]) => idOf(p)), edges.map(([, c]) => ids[c]), edges.map(([p]) => (typeof p === "number" || pendingIds.has(p) ? 1 : 0)),
    w.then >= 0 ? ids[w.then] : null, rows.length - 1,
  ]);
  return { flow: String(flow), ids };
}

/**
 * The existing tasks the flow depends on that are pending (marked and
 * locked, so that their end waits for this transaction and then settles
 * the new dependants). Those that succeeded and are kept are met already;
 * any other throws.
 */
async function existingParents(tx: DatabaseClient, schema: string, edges: Edge[]): Promise<Set<string>> {
  const existing = [...new Set(edges.map(([p]) => p).filter((p): p is string => typeof p === "string"))];
  if (!existing.length) return new Set();
  const pending = new Set((await run<{ id: unknown }>(tx, schema, "MarkPendingParents", [existing])).map((r) => String(r.id)));
  const rest = existing.filter((id) => !pending.has(id));
  if (!rest.length) return pending;
  const succeeded = new Set((await run<{ id: unknown }>(tx, schema, "SucceededParents", [rest])).map((r) => String(r.id)));
  const unknown = rest.filter((id) => !succeeded.has(id));
  if (unknown.length) {
    throw new FlowError(
      "PGBG_UNKNOWN_PARENT",
      `enqueueFlow(): dependsOn names task${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")}, neither pending nor kept as succeeded (failed, cancelled, past its retention, or never enqueued)`,
    );
  }
  return pending;
}
