/**
 * The `in-process` scenario: apps hosting in-process workers
 * (`createWorker`, tests/chaos/app.ts), hurt three ways while tasks flow.
 *
 * - Killed: some apps are SIGKILLed again and again and started afresh;
 *   the other hosts, and the restarted ones (each a new host), must rescue
 *   the dead host's tasks once its workers are stale or the leases end.
 * - Cut off: two apps lose the database for real (a proxy of their own
 *   stops answering, tests/chaos/proxy.ts): one until its worker stops
 *   itself (40 % of its stale time), after which its host hands its tasks
 *   back; the other until another host reaps its worker (its stale time).
 * - Hung: some tasks' first attempts ignore their abort signal: `hang` ones
 *   forever, `late` ones until past their lease, when they try to complete.
 *   A host detaches such an attempt; its lease runs out and another
 *   attempt runs while it still does, whose completion alone may commit.
 *
 * One steady app is neither killed nor cut, and alone serves the queue of
 * the late tasks, so that every late attempt lives to try its completion.
 */
import { leaseFor, type Liveness, liveness } from "../../lib/liveness.ts";
import { enqueueMany, listTasks } from "../../mod.ts";
import type { ExecLine } from "./check.ts";
import { type App, waitUntil } from "./cluster.ts";
import { type Scenario, sized, type Stage, taskMs } from "./stage.ts";
import { work } from "./tasks.js";

/** The apps' heartbeat interval, as the other scenarios' supervisors use: a stale time of 20 s (lib/liveness.ts). */
const CHECK_INTERVAL = 200;
/**
 * The apps' attempt timeout: tasks take at most 300 ms and a transaction.
 * Long enough that a lease (23.2 s) outlasts the stale time (20 s), so that
 * the tasks of a killed or cut-off host are released when another host
 * reaps its worker, not only rescued when their leases end.
 */
