/**
 * `npm run bench`: measures pgbg against the raw-SQL ceiling and its peers,
 * in one run on one server, prints one table and writes the figures, with
 * the machine, runtime, PostgreSQL version and settings, to
 * bench/results/<date>-<host>.json.
 *
 * Usage: npm run bench -- [--quick] [--only enqueue,dequeue,groups,flows,latency,depth] [--peers graphile-worker,pg-boss|none]
 *        npm run bench -- --pressure [--rate 800] [--in-flight 32] [--peers …|none] [--scale 1] [--full]   (bench/pressure.ts)
 * Uses DATABASE_URL, or starts an embedded PostgreSQL.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, hostname, release, totalmem } from "node:os";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { type Database, freshDatabase, median, note, percentile, progress, startServer } from "./harness.ts";
import { depth } from "./depth.ts";
import { drainGrouped, timeFlowEnqueue, drainInProcess, drainGroupRated, drainLimited, drainRated, drainWith, pgbgSubject, type ServeSetting, startBehindBacklog } from "./pgbg.ts";
import { rawDrain, rawInsertCopy, rawInsertSingle, rawInsertUnnest, setupRaw } from "./raw.ts";
import { type DrainResult, medianRun, spread, type Subject } from "./subject.ts";
import { renderTable, type Row } from "./table.ts";

// The pressure bench has flags and a schedule of its own (bench/pressure.ts).
if (process.argv.includes("--pressure")) {
  const { main } = await import("./pressure.ts");
  process.exit(await main(process.argv.slice(2)));
}

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    peers: { type: "string" },
  },
});
const sections = new Set((args.only ?? "enqueue,dequeue,groups,flows,latency,depth").split(","));
const quick = args.quick;

/** How much work each measurement does; --quick divides it for a smoke run. */
const size = {
  enqueueSingle: quick ? 2_000 : 10_000,
  enqueueSingleParallel: quick ? 4_000 : 40_000,
  enqueueBatch: quick ? 20_000 : 200_000,
  drain: quick ? 20_000 : 100_000,
  latency: quick ? 50 : 300,
  depthSmall: 10_000,
  depthLarge: quick ? 100_000 : 1_000_000,
  /** Tasks of the drain on a rate-limited queue (1,000 starts a second). */
  ratedDrain: quick ? 3_000 : 10_000,
  /** The large tenant's backlog the small tenant's tasks are enqueued behind, and how many of them. */
  fairnessBacklog: quick ? 50_000 : 1_000_000,
  fairnessSamples: quick ? 20 : 100,
  /** Drains per subject at its setting; the median is reported (run-to-run spread here is 10-30 %). */
  drainRepeats: quick ? 1 : 3,
  /** Enqueue passes of raw SQL and pgbg per case, alternating; the median is reported. */
  enqueueRepeats: quick ? 1 : 3,
};
// No-op tasks finish at once, so concurrency is the claim batch: large ones
// amortise each statement. The first setting is also the depth run's.
const sweep: ServeSetting[] = quick
  ? [{ workers: 2, concurrency: 1000 }]
  : [{ workers: 2, concurrency: 1000 }, { workers: 2, concurrency: 100 }, { workers: 1, concurrency: 1000 }, { workers: 2, concurrency: 2000 }, { workers: 2, concurrency: 4000 }, { workers: 4, concurrency: 500 }];

// The raw drains' connections × batch: up to the largest batch pgbg's sweep
// claims (a served worker claims up to its free slots, so 2 × 4,000 takes
// batches of up to 4,000). Larger batches cost the server less per task:
// each claim steps over the entries the drain left at the head of the claim
// index, and fewer claims step over them fewer times (bench/RESULTS.md,
// 2026-12-05 06:00 UTC).
const rawSweep: [number, number][] = quick ? [[2, 1000]] : [[2, 100], [4, 100], [4, 1000], [2, 2000], [2, 4000]];

