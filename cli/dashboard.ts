/**
 * `pgbg dashboard`: a small web page with the status of `pgbg status`,
 * refreshed live, and the failed tasks with retry and cancel buttons. It is
 * protected by a token (a sign-in form sets an HttpOnly, SameSite=Strict
 * cookie; API clients may send `Authorization: Bearer TOKEN`) and binds to
 * 127.0.0.1 unless told otherwise.
 *
 * @module
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import process from "node:process";
import postgres from "postgres";
import { cancel, countTasks, getTask, isTaskId, listTasks, type ListTasksOptions, recentFinishedTasks, retry, status, type TaskCount, type TaskInfo } from "../lib/admin.ts";
import { pauseQueue, resumeQueue, runSchedule } from "../lib/controls.ts";
import { cancelFlow, getFlow, recentFlows } from "../lib/flow-admin.ts";
import { InvalidOptionsError, UnknownScheduleError } from "../lib/errors.ts";
import { describeError } from "../lib/log.ts";
import type { Database } from "../lib/statements.ts";
import { defineCliCommand } from "./args.ts";
import { dashboardArgs } from "./args-table.ts";
import { dashboardPage, dashboardScript, dashboardStyle, loginPage } from "./dashboard-page.ts";
import { failWith } from "./exit.ts";
import { listen } from "./listen.ts";

const COOKIE = "pgbg_dashboard";
const HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
};

/** What the dashboard server needs. */
export interface DashboardOptions {
  db: Database;
  schema: string;
  token: string;
  host: string;
  /** 0: any free port. */
  port: number;
  /** How many failed tasks the page lists. */
  failedLimit?: number;
}

/** A listening dashboard. */
export interface Dashboard {
  url: string;
  close(): Promise<void>;
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

const digest = (text: string) => createHash("sha256").update(text).digest();

/** Starts the dashboard's HTTP server. Rejects when the address cannot be bound. */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const expected = digest(options.token);
  // Compared as digests, in constant time: equal lengths, and no timing hint.
  const isToken = (candidate: string | undefined) => candidate !== undefined && timingSafeEqual(digest(candidate), expected);
  /** How the request proves the token: its Authorization header, its cookie, or not at all. */
  const signedIn = (req: IncomingMessage): "bearer" | "cookie" | null => {
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    const cookie = (req.headers.cookie ?? "").split(";").map((c) => c.trim().split("=")).find(([k]) => k === COOKIE)?.[1];
    return isToken(bearer) ? "bearer" : isToken(cookie === undefined ? undefined : decodeURIComponent(cookie)) ? "cookie" : null;
  };
  // The page's CSRF token: derived from the dashboard's token, so that every
  // dashboard process of one token agrees, and useless without the cookie.
  const csrf = createHmac("sha256", options.token).update("pgbg dashboard csrf").digest("hex");
  const isCsrf = (candidate: string | string[] | undefined) => typeof candidate === "string" && timingSafeEqual(digest(candidate), digest(csrf));

  const routes: Record<string, (req: IncomingMessage, res: ServerResponse) => Promise<void>> = {
    "GET /dashboard.js": async (_req, res) => send(res, 200, "text/javascript", dashboardScript),
    "GET /dashboard.css": async (_req, res) => send(res, 200, "text/css", dashboardStyle),
    "GET /": async (req, res) => signedIn(req) ? send(res, 200, "text/html", dashboardPage(csrf)) : send(res, 401, "text/html", loginPage()),
    "POST /login": async (req, res) => {
      const token = new URLSearchParams(await readBody(req)).get("token") ?? undefined;
      if (!isToken(token)) return send(res, 401, "text/html", loginPage("That token is not the dashboard's."));
      res.writeHead(303, {
        ...HEADERS, location: "/", "set-cookie": `${COOKIE}=${encodeURIComponent(token!)}; HttpOnly; SameSite=Strict; Path=/`,
      }).end();
    },
    "GET /api/status": async (_req, res) => sendJson(res, await status(options.db, { schema: options.schema })),
    // A page of failed tasks; ?after= the previous page's next for the one after it.
    "GET /api/failed": async (req, res) => {
      const after = new URL(req.url ?? "/", "http://dashboard").searchParams.get("after") ?? undefined;
      sendJson(res, await listTasks(options.db, { schema: options.schema, state: "failed", after, limit: options.failedLimit ?? 100 }));
    },
    // Tasks by the filter form (state, queue, namePrefix, key; after: the
    // page's start), 50 a page, with their count on the first page; or, with
    // q, the tasks a search finds (see searchTasks).
    "GET /api/tasks": async (req, res) => {
      const query = new URL(req.url ?? "/", "http://dashboard").searchParams;
      const filters: ListTasksOptions = { schema: options.schema };
      for (const field of ["state", "queue", "namePrefix", "key", "after"] as const) {
        const value = query.get(field);
        if (value) (filters as Record<string, string>)[field] = value;
      }
      const q = query.get("q");
      if (q) return sendJson(res, await searchTasks(options.db, q, filters));
      const { after: _, ...counted } = filters;
      const [page, count] = await Promise.all([listTasks(options.db, { ...filters, limit: 50 }), filters.after ? null : countTasks(options.db, counted)]);
      sendJson(res, { ...page, count });
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

  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? "/", "http://dashboard").pathname;
    const route = routes[`${req.method} ${path}`];
    try {
      if (!route) throw new HttpError(404, "not found");
      if (path.startsWith("/api/")) {
        const proof = signedIn(req);
        if (!proof) throw new HttpError(401, "sign in first: the dashboard's token is required");
        // A cross-site page cannot send JSON without a preflight this server
        // never answers, nor (SameSite=Strict) the cookie; and an action
        // signed in by the cookie must also carry the page's CSRF token,
        // which only a page of this dashboard can read. A bearer token is
        // never sent by a browser on its own, so it needs none.
        if (req.method === "POST" && !/^application\/json\b/.test(req.headers["content-type"] ?? "")) throw new HttpError(415, "send JSON");
        if (req.method === "POST" && proof === "cookie" && !isCsrf(req.headers["x-pgbg-csrf"])) {
          throw new HttpError(403, "the CSRF token (header x-pgbg-csrf) is missing or wrong: reload the dashboard");
        }
        if (req.headers.origin && req.headers.origin !== `http://${req.headers.host}`) throw new HttpError(403, "cross-origin request refused");
      }
      await route(req, res);
    } catch (error) {
      const code = error instanceof HttpError ? error.status : error instanceof InvalidOptionsError ? 400 : error instanceof UnknownScheduleError ? 404 : 500;
      if (code === 500) process.stderr.write(`pgbg dashboard: ${describeError(error).message}\n`);
      if (!res.headersSent) send(res, code, "text/plain", `${describeError(error).message}\n`);
    }
  });
  const { port, close } = await listen(server, options.host, options.port);
  return { url: `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}/`, close };
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { ...HEADERS, "content-type": `${type}; charset=utf-8` }).end(body);
}

