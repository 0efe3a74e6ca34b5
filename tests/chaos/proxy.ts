/**
 * A TCP proxy between one app process and PostgreSQL that the chaos suite
 * can cut: the way to take one host off the database for real while the
 * others keep it. Terminating the host's backends would not do: its clients
 * reconnect at once, and its heartbeat never stays silent long enough for
 * the self-stop to fire.
 *
 * While cut, the proxy behaves as a network partition in which the server
 * noticed the client leave: the server's side of every connection is closed
 * at once (so its sessions end and their transactions roll back, freeing the
 * rows they locked, which other hosts' rescues must take), while the app's
 * side hears nothing at all: its queries and its new connections hang.
 * Healing resets every connection the app held through the cut, as the
 * server's kernel would answer a client whose connection it no longer knows.
 */
import { createServer, type Server, type Socket, connect } from "node:net";
import { listenLocally } from "../listen.ts";

/** A cuttable proxy to `target`; `start()` it, then point the app at `port`. */
export class CutProxy {
  readonly #server: Server;
  readonly #target: { host: string; port: number };
  /** Every connection from the app, with its upstream while one is open. */
  readonly #links = new Map<Socket, Socket | undefined>();
  /** App-side sockets that lived through the current cut: reset when it heals. */
  readonly #held = new Set<Socket>();
  #cut = false;
  #refusing = false;
  #port = 0;

  constructor(target: { host: string; port: number }) {
    this.#target = target;
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

  /** Cuts the app off: upstreams closed, the app's side left hanging. */
  cut(): void {
    this.#cut = true;
    for (const [client, upstream] of this.#links) {
      client.unpipe();
      upstream?.unpipe();
      upstream?.destroy();
      this.#links.set(client, undefined);
      this.#hold(client);
    }
  }

  /**
   * Takes the server down, as the app sees it: every connection is reset at
   * once, and new ones are reset as they come, as a host with no server
   * listening answers. heal() brings it back.
   */
  refuse(): void {
    this.#refusing = true;
    for (const [client, upstream] of this.#links) {
      upstream?.destroy();
      client.resetAndDestroy();
    }
    this.#links.clear();
    this.#held.clear();
  }

  /** Ends the cut or the refusal: the connections held through a cut are reset, new ones pass again. */
  heal(): void {
    this.#cut = false;
    this.#refusing = false;
    for (const client of this.#held) client.resetAndDestroy();
    this.#held.clear();
  }

  /** Closes everything. */
  async close(): Promise<void> {
    for (const [client, upstream] of this.#links) {
      client.destroy();
      upstream?.destroy();
    }
    this.#links.clear();
    this.#held.clear();
    await new Promise((resolve) => this.#server.close(resolve));
  }

  #accept(client: Socket): void {
    client.on("error", () => {});
    if (this.#refusing) return void client.resetAndDestroy();
    client.on("close", () => {
      this.#links.get(client)?.destroy();
      this.#links.delete(client);
      this.#held.delete(client);
    });
    this.#links.set(client, undefined);
    if (this.#cut) return this.#hold(client);
    const upstream = connect(this.#target);
    upstream.on("error", () => {});
    // The server closed the connection (a restart, pg_terminate_backend):
    // pass that on, unless a cut closed it and the app must hear nothing.
    upstream.on("close", () => {
      if (this.#links.get(client) === upstream) client.destroy();
    });
    this.#links.set(client, upstream);
    client.pipe(upstream);
    upstream.pipe(client);
  }

  /** Keeps a socket open and silent: what it sends is read and dropped, so the app's writes never block. */
  #hold(client: Socket): void {
    this.#held.add(client);
    client.on("data", () => {});
    client.resume();
  }
}
