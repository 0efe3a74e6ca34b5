/**
 * The dashboard's JSON API (`/api/...`): status, activity per minute, failed and completed
 * tasks, finding tasks and a task's page, retry and cancel, queue pause and
 * resume, flows, and schedules. The server checks the token, the CSRF
 * token and the content type before any of these runs (cli/dashboard.ts).
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { cancel, countTasks, getTask, isTaskId, listTasks, type ListTasksOptions, recentFinishedTasks, retry, status, type TaskCount, type TaskInfo } from "../lib/admin.ts";
import { activity } from "../lib/activity.ts";
import { pauseQueue, resumeQueue, runSchedule } from "../lib/controls.ts";
import { cancelFlow, getFlow, recentFlows } from "../lib/flow-admin.ts";
import { allSettledOrThrow } from "../lib/settle.ts";
import type { Database } from "../lib/statements.ts";
import type { DashboardOptions } from "./dashboard.ts";
import { HttpError, readJson, sendJson } from "./dashboard-http.ts";

/** A route's handler. */
export type Route = (req: IncomingMessage, res: ServerResponse) => Promise<void>;

/** The API's routes, by "METHOD /path". */
export function apiRoutes(options: DashboardOptions): Record<string, Route> {
  return {
    "GET /api/status": async (_req, res) => sendJson(res, await status(options.db, { schema: options.schema })),
    // A page of failed tasks; ?after= the previous page's next for the one after it.
    "GET /api/failed": async (req, res) => {
      const after = new URL(req.url ?? "/", "http://dashboard").searchParams.get("after") ?? undefined;
      sendJson(res, await listTasks(options.db, { schema: options.schema, state: "failed", after, limit: options.failedLimit ?? 100 }));
    },
    // Tasks by the filter form (state, queue, namePrefix, key, from and to:
    // the enqueue time; after: the page's start), 50 a page, with their count on the first page; or, with
    // q, the tasks a search finds (see searchTasks).
    "GET /api/tasks": async (req, res) => {
      const query = new URL(req.url ?? "/", "http://dashboard").searchParams;
      const filters: ListTasksOptions = { schema: options.schema };
      for (const field of ["state", "queue", "namePrefix", "key", "after"] as const) {
        const value = query.get(field);
        if (value) (filters as Record<string, string>)[field] = value;
      }
      for (const field of ["from", "to"] as const) {
        const value = query.get(field);
        if (!value) continue;
        const at = new Date(value);
        if (Number.isNaN(at.getTime())) throw new HttpError(400, `${field} must be a time (ISO 8601), got ${JSON.stringify(value)}`);
        filters[field] = at;
      }
      const q = query.get("q");
      if (q) return sendJson(res, await searchTasks(options.db, q, filters));
      const { after: _, ...counted } = filters;
      const [page, count] = await allSettledOrThrow([listTasks(options.db, { ...filters, limit: 50 }), filters.after ? null : countTasks(options.db, counted)]);
      sendJson(res, { ...page, count });
    },
    // Per minute, for the charts: ?minutes= (60 or up to 1,440), ?queue=, ?name=.
    "GET /api/activity": async (req, res) => {
      const query = new URL(req.url ?? "/", "http://dashboard").searchParams;
      const minutes = Number(query.get("minutes") ?? 60);
      const choice = { minutes, queue: query.get("queue") || undefined, name: query.get("name") || undefined };
      if (!Number.isInteger(minutes) || minutes < 1 || minutes > 1440) throw new HttpError(400, "minutes must be a whole number from 1 to 1440");
      sendJson(res, { minutes: await activity(options.db, { schema: options.schema, ...choice }) });
    },
    "GET /api/task": async (req, res) => {
      const id = new URL(req.url ?? "/", "http://dashboard").searchParams.get("id") ?? "";
      if (!isTaskId(id)) throw new HttpError(400, `${JSON.stringify(id)} is not a task id`);
      const task = await getTask(options.db, id, { schema: options.schema });
      if (!task) throw new HttpError(404, `no task ${id} (never enqueued, or finished and not kept)`);
      sendJson(res, task);
    },
    // The newest completed tasks kept in the history, newest first.
    "GET /api/completed": async (_req, res) => {
      sendJson(res, { tasks: await recentFinishedTasks(options.db, "completed", options.failedLimit ?? 100, { schema: options.schema }) });
    },
    "POST /api/retry": async (req, res) => {
      const body = await readJson(req);
      const which = body.all === true ? { allFailed: true as const } : taskIds(body.ids);
      sendJson(res, { retried: await retry(options.db, which, { schema: options.schema }) });
    },
    "POST /api/cancel": async (req, res) => sendJson(res, await cancel(options.db, taskIds((await readJson(req)).ids), { schema: options.schema })),
    "POST /api/pause": async (req, res) => sendJson(res, { paused: await pauseQueue(options.db, (await readJson(req)).queue as string, { schema: options.schema }) }),
    "POST /api/resume": async (req, res) => sendJson(res, { resumed: await resumeQueue(options.db, (await readJson(req)).queue as string, { schema: options.schema }) }),
    // The newest flows and batches; one by ?id=, with its tasks and their parents.
    "GET /api/flows": async (_req, res) => sendJson(res, { flows: await recentFlows(options.db, { schema: options.schema }) }),
    "GET /api/flow": async (req, res) => {
      const id = new URL(req.url ?? "/", "http://dashboard").searchParams.get("id") ?? "";
      const flow = await getFlow(options.db, id, { schema: options.schema });
      if (!flow) throw new HttpError(404, `no flow ${id}`);
      sendJson(res, flow);
    },
    "POST /api/cancel-flow": async (req, res) => sendJson(res, await cancelFlow(options.db, (await readJson(req)).id as string, { schema: options.schema })),
    "POST /api/run-schedule": async (req, res) => {
      await runSchedule(options.db, (await readJson(req)).name as string, { schema: options.schema });
      sendJson(res, { requested: true });
    },
  };
}

/**
 * The search box: a task id finds that task, and any text finds the tasks
 * holding it as their dedup key (an order number may be a key too), then
 * those whose name starts with it (50 of each at most; `capped` when
 * either stopped there), within the form's other filters.
 */
async function searchTasks(db: Database, q: string, filters: ListTasksOptions): Promise<{ tasks: TaskInfo[]; next: null; count: TaskCount }> {
  const { after: _, key: __, namePrefix: ___, ...rest } = filters;
  const [byId, byKey, byName] = await allSettledOrThrow([
    isTaskId(q) ? getTask(db, q, { schema: filters.schema }) : null,
    listTasks(db, { ...rest, key: q, limit: 50 }),
    listTasks(db, { ...rest, namePrefix: q, limit: 50 }),
  ]);
  const found = new Map<string, TaskInfo>();
  for (const t of [...(byId && !rest.state && !rest.queue ? [byId] : []), ...byKey.tasks, ...byName.tasks]) if (!found.has(t.id)) found.set(t.id, t);
  const tasks = [...found.values()];
  return { tasks, next: null, count: { count: tasks.length, capped: byKey.next !== null || byName.next !== null } };
}

/** The request's `ids`, checked: a non-empty array of task ids, or a 400. */
function taskIds(ids: unknown): string[] {
  if (!Array.isArray(ids) || !ids.length || !ids.every(isTaskId)) {
    throw new HttpError(400, "ids must be a non-empty array of task ids (strings of digits)");
  }
  return ids;
}