// Loaded only when asked for, so that a run without peers needs none of them.
const peerLoaders: Record<string, () => Promise<Subject>> = {
  "graphile-worker": async () => (await import("./peers/graphile-worker.ts")).graphileWorker,
  "pg-boss": async () => (await import("./peers/pg-boss.ts")).pgBoss,
};
const wantedPeers = args.peers === "none" ? [] : (args.peers ?? Object.keys(peerLoaders).join(",")).split(",");
for (const name of wantedPeers) if (!peerLoaders[name]) throw new Error(`--peers: unknown peer ${name}; known: ${Object.keys(peerLoaders).join(", ")}`);
const peers: Subject[] = await Promise.all(wantedPeers.map((name) => peerLoaders[name]()));

const server = await startServer();
const rows: Row[] = [];
// The raw subjects other rows name.
const RAW_LEASE = "raw SQL, claim then delete";
const RAW_LEASE_ON_PGBG = "raw SQL on pgbg's table, claim then delete";
const RAW_ON_PGBG = "raw SQL on pgbg's table";
const sweepLog: Record<string, unknown>[] = [];
const record = (row: Row) => {
  rows.push(row);
  note(`  ${row.section} · ${row.case} · ${row.subject}: ${row.value.toFixed(row.unit === "ms" ? 2 : 0)} ${row.unit}${row.detail ? ` (${row.detail})` : ""}`);
};

/** Runs `fn` on a fresh database set up for `setup`, and drops it after. */
async function onFreshDatabase<T>(label: string, setup: (db: Database) => Promise<void>, fn: (db: Database) => Promise<T>): Promise<T> {
  const db = await freshDatabase(server, label);
  try {
    await setup(db);
    return await fn(db);
  } finally {
    await db.drop();
  }
}

