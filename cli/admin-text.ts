/**
 * The readable (non-JSON) output of `pgbg status` and `pgbg list`.
 *
 * @module
 */
import type { Status, TaskRow } from "../lib/admin.ts";
import { formatAge, formatTable, oneLine } from "./table.ts";

/** `pgbg status` as text: tasks per queue and name, unregistered names, workers. */
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
        w.startedAt, `${formatAge(w.heartbeatAgeMs)} ago`,
      ]),
    ));
  }
  return parts.join("");
}

/** `pgbg list` as text: one line per task, its last error cut to fit. */
export function formatTaskList(tasks: TaskRow[]): string {
  if (!tasks.length) return "no tasks\n";
  return formatTable(
    ["ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "RUN AT", "LAST ERROR"],
    tasks.map((t) => [
      t.id, t.cancelRequestedAt ? `${t.state} (cancelling)` : t.state, t.name, t.queue, `${t.attempts}${t.maxAttempts ? `/${t.maxAttempts}` : ""}`,
      t.runAt, t.lastError ? oneLine(`${t.lastError.name ?? "Error"}: ${t.lastError.message ?? ""}`, 80) : "",
    ]),
  );
}
