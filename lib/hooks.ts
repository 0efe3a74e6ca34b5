/**
 * The onFailed hook of a task definition, as a task of its own: named
 * "<name>:on-failed", enqueued by the statement that fails the task for
 * good (sql/queries/worker.sql, EnqueueFailedHooks), and registered beside
 * its task wherever the task is, so that any worker that runs the task runs
 * its hook too, with retries, across crashes.
 *
 * @module
 */
import * as v from "valibot";
import type { AnyTask, FailedTask } from "./define.ts";

import { HOOK_SUFFIX } from "./hook-name.ts";

/** The input a hook task carries, as EnqueueFailedHooks builds it. */
const failedTaskSchema = v.object({
  id: v.string(),
  name: v.string(),
  queue: v.string(),
  input: v.unknown(),
  attempts: v.number(),
  error: v.nullable(v.record(v.string(), v.unknown())),
});

const hooks = new WeakMap<AnyTask, AnyTask>();

/** The hook task of `task`, one object per task (a task registered twice has one hook); undefined when it has no onFailed. */
export function hookOf(task: AnyTask): AnyTask | undefined {
  const onFailed = task.onFailed;
  if (!onFailed) return undefined;
  let hook = hooks.get(task);
  if (!hook) {
    hook = {
      name: `${task.name}${HOOK_SUFFIX}`,
      schema: failedTaskSchema,
      timeout: task.timeout,
      run: (failed, ctx) => onFailed(failed as FailedTask, ctx),
    } satisfies AnyTask;
    hooks.set(task, hook);
  }
  return hook;
}
