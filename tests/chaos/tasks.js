// The task the chaos suite runs, loaded by the workers of `pgbg serve` (plain
// JavaScript importing the built package, so Node runs it without a loader).
//
// Every execution leaves evidence that survives the faults the suite
// injects: a start line appended to this process's own file before the
// handler does anything (appendFileSync, so a SIGKILL a moment later cannot
// lose it), a line just before its completion commits, an end line when the
// handler returns or throws, and an exit line
// when the process exits. Success is written in the handler's own
// transaction together with ctx.complete(tx), so a task completed twice
// shows up as two rows in chaos_done, each naming the execution (pid and
// sequence number of its start line) whose completion committed.
import { appendFileSync } from "node:fs";
import process from "node:process";
import postgres from "postgres";
import * as v from "valibot";
import { defineTask, PermanentError } from "pgbg";

// The system clock, read afresh by every process: performance.timeOrigin is
// fixed at each process's start and drifts from it, so times of different
// processes would not compare. A whole millisecond rounds down alike in
// every process, so an execution that began after another ended never
// reads as earlier.
const now = () => Date.now();

let state;

/** Opens the execution file and the handlers' own client on first use, so that importing this module does nothing. */
function setup() {
  if (state) return state;
  const file = `${process.env.CHAOS_DIR}/exec-${process.pid}.jsonl`;
  const write = (line) => appendFileSync(file, `${JSON.stringify(line)}\n`);
  process.on("exit", (code) => write({ k: "x", p: process.pid, c: code, at: now() }));
  // No array types fetched: the handlers send none, and postgres.js (3.4.9)
  // leaves that fetch's failure unhandled when a connection is reset while
  // it opens, which would end the process on a fault of this test's own
  // client rather than of pgbg's.
  const sql = postgres(process.env.DATABASE_URL, {
    max: 10,
    onnotice: () => {},
    fetch_types: false,
    connection: { application_name: "chaos handler" },
  });
  state = { write, sql, seq: 0 };
  return state;
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    }, { once: true });
  });
}

/**
 * Sleeps `ms`, then records its success and completes itself in one
 * transaction. With `hang`, its first attempt never returns and ignores its
 * abort signal. With `late`, its first attempt sleeps that many ms ignoring
 * its abort signal, past its lease, and only then tries to complete: its
 * completion must be refused. Both mark their start line with `h`. With
 * `fail`, each attempt fails for good (PermanentError) once it slept: the
 * task is kept as failed.
 */
export const work = defineTask({
  name: "chaos-work",
  schema: v.object({ ms: v.number(), hang: v.optional(v.boolean()), late: v.optional(v.number()), fail: v.optional(v.boolean()) }),
  // Names the execution (its pid and the sequence number of its start line):
  // the verdict checks that the stored result is that of the execution whose
  // completion committed.
  result: v.object({ p: v.number(), n: v.number() }),
  retryDelay: 100,
  maxAttempts: 1000,
  run: runWork,
});

/** As `work`, in the group its input names (g); its start lines name the group, for the verdict's group limit. */
export const groupedWork = defineTask({
  name: "chaos-grouped-work",
  schema: v.object({ ms: v.number(), g: v.string() }),
  group: (input) => input.g,
  result: v.object({ p: v.number(), n: v.number() }),
  retryDelay: 100,
  maxAttempts: 1000,
  run: runWork,
});

/** What the flow's and the batch's recording tasks below share with each other (and, but for the input, with `work`). */
const recording = {
  schema: v.object({ ms: v.number() }),
  result: v.object({ p: v.number(), n: v.number() }),
  retryDelay: 100,
  maxAttempts: 1000,
};

/**
 * A task of a flow that waits for others: as `work`, and before it sleeps
 * it reads how many of its parents are still in the queue (none may be: it
 * starts only after every one succeeded) and their results (every one's,
 * which it records with its completion, in chaos_flow).
 */
export const join = defineTask({
  name: "chaos-join",
  ...recording,
  async run(input, ctx) {
    const { sql } = setup();
    const [row] = await sql`SELECT coalesce(cardinality(t.parent_ids), 0)::int AS parents,
      (SELECT count(*) FROM pgbg.task p WHERE p.id = ANY (t.parent_ids))::int AS pending
      FROM pgbg.task t WHERE t.id = ${ctx.id}`;
    const results = (await ctx.parentResults()).length;
    return runWork(input, ctx, (tx) => tx`INSERT INTO chaos_flow (task_id, parents, pending, results) VALUES (${ctx.id}, ${row.parents}, ${row.pending}, ${results})`);
  },
});

/** A batch's completion task: as `work`, recording with its completion what ctx.batch() said (its counts and failed ids) and how many members were still pending at its start (chaos_batch). */
export const batchDone = defineTask({
  name: "chaos-batch-done",
  ...recording,
  async run(input, ctx) {
    const { sql } = setup();
    const [{ pending }] = await sql`SELECT count(*)::int AS pending FROM pgbg.task
      WHERE flow_id = (SELECT flow_id FROM pgbg.task WHERE id = ${ctx.id}) AND batch_then = ${ctx.id} AND state <> 'failed'`;
    const batch = await ctx.batch();
    // An array literal: this client fetches no array types (see setup).
    const failedIds = `{${batch.failedIds.join(",")}}`;
    return runWork(input, ctx, (tx) => tx`INSERT INTO chaos_batch (task_id, size, succeeded, pending, failed_ids)
      VALUES (${ctx.id}, ${batch.size}, ${batch.succeeded}, ${pending}, ${failedIds}::bigint[])`);
  },
});

/** The handler of the tasks above (see `work`); `record(tx)` adds to the completion's transaction. */
async function runWork(input, ctx, record) {
  const { write, sql } = setup();
  const n = ++state.seq;
  const p = process.pid;
  const hangs = ctx.attempt === 1 && (input.hang || input.late > 0);
  write({ k: "s", n, p, pp: process.ppid, t: ctx.id, a: ctx.attempt, at: now(), ...(hangs ? { h: 1 } : {}), ...(ctx.group ? { g: ctx.group } : {}) });
  try {
    if (input.hang && ctx.attempt === 1) await new Promise(() => {});
    if (input.late > 0 && ctx.attempt === 1) await new Promise((resolve) => setTimeout(resolve, input.late));
    if (input.ms > 0) await sleep(input.ms, ctx.signal);
    if (input.fail) throw new PermanentError("failed for good on purpose");
    await sql.begin(async (tx) => {
      await tx`INSERT INTO chaos_done (task_id, pid, n, attempt) VALUES (${ctx.id}, ${p}, ${n}, ${ctx.attempt})`;
      if (record) await record(tx);
      await ctx.complete(tx, { p, n });
      // Only the commit is left: from it on the task holds no slot of its
      // queue's concurrency limit, though the end line comes later still
      // (or never, if the process is killed first).
      write({ k: "c", n, p, at: now() });
    });
    write({ k: "e", n, p, o: "done", at: now() });
    return { p, n };
  } catch (error) {
    write({ k: "e", n, p, o: "error", e: String(error?.message ?? error).slice(0, 200), at: now() });
    throw error;
  }
}
