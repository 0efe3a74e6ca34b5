/**
 * Does a claim-row design take every committed task exactly once when
 * enqueues commit out of order? Twelve connections enqueue 1-5 tasks a
 * transaction, holding each open 0-5 ms (one in ten 30-130 ms), one in
 * three inside a savepoint, one in twenty rolled back; two claimers claim
 * 50 at a time and finish what they took, as the enqueues go on. Then the
 * claimers go on until the table is empty, or for `--settle` seconds.
 *
 * Usage: npx tsx bench/prototypes/check.ts [--tasks 20000] [--settle 20]
 * Exits 1 unless the snapshot-pair design (the one docs/storage.md
 * proposes) took each committed task once and nothing else. The id-range
 * design runs beside it to show what it leaves behind: a task whose enqueue
 * commits after a later id was claimed is behind every range from then on.
 * Uses DATABASE_URL, or starts an embedded PostgreSQL.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { freshDatabase, type Server, type Sql, startServer } from "../harness.ts";
import { type Cursor, type Design, insertTasks, rangeRows, setup, snapshotPairs } from "./designs.ts";

const { values: args } = parseArgs({
  options: {
    tasks: { type: "string", default: "20000" },
    settle: { type: "string", default: "20" },
  },
});
const tasks = Number(args.tasks);
const settleMs = Number(args.settle) * 1000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What one design did with the enqueues. */
interface Outcome {
  committed: number;
  ran: number;
  /** Tasks taken more than once. */
  twice: number;
  /** Taken, but not of a committed enqueue. */
  unknown: number;
  /** Committed, and still in the table when the claimers stopped. */
  left: number;
}

/** Enqueues about `tasks` tasks out of order; returns the ids of those committed. */
async function enqueueOutOfOrder(sql: Sql, design: Design): Promise<Set<string>> {
  const committed = new Set<string>();
  let begun = 0;
  await Promise.all(Array.from({ length: 12 }, async () => {
    while (begun < tasks) {
      const n = 1 + Math.floor(Math.random() * 5);
      begun += n;
      const payloads = Array.from({ length: n }, (_, i) => JSON.stringify({ i }));
      const rollBack = Math.random() < 0.05;
      try {
        const ids = await sql.begin(async (tx) => {
          const inserted = Math.random() < 0.3
            ? await tx.savepoint((sp) => insertTasks(sp, design.table, payloads))
            : await insertTasks(tx, design.table, payloads);
          await sleep(Math.random() < 0.1 ? 30 + Math.random() * 100 : Math.random() * 5);
          if (rollBack) throw new RolledBack();
          return inserted;
        });
        for (const id of ids) committed.add(id);
      } catch (error) {
        if (!(error instanceof RolledBack)) throw error;
      }
    }
  }));
  return committed;
}

class RolledBack extends Error {}

async function check(server: Server, design: Design): Promise<Outcome> {
  const db = await freshDatabase(server, "proto_check");
  try {
    await setup(db.sql);
    const ran: string[] = [];
    let enqueuing = true;
    let settleBy = Number.POSITIVE_INFINITY;
    const claimers = Array.from({ length: 2 }, async () => {
      const cursor: Cursor = { at: 0 };
      while (enqueuing || Date.now() < settleBy) {
        const taken = await design.claim(db.sql, 50, cursor);
        if (taken.length) {
          for (const t of taken) ran.push(t.id);
          await design.finish(db.sql, taken);
          continue;
        }
        if (!enqueuing) {
          const [{ left }] = await db.sql.unsafe(`SELECT count(*)::int AS left FROM ${design.table}`);
          if (left === 0) return;
        }
        await sleep(1);
      }
    });
    const committed = await enqueueOutOfOrder(db.sql, design);
    enqueuing = false;
    settleBy = Date.now() + settleMs;
    await Promise.all(claimers);
    const [{ left }] = await db.sql.unsafe(`SELECT count(*)::int AS left FROM ${design.table}`);
    const seen = new Set<string>();
    let twice = 0;
    let unknown = 0;
    for (const id of ran) {
      if (seen.has(id)) twice++;
      seen.add(id);
      if (!committed.has(id)) unknown++;
    }
    return { committed: committed.size, ran: ran.length, twice, unknown, left };
  } finally {
    await db.drop();
  }
}

const server = await startServer();
let failed = false;
try {
  for (const [name, design] of [["snapshot pairs", snapshotPairs], ["id ranges", rangeRows]] as const) {
    const outcome = await check(server, design);
    console.log(`${name}: ${JSON.stringify(outcome)}`);
    const exact = outcome.twice === 0 && outcome.unknown === 0 && outcome.left === 0 && outcome.ran === outcome.committed;
    if (design === snapshotPairs && !exact) failed = true;
  }
} finally {
  await server.stop();
}
process.exit(failed ? 1 : 0);
