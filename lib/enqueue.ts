/**
 * `enqueue` and `enqueueMany`: validate inputs with the task's schema, encode
 * them as JSON, and insert them in one prepared statement each.
 *
 * @module
 */
import { defaults, MAX_BATCH_INPUTS } from "./config.ts";
import { type AnyTask, checkTask, isValidName, MAX_DURATION, NAME_RULE, type TaskInput, taskGroup } from "./define.ts";
import { InvalidOptionsError, PgbgError } from "./errors.ts";
import { isThenable, validateInput } from "./input.ts";
import { compareIntegerText } from "./integer-text.ts";
import { checkedLater, checkOptions, formatValue, integer, type OptionCheck, ofType, text } from "./options.ts";
import { encodePayload } from "./payload.ts";
import { MAX_RETENTION, storedRetention } from "./retention.ts";
import { type DatabaseClient, executorFor } from "./client.ts";
import { checkSchemaName, run } from "./statements.ts";
import { activeTraceContext } from "./tracing.ts";

/** Options of {@link enqueue}. Those not given come from the task's definition. */
export interface EnqueueOptions {
  /** Not claimable for this many ms (measured on the database's clock). @default 0 */
  delay?: number;
  /** Not claimable before this time. Exclusive with `delay`. */
  runAt?: Date;
  /** Lower runs first; -32768 to 32767. @default the task's priority, else 0 */
  priority?: number;
  /** Queue to enqueue into. @default the task's queue, else "default" */
  queue?: string;
  /**
   * Deduplication key: while a task with this key is pending (queued or
   * running), enqueueing another returns the pending task's id and writes
   * nothing. 1-512 characters.
   */
  key?: string;
  /**
   * With `key`, how long the key stays taken: `ms` after this enqueue
   * (`from: "enqueue"`, the default) or after the task finished (completed,
   * cancelled or failed for good; `from: "finish"`). An enqueue of the key
   * meanwhile writes nothing and returns the id of the task that took it (a
   * throttle). Up to 365 days.
   */
  keyWindow?: { ms: number; from?: "enqueue" | "finish" };
  /**
   * With `key`, when a task holding the key is still queued, give it this
   * enqueue's input, run time (`delay` or `runAt`) and priority instead of
   * ignoring the enqueue (a debounce). A running task is left as it is.
   * @default false
   */
  replace?: boolean;
  /** Attempts before the task is kept as failed. @default the task's, else the service's --max-attempts */
  maxAttempts?: number;
  /** Largest payload accepted, in bytes of JSON. @default the task's, else 1 MiB */
  maxPayloadBytes?: number;
  /** PostgreSQL schema holding pgbg's tables. @default "pgbg" */
  schema?: string;
}

/** Options of {@link enqueueMany}: those of `enqueue`, for every input; `key` is computed per input. */
export interface EnqueueManyOptions<I = unknown> extends Omit<EnqueueOptions, "key" | "keyWindow" | "replace"> {
  /** Returns the deduplication key of an input, or undefined for none. */
  key?: (input: I, index: number) => string | undefined;
}

/** The checks of the options every enqueue takes (enqueue, enqueueMany, a flow's tasks). */
export const commonChecks: Record<string, OptionCheck> = {
  delay: (value) =>
    typeof value === "number" && Number.isFinite(value) && value >= 0 && value <= MAX_DURATION * 1000
      ? undefined
      : `must be a number of milliseconds from 0 up, got ${formatValue(value)}`,
  runAt: (value) =>
    value instanceof Date && !Number.isNaN(value.getTime()) ? undefined : `must be a valid Date, got ${formatValue(value)}`,
  priority: integer(-32768, 32767),
  queue: text(isValidName, NAME_RULE),
  maxAttempts: integer(1, 2_147_483_647),
  maxPayloadBytes: integer(1, 1024 * 1024 * 1024 - 1),
  schema: checkedLater,
};
const enqueueChecks = {
  ...commonChecks,
  key: text(isValidKey, "a string of 1-512 characters"),
  keyWindow: (value: unknown) => {
    const w = value as { ms?: unknown; from?: unknown } | null;
    const fields = typeof w === "object" && w !== null ? Object.keys(w) : [];
    return typeof w === "object" && w !== null && fields.every((f) => f === "ms" || f === "from") &&
        typeof w.ms === "number" && Number.isInteger(w.ms) && w.ms >= 1 && w.ms <= MAX_RETENTION &&
        (w.from === undefined || w.from === "enqueue" || w.from === "finish")
      ? undefined
      : `must be { ms, from? }: ms a whole number of milliseconds from 1 to ${MAX_RETENTION}, from "enqueue" (the default) or "finish"; got ${typeof value === "object" && value !== null ? JSON.stringify(value) : formatValue(value)}`;
  },
  replace: ofType("boolean"),
};
const enqueueManyChecks = { ...commonChecks, key: ofType("function") };

