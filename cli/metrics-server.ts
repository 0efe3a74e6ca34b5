/**
 * `pgbg serve --metrics-port`: serves the supervisor's metrics at `/metrics`
 * in Prometheus' text format, with the queue depth read at each scrape.
 *
 * @module
 */
import { createServer, type Server } from "node:http";
import { describeError, type Logger } from "../lib/log.ts";
import { readDatabaseMetrics, type ServiceMetrics } from "../lib/metrics.ts";
import type { Database } from "../lib/statements.ts";
import { listen, type Listening } from "./listen.ts";

/** A listening metrics server. */
export type MetricsServer = Listening;

/** Starts serving `metrics` on `host:port` (0: any free port). Rejects when the port cannot be bound. */
export async function startMetricsServer(
  metrics: ServiceMetrics, db: Database, schema: string, host: string, port: number, log: Logger,
): Promise<MetricsServer> {
  const server: Server = createServer(async (req, res) => {
    if (req.method !== "GET" || new URL(req.url ?? "/", "http://x").pathname !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: the metrics are at /metrics\n");
      return;
    }
    try {
      const body = metrics.render(await readDatabaseMetrics(db, schema));
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(body);
    } catch (error) {
      log.warn("could not read the queue depth for a metrics scrape", { error: describeError(error).message });
      res.writeHead(503, { "content-type": "text/plain" }).end("the database could not be read; try again\n");
    }
  });
  return listen(server, host, port);
}
