/**
 * `pgbg serve --metrics-port`: serves the supervisor's metrics at `/metrics`
 * in Prometheus' text format, with the queue depth read at each scrape.
 *
 * @module
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { readTaskStatus } from "../lib/admin.ts";
import { describeError, type Logger } from "../lib/log.ts";
import type { ServiceMetrics } from "../lib/metrics.ts";
import type { Database } from "../lib/statements.ts";

/** A listening metrics server. */
export interface MetricsServer {
  /** The port it listens on (the one chosen when 0 was asked for). */
  port: number;
  close(): Promise<void>;
}

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
      const body = metrics.render(await readTaskStatus(db, schema));
      res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" }).end(body);
    } catch (error) {
      log.warn("could not read the queue depth for a metrics scrape", { error: describeError(error).message });
      res.writeHead(503, { "content-type": "text/plain" }).end("the database could not be read; try again\n");
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // A scraper's kept-alive connection must not hold the shutdown.
        server.closeAllConnections();
      }),
  };
}