function isValidKey(key: string): boolean {
  return key.length >= 1 && key.length <= 512;
}

const checkedTasks = new WeakSet<object>();

/** Checks a task once per object (defineTask already did, for most). */
export function checkTaskOnce(task: unknown): asserts task is AnyTask {
  if (typeof task === "object" && task !== null && checkedTasks.has(task)) return;
  checkTask(task);
  checkedTasks.add(task);
}

/** The parameters shared by every row of one enqueue call, in statement order $4..$11 after the payload. */
export interface Shared {
  schema: string;
  queue: string;
  priority: number;
  runAt: Date | null;
  delay: number;
  maxAttempts: number | null;
  maxPayloadBytes: number;
  /** The task definition's version, stored as the input's (input_version). */
  version: number;
  /** Whether failing for good enqueues the definition's onFailed hook (on_failed). */
  onFailed: boolean;
  /** The definition's retentions of completed and failed tasks, in ms (keep_completed, keep_failed). */
  retention: [completed: number | null, failed: number | null];
  /** The trace context active at the enqueue (trace_context), set by the caller: lib/tracing.ts. */
  trace: string | null;
}

/** The parameters of one enqueue call of `task`, from its options and then its definition. */
export function shared(where: string, task: AnyTask, options: Omit<EnqueueOptions, "key">): Shared {
  if (options.delay !== undefined && options.runAt !== undefined) {
    throw new InvalidOptionsError(`${where}: give either "delay" or "runAt", not both`);
  }
  return {
    schema: checkSchemaName(options.schema ?? defaults.schema),
    queue: options.queue ?? task.queue ?? defaults.queue,
    priority: options.priority ?? task.priority ?? 0,
    runAt: options.runAt ?? null,
    delay: options.delay ?? 0,
    maxAttempts: options.maxAttempts ?? task.maxAttempts ?? null,
    maxPayloadBytes: options.maxPayloadBytes ?? task.maxPayloadBytes ?? defaults.maxPayloadBytes,
    version: task.version ?? 1,
    onFailed: task.onFailed !== undefined,
    retention: storedRetention(task),
    trace: null,
  };
}

/**
 * Enqueues one task and returns its id. The input is validated with the
 * task's schema first; invalid input throws `InvalidInputError` and writes
 * nothing. Pass a transaction (`sql.begin(tx => enqueue(tx, …))`) to enqueue
 * atomically with your own writes: if it rolls back, the task never runs.
 *
 * With `key`, a pending task holding the same key is returned instead of a
 * new one. Throws `InvalidPayloadError`, `PayloadTooLargeError`,
 * `InvalidOptionsError` or `SchemaError` (schema not migrated) otherwise.
 */
export async function enqueue<T extends AnyTask>(
  db: DatabaseClient,
  task: T,
  input: TaskInput<T>,
  options?: EnqueueOptions,
): Promise<string> {
  checkTaskOnce(task);
  const opts = checkOptions<EnqueueOptions>("enqueue()", options, enqueueChecks);
  const s = shared("enqueue()", task, opts);
  await validateInput(task, input);
  const payload = encodePayload(task.name, input, s.maxPayloadBytes);
  const group = taskGroup(task, input);
  const trace = activeTraceContext(); // a promise only on the first call: most enqueues do not wait
  s.trace = isThenable(trace) ? await trace : trace;
  const params = [s.queue, task.name, payload, s.priority, s.runAt, s.delay, s.maxAttempts, s.version, s.onFailed, ...s.retention, group, s.trace];
  if (opts.key === undefined) {
    if (opts.keyWindow !== undefined || opts.replace !== undefined) throw new InvalidOptionsError("enqueue(): keyWindow and replace need a key");
    const rows = await run<{ id: unknown }>(db, s.schema, "EnqueueTask", params);
    return String(rows[0].id);
  }
  return enqueueKeyed(db, s, params, opts as EnqueueOptions & { key: string });
}

