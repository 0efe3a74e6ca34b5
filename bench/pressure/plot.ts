/**
 * The pressure bench's plots, written by hand as SVG (no dependency): one
 * figure per rate, a panel per series over the run's time, a line per
 * subject, the phases shaded and named, axes with ticks and units.
 */
import type { Phase, PhaseKind } from "./phases.ts";
import type { SubjectRun } from "./run-subject.ts";
import type { Sample } from "./sampler.ts";

/** One panel: a title with its unit, how to read each sample, and its scale. */
interface Panel {
  title: string;
  lines: { value: (s: Sample) => number | null; dash?: string; label?: string }[];
  log?: boolean;
  /** A reference line per phase (the offered rate), drawn grey. */
  reference?: (phase: Phase, run: SubjectRun) => number;
}

const PANELS: Panel[] = [
  { title: "completion rate (tasks/s); grey: offered", lines: [{ value: (s) => s.completionRate }], reference: (p, r) => r.rate * p.rateFactor },
  { title: "queue depth (tasks enqueued − started)", lines: [{ value: (s) => s.depth }] },
  {
    title: "start latency (ms, log scale); solid p99, dashed p50", log: true,
    lines: [{ value: (s) => s.p99, label: "p99" }, { value: (s) => s.p50, dash: "5 3", label: "p50" }],
  },
  { title: "producer lag (tasks due, not yet sent)", lines: [{ value: (s) => s.producerLag }] },
  { title: "dead tuples (n_dead_tup, subject's tables)", lines: [{ value: (s) => s.deadTuples }] },
  { title: "size (MB, subject's tables + indexes)", lines: [{ value: (s) => (s.sizeBytes === null ? null : s.sizeBytes / 1e6) }] },
  { title: "oldest xmin age (transactions)", lines: [{ value: (s) => s.xminAge }] },
  { title: "machine load average (1 min), during each subject's run", lines: [{ value: (s) => s.load1 }] },
];

const COLOURS: Record<string, string> = { "pgbg": "#1f62c4", "graphile-worker": "#d9480f", "pg-boss": "#2b8a3e" };
const SPARE_COLOURS = ["#862e9c", "#495057", "#c2255c"];
const SHADE: Record<PhaseKind, string> = { clean: "#ffffff", held: "#fde0dc", recovery: "#e3f4e6", overload: "#fff0cc", readers: "#ebe4f7" };

// Geometry: two columns of panels, each a plot area with margins for the axes.
const PANEL_W = 660;
const PANEL_H = 210;
const LEFT = 72;
const RIGHT = 16;
const TOP = 34;
const BOTTOM = 36;
const HEADER = 96;
const COLUMNS = 2;

const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Round tick values covering [0, max] (steps of 1, 2 or 5 × 10^k), about `count` of them. */
export function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Log-scale ticks over [lo, hi]: each decade, with 2 and 5 when there are few decades. */
function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  const decades = Math.log10(hi / lo);
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of decades <= 3 ? [1, 2, 5] : [1]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
  }
  return ticks;
}

/** A tick label: 1.5k, 2M, 0.2. */
function tickLabel(v: number): string {
  const abs = Math.abs(v);
  if (abs >= 1e6) return `${Number((v / 1e6).toPrecision(3))}M`;
  if (abs >= 1e4) return `${Number((v / 1e3).toPrecision(3))}k`;
  return `${Number(v.toPrecision(3))}`;
}

/** The y mapping of a panel, from its values. */
function yScale(values: number[], log: boolean | undefined, height: number): { y: (v: number) => number; ticks: number[] } {
  if (log) {
    const positive = values.filter((v) => v > 0);
    const lo = 10 ** Math.floor(Math.log10(Math.min(1, ...positive)));
    const hi = 10 ** Math.ceil(Math.log10(Math.max(10, ...positive)));
    const y = (v: number) => height - (Math.log10(Math.max(v, lo) / lo) / Math.log10(hi / lo)) * height;
    return { y, ticks: logTicks(lo, hi) };
  }
  const ticks = niceTicks(Math.max(0, ...values));
  const top = ticks.at(-1)!;
  return { y: (v: number) => height - (v / top) * height, ticks };
}

/** A path through the present values, broken where a value is missing. */
function path(samples: Sample[], value: (s: Sample) => number | null, x: (t: number) => number, y: (v: number) => number): string {
  let d = "";
  let pen = "M";
  for (const s of samples) {
    const v = value(s);
    if (v === null || !Number.isFinite(v)) {
      pen = "M";
      continue;
    }
    d += `${pen}${x(s.t).toFixed(1)},${y(v).toFixed(1)}`;
    pen = "L";
  }
  return d;
}

/** The phase bands of a panel: shaded, with their names when `labelled` and there is room. */
function phaseBands(phases: Phase[], x: (t: number) => number, height: number, labelled: boolean): string[] {
  const out: string[] = [];
  for (const p of phases) {
    const x0 = x(p.start);
    const w = x(p.end) - x0;
    out.push(`<rect x="${x0.toFixed(1)}" y="0" width="${w.toFixed(1)}" height="${height}" fill="${SHADE[p.kind]}"/>`);
    out.push(`<line x1="${x0.toFixed(1)}" y1="0" x2="${x0.toFixed(1)}" y2="${height}" stroke="#adb5bd" stroke-width="0.6"/>`);
    if (!labelled) continue;
    // About 5.5 px per character at 10 px; a band too narrow gets a shorter name, or none.
    const name = p.name.length * 5.5 < w - 4 ? p.name : p.name.split(" ")[0].length * 5.5 < w - 4 ? p.name.split(" ")[0] : "";
    if (name) out.push(`<text x="${(x0 + w / 2).toFixed(1)}" y="11" font-size="10" text-anchor="middle" fill="#495057">${escape(name)}</text>`);
  }
  return out;
}

