/**
 * What the pressure bench concludes from its samples: per phase and subject
 * the median of each series, the targets as PASS/FAIL, and for each
 * recovery phase how long depth and size took to come back; and the
 * Markdown that says it.
 */
import { median } from "../harness.ts";
import type { Phase, PhaseKind } from "./phases.ts";
import type { PhaseTotals, SubjectRun } from "./run-subject.ts";
import { type Sample, SAMPLE_MS } from "./sampler.ts";

/** A target's outcome; "n/a" where the phase was too short to tell. */
export type Verdict = "PASS" | "FAIL" | "n/a";

/** The series a phase's medians are taken of. */
const SERIES = ["completionRate", "startRate", "depth", "producerLag", "p50", "p95", "p99", "deadTuples", "sizeBytes", "xminAge", "load1"] as const;
type Series = typeof SERIES[number];

/**
 * Targets: start-latency p99 per phase kind (ms) over every start in the
 * phase; 250 ms only while the horizon is held, 50 ms in every other phase,
 * overload and readers included. And how soon depth and size must be back
 * after a pressure (s).
 */
export const TARGETS = {
  p99: { clean: 50, recovery: 50, held: 250, overload: 50, readers: 50 } satisfies Record<PhaseKind, number>,
  depthBackSeconds: 30,
  sizeBackSeconds: 120,
};

/** How long after a recovery phase began a series was back, and the verdict. */
export interface Recovery {
  /** Seconds from the phase's start to the first sample at or under the threshold; null if none in the phase. */
  after: number | null;
  threshold: number;
  verdict: Verdict;
}

/** One phase of one subject's run, summarised. */
export interface PhaseSummary {
  phase: Phase;
  offered: number;
  samples: number;
  medians: Record<Series, number | null>;
  /** The phase taken whole: what `rate` and `p99` grade. */
  totals: PhaseTotals;
  /** Tasks acknowledged and finished in the phase, per second. */
  ackedRate: number;
  finishedRate: number;
  /** Finished ≥ acknowledged − the depth baseline: the queue did not fall behind by more than its clean depth. */
  rate: Verdict;
  p99Target: number;
  p99: Verdict;
  depthBack?: Recovery;
  sizeBack?: Recovery;
}

/** One subject's run, summarised. */
export interface RunSummary {
  run: SubjectRun;
  /** Clean median depth + max(5, 0.05 × R): depth is back at or under this. */
  depthBaseline: number;
  /** max(2 × clean median size, 16 MiB): size is back at or under this. */
  sizeBaseline: number;
  phases: PhaseSummary[];
}

const MiB = 1024 * 1024;

/** The median of the values that are there, or null. */
function medianOf(values: (number | null)[]): number | null {
  const present = values.filter((v): v is number => v !== null && Number.isFinite(v));
  return present.length ? median(present) : null;
}

/** Seconds after `phase.start` to the first sample at or after it whose `value` is at or under `threshold`. */
function backAfter(samples: Sample[], phase: Phase, value: (s: Sample) => number | null, threshold: number, target: number): Recovery {
  const first = samples.find((s) => s.t >= phase.start && s.t <= phase.end && value(s) !== null && value(s)! <= threshold);
  const after = first ? first.t - phase.start : null;
  let verdict: Verdict;
  if (after !== null) verdict = after <= target ? "PASS" : "FAIL";
  else verdict = phase.end - phase.start >= target ? "FAIL" : "n/a";
  return { after, threshold, verdict };
}

/**
 * The samples a phase's medians are taken of: those whose whole window lies
 * in the phase. A window across a phase change mixes two rates (at
 * `--scale 1` every phase is a whole number of windows, and none does);
 * a phase too short to hold one whole window gets those whose middle is in it.
 */
function samplesOf(run: SubjectRun, index: number): Sample[] {
  const phase = run.phases[index];
  const window = SAMPLE_MS / 1000;
  const whole = run.samples.filter((s) => s.t - window >= phase.start - 1e-6 && s.t <= phase.end + 1e-6);
  return whole.length ? whole : run.samples.filter((s) => s.phase === index);
}

/** Summarises a run: medians per phase, targets, recoveries. */
export function summarise(run: SubjectRun): RunSummary {
  const inPhase = (i: number) => samplesOf(run, i);
  const clean = inPhase(run.phases.findIndex((p) => p.kind === "clean"));
  const depthBaseline = (medianOf(clean.map((s) => s.depth)) ?? 0) + Math.max(5, 0.05 * run.rate);
  const sizeBaseline = Math.max(2 * (medianOf(clean.map((s) => s.sizeBytes)) ?? 0), 16 * MiB);
  const phases = run.phases.map((phase, i): PhaseSummary => {
    const samples = inPhase(i);
    const medians = Object.fromEntries(SERIES.map((k) => [k, medianOf(samples.map((s) => s[k]))])) as Record<Series, number | null>;
    const offered = run.rate * phase.rateFactor;
    const p99Target = TARGETS.p99[phase.kind];
    const totals = run.totals[i];
    const span = phase.end - phase.start;
    const summary: PhaseSummary = {
      phase, offered, samples: samples.length, medians, totals, p99Target,
      ackedRate: totals.acked / span, finishedRate: totals.finished / span,
      rate: totals.acked === 0 ? "n/a" : totals.finished >= totals.acked - depthBaseline ? "PASS" : "FAIL",
      p99: Number.isNaN(totals.p99) ? "n/a" : totals.p99 <= p99Target ? "PASS" : "FAIL",
    };
    if (phase.kind === "recovery") {
      summary.depthBack = backAfter(run.samples, phase, (s) => s.depth, depthBaseline, TARGETS.depthBackSeconds);
      summary.sizeBack = backAfter(run.samples, phase, (s) => s.sizeBytes, sizeBaseline, TARGETS.sizeBackSeconds);
    }
    return summary;
  });
  return { run, depthBaseline, sizeBaseline, phases };
}

