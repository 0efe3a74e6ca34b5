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
import { createServer, type IncomingMessage } from "node:http";
import process from "node:process";
import postgres from "postgres";
import { status } from "../lib/admin.ts";
import { InvalidOptionsError, UnknownScheduleError } from "../lib/errors.ts";
import { describeError } from "../lib/log.ts";
import type { Database } from "../lib/statements.ts";
import { defineCliCommand } from "./args.ts";
import { dashboardArgs } from "./args-table.ts";
import { connect } from "./client.ts";
import { apiRoutes, type Route } from "./dashboard-api.ts";
import { HEADERS, HttpError, readBody, send } from "./dashboard-http.ts";
import { chartScript, chartStyle } from "./dashboard-charts.ts";
import { dashboardPage, dashboardScript, dashboardStyle, loginPage } from "./dashboard-page.ts";
import { settledWithin } from "../lib/settle.ts";
import { isDriverFault } from "./driver-fault.ts";
import { fail, failWith } from "./exit.ts";
import { listen } from "./listen.ts";

const COOKIE = "pgbg_dashboard";

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
  /**
   * Called when a request (begun at `since`, by `performance.now()`) lost
   * its database connection, or a read (a GET) did not answer within
   * {@link REQUEST_BOUND_MS}: its pool may hold a connection the driver's
   * fault left unable to write (cli/driver-fault.ts).
   */
  onDatabaseFault?: (since: number) => void;
}

/**
 * How long a page's read (a GET) may wait for the database before it is
 * answered 503: a connection the driver's fault left unable to write would
 * hold it for ever. Far above the dashboard's reads on a working server; an
 * action (a POST, such as retrying every failed task) is not bounded.
 */
export const REQUEST_BOUND_MS = 60_000;

/** A listening dashboard. */
export interface Dashboard {
  url: string;
  close(): Promise<void>;
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

  const routes: Record<string, Route> = {
    "GET /dashboard.js": async (_req, res) => send(res, 200, "text/javascript", dashboardScript),
    "GET /charts.js": async (_req, res) => send(res, 200, "text/javascript", chartScript),
    "GET /dashboard.css": async (_req, res) => send(res, 200, "text/css", dashboardStyle + chartStyle),
    "GET /": async (req, res) => signedIn(req) ? send(res, 200, "text/html", dashboardPage(csrf)) : send(res, 401, "text/html", loginPage()),
    "POST /login": async (req, res) => {
      const token = new URLSearchParams(await readBody(req)).get("token") ?? undefined;
      if (!isToken(token)) return send(res, 401, "text/html", loginPage("That token is not the dashboard's."));
      res.writeHead(303, {
        ...HEADERS, location: "/", "set-cookie": `${COOKIE}=${encodeURIComponent(token!)}; HttpOnly; SameSite=Strict; Path=/`,
      }).end();
    },
    ...apiRoutes(options),
  };

  const server = createServer(async (req, res) => {
    const since = performance.now();
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
      await (req.method === "GET" ? answerWithin(route(req, res), since, options) : route(req, res));
    } catch (error) {
      if (isDriverFault(error)) options.onDatabaseFault?.(since);
      const code = error instanceof HttpError ? error.status : error instanceof InvalidOptionsError ? 400 : error instanceof UnknownScheduleError ? 404 : 500;
      if (code === 500) process.stderr.write(`pgbg dashboard: ${describeError(error).message}\n`);
      if (!res.headersSent) send(res, code, "text/plain", `${describeError(error).message}\n`);
    }
  });
  const { port, close } = await listen(server, options.host, options.port);
  return { url: `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}/`, close };
}

/** `pgbg dashboard`: its arguments are checked (cli/args-table.ts) before it connects. */
export const dashboardCommand = defineCliCommand(
  dashboardArgs,
  "Serve a web page with the live status, the failed tasks and retry/cancel buttons, protected by a token",
  async ({ flags }) => {
    const { "database-url": url, schema, token, host, port } = flags;
    const pool = () => connect(url, 4, "pgbg dashboard", flags["transaction-pooling"]);
    let sql: postgres.Sql | undefined;
    try {
      sql = pool();
      await status(sql, { schema }); // fails now, not at the first page load, on a wrong URL or schema
      const options: DashboardOptions = { db: sql, schema, token, host, port };
      const dashboard = await startDashboard(options);
      renewPoolOnDriverFault(options, pool);
      process.stdout.write(flags.json ? `${JSON.stringify({ url: dashboard.url })}\n` : `dashboard at ${dashboard.url}\n`);
      const stop = async () => {
        await dashboard.close();
        await (options.db as postgres.Sql).end({ timeout: 2 }).catch(() => {});
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

/** Resolves when `answer` does; past REQUEST_BOUND_MS, calls options.onDatabaseFault and throws a 503 instead. */
async function answerWithin(answer: Promise<void>, since: number, options: DashboardOptions): Promise<void> {
  // Settled later or never: an answer after the 503 (its writes refused), or the rejection of its ended pool.
  answer.catch(() => {});
  if (await settledWithin(answer, REQUEST_BOUND_MS)) return;
  options.onDatabaseFault?.(since);
  throw new HttpError(503, `the database did not answer within ${REQUEST_BOUND_MS / 1000} s; the dashboard now uses new connections: reload`);
}

/** How long a replaced pool's statements may run on, in seconds (see renewPoolOnDriverFault). */
const OLD_POOL_GRACE_S = 120;

/**
 * Keeps the dashboard serving through the driver's fault (see
 * cli/driver-fault.ts): when a request loses its connection or a read
 * waits past REQUEST_BOUND_MS (a connection the fault left unable to
 * write), or the driver throws where nothing catches, the requests from
 * then on are answered from a new pool, and the old one is ended once its
 * statements in flight end (an action's too: at most OLD_POOL_GRACE_S).
 * Any other uncaught error ends the process with one line and status 1.
 */
function renewPoolOnDriverFault(options: DashboardOptions, pool: () => postgres.Sql): void {
  let renewedAt = Number.NEGATIVE_INFINITY;
  const renew = (why: string) => {
    renewedAt = performance.now();
    const old = options.db as postgres.Sql;
    options.db = pool();
    void old.end({ timeout: OLD_POOL_GRACE_S }).catch(() => {});
    process.stderr.write(`pgbg dashboard: ${why}; serving from new connections\n`);
  };
  // Once for the requests a fault struck together: only those begun since
  // the last renewal ran on the current pool.
  options.onDatabaseFault = (since) => {
    if (since > renewedAt) renew("a request lost its database connection, or waited too long for it");
  };
  const onUncaught = (error: unknown) => {
    if (!isDriverFault(error)) fail(1, `dashboard: uncaught error: ${describeError(error).message}`);
    // A lost connection's error that no query held is the pool's to
    // replace; the driver's write to a closed connection leaves it unable to write.
    if (error instanceof TypeError) renew(`a database connection failed outside any statement (${describeError(error).message})`);
  };
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUncaught);
}
