/**
 * A TCP proxy that delays everything it passes by a fixed time each way:
 * a database a round trip of twice that away, for the tests of what a
 * worker does at a distance. Order is kept (timers of one delay fire in the
 * order they were set).
 */
import { connect, createServer, type Server, type Socket } from "node:net";
import { listenLocally } from "./listen.ts";

/** A proxy to `target` adding `delayMs` each way; `start()` it, then point the app at `port`. */
export class DelayProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #port = 0;

  constructor(readonly target: { host: string; port: number }, readonly delayMs: number) {
    this.#server = createServer((client) => this.#accept(client));
  }

  /** The local port the app connects to; valid after start(). */
  get port(): number {
    return this.#port;
  }

  /** Listens on a free port of 127.0.0.1. */
  async start(): Promise<void> {
    this.#port = await listenLocally(this.#server);
  }

  /** Closes every connection and the listener. */
  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  #accept(client: Socket): void {
    const upstream = connect(this.target);
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      this.#sockets.add(from);
      from.on("error", () => {});
      from.on("data", (chunk) => setTimeout(() => to.writable && to.write(chunk), this.delayMs));
      // After what it sent before it closed.
      from.on("close", () => {
        this.#sockets.delete(from);
        setTimeout(() => to.end(), this.delayMs);
      });
    }
  }
}
