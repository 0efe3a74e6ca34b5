/**
 * The dashboard's overview charts, as a script and its style served with
 * the page (`/charts.js`, after `/dashboard.js`, whose `api`, `svg` and
 * `show` it uses): outcomes, queue depth and start latency per minute over
 * the last hour or 24 hours, of every queue or one queue and task name,
 * from `GET /api/activity` (lib/activity.ts). Drawn by hand in SVG, with
 * DOM calls only: a charting library would weigh more than these lines, and
 * the strict Content-Security-Policy allows no inline style or script.
 *
 * Each series' line carries its values in `data-values` (comma-separated,
 * empty for a minute without a value), so that a test reads what was drawn.
 *
 * @module
 */

/** The overview section's markup, placed at the top of the page. */
export const chartsSection = `<section id="overview"><h2>Overview</h2>
<form id="chart-filters"><select id="chart-range" aria-label="time range"><option value="60">last hour</option><option value="1440">last 24 hours</option></select>
<select id="chart-queue" aria-label="queue"><option value="">every queue</option></select>
<select id="chart-name" aria-label="task name"><option value="">every task</option></select></form>
<div class="charts">
<figure><figcaption>Outcomes per minute</figcaption><svg id="chart-outcomes" class="chart" role="img" aria-label="completed, failed and retried per minute"></svg></figure>
<figure><figcaption>Queue depth</figcaption><svg id="chart-depth" class="chart" role="img" aria-label="queued, scheduled and running tasks, sampled each minute"></svg></figure>
<figure><figcaption>Start latency (due to start)</figcaption><svg id="chart-latency" class="chart" role="img" aria-label="p50 and p95 of the wait from due to start, per minute"></svg></figure>
</div></section>
`;

