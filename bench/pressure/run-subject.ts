/**
 * One subject's run under the pressure bench: a fresh database, its
 * workers, the producer at R, the phases in order with their pressures, a
 * sample every 5 s; and everything it started stopped again, on error and
 * on abort too.
 */
import { type Database, freshDatabase, note, progress, type Server, waitFor } from "../harness.ts";
import { type Collector, latencyPercentiles } from "./collector.ts";
import { holdHorizon, type Phase, phaseIndexAt, type Pressure, readers, schedule } from "./phases.ts";
import { Producer } from "./producer.ts";
import { now } from "./reporter.js";
import { type Sample, Sampler } from "./sampler.ts";
import type { Enqueuer, PressureSubject, Workers } from "./subjects.ts";

/** Batches the producer may have in flight at once (and its connections). */
const PRODUCER_IN_FLIGHT = 4;

/**
 * Before the clean phase, each of the producer's connections enqueues one
 * task, and the run starts once the workers started all of them. A client
 * opens its connections as the first statements need them: without this,
 * the first batches' start latency held the producer's own connecting and
 * first statements (about 120 ms for pgbg's four connections, measured on
 * this machine), which is no part of the queue under test, and the peers'
 * producers come more or less warm from their setup (graphile-worker's
 * utilities and pg-boss's start() each run statements first). The workers
 * get no warming beyond these tasks: their own first seconds count.
 */
async function warmUp(enqueuer: Enqueuer, collector: Collector, signal: AbortSignal): Promise<void> {
  const from = now();
  collector.reset(from);
  await Promise.all(Array.from({ length: PRODUCER_IN_FLIGHT }, () => enqueuer.enqueue(1, now())));
  await waitFor("the warm-up's tasks to start", async () => {
    if (signal.aborted) throw new Error("aborted");
    return collector.window(0, now() - from + 100).started >= PRODUCER_IN_FLIGHT || undefined;
  }, 60_000);
}

/** What one subject's run recorded. */
export interface SubjectRun {
  subject: string;
  version: string;
  workers: string;
  rate: number;
  inFlight: number;
  scale: number;
  /** ISO time of the run's start (the clean phase's). */
  startedAt: string;
  phases: Phase[];
  samples: Sample[];
  /** Each phase taken whole (its index in `phases`): what the targets are graded on. */
  totals: PhaseTotals[];
  /** What each pressure phase did, by phase name. */
  pressures: Record<string, string>;
  /** Tasks enqueued (acknowledged), batches that failed and the first failure. */
  enqueued: number;
  failedBatches: number;
  firstEnqueueError?: string;
  /** Worker datagrams lost, and starts without an enqueue time. */
  lostDatagrams: number;
  malformedStarts: number;
  /** What the workers printed last: pgbg's service log at warn, a peer's worker output. */
  serviceLog: string;
}

/** One phase taken whole: counts, and start-latency percentiles over every start in it (ms; NaN when none). */
export interface PhaseTotals {
  acked: number;
  started: number;
  finished: number;
  p50: number;
  p95: number;
  p99: number;
}

/** The totals of each of `phases`, from what `collector` holds of the run. */
function phaseTotals(collector: Collector, phases: Phase[]): PhaseTotals[] {
  return phases.map((phase) => {
    const w = collector.window(phase.start * 1000, phase.end * 1000);
    return { acked: w.acked, started: w.started, finished: w.finished, ...latencyPercentiles(w.latencies) };
  });
}

/** What a run needs from the bench around it. */
export interface RunContext {
  server: Server;
  collector: Collector;
  /** Aborted on Ctrl-C: the run stops where it is and cleans up. */
  signal: AbortSignal;
}

/** Resolves at epoch ms `at`, or rejects when `signal` aborts. */
function sleepUntil(at: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Error("aborted"));
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, at - now()));
    const onAbort = () => {
      clearTimeout(timer);
      reject(new Error("aborted"));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** Starts the pressure of `phase`, if it has one. */
async function startPressure(phase: Phase, db: Database, subject: PressureSubject): Promise<Pressure | undefined> {
  if (phase.kind === "held") return await holdHorizon(db.url);
  if (phase.kind === "readers") return readers(db.url, subject.taskTable);
  return undefined;
}

/** Runs `subject` through the phases at `rate` tasks/s and `inFlight` tasks in flight. */
export async function runSubject(ctx: RunContext, subject: PressureSubject, rate: number, inFlight: number, scale: number): Promise<SubjectRun> {
  const phases = schedule(scale);
  const label = `${subject.name} @ ${rate}/s`;
  const db = await freshDatabase(ctx.server, `pressure_${subject.name}`);
  const cleanup: (() => Promise<unknown>)[] = [() => db.drop()];
  try {
    progress(`pressure · ${label} · setup`);
    await subject.setup(db);
    const workers: Workers = await subject.startWorkers(db, inFlight);
    cleanup.unshift(() => workers.stop());
    const enqueuer: Enqueuer = await subject.openEnqueuer(db, PRODUCER_IN_FLIGHT);
    cleanup.unshift(() => enqueuer.close());
    await warmUp(enqueuer, ctx.collector, ctx.signal);
    const t0 = now();
    ctx.collector.reset(t0);
    const producer = new Producer(enqueuer, PRODUCER_IN_FLIGHT, (n, at) => ctx.collector.acked(n, at));
    cleanup.unshift(() => producer.stop());
    const sampler = new Sampler(db.url, subject.schema, subject.sizeLeavesOut ?? null, ctx.collector, producer, t0, (s) => phaseIndexAt(phases, s), () => workers.check(),
      (s) => progress(`pressure · ${label} · ${phases[s.phase].name} · t ${s.t} s · ${s.completionRate.toFixed(0)}/s · depth ${s.depth} · p99 ${s.p99?.toFixed(1) ?? "-"} ms · load ${s.load1}`));
    cleanup.unshift(() => sampler.stop());
    const pressures: Record<string, string> = {};
    for (const phase of phases) {
      producer.setRate(rate * phase.rateFactor);
      const pressure = await startPressure(phase, db, subject);
      if (pressure) cleanup.unshift(() => pressure.end());
      await sleepUntil(t0 + phase.end * 1000, ctx.signal);
      if (pressure) {
        cleanup.shift();
        pressures[phase.name] = await pressure.end();
      }
      if (sampler.failure) throw sampler.failure;
    }
    const startedAt = new Date(t0).toISOString();
    // The last window closes at the end of the last phase (at --scale 1); its sample completes after the report delay.
    await sleepUntil(t0 + phases.at(-1)!.end * 1000 + 100, ctx.signal);
    await producer.stop();
    await sampler.stop();
    if (sampler.failure) throw sampler.failure;
    // The reports of the last window are in once the sampler has read it.
    const totals = phaseTotals(ctx.collector, phases);
    note(`  pressure · ${label}: ${producer.acked} enqueued, ${sampler.samples.length} samples, ${ctx.collector.lost} datagrams lost`);
    return {
      subject: subject.name, version: subject.version, workers: subject.describeWorkers(inFlight), rate, inFlight, scale, startedAt, phases,
      samples: sampler.samples, totals, pressures, enqueued: producer.acked, failedBatches: producer.failedBatches, firstEnqueueError: producer.firstError,
      lostDatagrams: ctx.collector.lost, malformedStarts: ctx.collector.malformed, serviceLog: workers.output(),
    };
  } finally {
    for (const step of cleanup) {
      try {
        await step();
      } catch (error) {
        note(`  pressure · ${label}: cleanup: ${(error as Error).message}`);
      }
    }
  }
}
