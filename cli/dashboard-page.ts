/**
 * The dashboard's page, script and style, as strings: served as they are,
 * with no front-end build at run time. The script builds every cell with
 * textContent, never HTML, so task names and error messages cannot inject
 * markup.
 *
 * @module
 */

import { chartsSection } from "./dashboard-charts.ts";

/** The login page; `error` is shown above the form. */
export function loginPage(error?: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgbg dashboard: sign in</title>
<link rel="stylesheet" href="/dashboard.css"></head>
<body><main class="login">
<h1>pgbg</h1>
${error ? `<p class="error" id="login-error">${error.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`)}</p>` : ""}
<form method="post" action="/login">
<label>Token <input type="password" name="token" id="token" autocomplete="current-password" autofocus required></label>
<button type="submit" id="sign-in">Sign in</button>
</form>
<p class="hint">The token given to <code>pgbg dashboard</code> with --token or PGBG_DASHBOARD_TOKEN.</p>
</main></body></html>
`;
}

/**
 * The dashboard: charts of the last hour or day (cli/dashboard-charts.ts), status, queues (pause and resume), schedules (run now),
 * workers, failed tasks, a search and filtered list of tasks with a task's
 * page, flows (their graph, and cancel) and completed tasks kept in the
 * history, filled in by dashboardScript. `csrf` (hex):
 * the token the script sends with every action.
 */
export const dashboardPage = (csrf: string): string => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pgbg dashboard</title>
<meta name="pgbg-csrf" content="${csrf.replace(/[^0-9a-f]/g, "")}">
<link rel="stylesheet" href="/dashboard.css"><script src="/dashboard.js" defer></script><script src="/charts.js" defer></script></head>
<body>
<header><h1>pgbg</h1><span id="updated">loading…</span><span id="problem" class="error"></span></header>
${chartsSection}<section><h2>Tasks</h2>
<table id="tasks"><thead><tr><th>Queue</th><th>Task</th><th>Queued</th><th>Scheduled</th><th>Running</th><th>Failed</th>
<th>Oldest queued</th><th>Done/1m</th><th>Failed/1m</th><th>Retried/1m</th></tr></thead><tbody></tbody></table>
<p id="unregistered" class="warning"></p></section>
<section><h2>Queues</h2>
<table id="queues"><thead><tr><th>Queue</th><th>State</th><th>Concurrency limit</th><th>Per group</th><th>Rate limit</th><th>Starts in interval</th><th>Group rate limit</th><th>Queued</th><th>Scheduled</th><th>Running</th><th>Done/1m</th><th>Failed/1m</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Schedules</h2>
<table id="schedules"><thead><tr><th>Schedule</th><th>Task</th><th>Cron</th><th>Time zone</th><th>Last tick</th><th>Last task</th><th>Next tick</th><th>State</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Workers</h2>
<table id="workers"><thead><tr><th>PID</th><th>Host</th><th>Runtime</th><th>Running</th><th>Queues</th><th>Last heartbeat</th></tr></thead><tbody></tbody></table></section>
<section><h2>Failed tasks <button id="retry-all" type="button">Retry all</button></h2>
<table id="failed"><thead><tr><th>ID</th><th>Task</th><th>Queue</th><th>Attempts</th><th>Failed at</th><th>Last error</th><th></th></tr></thead><tbody></tbody></table></section>
<section><h2>Find tasks</h2>
<form id="find"><input id="search" type="search" placeholder="id, dedup key or the start of a task name" aria-label="search">
<select id="filter-state" aria-label="state"><option value="">any state</option><option>queued</option><option>scheduled</option><option>waiting</option>
<option>running</option><option>failed</option><option>completed</option><option>cancelled</option></select>
<input id="filter-queue" placeholder="queue" aria-label="queue"><input id="filter-name" placeholder="task name starts with" aria-label="task name starts with">
<input id="filter-key" placeholder="dedup key" aria-label="dedup key">
<label>enqueued from <input id="filter-from" type="datetime-local" step="1"></label><label>to <input id="filter-to" type="datetime-local" step="1"></label>
<button id="filter" type="submit">Find</button></form>
<p id="found-count" class="hint"></p>
<table id="found"><thead><tr><th>ID</th><th>Task</th><th>Queue</th><th>State</th><th>Attempts</th><th>Enqueued</th><th>Last error</th><th></th></tr></thead><tbody></tbody></table>
<button id="found-next" type="button" hidden>Next page</button>
<div id="task" hidden><h3 id="task-title"></h3><span id="task-actions"></span>
<table id="task-fields"><tbody></tbody></table>
<h4>Attempts</h4>
<table id="task-errors"><thead><tr><th>Attempt</th><th>Worker</th><th>Started</th><th>Ended</th><th>Error</th></tr></thead><tbody></tbody></table></div></section>
<section><h2>Flows and batches</h2>
<table id="flows"><thead><tr><th>ID</th><th>Kind</th><th>Tasks</th><th>Pending</th><th>Enqueued</th><th></th></tr></thead><tbody></tbody></table>
<div id="flow" hidden><h3 id="flow-title"></h3><button id="cancel-flow" type="button">Cancel flow</button>
<svg id="flow-graph" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="the flow's tasks and their dependencies"></svg>
<table id="flow-tasks"><thead><tr><th>ID</th><th>Task</th><th>State</th><th>Attempts</th><th>After</th><th>Last error</th></tr></thead><tbody></tbody></table></div></section>
<section><h2>Completed tasks</h2>
<p class="hint">Those kept in the history: tasks with a result schema or a retention, newest first.</p>
<table id="completed"><thead><tr><th>ID</th><th>Task</th><th>Queue</th><th>Attempts</th><th>Finished at</th><th>Result</th></tr></thead><tbody></tbody></table></section>
</body></html>
`;

/** The dashboard's script: polls the API every 2 s and wires the buttons. */
export const dashboardScript = `"use strict";
const age = (ms) => ms === null ? "-" : ms < 1000 ? Math.round(ms) + "ms" : ms < 60000 ? Math.floor(ms / 1000) + "s"
  : ms < 3600000 ? Math.floor(ms / 60000) + "m " + Math.floor(ms % 60000 / 1000) + "s" : Math.floor(ms / 3600000) + "h " + Math.floor(ms % 3600000 / 60000) + "m";