/** The served drain's best setting, once the dequeue section found it. */
let bestOf: { best: ServeSetting } | undefined;
try {
  note(`bench: PostgreSQL ${server.version} (${server.source}); ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}; Node ${process.version}${quick ? "; --quick" : ""}`);
  const pgbg = pgbgSubject(sweep[0]);
  const subjects = [pgbg, ...peers];

  if (sections.has("enqueue")) {
    // Each raw ceiling returns its subjects' seconds: a plain INSERT for single
    // enqueues; for batches `unnest`, which returns ids as enqueue must and is
    // the target's ceiling, and COPY beside it, reported but no target (it
    // returns no ids), each on a table of its own.
    type RawCeiling = (db: Database) => Promise<[string, number][]>;
    const cases: [string, number, (s: Subject, db: Database) => Promise<number>, RawCeiling][] = [
      ["enqueue ×1, sequential", size.enqueueSingle, (s, db) => s.enqueueSingle(db, size.enqueueSingle, 1), async (db) => [["raw SQL", await rawInsertSingle(db, size.enqueueSingle, 1)]]],
      ["enqueue ×1, 16 in flight", size.enqueueSingleParallel, (s, db) => s.enqueueSingle(db, size.enqueueSingleParallel, 16), async (db) => [["raw SQL", await rawInsertSingle(db, size.enqueueSingleParallel, 16)]]],
      ...[100, 1_000, 10_000].map((batch): [string, number, (s: Subject, db: Database) => Promise<number>, RawCeiling] => [
        `batches of ${batch.toLocaleString("en")}`, size.enqueueBatch, (s, db) => s.enqueueBatch(db, size.enqueueBatch, batch), async (db) => {
          const unnest = await rawInsertUnnest(db, size.enqueueBatch, batch);
          await db.sql`TRUNCATE raw_task`;
          const copy = await rawInsertCopy(db, size.enqueueBatch, batch);
          await pgbg.setup(db);
          return [["raw SQL", unnest], ["raw SQL, COPY", copy], [RAW_ON_PGBG, await rawInsertUnnest(db, size.enqueueBatch, batch, "pgbg")]];
        },
      ]),
    ];
    for (const [name, n, run, raw] of cases) {
      // The targets divide pgbg by raw SQL, and one pass of either moves by
      // up to a third from run to run (checkpoints, the host): both run
      // several times, alternating so that a drift of the machine weighs on
      // both alike, and the median counts. Peers run once.
      const times = new Map<string, number[]>();
      const add = (subject: string, seconds: number) => times.set(subject, [...(times.get(subject) ?? []), seconds]);
      for (let r = 0; r < size.enqueueRepeats; r++) {
        progress(`enqueue · ${name} · raw SQL`);
        for (const [subject, seconds] of await onFreshDatabase("raw", setupRaw, raw)) add(subject, seconds);
        progress(`enqueue · ${name} · pgbg`);
        add(pgbg.name, await onFreshDatabase(pgbg.name, (db) => pgbg.setup(db), (db) => run(pgbg, db)));
      }
      for (const [subject, seconds] of times) {
        const detail = seconds.length > 1 ? spread(seconds.map((s) => ({ jobs: n, seconds: s }))) : undefined;
        record({ section: "enqueue", case: name, subject, value: n / median(seconds), unit: "tasks/s", detail });
      }
      for (const subject of peers) {
        progress(`enqueue · ${name} · ${subject.name}`);
        const seconds = await onFreshDatabase(subject.name, (db) => subject.setup(db), (db) => run(subject, db));
        record({ section: "enqueue", case: name, subject: subject.name, value: n / seconds, unit: "tasks/s" });
      }
    }
  }

  if (sections.has("dequeue")) {
    const n = size.drain;
    // The raw ceilings, and the lease-style statements on pgbg's own table:
    // the floor of any claim that updates a task's row (raw.ts, RawTable),
    // which pgbg's claim by claim rows does not.
    const raws = [["lease", "raw", RAW_LEASE], ["delete", "raw", "raw SQL, DELETE … SKIP LOCKED"], ["lease", "pgbg", RAW_LEASE_ON_PGBG]] as const;
    for (const [style, table, label] of raws) {
      const setup = table === "raw" ? setupRaw : (db: Database) => pgbg.setup(db);
      const { runs } = await sweepThenRepeat(label, rawSweep, ([connections, batch]) => `${connections} × ${batch}`,
        ([connections, batch]) => onFreshDatabase(`raw_${table}`, setup, async (db) => {
          await rawInsertUnnest(db, n, 10_000, table);
          await db.sql.unsafe(`VACUUM ANALYZE ${table === "raw" ? "raw_task" : "pgbg.task"}`);
          return rawDrain(db, server, style, connections, batch, table);
        }));
      const median = medianRun(runs);
      record({
        section: "dequeue", case: `drain ${n.toLocaleString("en")}`, subject: label, value: median.jobs / median.seconds, unit: "tasks/s",
        detail: `${median.setting}; server ${perThousand(median.serverCpu, median.jobs)} CPU s/1k`,
      });
    }
    const { best: pgbgBest, runs: pgbgRuns } = bestOf = await sweepThenRepeat("pgbg", sweep, (s) => `${s.workers} × ${s.concurrency}`,
      (setting) => onFreshDatabase("pgbg", (db) => pgbg.setup(db), (db) => drainWith(db, server, n, setting)));
    for (const subject of subjects) {
      progress(`dequeue · ${subject.name}`);
      // Each peer drains at its one setting, as often as pgbg at its best.
      const runs: DrainResult[] = subject === pgbg ? pgbgRuns : [];
      while (runs.length < size.drainRepeats) {
        runs.push(await onFreshDatabase(subject.name, (db) => subject.setup(db), (db) => subject.drain(db, server, n)));
      }
      const result = medianRun(runs);
      record({
        section: "dequeue", case: `drain ${n.toLocaleString("en")}`, subject: subject.name, value: result.jobs / result.seconds, unit: "tasks/s",
        detail: `${result.setting}; CPU s/1k: server ${perThousand(result.serverCpu, result.jobs)}, workers ${perThousand(result.workerCpu, result.jobs)}`,
      });
    }
    // Last, so that every figure above is measured as in runs before they existed.
    await inProcessDrain(pgbg, n, pgbgBest);
    await keptDrains(pgbg, n, pgbgBest);
    await limitedDrain(pgbg, n, pgbgBest);
    await ratedDrain(pgbg, pgbgBest);
    await groupRatedDrain(pgbg, pgbgBest);
    if (sections.has("groups")) await groupedDrains(pgbg, n, pgbgBest);
  }

  if (sections.has("groups")) {
    // Alone (--only groups), against a plain drain at the first setting of its own.
    const best = bestOf?.best ?? sweep[0];
    if (!sections.has("dequeue")) await groupedDrains(pgbg, size.drain, best);
    await fairness(pgbg, best);
  }

  if (sections.has("flows")) await flowBench(pgbg, size.drain, bestOf?.best ?? sweep[0]);

  if (sections.has("latency")) {
    for (const subject of subjects) {
      progress(`latency · ${subject.name}`);
      const samples = await onFreshDatabase(subject.name, (db) => subject.setup(db), (db) => subject.latency(db, size.latency));
      for (const p of [50, 95, 99]) {
        record({ section: "latency", case: `p${p}, idle`, subject: subject.name, value: percentile(samples, p), unit: "ms", detail: p === 50 ? `${samples.length} samples` : undefined });
      }
    }
  }

  if (sections.has("depth")) {
    if (server.settings.autovacuum === "off") note("  note: autovacuum is off on this server, so the bloat figures cannot show it at work");
    const result = await onFreshDatabase("pgbg_depth", (db) => pgbg.setup(db), (db) =>
      depth(db, server, { small: size.depthSmall, large: size.depthLarge, setting: sweep[0], drainWith, progress }));
    record({ section: "depth", case: `${size.depthSmall.toLocaleString("en")} queued`, subject: "pgbg", value: result.smallRate, unit: "tasks/s", detail: `median of ${result.smallRuns.length}` });
    record({ section: "depth", case: `${size.depthLarge.toLocaleString("en")} queued`, subject: "pgbg", value: result.largeRate, unit: "tasks/s", detail: `first ${result.largeWindow.toLocaleString("en")} drained; whole drain ${result.largeWholeRate.toFixed(0)} tasks/s` });
    record({ section: "bloat", case: "task table + indexes, empty", subject: "pgbg", value: result.sizeBefore / 1024, unit: "KiB" });
    record({ section: "bloat", case: `after ${size.depthLarge.toLocaleString("en")} passed, at once`, subject: "pgbg", value: result.sizeAfter / 1024, unit: "KiB", detail: result.sizeAfterDetail });
    record({ section: "bloat", case: `after ${size.depthLarge.toLocaleString("en")} passed, settled`, subject: "pgbg", value: result.sizeSettled / 1024, unit: "KiB", detail: result.sizeSettledDetail });
  }
} finally {
  progress("");
  await server.stop();
}

