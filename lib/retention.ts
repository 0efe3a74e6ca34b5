/**
 * How long finished tasks are kept: completed ones in the history (with
 * their result), failed ones in the queue's table, where they can be
 * retried. A task's definition may set both (`retention`); the service's
 * settings give the defaults.
 *
 * @module
 */
import type { AnyTask } from "./define.ts";

/** How long a completed task with a result schema is kept, unless its definition or the service says otherwise (ms): 1 hour. */
export const RESULT_RETENTION = 3_600_000;

/** The longest retention pgbg accepts (ms): 365 days. */
export const MAX_RETENTION = 365 * 24 * 3_600_000;

/** A task definition's retention of its finished tasks, each in ms. */
export interface Retention {
  /**
   * How long a completed task is kept, with its result; 0: not kept.
   * @default 1 hour for a task with a result schema, else the service's completedRetention (off)
   */
  completed?: number;
  /** How long a task that failed for good is kept; `Infinity`: for ever. @default the service's failedRetention (for ever) */
  failed?: number;
}

/**
 * How long a completed task of `task` is kept, in ms (0: not kept): its
 * definition's `retention.completed`, else the service's default when it
 * has one, else an hour for a task with a result schema.
 */
export function completedRetention(task: AnyTask, serviceDefault: number): number {
  return task.retention?.completed ?? (serviceDefault > 0 ? serviceDefault : task.result ? RESULT_RETENTION : 0);
}

/**
 * What enqueue stores for the statements that end a task where no
 * definition is loaded (an admin's cancel, the failed-task pruner): the
 * completed retention (null: not kept, or the service decides) and the
 * failed retention (null: the service's, for ever by default), in ms.
 */
export function storedRetention(task: AnyTask): [completed: number | null, failed: number | null] {
  const completed = task.retention?.completed ?? (task.result ? RESULT_RETENTION : null);
  const failed = task.retention?.failed;
  return [completed || null, failed === undefined || failed === Number.POSITIVE_INFINITY ? null : failed];
}

/** Why `retention` is malformed, or undefined when it is fine. */
export function retentionProblem(retention: unknown): string | undefined {
  if (retention === undefined) return undefined;
  if (typeof retention !== "object" || retention === null) return "must be an object { completed?, failed? } of milliseconds";
  for (const [key, value] of Object.entries(retention)) {
    if (key !== "completed" && key !== "failed") return `has an unknown field "${key}" (completed and failed are known)`;
    const forever = key === "failed" && value === Number.POSITIVE_INFINITY;
    if (value !== undefined && !forever && !(typeof value === "number" && Number.isInteger(value) && value >= 0 && value <= MAX_RETENTION)) {
      return `${key} must be a whole number of milliseconds from 0 to ${MAX_RETENTION}${key === "failed" ? ", or Infinity" : ""}`;
    }
  }
  return undefined;
}