/** The charts' script. */
export const chartScript = `"use strict";
const CHARTS = {
  "chart-outcomes": { series: [["completed", "completed"], ["failed", "failed"], ["retried", "retried"]], unit: "" },
  "chart-depth": { series: [["queued", "queued"], ["scheduled", "scheduled"], ["running", "running"]], unit: "" },
  "chart-latency": { series: [["latencyP50Ms", "p50"], ["latencyP95Ms", "p95"]], unit: "ms" },
};
const W = 420, H = 170, PAD = { left: 44, right: 8, top: 32, bottom: 20 };
const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
// The latency buckets end at 5 minutes: a wait past them reads as that bound.
const fmt = (n, unit) => n === null ? "-" : unit === "ms" ? (n >= 300000 ? "≥ 5 min" : n < 1000 ? Math.round(n) + " ms" : (n / 1000).toFixed(1) + " s") : String(Math.round(n));
/** The smallest of 1, 2 and 5 times a power of ten at or above n: the y axis' top. */
function niceTop(n) {
  if (n <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(n)));
  return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= n);
}
/** Draws one chart: a line per series, gaps where a minute has no value, the y axis' top, three times, a legend with each series' total (or peak). */
function drawChart(id, minutes) {
  const { series, unit } = CHARTS[id];
  const chart = document.getElementById(id);
  chart.replaceChildren();
  chart.setAttribute("viewBox", "0 0 " + W + " " + H);
  const values = series.map(([key]) => minutes.map((m) => m[key]));
  const top = niceTop(Math.max(0, ...values.flat().filter((v) => v !== null)));
  const x = (i) => PAD.left + (minutes.length < 2 ? 0 : i * (W - PAD.left - PAD.right) / (minutes.length - 1));
  const y = (v) => H - PAD.bottom - v / top * (H - PAD.top - PAD.bottom);
  svg(chart, "line", { x1: PAD.left, y1: y(0), x2: W - PAD.right, y2: y(0), class: "axis" });
  svg(chart, "line", { x1: PAD.left, y1: y(top), x2: W - PAD.right, y2: y(top), class: "grid" });
  svg(chart, "text", { x: PAD.left - 4, y: y(top) + 4, class: "tick end" }, fmt(top, unit));
  svg(chart, "text", { x: PAD.left - 4, y: y(0) + 4, class: "tick end" }, "0");
  for (const i of [0, Math.floor((minutes.length - 1) / 2), minutes.length - 1]) {
    if (minutes[i]) svg(chart, "text", { x: x(i), y: H - 4, class: "tick middle" }, clock(minutes[i].minute));
  }
  let legendX = PAD.left;
  series.forEach(([key, label], s) => {
    const points = values[s];
    let d = "";
    points.forEach((v, i) => { if (v !== null) d += (i === 0 || points[i - 1] === null ? "M" : "L") + x(i).toFixed(1) + " " + y(v).toFixed(1); });
    svg(chart, "path", { d, class: "series key-" + key, "data-series": key, "data-values": points.map((v) => v === null ? "" : v).join(",") });
    // A value between two gaps makes no line: a dot shows it.
    points.forEach((v, i) => { if (v !== null && (points[i - 1] ?? null) === null && (points[i + 1] ?? null) === null) svg(chart, "circle", { cx: x(i), cy: y(v), r: 2.5, class: "key-" + key }); });
    const shown = points.filter((v) => v !== null);
    const summary = unit === "ms" || id === "chart-depth" ? "peak " + fmt(shown.length ? Math.max(...shown) : null, unit) : "total " + shown.reduce((n, v) => n + v, 0);
    const legend = svg(chart, "text", { x: legendX, y: 11, class: "legend key-" + key }, label + " · " + summary);
    legendX += legend.getComputedTextLength() + 14;
  });
  const readout = svg(chart, "text", { x: W - PAD.right, y: 25, class: "readout end" }, "");
  chart.onmousemove = (event) => {
    const box = chart.getBoundingClientRect();
    const i = Math.round(((event.clientX - box.left) * W / box.width - PAD.left) / ((W - PAD.left - PAD.right) / Math.max(1, minutes.length - 1)));
    const m = minutes[Math.max(0, Math.min(minutes.length - 1, i))];
    if (m) readout.textContent = clock(m.minute) + ": " + series.map(([key, label]) => label + " " + fmt(m[key], unit)).join(", ");
  };
  chart.onmouseleave = () => { readout.textContent = ""; };
}
const chartChoice = () => ({ range: document.getElementById("chart-range").value, queue: document.getElementById("chart-queue").value, name: document.getElementById("chart-name").value });
async function refreshCharts() {
  const { range, queue, name } = chartChoice();
  const q = new URLSearchParams({ minutes: range });
  if (queue) q.set("queue", queue);
  if (name) q.set("name", name);
  try {
    const { minutes } = await api("/api/activity?" + q);
    for (const id of Object.keys(CHARTS)) drawChart(id, minutes);
  } catch (error) { show(error); }
}
let chartTasks = [];
/** Keeps the queue and task-name choices in step with the queues and names the status lists; the choice made stays. */
function updateChartFilters(tasks) {
  chartTasks = tasks;
  const choose = (id, values, all) => {
    const select = document.getElementById(id);
    const chosen = select.value;
    const wanted = ["", ...values];
    if ([...select.options].map((o) => o.value).join("\\u0000") === wanted.join("\\u0000")) return;
    select.replaceChildren(...wanted.map((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v || all; return o; }));
    select.value = wanted.includes(chosen) ? chosen : "";
  };
  const queue = document.getElementById("chart-queue").value;
  choose("chart-queue", [...new Set(tasks.map((t) => t.queue))].sort(), "every queue");
  choose("chart-name", [...new Set(tasks.filter((t) => !queue || t.queue === queue).map((t) => t.name))].sort(), "every task");
}
// A new queue narrows the task names to its own before the charts are drawn.
document.getElementById("chart-queue").addEventListener("change", () => updateChartFilters(chartTasks));
for (const id of ["chart-range", "chart-queue", "chart-name"]) document.getElementById(id).addEventListener("change", refreshCharts);
refreshCharts();
setInterval(refreshCharts, 10000);
`;

/** The charts' style. */
export const chartStyle = `.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; }
.charts figure { margin: 0; } figcaption { color: #57606a; margin-bottom: .2rem; }
#chart-filters { display: flex; gap: .5rem; margin-bottom: .6rem; }
.chart { width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; background: #fff; }
.chart .axis { stroke: #8c959f; } .chart .grid { stroke: #eaeef2; }
.chart text { font-size: 10px; fill: #57606a; } .chart .end { text-anchor: end; } .chart .middle { text-anchor: middle; }
.chart path.series { fill: none; stroke-width: 1.6; stroke-linejoin: round; }
.key-completed, .key-running { stroke: #1a7f37; fill: #1a7f37; } .key-failed { stroke: #cf222e; fill: #cf222e; } .key-retried { stroke: #9a6700; fill: #9a6700; }
.key-queued, .key-latencyP50Ms { stroke: #0969da; fill: #0969da; } .key-scheduled, .key-latencyP95Ms { stroke: #8250df; fill: #8250df; }
.chart text.legend { stroke: none; }
`;