/**
 * The drain through `createWorker` hosts instead of `pgbg serve`, at the
 * served drain's best setting (the same workers × concurrency, one app
 * process per worker), as often as the served one and on fresh databases
 * alike. Its own row, whose ratios divide by the raw SQL and peer figures
 * of the served drain's case; its ratio to the served drain is in its detail.
 */
async function inProcessDrain(pgbg: Subject, n: number, setting: ServeSetting): Promise<void> {
  const runs: DrainResult[] = [];
  while (runs.length < size.drainRepeats) {
    progress(`dequeue · pgbg in-process · ${setting.workers} × ${setting.concurrency} · run ${runs.length + 1}`);
    runs.push(await onFreshDatabase("pgbg_in_process", (db) => pgbg.setup(db), (db) => drainInProcess(db, server, n, setting)));
  }
  const result = medianRun(runs);
  const value = result.jobs / result.seconds;
  const served = `drain ${n.toLocaleString("en")}`;
  const figure = (subject: string) => rows.find((r) => r.case === served && r.subject === subject)?.value;
  const ratio = (subject: string) => (figure(subject) ? (value / figure(subject)!).toFixed(2) : "n/a");
  record({
    section: "dequeue", case: `${served} in-process, ${setting.workers} × ${setting.concurrency.toLocaleString("en")}`, subject: "pgbg", value, unit: "tasks/s",
    against: served,
    detail: `${result.setting}; ${ratio("pgbg")} of the served drain, ${ratio(RAW_LEASE)} of raw claim then delete; ` +
      `CPU s/1k: server ${perThousand(result.serverCpu, result.jobs)}, workers ${perThousand(result.workerCpu, result.jobs)}`,
  });
}

