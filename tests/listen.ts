/** Listening on a free local port, for the tests' proxies. */
import type { Server } from "node:net";

/** Starts `server` listening on a free port of 127.0.0.1, and resolves with the port. */
export function listenLocally(server: Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve((server.address() as { port: number }).port));
  });
}
