/**
 * The drain through PgBouncer in transaction mode against the same drain
 * direct, in one run on one server: `pgbg serve` (the built package) drains
 * a committed backlog straight from PostgreSQL, then through a PgBouncer
 * 1.18 in `pool_mode = transaction` with `--transaction-pooling` and
 * `--listen-url` (workers LISTEN directly, everything else goes through the
 * pooler), and direct again with `--transaction-pooling` (unnamed
 * statements without the pooler's hop, to tell the two costs apart), a
 * pass of each per round. Prints one JSON line per pass and the medians'
 * ratios to the direct drain (RESULTS.md records them).
 *
 * Usage: npm run build && tsx bench/pgbouncer.ts [tasks=20000] [rounds=3]
 * (DATABASE_URL: the server; else an embedded one; needs pgbouncer)
 */
import process from "node:process";
import { migrate } from "../mod.ts";
import { startPgBouncer } from "../tests/pgbouncer.ts";
import { freshDatabase, startServer } from "./harness.ts";
import { drainWith } from "./pgbg.ts";

const n = Number(process.argv[2] ?? 20_000);
const rounds = Number(process.argv[3] ?? 3);
const setting = { workers: 2, concurrency: 64 };

const server = await startServer();
const db = await freshDatabase(server, "pgbouncer");
const bouncer = await startPgBouncer(db.url, 20);
try {
  await migrate(db.sql);
  const name = new URL(db.url).pathname.slice(1);
  // The service's URL goes through the pooler; the backlog is committed and watched directly.
  const pooled = { ...db, url: bouncer.url(name) };
  const rates: Record<"direct" | "pgbouncer" | "unnamed", number[]> = { direct: [], pgbouncer: [], unnamed: [] };
  for (let round = 0; round < rounds; round++) {
    for (const via of ["direct", "pgbouncer", "unnamed"] as const) {
      if (via === "direct") for (const key of ["PGBG_TRANSACTION_POOLING", "PGBG_LISTEN_URL"]) delete process.env[key];
      else Object.assign(process.env, { PGBG_TRANSACTION_POOLING: "true", PGBG_LISTEN_URL: db.url });
      const result = await drainWith(via === "pgbouncer" ? pooled : db, server, n, setting);
      rates[via].push(n / result.seconds);
      console.log(JSON.stringify({ round, via, tasksPerSecond: Math.round(n / result.seconds), serverCpu: result.serverCpu, workerCpu: result.workerCpu }));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(JSON.stringify({
    tasks: n, setting: `${setting.workers} workers × ${setting.concurrency}`, direct: Math.round(median(rates.direct)),
    pgbouncer: Math.round(median(rates.pgbouncer)), unnamed: Math.round(median(rates.unnamed)),
    ratio: Number((median(rates.pgbouncer) / median(rates.direct)).toFixed(2)), unnamedRatio: Number((median(rates.unnamed) / median(rates.direct)).toFixed(2)),
  }));
} finally {
  await bouncer.stop();
  await db.drop();
  await server.stop();
}