/**
 * The keyed enqueue: inserts the task unless its key is taken (by a pending
 * task, or within its window), and then returns the id of the task holding
 * it, after giving that task this input when `replace` says so.
 */
async function enqueueKeyed(db: DatabaseClient, s: Shared, params: unknown[], opts: EnqueueOptions & { key: string }): Promise<string> {
  const { key, keyWindow: window } = opts;
  // A conflicting task can finish between our insert and the look-up; then
  // the key is free again and the insert is retried.
  for (let attempt = 0; attempt < 10; attempt++) {
    const inserted = window
      ? await inTransaction(db, async (tx) => {
        // One transaction: the enqueues that wait for this one's hold find its task's id with it.
        const rows = await run<{ id: unknown }>(tx, s.schema, "EnqueueTaskWindowed", [...params, key, window.ms, window.from === "finish" ? 1 : 0]);
        if (rows.length) await run(tx, s.schema, "SetKeyTask", [key, rows[0].id]);
        return rows;
      })
      : await run<{ id: unknown }>(db, s.schema, "EnqueueTaskKeyed", [...params, key]);
    if (inserted.length) return String(inserted[0].id);
    if (opts.replace) {
      const replaced = await run<{ id: unknown }>(db, s.schema, "ReplaceQueuedTask", [key, params[2], s.runAt, s.delay, s.priority, s.version, params[1], s.queue, params[11]]);
      if (replaced.length) return String(replaced[0].id);
    }
    const pending = await run<{ id: unknown }>(db, s.schema, "PendingTaskIdsByKey", [[key]]);
    if (pending.length) return String(pending[0].id);
    const holder = window ? await run<{ task_id: unknown }>(db, s.schema, "KeyHolder", [key]) : [];
    if (holder.length) return String(holder[0].task_id);
  }
  throw new PgbgError("PGBG_KEY_CONTENDED", `enqueue(): key ${JSON.stringify(key)} kept changing hands; try again`);
}

/** Runs `fn` in a transaction: `db`'s own when it is in one, else one opened on it. */
export function inTransaction<T>(db: DatabaseClient, fn: (tx: DatabaseClient) => Promise<T>): Promise<T> {
  return executorFor(db).transaction(fn);
}

// One statement carries at most this much payload JSON, so memory stays
// bounded and PostgreSQL's 1 GB parameter limit is never approached.
const MAX_BATCH_BYTES = 32 * 1024 * 1024;

/**
 * Enqueues many tasks of one kind in as few round trips as possible (one per
 * 100,000 inputs or 32 MiB of JSON) and returns their ids in input order.
 * Every input is validated first: one invalid input rejects the whole batch
 * (the error's `index` names it) and nothing is written. When the batch needs
 * more than one statement and `db` is not already a transaction, pgbg opens
 * one, so the batch is written entirely or not at all.
 */
export async function enqueueMany<T extends AnyTask>(
  db: DatabaseClient,
  task: T,
  inputs: readonly TaskInput<T>[],
  options?: EnqueueManyOptions<TaskInput<T>>,
): Promise<string[]> {
  checkTaskOnce(task);
  if (!Array.isArray(inputs)) throw new InvalidOptionsError("enqueueMany(): inputs must be an array");
  const opts = checkOptions<EnqueueManyOptions<TaskInput<T>>>("enqueueMany()", options, enqueueManyChecks);
  const s = shared("enqueueMany()", task, opts);
  const payloads: string[] = new Array(inputs.length);
  const keys: (string | null)[] | null = opts.key ? new Array(inputs.length) : null;
  // One group per input, or none at all (the statement then pads with NULL).
  const groups: (string | null)[] = task.group ? new Array(inputs.length) : [];
  for (let i = 0; i < inputs.length; i++) {
    const validated = validateInput(task, inputs[i], i);
    if (isThenable(validated)) await validated;
    payloads[i] = encodePayload(task.name, inputs[i], s.maxPayloadBytes, i);
    if (task.group) groups[i] = taskGroup(task, inputs[i], i);
    if (keys && opts.key) {
      const key = opts.key(inputs[i], i);
      if (key !== undefined && (typeof key !== "string" || !isValidKey(key))) {
        throw new InvalidOptionsError(`enqueueMany(): option "key" returned ${formatValue(key)} at index ${i}; it must return a string of 1-512 characters or undefined`);
      }
      keys[i] = key ?? null;
    }
  }
  const trace = activeTraceContext(); // a promise only on the first call: most enqueues do not wait
  s.trace = isThenable(trace) ? await trace : trace;
  const chunks = splitBatches(payloads);
  const write = (tx: DatabaseClient) => writeChunks(tx, task.name, s, payloads, groups, keys, chunks);
  if (chunks.length > 1) return inTransaction(db, write);
  return write(db);
}