/**
 * The served drain at its best setting, keeping results (tasks with a
 * result schema) and then the completed history (`--completed-retention`),
 * each as often as the plain one and on fresh databases alike, with its
 * ratio to the plain drain in its detail: what keeping costs.
 */
async function keptDrains(pgbg: Subject, n: number, setting: ServeSetting): Promise<void> {
  const served = `drain ${n.toLocaleString("en")}`;
  const plain = rows.find((r) => r.case === served && r.subject === "pgbg")?.value;
  for (const keeping of ["results", "retention"] as const) {
    const runs: DrainResult[] = [];
    while (runs.length < size.drainRepeats) {
      progress(`dequeue · pgbg keeping ${keeping} · run ${runs.length + 1}`);
      runs.push(await onFreshDatabase("pgbg_kept", (db) => pgbg.setup(db), (db) => drainWith(db, server, n, setting, keeping)));
    }
    const result = medianRun(runs);
    const value = result.jobs / result.seconds;
    const label = keeping === "results" ? "with results (kept 1 h)" : "with retention on (--completed-retention 1h)";
    record({
      section: "dequeue", case: `${served} ${label}`, subject: "pgbg", value, unit: "tasks/s", against: served,
      detail: `${result.setting}; ${plain ? (value / plain).toFixed(2) : "n/a"} of the plain served drain; ` +
        `CPU s/1k: server ${perThousand(result.serverCpu, result.jobs)}, workers ${perThousand(result.workerCpu, result.jobs)}`,
    });
  }
}

/**
 * The served drain at its best setting with a concurrency limit on the
 * queue that never binds (twice the setting's slots), as often as the
 * plain one: what the limited claim (lock, count, claim in a transaction)
 * costs, as a ratio to the plain drain.
 */
async function limitedDrain(pgbg: Subject, n: number, setting: ServeSetting): Promise<void> {
  const served = `drain ${n.toLocaleString("en")}`;
  const plain = rows.find((r) => r.case === served && r.subject === "pgbg")?.value;
  const limit = 2 * setting.workers * setting.concurrency;
  const runs: DrainResult[] = [];
  while (runs.length < size.drainRepeats) {
    progress(`dequeue · pgbg with a queue limit of ${limit} · run ${runs.length + 1}`);
    runs.push(await onFreshDatabase("pgbg_limited", (db) => pgbg.setup(db), (db) => drainLimited(db, server, n, setting, limit)));
  }
  const result = medianRun(runs);
  const value = result.jobs / result.seconds;
  record({
    section: "dequeue", case: `${served} with a non-binding queue limit (${limit.toLocaleString("en")})`, subject: "pgbg", value, unit: "tasks/s", against: served,
    detail: `${result.setting}; ${plain ? (value / plain).toFixed(2) : "n/a"} of the plain served drain; ` +
      `CPU s/1k: server ${perThousand(result.serverCpu, result.jobs)}, workers ${perThousand(result.workerCpu, result.jobs)}`,
  });
}

/**
 * The served drain at its best setting of a queue rate-limited to 1,000
 * starts a second (binding: the setting drains far faster), as often as the
 * plain one. The first interval's starts come at once, so the achieved rate
 * is that of the rest: (tasks − limit) / seconds, against the limit.
 */