function cell(row, text) { const td = document.createElement("td"); td.textContent = String(text); row.appendChild(td); return td; }
function fill(id, rows, render) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows.map((r) => { const tr = document.createElement("tr"); render(tr, r); return tr; }));
}
const csrf = document.querySelector('meta[name="pgbg-csrf"]').content;
async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "content-type": "application/json", "x-pgbg-csrf": csrf }, body: JSON.stringify(body),
  });
  if (res.status === 401) { location.reload(); throw new Error("signed out"); }
  if (!res.ok) throw new Error((await res.text()) || res.statusText);
  return res.json();
}
function button(td, label, onClick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.className = label.toLowerCase();
  b.addEventListener("click", async () => { b.disabled = true; try { await onClick(); } catch (e) { show(e); } await refresh(); });
  td.appendChild(b);
}
function show(error) { document.getElementById("problem").textContent = error ? String(error.message || error) : ""; }
// Refreshes overlap when the server is slow (every 2 s, and after each
// action): one whose answers come after a later one's was drawn is dropped,
// so that an older status never redraws a queue's Pause over its Resume.
let refreshesStarted = 0, refreshDrawn = 0;
async function refresh() {
  const seq = ++refreshesStarted;
  try {
    const [status, failed, completed] = await Promise.all([api("/api/status"), api("/api/failed"), api("/api/completed")]);
    if (seq < refreshDrawn) return;
    refreshDrawn = seq;
    fill("tasks", status.tasks, (tr, t) => {
      tr.dataset.queue = t.queue; tr.dataset.task = t.name;
      for (const v of [t.queue, t.name, t.queued, t.scheduled, t.running, t.failed, age(t.oldestQueuedMs), t.completedLastMinute, t.failedLastMinute, t.retriedLastMinute]) cell(tr, v);
    });
    // Defined by /charts.js, which may not have run yet.
    if (typeof updateChartFilters === "function") updateChartFilters(status.tasks);
    document.getElementById("unregistered").textContent = status.unregistered.length
      ? "Waiting tasks no live worker registered: " + status.unregistered.map((u) => u.queue + "/" + u.name + " (" + u.tasks + ")").join(", ") : "";
    const controls = new Map(status.queues.map((q) => [q.queue, q]));
    const paused = new Map(status.queues.filter((q) => q.pausedAt).map((q) => [q.queue, q.pausedAt]));
    const queues = [...new Set([...status.tasks.map((t) => t.queue), ...controls.keys()])].sort();
    fill("queues", queues, (tr, q) => {
      tr.dataset.queue = q;
      cell(tr, q); cell(tr, paused.has(q) ? "paused since " + paused.get(q) : "running");
      cell(tr, controls.get(q)?.concurrency ?? "none");
      cell(tr, controls.get(q)?.groupConcurrency ?? "none");
      const rate = controls.get(q)?.rate;
      cell(tr, rate ? rate.limit + " per " + rate.intervalMs + " ms" : "none");
      cell(tr, rate ? rate.recentStarts : "");
      const groupRate = controls.get(q)?.groupRate;
      cell(tr, groupRate ? groupRate.limit + " per " + groupRate.intervalMs + " ms" : "none");
      const of = status.tasks.filter((t) => t.queue === q);
      const sum = (field) => of.reduce((n, t) => n + t[field], 0);
      for (const field of ["queued", "scheduled", "running", "completedLastMinute", "failedLastMinute"]) cell(tr, sum(field));
      const actions = cell(tr, "");
      if (paused.has(q)) button(actions, "Resume", () => api("/api/resume", { queue: q }));
      else button(actions, "Pause", () => api("/api/pause", { queue: q }));
    });
    fill("schedules", status.schedules, (tr, s) => {
      tr.dataset.schedule = s.name;
      for (const v of [s.name, s.task, s.cron, s.timezone, s.lastTick, s.lastTaskId || "", s.nextTick || "", s.runRequestedAt ? "run asked for" : s.active ? "active" : "no host defines it"]) cell(tr, v);
      button(cell(tr, ""), "Run now", () => api("/api/run-schedule", { name: s.name }));
    });
    fill("workers", status.workers, (tr, w) => {
      for (const v of [w.pid, w.hostname, w.runtime, w.running + "/" + w.concurrency + (w.idle ? " idle" : ""), w.queues ? w.queues.join(",") : "(all)", age(w.heartbeatAgeMs) + " ago"]) cell(tr, v);
    });
    fill("failed", failed.tasks, (tr, t) => {
      tr.dataset.id = t.id;
      for (const v of [t.id, t.name, t.queue, t.attempts, t.failedAt || "", t.lastError ? (t.lastError.name || "Error") + ": " + (t.lastError.message || "") : ""]) cell(tr, v);
      const actions = cell(tr, "");
      button(actions, "Retry", () => api("/api/retry", { ids: [t.id] }));
      button(actions, "Cancel", () => api("/api/cancel", { ids: [t.id] }));
    });
    fill("completed", completed.tasks, (tr, t) => {
      tr.dataset.id = t.id;
      for (const v of [t.id, t.name, t.queue, t.attempts, t.finishedAt, t.result === null ? "" : JSON.stringify(t.result)]) cell(tr, v);
    });
    await refreshFlows();
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    show();
  } catch (error) { show(error); }
}
let shownFlow = null;
const SVG = "http://www.w3.org/2000/svg";
function svg(parent, tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  parent.appendChild(el);
  return el;
}
/** Draws a flow's tasks in columns by depth (a task one column right of its deepest parent), an arrow from each parent to its child. */
function drawFlow(flow) {
  const graph = document.getElementById("flow-graph");
  graph.replaceChildren();
  const byId = new Map(flow.tasks.map((t) => [t.id, t]));
  if (byId.size > 200) { svg(graph, "text", { x: 10, y: 20 }, "too many tasks to draw (" + byId.size + "): the table lists them"); graph.setAttribute("height", 30); return; }
  const depth = new Map();
  const depthOf = (id, path) => {
    if (depth.has(id)) return depth.get(id);
    if (path.has(id)) return 0;
    path.add(id);
    const parents = (byId.get(id)?.parents ?? []).filter((p) => byId.has(p));
    const d = parents.length ? 1 + Math.max(...parents.map((p) => depthOf(p, path))) : 0;
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const t of flow.tasks) (columns[depthOf(t.id, new Set())] ??= []).push(t);
  const at = new Map();
  columns.forEach((column, x) => column.forEach((t, y) => at.set(t.id, { x: 10 + x * 200, y: 10 + y * 50 })));
  graph.setAttribute("width", 10 + columns.length * 200);
  graph.setAttribute("height", 10 + Math.max(...columns.map((c) => c.length)) * 50);
  for (const t of flow.tasks) for (const p of t.parents) {
    if (!at.has(p)) continue;
    svg(graph, "line", { x1: at.get(p).x + 160, y1: at.get(p).y + 16, x2: at.get(t.id).x, y2: at.get(t.id).y + 16, class: "edge", "data-from": p, "data-to": t.id });
  }
  for (const t of flow.tasks) {
    const g = svg(graph, "g", { class: "node state-" + t.state, "data-id": t.id });
    svg(g, "rect", { x: at.get(t.id).x, y: at.get(t.id).y, width: 160, height: 32, rx: 4 });
    svg(g, "text", { x: at.get(t.id).x + 6, y: at.get(t.id).y + 20 }, (t.name ?? t.id) + " · " + t.state);
  }
}
async function showFlow(id) {
  const flow = await api("/api/flow?id=" + encodeURIComponent(id));
  shownFlow = id;
  document.getElementById("flow").hidden = false;
  document.getElementById("flow-title").textContent = flow.kind + " " + flow.id + ": " + flow.size + " task(s)" + (flow.then ? ", completion task " + flow.then : "") + ", on a parent's failure: " + flow.onParentFailure;
  drawFlow(flow);
  fill("flow-tasks", flow.tasks, (tr, t) => {
    tr.dataset.id = t.id;
    for (const v of [t.id, t.name ?? "", t.state, t.attempts ?? "", t.parents.join(", "), t.lastError ? (t.lastError.name || "Error") + ": " + (t.lastError.message || "") : ""]) cell(tr, v);
  });
}
async function refreshFlows() {
  const { flows } = await api("/api/flows");
  fill("flows", flows, (tr, f) => {
    tr.dataset.id = f.id;
    for (const v of [f.id, f.kind, f.size + (f.then ? " + 1" : ""), f.pending, f.createdAt]) cell(tr, v);
    button(cell(tr, ""), "Show", () => showFlow(f.id));
  });
  if (shownFlow) await showFlow(shownFlow);
}
const errorText = (e) => e ? (e.name || "Error") + ": " + (e.message || "") : "";
let foundAfter = null;
/** The filter form's query: a search by id, key or name prefix, or the filters (the enqueue time's range among them). */
function findQuery(after) {
  const q = new URLSearchParams();
  const search = document.getElementById("search").value.trim();
  if (search) q.set("q", search);
  for (const [field, id] of [["state", "filter-state"], ["queue", "filter-queue"], ["namePrefix", "filter-name"], ["key", "filter-key"]]) {
    const value = document.getElementById(id).value.trim();
    if (value) q.set(field, value);
  }
  // The browser's local time, sent as an instant.
  for (const [field, id] of [["from", "filter-from"], ["to", "filter-to"]]) {
    const value = document.getElementById(id).value;
    if (value) q.set(field, new Date(value).toISOString());
  }
  if (after) q.set("after", after);
  return q;
}
async function find(after) {
  const page = await api("/api/tasks?" + findQuery(after));
  const body = document.querySelector("#found tbody");
  if (!after) body.replaceChildren();
  for (const t of page.tasks) {
    const tr = document.createElement("tr");
    tr.dataset.id = t.id;
    for (const v of [t.id, t.name, t.queue, t.state, t.attempts, t.enqueuedAt || "", errorText(t.lastError)]) cell(tr, v);
    button(cell(tr, ""), "Open", () => showTask(t.id));
    body.appendChild(tr);
  }
  if (page.count) document.getElementById("found-count").textContent = (page.count.capped ? page.count.count + "+" : page.count.count) + " task(s)";
  foundAfter = page.next;
  document.getElementById("found-next").hidden = !page.next;
}
/** A task's page: its fields, input, last error with its stack, result, each attempt (newest first: the completed one, each failed one's error), and Retry and Cancel. */
async function showTask(id) {
  const t = await api("/api/task?id=" + encodeURIComponent(id));
  document.getElementById("task").hidden = false;
  document.getElementById("task-title").textContent = "Task " + t.id + ": " + t.name + " (" + t.state + ")";
  const actions = document.getElementById("task-actions");
  actions.replaceChildren();
  button(actions, "Retry", async () => { await api("/api/retry", { ids: [t.id] }); await showTask(t.id); });
  button(actions, "Cancel", async () => { await api("/api/cancel", { ids: [t.id] }); await showTask(t.id).catch(() => {}); });
  if (t.flowId) button(actions, "Show flow", () => showFlow(t.flowId));
  const fields = [["queue", t.queue], ["state", t.state], ["attempts", t.attempts + (t.maxAttempts ? " of " + t.maxAttempts : "")], ["dedup key", t.key ?? ""],
    ["group", t.group ?? ""], ["flow", t.flowId ?? ""], ["schedule", t.schedule ?? ""], ["priority", t.priority ?? ""], ["enqueued", t.enqueuedAt ?? ""], ["due", t.runAt ?? ""], ["failed", t.failedAt ?? ""],
    ["finished", t.finishedAt ?? ""], ["input", JSON.stringify(t.payload)], ["last error", errorText(t.lastError)],
    ["stack", t.lastError?.stack ?? ""], ["result", t.result === null || t.result === undefined ? "" : JSON.stringify(t.result)]];
  fill("task-fields", fields, (tr, [name, value]) => { tr.dataset.field = name; cell(tr, name); cell(tr, value).className = "value"; });
  const attempts = [...(t.errors ?? []), ...(t.completedAttempt ? [{ ...t.completedAttempt, completed: true }] : [])].reverse();
  fill("task-errors", attempts, (tr, e) => {
    tr.dataset.attempt = e.attempt;
    for (const v of [e.attempt ?? "", e.worker ?? "", e.startedAt ?? "", e.at ?? ""]) cell(tr, v);
    cell(tr, e.completed ? "completed" : errorText(e) + (e.stack ? "\\n" + e.stack : "")).className = "value";
  });
}
document.getElementById("find").addEventListener("submit", async (event) => { event.preventDefault(); try { await find(null); show(); } catch (e) { show(e); } });
document.getElementById("found-next").addEventListener("click", async () => { try { await find(foundAfter); } catch (e) { show(e); } });
document.getElementById("cancel-flow").addEventListener("click", async () => { try { await api("/api/cancel-flow", { id: shownFlow }); await showFlow(shownFlow); } catch (e) { show(e); } });
document.getElementById("retry-all").addEventListener("click", async () => { try { await api("/api/retry", { all: true }); } catch (e) { show(e); } await refresh(); });
refresh();
setInterval(refresh, 2000);
`;

/** The dashboard's style. */
export const dashboardStyle = `body { font: 14px system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #1b1f24; }
header { display: flex; gap: 1rem; align-items: baseline; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #d0d7de; vertical-align: top; }
td:nth-child(n+3) { font-variant-numeric: tabular-nums; }
#failed td:nth-child(6), #completed td:nth-child(6) { max-width: 40rem; overflow-wrap: anywhere; }
.error { color: #b42318; } .warning { color: #9a6700; } #updated, .hint { color: #57606a; }
.login { max-width: 22rem; margin: 4rem auto; } .login input { display: block; width: 100%; margin: .4rem 0 1rem; }
button { cursor: pointer; }
#find { display: flex; gap: .5rem; flex-wrap: wrap; } #search { min-width: 20rem; }
#task-fields td.value, #task-errors td.value { white-space: pre-wrap; overflow-wrap: anywhere; max-width: 60rem; font-family: ui-monospace, monospace; }
#flow-graph { display: block; margin: .8rem 0; } #flow-graph .edge { stroke: #8c959f; stroke-width: 1.5; }
#flow-graph rect { fill: #f6f8fa; stroke: #8c959f; } #flow-graph text { font-size: 12px; }
#flow-graph .state-completed rect, #flow-graph .state-finished rect { fill: #dafbe1; } #flow-graph .state-running rect { fill: #ddf4ff; }
#flow-graph .state-failed rect, #flow-graph .state-cancelled rect { fill: #ffebe9; } #flow-graph .state-waiting rect { fill: #fff8c5; }
`;