// ---- Markdown ----

const fixed = (digits: number) => (v: number | null) => (v === null ? "–" : v.toLocaleString("en", { minimumFractionDigits: digits, maximumFractionDigits: digits }));
const int = fixed(0);
const ms = (v: number | null) => (v === null ? "–" : v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0));
const nan = (v: number) => (Number.isNaN(v) ? null : v);
const mib = (v: number | null) => (v === null ? "–" : (v / MiB).toFixed(1));
const seconds = (r: Recovery | undefined, span: number) => (!r ? "" : r.after === null ? `not within the phase (${span} s)` : `${r.after} s`);

/** The table of per-phase medians and the rate and latency verdicts of `summaries` (one rate, several subjects). */
function mediansTable(summaries: RunSummary[]): string[] {
  const lines = [
    "| subject | phase | samples | offered /s | acked /s | done /s | depth | producer lag | p50 ms | p95 ms | p99 ms | dead tuples | size MiB | xmin age | load | " +
    "whole phase: p50 / p99 ms | done ≥ acked − baseline | p99 ≤ target |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
  ];
  for (const s of summaries) {
    for (const p of s.phases) {
      const m = p.medians;
      lines.push(`| ${s.run.subject} | ${p.phase.name} | ${p.samples} | ${int(p.offered)} | ${int(p.ackedRate)} | ${int(p.finishedRate)} | ${int(m.depth)} | ` +
        `${int(m.producerLag)} | ${ms(m.p50)} | ${ms(m.p95)} | ${ms(m.p99)} | ${int(m.deadTuples)} | ${mib(m.sizeBytes)} | ${int(m.xminAge)} | ` +
        `${fixed(2)(m.load1)} | ${ms(nan(p.totals.p50))} / ${ms(nan(p.totals.p99))} | ${p.rate} | ${p.p99} (${p.p99Target} ms) |`);
    }
  }
  return lines;
}

/** The table of recoveries of `summaries`. */
function recoveryTable(summaries: RunSummary[]): string[] {
  const lines = [
    `| subject | recovery | depth back (≤ baseline) | within ${TARGETS.depthBackSeconds} s | size back (≤ baseline) | within ${TARGETS.sizeBackSeconds / 60} min |`,
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const s of summaries) {
    for (const p of s.phases.filter((x) => x.depthBack)) {
      const span = p.phase.end - p.phase.start;
      const after = `${p.phase.name} (after ${s.phases[s.phases.indexOf(p) - 1]?.phase.name})`;
      lines.push(`| ${s.run.subject} | ${after} | ${seconds(p.depthBack, span)} | ${p.depthBack!.verdict} | ${seconds(p.sizeBack, span)} | ${p.sizeBack!.verdict} |`);
    }
  }
  return lines;
}

/** What each subject's run was: its workers, baselines, counts. */
function runNotes(summaries: RunSummary[]): string[] {
  return summaries.map((s) => {
    const r = s.run;
    const pressures = Object.entries(r.pressures).map(([name, what]) => `${name}: ${what}`).join("; ");
    // On a shared server another database's transaction can hold the horizon too; say so when it did.
    const outside = r.samples.reduce<Sample | undefined>((a, x) => ((x.outsideXminAge ?? 0) > (a?.outsideXminAge ?? 0) ? x : a), undefined);
    const neighbour = outside && (outside.outsideXminAge ?? 0) > 1_000
      ? `; **a session outside the subject's database held an xmin up to ${int(outside.outsideXminAge)} transactions old** (database ${outside.outsideXminHolder}, at ${outside.t} s): ` +
        "a transaction with an xid anywhere on the server holds back this database's horizon too"
      : "";
    return `- **${r.subject} ${r.version}**: ${r.workers}; started ${r.startedAt}; ${r.enqueued.toLocaleString("en")} tasks enqueued` +
      `${r.failedBatches ? `, ${r.failedBatches} batches failed (${r.firstEnqueueError})` : ""}; baselines: depth ≤ ${int(s.depthBaseline)}, ` +
      `size ≤ ${mib(s.sizeBaseline)} MiB; ${r.lostDatagrams} report datagrams lost${r.malformedStarts ? `, ${r.malformedStarts} starts without an enqueue time` : ""}; ${pressures}${neighbour}.`;
  });
}

/** The Markdown section of one rate (R, W): medians, recoveries, notes, and the plot. */
export function rateSection(summaries: RunSummary[], svgName: string): string {
  const { rate, inFlight } = summaries[0].run;
  return [
    `## R = ${rate.toLocaleString("en")} tasks/s, W = ${inFlight} in flight`, "",
    "Medians over each phase's 5 s samples (done: handlers finished per s; depth: enqueued − started; latency: enqueue → handler start; " +
    "size: tables and indexes of the subject's schema, without what it keeps on purpose (pgbg kept: its history); xmin age: transactions). The targets are graded on each phase taken whole: " +
    "acked and done are the phase's counts over its length, the whole-phase p99 is over every start in it, and the rate passes when " +
    "the tasks done in the phase are at least those acknowledged in it less the depth baseline.", "",
    ...mediansTable(summaries), "",
    "Recovery: from the end of the pressure before it to the first sample back at the baseline (samples every 5 s).", "",
    ...recoveryTable(summaries), "",
    ...runNotes(summaries), "",
    `![R = ${rate}/s](${svgName})`, "",
  ].join("\n");
}
