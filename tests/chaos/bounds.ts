/**
 * Scenarios that time how the service meets the database's faults and its
 * own stop (issue: outages and signals): each measures one figure against
 * its goal, notes it, and fails the run past 5 × the goal, generous for a
 * busy machine. The goals are the README's bounds.
 */
import { readFileSync } from "node:fs";
import { type AddressInfo, createServer } from "node:net";
import postgres from "postgres";
import { enqueueMany } from "../../mod.ts";
import type { Supervisor } from "./cluster.ts";
import { feedTasks } from "./scenarios.ts";
import { type Scenario, sized, type Stage } from "./stage.ts";
import { work } from "./tasks.js";

/** The shutdown timeout these scenarios serve with, and the margin past it a stop may take (README). */
const SHUTDOWN_MS = 2_000;
const STOP_MARGIN_MS = 2_000;
/** How long past the shutdown timeout an orphaned worker may live (README; cli/config.ts's WORKER_STOP_MARGIN_MS). */
const ORPHAN_MARGIN_MS = 1_000;
const stopArgs = ["--timeout", "5s", "--shutdown-timeout", `${SHUTDOWN_MS / 1000}s`];

/** Fails the scenario when `ms` is past 5 × `goal`; notes the figure either way. */
function measured(stage: Stage, what: string, ms: number, goal: number): void {
  stage.note(`${what} ${ms} ms (goal ${goal} ms)`);
  if (ms > 5 * goal) throw new Error(`${what} ${ms} ms: past 5 × its goal of ${goal} ms`);
}

/** Whether process `pid` is gone, or a zombie its new parent has not reaped yet. */
function exited(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] === "Z";
  } catch {
    return true;
  }
}

/** Terminates the scenario database's worker connections every 500 ms until `until` resolves; returns how many. */
async function backendStorm(stage: Stage, until: Promise<unknown>): Promise<number> {
  let done = false;
  void until.finally(() => (done = true));
  let terminated = 0;
  while (!done) {
    try {
      const [{ n }] = await stage.sql`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
        WHERE datname = current_database() AND application_name LIKE 'pgbg worker%'`;
      terminated += n;
    } catch { /* the server is busy; the next round tries again */ }
    await Promise.race([until, new Promise((r) => setTimeout(r, 500))]);
  }
  return terminated;
}

/** Resolves once `workers` workers are registered (the scenario's only supervisor's, then). */
async function ready(stage: Stage, workers: number): Promise<void> {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
    const [{ n }] = await stage.sql`SELECT count(*)::int AS n FROM pgbg.worker`;
    if (n >= workers) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${workers} workers were not registered within 60 s`);
}

/**
 * PostgreSQL down for 20 s: from the first answer of a probe that tries
 * every 100 ms, the time to the first task started (goal 2 s, the median
 * over the restarts).
 */
const outageResume: Scenario = {
  name: "outage-resume",
  allowed: ["error", "exited"],
  async run(stage) {
    stage.serve({ workers: 2, concurrency: 10, args: stopArgs });
    const gaps: number[] = [];
    for (let i = 0; i < sized(stage, 3, 1); i++) {
      await feedTasks(stage, 200);
      await stage.drained();
      const probe = probeUntilUp(stage.url);
      await stage.restartServer(20_000);
      const { at: upAt, sql } = await probe;
      stage.committed.push(...(await enqueueMany(sql, work, Array.from({ length: 20 }, () => ({ ms: 0 })))));
      await sql.end({ timeout: 1 });
      for (const deadline = Date.now() + 60_000; ;) {
        const first = stage.lines().filter((l) => l.k === "s" && l.at >= upAt).map((l) => l.at).sort((a, b) => a - b)[0];
        if (first !== undefined) {
          gaps.push(first - upAt);
          break;
        }
        if (Date.now() > deadline) throw new Error("no task started within 60 s of the database's return");
        await new Promise((r) => setTimeout(r, 50));
      }
      await stage.drained();
    }
    const median = gaps.sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
    measured(stage, `first task after a 20 s outage (${gaps.join(", ")} ms; median)`, median, 2_000);
  },
};

/** Tries to connect every 100 ms, from before the outage: resolves at its first answer after a failure, with that client. */
async function probeUntilUp(url: string): Promise<{ at: number; sql: postgres.Sql }> {
  let failed = false;
  for (;;) {
    const sql = postgres(url, { max: 1, connect_timeout: 1, onnotice: () => {} });
    try {
      await sql`SELECT 1`;
      if (failed) return { at: Date.now(), sql };
    } catch {
      failed = true;
    }
    await sql.end({ timeout: 0 }).catch(() => {});
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM to a supervisor in a storm of terminated backends: the time to its exit (goal: the shutdown timeout plus 2 s). */
const stopInStorm: Scenario = {
  name: "sigterm-in-storm",
  allowed: ["error", "exited"],
  async run(stage) {
    const { value: { ms, code }, terminated } = await inStorm(stage, async (supervisor) => {
      const t0 = Date.now();
      supervisor.child.kill("SIGTERM");
      const { code } = await supervisor.exited;
      return { ms: Date.now() - t0, code };
    });
    stage.note(`${terminated} connections terminated; exit code ${code}`);
    measured(stage, "exit after SIGTERM in the storm", ms, SHUTDOWN_MS + STOP_MARGIN_MS);
  },
};

/**
 * A supervisor SIGKILLed alone in the storm: how long its workers outlive
 * it (goal: the shutdown timeout plus 1 s, the README's bound; 2 check
 * intervals plus the shutdown timeout at the default check interval).
 */
const orphansInStorm: Scenario = {
  name: "orphans-in-storm",
  allowed: ["error", "exited"],
  async run(stage) {
    const { value: { ms, orphans }, terminated } = await inStorm(stage, async (supervisor) => {
      const pids = supervisor.workerPids();
      if (!pids.length) throw new Error("the supervisor had no workers to orphan");
      const t0 = Date.now();
      await supervisor.killSupervisor();
      while (!pids.every(exited)) {
        if (Date.now() - t0 > 120_000) throw new Error(`orphaned workers still alive after 120 s: ${pids.filter((p) => !exited(p)).join(", ")}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      return { ms: Date.now() - t0, orphans: pids.length };
    });
    stage.note(`${orphans} workers orphaned, ${terminated} connections terminated`);
    measured(stage, "orphaned workers gone", ms, SHUTDOWN_MS + ORPHAN_MARGIN_MS);
  },
};

