/**
 * The readable (non-JSON) output of `pgbg status`, `pgbg list` and `pgbg compact`.
 *
 * @module
 */
import type { Status, TaskInfo, TaskPage } from "../lib/admin.ts";
import type { CompactResult } from "../lib/compact.ts";
import type { FlowInfo } from "../lib/flow-admin.ts";
import { formatDuration } from "../lib/duration.ts";
import { formatAge, formatBytes, formatTable, oneLine } from "./table.ts";

/** `pgbg status` as text: tasks per queue and name, unregistered names, workers, paused queues, schedules, the newest completed tasks kept. */
export function formatStatus(status: Status): string {
  const parts: string[] = [];
  parts.push(status.tasks.length
    ? formatTable(
      ["QUEUE", "TASK", "QUEUED", "SCHEDULED", "RUNNING", "FAILED", "OLDEST QUEUED", "DONE/1M", "FAILED/1M", "RETRIED/1M"],
      status.tasks.map((t) => [
        t.queue, t.name, t.queued, t.scheduled, t.running, t.failed, formatAge(t.oldestQueuedMs),
        t.completedLastMinute, t.failedLastMinute, t.retriedLastMinute,
      ]),
    )
    : "no tasks\n");
  if (status.unregistered.length) {
    parts.push("\nwaiting tasks whose name no live worker registered:\n");
    parts.push(formatTable(["QUEUE", "TASK", "TASKS"], status.unregistered.map((u) => [u.queue, u.name, u.tasks])));
  }
  parts.push(`\n${status.workers.length} live worker(s)\n`);
  if (status.workers.length) {
    parts.push(formatTable(
      ["PID", "HOST", "RUNTIME", "RUNNING", "QUEUES", "STARTED", "LAST HEARTBEAT"],
      status.workers.map((w) => [
        w.pid, w.hostname, w.runtime, `${w.running}/${w.concurrency}${w.idle ? " idle" : ""}`, w.queues?.join(",") ?? "(all)",
        w.startedAt.toISOString(), `${formatAge(w.heartbeatAgeMs)} ago`,
      ]),
    ));
  }
  if (status.queues.length) {
    parts.push("\nqueue controls:\n");
    parts.push(formatTable(
      ["QUEUE", "STATE", "CONCURRENCY LIMIT", "PER GROUP", "RATE LIMIT", "STARTS IN INTERVAL", "GROUP RATE LIMIT"],
      status.queues.map((q) => [
        q.queue, q.pausedAt ? `paused since ${q.pausedAt.toISOString()}` : "running", q.concurrency ?? "none", q.groupConcurrency ?? "none",
        q.rate ? `${q.rate.limit}/${formatDuration(q.rate.intervalMs)}` : "none", q.rate?.recentStarts ?? "",
        q.groupRate ? `${q.groupRate.limit}/${formatDuration(q.groupRate.intervalMs)}` : "none",
      ]),
    ));
  }
  if (status.schedules.length) {
    parts.push("\nschedules:\n");
    parts.push(formatTable(
      ["SCHEDULE", "TASK", "CRON", "TIME ZONE", "LAST TICK", "LAST TASK", "NEXT TICK", "STATE"],
      status.schedules.map((s) => [
        s.name, s.task, s.cron, s.timezone, s.lastTick.toISOString(), s.lastTaskId ?? "", s.nextTick?.toISOString() ?? "",
        s.runRequestedAt ? "run asked for" : s.active ? "active" : "no host defines it",
      ]),
    ));
  }
  if (status.completed.length) {
    parts.push("\nnewest completed tasks kept (pgbg list --state completed for more):\n");
    parts.push(formatTable(
      ["ID", "TASK", "QUEUE", "FINISHED AT", "RESULT"],
      status.completed.map((t) => [t.id, t.name, t.queue, t.finishedAt!.toISOString(), t.result === null ? "" : oneLine(JSON.stringify(t.result), 60)]),
    ));
  }
  return parts.join("");
}

/**
 * `pgbg list` as text: one line per task, its last error cut to fit; for
 * finished tasks (completed, cancelled) when it finished and its result
 * instead of when it runs; after a full page, how to get the next.
 */
export function formatTaskList({ tasks, next }: TaskPage): string {
  if (!tasks.length) return "no tasks\n";
  const more = next ? `more: the same command with --after ${next}\n` : "";
  const finished = tasks.every((t) => t.finishedAt);
  const error = (t: TaskInfo) => (t.lastError ? oneLine(`${t.lastError.name ?? "Error"}: ${t.lastError.message ?? ""}`, 80) : "");
  if (finished) {
    return formatTable(
      ["ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "FINISHED AT", "RESULT", "LAST ERROR"],
      tasks.map((t) => [
        t.id, t.state, t.name, t.queue, String(t.attempts), t.finishedAt!.toISOString(), t.result === null ? "" : oneLine(JSON.stringify(t.result), 60), error(t),
      ]),
    ) + more;
  }
  return formatTable(
    ["ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "RUN AT", "LAST ERROR"],
    tasks.map((t) => [
      t.id, t.cancelRequestedAt ? `${t.state} (cancelling)` : t.state, t.name, t.queue, `${t.attempts}${t.maxAttempts ? `/${t.maxAttempts}` : ""}`,
      t.runAt.toISOString(), error(t),
    ]),
  ) + more;
}

/** `pgbg list --flow ID` as text: the flow, then one line per task with the tasks it waits for. */
export function formatFlow(id: string, flow: FlowInfo | null): string {
  if (!flow) return "";
  const head = `${flow.kind} ${flow.id}: ${flow.size} task(s)${flow.then ? ` and its completion task ${flow.then}` : ""}, ` +
    `on a parent's failure: ${flow.onParentFailure}, enqueued ${flow.createdAt.toISOString()}\n`;
  const error = (e: FlowInfo["tasks"][number]["lastError"]) => (e ? oneLine(`${e.name ?? "Error"}: ${e.message ?? ""}`, 60) : "");
  return head + formatTable(
    ["ID", "STATE", "TASK", "ATTEMPTS", "AFTER", "LAST ERROR"],
    flow.tasks.map((t) => [t.id, t.state, t.name ?? "", t.attempts === null ? "" : String(t.attempts), t.parents.join(","), error(t.lastError)]),
  );
}

/** `pgbg compact` as text: what was rebuilt or dropped, or why nothing was. Refusals are the exit line's, not this. */
export function formatCompaction(r: CompactResult): string {
  const lines: string[] = [];
  if (r.dropped.length) lines.push(`dropped invalid index(es) an interrupted REINDEX CONCURRENTLY left: ${r.dropped.join(", ")}`);
  const table = `${r.schema}.task`;
  const sizes = `${formatBytes(r.before.indexBytes)} for ~${r.before.liveRows} live rows`;
  if (r.outcome === "compacted") {
    lines.push(`compacted the indexes of ${table}: ${formatBytes(r.before.indexBytes)} → ${formatBytes(r.after!.indexBytes)} (~${r.before.liveRows} live rows) in ${r.durationMs} ms`);
  } else if (r.outcome === "horizon-held") {
    lines.push(`the indexes of ${table} are bloated (${sizes}), but a transaction open for ${Math.round(r.before.snapshotAgeSeconds)} s holds vacuum back; nothing rebuilt (--force rebuilds them anyway)`);
  } else if (r.outcome === "not-bloated") {
    lines.push(`the indexes of ${table} are not bloated (${sizes}); nothing rebuilt (--force rebuilds them anyway)`);
  }
  return lines.map((l) => `${l}\n`).join("");
}