const TIMEOUT = 4_000;

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The end of the fault phase, for the loops that run until then. */
class Ending {
  over = false;
  #resolve!: () => void;
  readonly promise = new Promise<void>((r) => (this.#resolve = r));
  end(): void {
    this.over = true;
    this.#resolve();
  }
}

/**
 * Enqueues tasks until `ending`: at most `perSecond` a second, and no more
 * than `depth` queued, so that a task released while it still runs is
 * claimed again at once (see feedTasks). Every `hungEvery`-th hangs, up to
 * `maxHung` (each keeps the queue from draining until its lease ends).
 * Resolves with how many hang.
 */
async function feedUntil(stage: Stage, ending: Ending, perSecond: number, hungEvery: number, maxHung: number, depth = 100): Promise<number> {
  const t0 = Date.now();
  let fed = 0;
  let hung = 0;
  while (!ending.over) {
    const [{ queued }] = await stage.sql`SELECT count(*)::int AS queued FROM pgbg.task WHERE state = 'queued' AND queue = 'default'`;
    const n = Math.min(depth - queued, Math.floor(((Date.now() - t0) / 1000) * perSecond) - fed);
    if (n > 0) {
      const inputs = Array.from({ length: n }, (_, j) => {
        const hang = (fed + j) % hungEvery === hungEvery - 1 && hung < maxHung;
        if (hang) hung++;
        return { ms: taskMs(), hang: hang || undefined };
      });
      stage.committed.push(...(await enqueueMany(stage.sql, work, inputs)));
      fed += n;
    }
    await Promise.race([ending.promise, pause(50)]);
  }
  return hung;
}

/** Every `everyMs` until `ending`, SIGKILLs the next of `apps` and starts it again; resolves with the number of kills. */
async function killUntil(apps: App[], everyMs: number, ending: Ending): Promise<number> {
  let kills = 0;
  for (;;) {
    await Promise.race([ending.promise, pause(everyMs)]);
    if (ending.over) return kills;
    const app = apps[kills++ % apps.length];
    await app.kill();
    await app.start();
  }
}

/** How often the worker of `app`'s current process stopped itself, cut off, by its log. */
function selfStops(app: App): number {
  return app.logs().filter((l) => l.pid === app.pid && /this worker stops at once: its heartbeat has not succeeded/.test(l.message)).length;
}

/** Rows of workers of `app`'s current process. */
async function workerRows(stage: Stage, app: App): Promise<number> {
  const [{ n }] = await stage.sql`SELECT count(*)::int AS n FROM pgbg.worker WHERE pid = ${app.pid}`;
  return n;
}

/**
 * Attempts of `app`'s current process running now, read as pgbg reads
 * them: a task a claim row holds is running, its worker the claim's,
 * though its row is queued.
 */
async function runningIn(stage: Stage, app: App): Promise<number> {
  const workers = new Set((await stage.sql`SELECT id FROM pgbg.worker WHERE pid = ${app.pid}`).map((r) => r.id as string));
  const running = await listTasks(stage.sql, { state: "running", limit: 1000 });
  return running.tasks.filter((t) => t.workerId !== null && workers.has(t.workerId)).length;
}

/**
 * One round of cuts, at once, each begun while its app runs tasks (a cut
 * of an idle app would interrupt nothing): `short` until its worker stopped
 * itself (its host then hands the tasks back), `long` until another host
 * reaped its worker (and released the tasks). Resolves once both apps have
 * a fresh worker again; rejects when any of these events fails to come.
 */
async function cutRound(stage: Stage, short: App, long: App, t: Liveness): Promise<void> {
  const [shortBefore, longBefore] = [selfStops(short), selfStops(long)];
  const cut = async (app: App, healWhen: () => boolean | Promise<boolean>, limitMs: number, what: string) => {
    await waitUntil(async () => (await runningIn(stage, app)) >= 2, 60_000, `two attempts running at once in app ${app.pid}`);
    await app.cut(healWhen, limitMs, what);
  };
  await Promise.all([
    cut(short, () => selfStops(short) > shortBefore, 3 * t.staleAfter, `the self-stop of the worker of app ${short.pid}, cut off`),
    cut(long, async () => (await workerRows(stage, long)) === 0, 4 * t.staleAfter, `the reap of the worker of app ${long.pid}, cut off`),
  ]);
  if (selfStops(long) === longBefore) throw new Error(`app ${long.pid} was cut off until reaped, but its worker never stopped itself`);
  for (const app of [short, long]) {
    // The lost worker ends (writing what it can, for 10 s at most), then its
    // host starts a fresh one after half a second, which registers at once,
    // or once postgres.js gives up a connection reset while it opened (its
    // connect timeout, 30 s).
    await waitUntil(async () => (await workerRows(stage, app)) > 0, 60_000,
      `a fresh worker in app ${app.pid} after its cut healed (the host starts one once its lost worker ended; see the app's log, ${app.logFile})`);
  }
}

/**
 * Waits until the first attempt of every task in `ids` (a late task) has
 * ended, and returns their end lines.
 */
async function lateAttemptsEnded(stage: Stage, ids: Set<string>, limitMs: number): Promise<Extract<ExecLine, { k: "e" }>[]> {
  let ends: Extract<ExecLine, { k: "e" }>[] = [];
  await waitUntil(() => {
    const lines = stage.lines();
    const starts = lines.flatMap((l) => (l.k === "s" && ids.has(String(l.t)) && l.h === 1 ? [`${l.p}:${l.n}`] : []));
    const ended = new Map(lines.flatMap((l): [string, Extract<ExecLine, { k: "e" }>][] => (l.k === "e" ? [[`${l.p}:${l.n}`, l]] : [])));
    ends = starts.flatMap((key) => (ended.has(key) ? [ended.get(key)!] : []));
    return starts.length >= ids.size && ends.length === starts.length;
  }, limitMs, `the end of every late attempt`);
  return ends;
}

/** What the apps logged that shows a fault took effect. */
function logged(apps: App[], pattern: RegExp): number {
  return apps.flatMap((a) => a.logs()).filter((l) => pattern.test(l.message)).length;
}

export const inProcess: Scenario = {
  name: "in-process",
  allowed: ["killed", "cut", "hung"],
  expected: ["killed", "cut", "hung"],
  async run(stage) {
    const timings = liveness(CHECK_INTERVAL);
    const lease = leaseFor(TIMEOUT, timings);
    const options = { concurrency: 8, timeout: TIMEOUT, checkInterval: CHECK_INTERVAL, shutdownTimeout: 5_000 };
    const steady = await stage.host({ ...options, queues: null });
    const others = await Promise.all(Array.from({ length: sized(stage, 2, 1) + 2 }, () => stage.host({ ...options, queues: ["default"] })));
    const [short, long, ...killed] = others;
    const lateIds = await enqueueMany(stage.sql, work, Array.from({ length: sized(stage, 10, 5) }, () => ({ ms: 0, late: lease + 3_000 })), { queue: "late" });
    stage.committed.push(...lateIds);

    const ending = new Ending();
    const feeding = feedUntil(stage, ending, sized(stage, 300, 150), 150, sized(stage, 60, 10));
    const killing = killUntil(killed, sized(stage, 3_000, 4_000), ending);
    const rounds = sized(stage, 3, 1);
    let [hung, kills] = [0, 0];
    try {
      for (let round = 0; round < rounds; round++) await cutRound(stage, short, long, timings);
    } finally {
      ending.end();
      [hung, kills] = await Promise.all([feeding, killing]);
    }
    await stage.drained();
    const ends = await lateAttemptsEnded(stage, new Set(lateIds), 2 * lease);
    const refused = ends.filter((l) => l.o === "error" && /lease was lost/.test(l.e ?? "")).length;

    const apps = [steady, ...others];
    const detached = logged(apps, /ignored its abort signal past its timeout; it keeps running in the background/);
    if (!kills) throw new Error("no app was killed: the scenario injected no fault");
    if (!hung || !detached) throw new Error(`${hung} hung tasks, ${detached} attempts detached: the scenario hung no task`);
    if (!refused) throw new Error(`none of the ${ends.length} late attempts had its completion refused by its lease`);
    stage.note(
      `${apps.length} apps (1 steady, ${killed.length} killed and restarted ${kills} times, 2 cut ${rounds} time(s) each: until the self-stop, and until reaped); ` +
        `${hung} hung tasks, ${detached} attempts detached; ${refused} of ${ends.length} late completions refused by the lease; ` +
        `tasks released by hosts: ${logged(apps, /of a dead worker/)} hand-back/release runs, ${logged(apps, /whose heartbeat stopped/)} reaps, ${logged(apps, /whose lease expired/)} rescues`,
    );
  },
};
