/**
 * Loads the tasks a worker can run from the modules named by `--tasks`.
 *
 * @module
 */
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { type AnyTask, checkTask } from "./define.ts";
import { InvalidScheduleError, InvalidTaskError } from "./errors.ts";
import { hookOf } from "./hooks.ts";
import { isSchedule, type Schedule } from "./schedule.ts";

function looksLikeTask(value: unknown): boolean {
  return typeof value === "object" && value !== null && "name" in value && "schema" in value && "run" in value;
}

/**
 * Registers tasks by name. The same task object may appear twice (exported
 * under two names); two different tasks with one name are refused, since a
 * worker could not know which one a queued row means.
 */
export function registerTasks(entries: readonly { task: unknown; source: string }[]): Map<string, AnyTask> {
  const byName = new Map<string, { task: AnyTask; source: string }>();
  for (const { task, source } of entries) {
    try {
      checkTask(task);
    } catch (error) {
      throw new InvalidTaskError(`${source}: ${(error as Error).message}`);
    }
    const seen = byName.get(task.name);
    if (seen && seen.task !== task) {
      throw new InvalidTaskError(`task name "${task.name}" is defined twice: in ${seen.source} and in ${source}`);
    }
    byName.set(task.name, { task, source });
  }
  // A task's onFailed hook runs wherever the task does.
  for (const { task, source } of [...byName.values()]) {
    const hook = hookOf(task);
    if (!hook) continue;
    const seen = byName.get(hook.name);
    if (seen && seen.task !== hook) throw new InvalidTaskError(`task name "${hook.name}" (${seen.source}) is taken by the onFailed hook of ${source}`);
    byName.set(hook.name, { task: hook, source: `${source}, its onFailed hook` });
  }
  return new Map([...byName].map(([name, { task }]) => [name, task]));
}

/**
 * Checks schedules by name, as tasks are: the same schedule may appear
 * twice; two different ones with one name are refused, since their ticks
 * would share one row. Throws `InvalidScheduleError`.
 */
export function registerSchedules(entries: readonly { schedule: Schedule; source: string }[]): Schedule[] {
  const byName = new Map<string, { schedule: Schedule; source: string }>();
  for (const { schedule, source } of entries) {
    const seen = byName.get(schedule.name);
    if (seen && seen.schedule !== schedule) {
      throw new InvalidScheduleError(`schedule name "${schedule.name}" is defined twice: in ${seen.source} and in ${source}`);
    }
    byName.set(schedule.name, { schedule, source });
  }
  return [...byName.values()].map((e) => e.schedule);
}

/** What the modules named by `--tasks` export: their tasks by name, and their schedules. */
export interface TaskModules {
  tasks: Map<string, AnyTask>;
  schedules: Schedule[];
}

/**
 * Imports each module and registers every exported value that is a task
 * (the result of `defineTask`). Throws `InvalidTaskError` naming the module
 * when one cannot be imported, exports no task, or exports a malformed one.
 */
export async function loadTasks(paths: readonly string[], cwd: string): Promise<Map<string, AnyTask>> {
  return (await loadTaskModules(paths, cwd)).tasks;
}

/** As {@link loadTasks}, and also collects the exported schedules (`defineSchedule` results). */
export async function loadTaskModules(paths: readonly string[], cwd: string): Promise<TaskModules> {
  if (!paths.length) throw new InvalidTaskError("no tasks module given: pass --tasks ./path/to/tasks.ts");
  const entries: { task: unknown; source: string }[] = [];
  const schedules: { schedule: Schedule; source: string }[] = [];
  for (const path of paths) {
    let module: Record<string, unknown>;
    try {
      module = await import(pathToFileURL(resolve(cwd, path)).href);
    } catch (error) {
      throw new InvalidTaskError(`tasks module ${path} failed to load: ${(error as Error)?.message ?? String(error)}`);
    }
    const found = Object.entries(module).filter(([, value]) => looksLikeTask(value));
    if (!found.length) throw new InvalidTaskError(`tasks module ${path} exports no tasks (export the results of defineTask)`);
    for (const [exportName, task] of found) entries.push({ task, source: `${path} (export ${exportName})` });
    for (const [exportName, schedule] of Object.entries(module)) {
      if (isSchedule(schedule)) schedules.push({ schedule, source: `${path} (export ${exportName})` });
    }
  }
  return { tasks: registerTasks(entries), schedules: registerSchedules(schedules) };
}