async function ratedDrain(pgbg: Subject, setting: ServeSetting): Promise<void> {
  const perSecond = 1_000;
  const n = size.ratedDrain;
  const runs: DrainResult[] = [];
  while (runs.length < size.drainRepeats) {
    progress(`dequeue · pgbg with a rate limit of ${perSecond}/s · run ${runs.length + 1}`);
    runs.push(await onFreshDatabase("pgbg_rated", (db) => pgbg.setup(db), (db) => drainRated(db, server, n, setting, perSecond)));
  }
  recordRated(`drain ${n.toLocaleString("en")} rate-limited to ${perSecond.toLocaleString("en")}/s`, medianRun(runs), perSecond);
}

/**
 * As ratedDrain, with the limit on each of 10 groups instead of the queue:
 * 100 starts a second each, so 1,000 a second in all when every group has
 * tasks (task i is in group i mod 10).
 */
async function groupRatedDrain(pgbg: Subject, setting: ServeSetting): Promise<void> {
  const [groups, perSecond] = [10, 100];
  const n = size.ratedDrain;
  const runs: DrainResult[] = [];
  while (runs.length < size.drainRepeats) {
    progress(`dequeue · pgbg with a rate limit of ${perSecond}/s on each of ${groups} groups · run ${runs.length + 1}`);
    runs.push(await onFreshDatabase("pgbg_group_rated", (db) => pgbg.setup(db), (db) => drainGroupRated(db, server, n, setting, groups, perSecond)));
  }
  recordRated(`drain ${n.toLocaleString("en")} over ${groups} groups, each rate-limited to ${perSecond}/s`, medianRun(runs), groups * perSecond);
}

/** Records a rate-limited drain's achieved rate: its first second's `perSecond` start at once, so the rate is that of the rest. */
function recordRated(label: string, result: DrainResult, perSecond: number): void {
  const value = (result.jobs - perSecond) / result.seconds;
  record({
    section: "dequeue", case: label, subject: "pgbg", value, unit: "tasks/s",
    detail: `${result.setting}; ${(value / perSecond).toFixed(3)} of its limit (after the first second's ${perSecond.toLocaleString("en")})`,
  });
}

/**
 * Flows and batches (issue: flows): the enqueue of `n` tasks as one batch
 * with a completion task and as one flow (a root and n - 1 children that
 * wait for it), against enqueueMany of as many, in one transaction each;
 * then the served drain of a batch of `n` with its completion task against
 * the plain drain of `n`, alternating, on fresh databases, medians.
 */