/**
 * A supervisor of 4 × 25 fed tasks while the storm terminates its workers'
 * connections; 3 s in, `act` does what the scenario times to it. The storm
 * then ends, and a new supervisor finishes the queue. Returns what `act`
 * returned and how many connections the storm terminated.
 */
async function inStorm<T>(stage: Stage, act: (supervisor: Supervisor) => Promise<T>): Promise<{ value: T; terminated: number }> {
  const supervisor = stage.serve({ workers: 4, concurrency: 25, args: stopArgs });
  await ready(stage, 4);
  const feeding = feedTasks(stage, sized(stage, 6_000, 3_000));
  let stopped!: () => void;
  const storm = backendStorm(stage, new Promise<void>((r) => (stopped = r)));
  let value: T;
  try {
    await new Promise((r) => setTimeout(r, 3_000));
    value = await act(supervisor);
  } finally {
    stopped();
  }
  const terminated = await storm;
  stage.serve({ workers: 2, concurrency: 20, args: stopArgs });
  await feeding;
  await stage.drained();
  return { value, terminated };
}

/** A service pointed at a server that takes connections and never answers, then SIGTERM: the time to its exit. */
const silentServer: Scenario = {
  name: "silent-server",
  allowed: [],
  async run(stage) {
    let connected!: () => void;
    const connecting = new Promise<void>((resolve) => (connected = resolve));
    const silent = createServer((socket) => {
      socket.on("error", () => {});
      socket.resume();
      connected();
    });
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", () => resolve()));
    try {
      const supervisor = stage.serve({ workers: 1, concurrency: 1, args: stopArgs, databaseUrl: `postgres://pgbg@127.0.0.1:${(silent.address() as AddressInfo).port}/none` });
      // Its first try to connect is under way: it would wait out the 30 s connect timeout.
      await connecting;
      const t0 = Date.now();
      supervisor.child.kill("SIGTERM");
      const { code } = await supervisor.exited;
      if (code !== 0) throw new Error(`exit code ${code} after SIGTERM, not 0`);
      measured(stage, "exit after SIGTERM, the server silent", Date.now() - t0, SHUTDOWN_MS + STOP_MARGIN_MS);
    } finally {
      await new Promise((resolve) => silent.close(resolve));
    }
  },
};

/** The timed scenarios, in the order the suite runs them. */
export const boundScenarios: Scenario[] = [outageResume, stopInStorm, orphansInStorm, silentServer];
