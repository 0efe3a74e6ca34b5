/**
 * Starting and stopping the CLI's HTTP servers (metrics, dashboard).
 *
 * @module
 */
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";

/** A server that listens, and stops without waiting for kept-alive connections. */
export interface Listening {
  /** The port it listens on (the one chosen when 0 was asked for). */
  port: number;
  close(): Promise<void>;
}

/** Binds `server` to `host:port` (0: any free port). Rejects when the address cannot be bound. */
export async function listen(server: Server, host: string, port: number): Promise<Listening> {
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
        // A scraper's or browser's kept-alive connection must not hold the shutdown.
        server.closeAllConnections();
      }),
  };
}
