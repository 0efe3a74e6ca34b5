/**
 * What a claim costs the server by what it writes: a 100,000-task drain
 * (2 connections × 4,000 a claim, pgbg serve's best setting) over each
 * design of designs.ts and over the floor (bench/raw.ts: pgbg's own table,
 * an UPDATE per task), alternated, medians of 3.
 *
 * Usage: npx tsx bench/prototypes/measure.ts [--tasks 100000] [--connections 2] [--batch 4000] [--rounds 3] [--held] [--only floor,snapshots]
 * `--held`: another session holds a snapshot (and a transaction id) from
 * just before each drain to its end, so vacuum can remove nothing the
 * drain leaves behind. `--only`: the designs whose names contain one of
 * its comma-separated words. Uses DATABASE_URL, or starts an embedded
 * PostgreSQL.
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { CpuMeter, type Database, freshDatabase, median, type Server, type Sql, startServer } from "../harness.ts";
import { rawDrain, rawInsertUnnest } from "../raw.ts";
import { migrate } from "../../mod.ts";
import { type Cursor, type Design, designs, insertTasks, setup, tableName } from "./designs.ts";

const { values: args } = parseArgs({
  options: {
    tasks: { type: "string", default: "100000" },
    connections: { type: "string", default: "2" },
    batch: { type: "string", default: "4000" },
    rounds: { type: "string", default: "3" },
    held: { type: "boolean", default: false },
    only: { type: "string" },
  },
});
const tasks = Number(args.tasks);
const connections = Number(args.connections);
const batch = Number(args.batch);
const rounds = Number(args.rounds);
const FLOOR = "claim then delete on pgbg.task (the floor)";

/** One drain's figures. */
interface Drained {
  rate: number;
  /** Server CPU µs a task. */
  serverUs: number;
  /** WAL bytes a task. */
  walBytes: number;
}

/** Holds a snapshot on another connection when `--held` says so, until the returned function is called. */
async function holdHorizon(sql: Sql): Promise<() => Promise<void>> {
  if (!args.held) return async () => {};
  const session = await sql.reserve();
  await session`BEGIN ISOLATION LEVEL REPEATABLE READ`;
  await session`SELECT txid_current()`;
  return async () => {
    await session`ROLLBACK`;
    session.release();
  };
}

/** Times `drainAll` (which returns how many it took), with the server's CPU and WAL over it. */
async function metered(server: Server, sql: Sql, drainAll: () => Promise<number>): Promise<Drained> {
  const [{ lsn }] = await sql`SELECT pg_current_wal_lsn() AS lsn`;
  const release = await holdHorizon(sql);
  const meter = new CpuMeter(server);
  const t0 = performance.now();
  const taken = await drainAll();
  const seconds = (performance.now() - t0) / 1000;
  const cpu = meter.read().server;
  await release();
  const [{ bytes }] = await sql`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), ${lsn}::pg_lsn)::float8 AS bytes`;
  if (taken !== tasks) throw new Error(`drained ${taken} of ${tasks}`);
  return { rate: tasks / seconds, serverUs: cpu === undefined ? Number.NaN : cpu / tasks * 1e6, walBytes: bytes / tasks };
}

/** Each connection claims and finishes until a claim finds nothing; returns how many were taken. */
async function drainDesign(sql: Sql, design: Design): Promise<number> {
  let taken = 0;
  await Promise.all(Array.from({ length: connections }, async () => {
    const cursor: Cursor = { at: 0 };
    for (;;) {
      const claimed = await design.claim(sql, batch, cursor);
      if (!claimed.length) return;
      await design.finish(sql, claimed);
      taken += claimed.length;
    }
  }));
  return taken;
}

async function measure(server: Server, db: Database, name: string): Promise<Drained> {
  if (name === FLOOR) {
    await migrate(db.sql);
    await rawInsertUnnest(db, tasks, 10_000, "pgbg");
    await db.sql`VACUUM ANALYZE pgbg.task`;
    return metered(server, db.sql, async () => (await rawDrain(db, server, "lease", connections, batch, "pgbg")).jobs);
  }
  const design = designs[name];
  await setup(db.sql);
  for (let done = 0; done < tasks; done += 10_000) {
    await insertTasks(db.sql, design.table, Array.from({ length: Math.min(10_000, tasks - done) }, (_, i) => JSON.stringify({ i: done + i })));
  }
  await db.sql.unsafe(`VACUUM ANALYZE ${tableName(design.table)}`);
  return metered(server, db.sql, () => drainDesign(db.sql, design));
}

const names = [FLOOR, ...Object.keys(designs)].filter((name) => !args.only || args.only.split(",").some((word) => name.includes(word)));
const server = await startServer();
const results = new Map<string, Drained[]>();
try {
  for (let round = 0; round < rounds; round++) {
    for (const name of names) {
      const db = await freshDatabase(server, "proto");
      try {
        const result = await measure(server, db, name);
        results.set(name, [...(results.get(name) ?? []), result]);
        process.stderr.write(`${name}: ${Math.round(result.rate)}/s, ${result.serverUs.toFixed(1)} µs, ${Math.round(result.walBytes)} B\n`);
      } finally {
        await db.drop();
      }
    }
  }
} finally {
  await server.stop();
}
console.log(`PostgreSQL ${server.version} (${server.source}), ${tasks.toLocaleString("en")} tasks, ${connections} × ${batch.toLocaleString("en")}, ` +
  `medians of ${rounds}${args.held ? ", a snapshot held through each drain" : ""}\n`);
console.log("| design | tasks/s | server CPU µs a task | WAL bytes a task |\n| --- | ---: | ---: | ---: |");
for (const [name, runs] of results) {
  const m = (f: (d: Drained) => number) => median(runs.map(f));
  console.log(`| ${name} | ${Math.round(m((d) => d.rate)).toLocaleString("en")} | ${m((d) => d.serverUs).toFixed(1)} | ${Math.round(m((d) => d.walBytes)).toLocaleString("en")} |`);
}