function sendJson(res: ServerResponse, value: unknown): void {
  send(res, 200, "application/json", JSON.stringify(value));
}

/** The request body as text, refused past 64 KiB. */
async function readBody(req: IncomingMessage): Promise<string> {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65_536) throw new HttpError(413, "request too large");
  }
  return body;
}

async function readJson(req: IncomingMessage): Promise<{ ids?: unknown; all?: unknown; queue?: unknown; name?: unknown; id?: unknown }> {
  try {
    const value = JSON.parse(await readBody(req));
    if (typeof value === "object" && value !== null) return value;
  } catch (error) {
    if (error instanceof HttpError) throw error;
  }
  throw new HttpError(400, "send a JSON object");
}

/**
 * The search box: a task id finds that task; other text finds the tasks
 * holding it as their dedup key, then those whose name starts with it (50
 * of each at most), within the form's other filters.
 */
async function searchTasks(db: Database, q: string, filters: ListTasksOptions): Promise<{ tasks: TaskInfo[]; next: null; count: TaskCount }> {
  let tasks: TaskInfo[];
  if (isTaskId(q)) {
    const task = await getTask(db, q, { schema: filters.schema });
    tasks = task ? [task] : [];
  } else {
    const { after: _, key: __, namePrefix: ___, ...rest } = filters;
    const [byKey, byName] = await Promise.all([
      listTasks(db, { ...rest, key: q, limit: 50 }),
      listTasks(db, { ...rest, namePrefix: q, limit: 50 }),
    ]);
    const seen = new Set(byKey.tasks.map((t) => t.id));
    tasks = [...byKey.tasks, ...byName.tasks.filter((t) => !seen.has(t.id))];
  }
  return { tasks, next: null, count: { count: tasks.length, capped: false } };
}

function taskIds(ids: unknown): string[] {
  if (!Array.isArray(ids) || !ids.length || !ids.every(isTaskId)) {
    throw new HttpError(400, "ids must be a non-empty array of task ids (strings of digits)");
  }
  return ids;
}

/** `pgbg dashboard`: its arguments are checked (cli/args-table.ts) before it connects. */
export const dashboardCommand = defineCliCommand(
  dashboardArgs,
  "Serve a web page with the live status, the failed tasks and retry/cancel buttons, protected by a token",
  async ({ flags }) => {
    const { "database-url": url, schema, token, host, port } = flags;
    let sql: postgres.Sql | undefined;
    try {
      sql = postgres(url, { max: 4, onnotice: () => {}, connection: { application_name: "pgbg dashboard" } });
      await status(sql, { schema }); // fails now, not at the first page load, on a wrong URL or schema
      const dashboard = await startDashboard({ db: sql, schema, token, host, port });
      process.stdout.write(flags.json ? `${JSON.stringify({ url: dashboard.url })}\n` : `dashboard at ${dashboard.url}\n`);
      const db = sql;
      const stop = async () => {
        await dashboard.close();
        await db.end({ timeout: 2 }).catch(() => {});
        process.exit(0);
      };
      process.once("SIGTERM", stop);
      process.once("SIGINT", stop);
    } catch (error) {
      await sql?.end({ timeout: 1 }).catch(() => {});
      failWith(error);
    }
  },
);