/** [start, end) ranges of at most MAX_BATCH_INPUTS inputs and about MAX_BATCH_BYTES of JSON. */
function splitBatches(payloads: string[]): [number, number][] {
  const chunks: [number, number][] = [];
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < payloads.length; i++) {
    if (i > start && (i - start >= MAX_BATCH_INPUTS || bytes + payloads[i].length > MAX_BATCH_BYTES)) {
      chunks.push([start, i]);
      start = i;
      bytes = 0;
    }
    bytes += payloads[i].length;
  }
  if (payloads.length > start) chunks.push([start, payloads.length]);
  return chunks;
}

async function writeChunks(
  db: DatabaseClient,
  name: string,
  s: Shared,
  payloads: string[],
  groups: (string | null)[],
  keys: (string | null)[] | null,
  chunks: [number, number][],
): Promise<string[]> {
  const ids: string[] = [];
  for (const [start, end] of chunks) {
    const whole = start === 0 && end === payloads.length;
    const chunk = whole ? payloads : payloads.slice(start, end);
    const chunkGroups = whole || !groups.length ? groups : groups.slice(start, end);
    // JSON text holds no raw line feed, so the statement splits on it.
    const params = [s.queue, name, chunk.join("\n"), s.priority, s.runAt, s.delay, s.maxAttempts, s.version, s.onFailed, ...s.retention, chunkGroups, s.trace];
    if (!keys) {
      const rows = await run<{ ids: string }>(db, s.schema, "EnqueueMany", params);
      // Ids are drawn in input order, so sorted ids line up with the inputs.
      const drawn = sortIds(rows[0].ids.split(","));
      for (const id of drawn) ids.push(id);
    } else {
      ids.push(...(await writeKeyedChunk(db, s, params, chunk, keys.slice(start, end))));
    }
  }
  return ids;
}

/** Sorts ids numerically; the server nearly always returns them in order already, which one pass confirms. */
export function sortIds(ids: string[]): string[] {
  for (let i = 1; i < ids.length; i++) if (compareIntegerText(ids[i - 1], ids[i]) > 0) return ids.sort(compareIntegerText);
  return ids;
}

/** Inserts a chunk with keys; inputs whose key is pending get the pending task's id. */
async function writeKeyedChunk(
  db: DatabaseClient,
  s: Shared,
  params: unknown[],
  payloads: string[],
  keys: (string | null)[],
): Promise<string[]> {
  const ids: (string | undefined)[] = new Array(payloads.length);
  let todo = payloads.map((_, i) => i);
  for (let attempt = 0; attempt < 10 && todo.length; attempt++) {
    const text = todo.map((i) => payloads[i]).join("\n");
    const groups = params[11] as (string | null)[];
    const rows = await run<{ id: unknown; key: string | null }>(db, s.schema, "EnqueueManyKeyed", [
      ...params.slice(0, 2), text, ...params.slice(3, 11), groups.length ? todo.map((i) => groups[i]) : [], params[12], todo.map((i) => keys[i]),
    ]);
    const byKey = new Map<string, string>();
    const unkeyed: string[] = [];
    for (const row of rows) {
      if (row.key === null) unkeyed.push(String(row.id));
      else byKey.set(row.key, String(row.id));
    }
    sortIds(unkeyed);
    let next = 0;
    const missing = new Set<string>();
    for (const i of todo) {
      const key = keys[i];
      if (key === null) ids[i] = unkeyed[next++];
      else if (byKey.has(key)) ids[i] = byKey.get(key);
      else missing.add(key);
    }
    if (missing.size) {
      const pending = await run<{ id: unknown; key: string }>(db, s.schema, "PendingTaskIdsByKey", [[...missing]]);
      for (const row of pending) byKey.set(row.key, String(row.id));
    }
    for (const i of todo) {
      const key = keys[i];
      if (ids[i] === undefined && key !== null) ids[i] = byKey.get(key);
    }
    todo = todo.filter((i) => ids[i] === undefined);
  }
  if (todo.length) throw new PgbgError("PGBG_KEY_CONTENDED", "enqueueMany(): keys kept changing hands; try again");
  return ids as string[];
}