/** One panel at (ox, oy) for `runs`, which share one schedule. */
function panelSvg(panel: Panel, runs: SubjectRun[], colour: (subject: string) => string, ox: number, oy: number, labelled: boolean): string {
  const w = PANEL_W - LEFT - RIGHT;
  const h = PANEL_H - TOP - BOTTOM;
  const phases = runs[0].phases;
  const end = Math.max(phases.at(-1)!.end, ...runs.flatMap((r) => r.samples.map((s) => s.t)));
  const x = (t: number) => (t / end) * w;
  const values = runs.flatMap((r) => panel.lines.flatMap((l) => r.samples.map(l.value)))
    .concat(panel.reference ? runs.flatMap((r) => phases.map((p) => panel.reference!(p, r))) : [])
    .filter((v): v is number => v !== null && Number.isFinite(v));
  const { y, ticks } = yScale(values, panel.log, h);
  const out = [`<g transform="translate(${ox + LEFT},${oy + TOP})">`, ...phaseBands(phases, x, h, labelled)];
  for (const t of ticks) {
    out.push(`<line x1="0" y1="${y(t).toFixed(1)}" x2="${w}" y2="${y(t).toFixed(1)}" stroke="#dee2e6" stroke-width="0.6"/>`);
    out.push(`<text x="-6" y="${(y(t) + 3.5).toFixed(1)}" font-size="10" text-anchor="end" fill="#343a40">${tickLabel(t)}</text>`);
  }
  for (const t of niceTicks(end, 8).filter((t) => t <= end)) {
    out.push(`<line x1="${x(t).toFixed(1)}" y1="${h}" x2="${x(t).toFixed(1)}" y2="${h + 4}" stroke="#343a40"/>`);
    out.push(`<text x="${x(t).toFixed(1)}" y="${h + 15}" font-size="10" text-anchor="middle" fill="#343a40">${tickLabel(t)}</text>`);
  }
  out.push(`<text x="${w}" y="${h + 29}" font-size="10" text-anchor="end" fill="#495057">time since the run's start (s)</text>`);
  if (panel.reference) {
    for (const r of runs.slice(0, 1)) {
      const ref = phases.map((p) => `M${x(p.start).toFixed(1)},${y(panel.reference!(p, r)).toFixed(1)}H${x(p.end).toFixed(1)}`).join("");
      out.push(`<path d="${ref}" stroke="#868e96" stroke-width="1.5" fill="none"/>`);
    }
  }
  for (const r of runs) {
    for (const l of panel.lines) {
      const d = path(r.samples, l.value, x, y);
      if (d) out.push(`<path d="${d}" stroke="${colour(r.subject)}" stroke-width="1.6" fill="none"${l.dash ? ` stroke-dasharray="${l.dash}"` : ""}/>`);
    }
  }
  out.push(`<rect x="0" y="0" width="${w}" height="${h}" fill="none" stroke="#343a40" stroke-width="0.8"/>`);
  out.push(`<text x="0" y="-10" font-size="13" font-weight="bold" fill="#212529">${escape(panel.title)}</text>`, "</g>");
  return out.join("\n");
}

/** The figure's header: title, the subjects' colours, the phases' shades. */
function header(runs: SubjectRun[], colour: (subject: string) => string, title: string): string {
  const out = [`<text x="16" y="26" font-size="17" font-weight="bold" fill="#212529">${escape(title)}</text>`];
  let x = 16;
  for (const r of runs) {
    out.push(`<line x1="${x}" y1="48" x2="${x + 28}" y2="48" stroke="${colour(r.subject)}" stroke-width="3"/>`);
    const label = `${r.subject} ${r.version} (${r.workers})`;
    out.push(`<text x="${x + 34}" y="52" font-size="12" fill="#212529">${escape(label)}</text>`);
    x += 44 + label.length * 6.4;
  }
  x = 16;
  const kinds: [PhaseKind, string][] = [["clean", "clean"], ["held", "xmin horizon held"], ["overload", "overload 1.5 × R"], ["readers", "2 repeatable-read counters"], ["recovery", "recovery"]];
  for (const [kind, label] of kinds) {
    out.push(`<rect x="${x}" y="66" width="22" height="14" fill="${SHADE[kind]}" stroke="#adb5bd" stroke-width="0.6"/>`);
    out.push(`<text x="${x + 28}" y="77" font-size="12" fill="#212529">${escape(label)}</text>`);
    x += 44 + label.length * 6.4;
  }
  return out.join("\n");
}

/** The SVG figure of `runs` (one rate, one schedule), titled `title`. */
export function plotRuns(runs: SubjectRun[], title: string): string {
  const colour = (subject: string) => COLOURS[subject] ?? SPARE_COLOURS[runs.findIndex((r) => r.subject === subject) % SPARE_COLOURS.length];
  const rows = Math.ceil(PANELS.length / COLUMNS);
  const width = PANEL_W * COLUMNS;
  const height = HEADER + rows * PANEL_H;
  const panels = PANELS.map((panel, i) =>
    panelSvg(panel, runs, colour, (i % COLUMNS) * PANEL_W, HEADER + Math.floor(i / COLUMNS) * PANEL_H, true)
  );
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    header(runs, colour, title),
    ...panels,
    "</svg>",
    "",
  ].join("\n");
}