async function flowBench(pgbg: Subject, n: number, best: ServeSetting): Promise<void> {
  const times: Record<"many" | "batch" | "flow", number[]> = { many: [], batch: [], flow: [] };
  for (let round = 0; round < size.drainRepeats; round++) {
    for (const kind of ["many", "batch", "flow"] as const) {
      progress(`flows · enqueue ${kind} · run ${round + 1}`);
      times[kind].push(await onFreshDatabase("pgbg_flows", (db) => pgbg.setup(db), (db) => timeFlowEnqueue(db, n, kind)));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const kind of ["many", "batch", "flow"] as const) {
    const label = { many: "enqueueMany", batch: "enqueueBatch (and its completion task)", flow: "enqueueFlow (a root and its children)" }[kind];
    record({
      section: "flows", case: `${label}, ${n.toLocaleString("en")} tasks in one call`, subject: "pgbg", value: median(times[kind]), unit: "ms",
      detail: `median of ${times[kind].length}: ${times[kind].map((t) => t.toFixed(0)).join(", ")} ms; target ≤ 3,000 ms`,
    });
  }
  const plain: DrainResult[] = [];
  const batch: DrainResult[] = [];
  while (batch.length < size.drainRepeats) {
    progress(`flows · drain plain · run ${plain.length + 1}`);
    plain.push(await onFreshDatabase("pgbg_flows", (db) => pgbg.setup(db), (db) => drainWith(db, server, n, best)));
    progress(`flows · drain batch · run ${batch.length + 1}`);
    batch.push(await onFreshDatabase("pgbg_flows", (db) => pgbg.setup(db), (db) => drainWith(db, server, n, best, "batch")));
  }
  const p = medianRun(plain);
  const b = medianRun(batch);
  const [pv, bv] = [p.jobs / p.seconds, b.jobs / b.seconds];
  record({ section: "flows", case: `drain ${n.toLocaleString("en")}, independent`, subject: "pgbg", value: pv, unit: "tasks/s", detail: `${p.setting}; CPU s/1k: server ${perThousand(p.serverCpu, p.jobs)}` });
  record({
    section: "flows", case: `drain ${n.toLocaleString("en")}, one batch with a completion task`, subject: "pgbg", value: bv, unit: "tasks/s",
    detail: `${b.setting}; ${(bv / pv).toFixed(2)} of independent (target ≥ 0.8); CPU s/1k: server ${perThousand(b.serverCpu, b.jobs)}`,
  });
}

/**
 * Drains with groups, each as often as the plain one and on fresh
 * databases alike, with its ratio to a plain drain at the same setting in
 * its detail: at the best setting, every task in one group (what the
 * group claim's turns cost when there is nothing to be fair between); and
 * at 2 workers × 32 (64 slots), tasks over 1,000 groups, first with no
 * limit and then each group limited to 5, a limit that rarely binds (what
 * the limited group claim costs), against a plain drain at 2 × 32.
 */
async function groupedDrains(pgbg: Subject, n: number, best: ServeSetting): Promise<void> {
  const served = `drain ${n.toLocaleString("en")}`;
  const repeat = async (label: string, once: () => Promise<DrainResult>) => {
    const runs: DrainResult[] = [];
    while (runs.length < size.drainRepeats) {
      progress(`dequeue · pgbg ${label} · run ${runs.length + 1}`);
      runs.push(await once());
    }
    return runs;
  };
  const fresh = (fn: (db: Database) => Promise<DrainResult>) => () => onFreshDatabase("pgbg_grouped", (db) => pgbg.setup(db), fn);
  const slots: ServeSetting = { workers: 2, concurrency: 32 };
  let plainBest = rows.find((r) => r.case === served && r.subject === "pgbg")?.value;
  if (plainBest === undefined) {
    const plain = medianRun(await repeat(`plain at ${best.workers} × ${best.concurrency}`, fresh((db) => drainWith(db, server, n, best))));
    plainBest = plain.jobs / plain.seconds;
    record({ section: "dequeue", case: served, subject: "pgbg", value: plainBest, unit: "tasks/s", detail: `${plain.setting}; the baseline of the groups below` });
  }
  const plainSlots = medianRun(await repeat("plain at 2 × 32", fresh((db) => drainWith(db, server, n, slots))));
  const plainSlotsRate = plainSlots.jobs / plainSlots.seconds;
  record({ section: "dequeue", case: `${served} at 2 × 32`, subject: "pgbg", value: plainSlotsRate, unit: "tasks/s", against: served, detail: `${plainSlots.setting}; the baseline of the groups below` });
  const cases: [string, ServeSetting, number, number | null, number | undefined][] = [
    ["in one group (fair turns)", best, 1, null, plainBest],
    ["over 1,000 groups at 2 × 32", slots, 1_000, null, plainSlotsRate],
    ["over 1,000 groups limited to 5 each at 2 × 32", slots, 1_000, 5, plainSlotsRate],
  ];
  for (const [label, setting, groups, perGroup, plain] of cases) {
    const runs = await repeat(label, fresh((db) => drainGrouped(db, server, n, setting, groups, perGroup)));
    const result = medianRun(runs);
    const value = result.jobs / result.seconds;
    record({
      section: "dequeue", case: `${served} ${label}`, subject: "pgbg", value, unit: "tasks/s", against: served,
      detail: `${result.setting}; ${plain ? (value / plain).toFixed(2) : "n/a"} of the plain drain at that setting; ` +
        `CPU s/1k: server ${perThousand(result.serverCpu, result.jobs)}, workers ${perThousand(result.workerCpu, result.jobs)}`,
    });
  }
}

/**
 * A small tenant's tasks enqueued one at a time behind a large tenant's
 * backlog, on a served drain at its best setting: with groups (turns) and
 * without (strict FIFO, where each waits for the backlog ahead of it; a
 * single sample, which waits for the whole backlog).
 */
async function fairness(pgbg: Subject, setting: ServeSetting): Promise<void> {
  const backlog = size.fairnessBacklog;
  for (const grouped of [true, false]) {
    progress(`dequeue · pgbg small tenant behind ${backlog.toLocaleString("en")} · ${grouped ? "groups" : "FIFO"}`);
    const samples = grouped ? size.fairnessSamples : 1;
    const result = await onFreshDatabase("pgbg_fairness", (db) => pgbg.setup(db), (db) => startBehindBacklog(db, backlog, samples, setting, grouped));
    for (const p of [50, 99]) {
      record({
        section: "latency", case: `p${p}, small tenant behind ${backlog.toLocaleString("en")} queued, ${grouped ? "groups" : "no groups (FIFO)"}`,
        subject: "pgbg", value: percentile(result.latencies, p), unit: "ms",
        detail: p === 50 ? `${result.latencies.length} samples; ${result.backlogLeft.toLocaleString("en")} of the backlog still queued after the last` : undefined,
      });
    }
  }
}

/**
 * Drains once at each of `settings`, then `size.drainRepeats - 1` more times
 * at the fastest, and returns that setting and the runs at it (the caller
 * reports their median). Each drain has a fresh database: one that follows another
 * in the same database runs beside the autovacuum of its predecessor's dead
 * rows (0.034 instead of 0.018 server CPU s per 1,000 tasks in one trial).
 */
async function sweepThenRepeat<S>(
  subject: string, settings: S[], name: (s: S) => string, drainOnce: (s: S) => Promise<DrainResult>,
): Promise<{ best: S; runs: DrainResult[] }> {
  let best: { setting: S; run: DrainResult } | undefined;
  for (const setting of settings) {
    progress(`dequeue · ${subject} · ${name(setting)}`);
    const run = await drainOnce(setting);
    sweepLog.push({ subject, ...run });
    note(`  dequeue sweep · ${subject} ${run.setting}: ${(run.jobs / run.seconds).toFixed(0)} tasks/s`);
    if (!best || run.seconds < best.run.seconds) best = { setting, run };
  }
  const runs = [best!.run];
  while (runs.length < size.drainRepeats) {
    progress(`dequeue · ${subject} · ${name(best!.setting)} · run ${runs.length + 1}`);
    runs.push(await drainOnce(best!.setting));
  }
  return { best: best!.setting, runs };
}

function perThousand(cpu: number | undefined, jobs: number): string {
  return cpu === undefined ? "n/a" : ((cpu / jobs) * 1000).toFixed(3);
}

const table = renderTable(rows);
console.log(table);
const machine = { host: hostname(), cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release() };
const when = new Date().toISOString();
const result = {
  date: when,
  machine,
  runtime: { node: process.version },
  postgres: { version: server.version, source: server.source, settings: server.settings },
  versions: Object.fromEntries([pgbgSubject(sweep[0]), ...peers].map((s) => [s.name, s.version])),
  quick,
  sizes: size,
  sweep: sweepLog,
  rows,
};
const dir = fileURLToPath(new URL("./results/", import.meta.url));
mkdirSync(dir, { recursive: true });
const file = `${dir}${when.slice(0, 19).replace(/[:T]/g, "-")}-${hostname()}${quick ? "-quick" : ""}.json`;
writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
console.log(`\nwritten: ${file}`);
process.exit(0);
