/**
 * Watches for the database to answer again while workers wait for it: a
 * worker that could not start, or stopped itself, because the database was
 * unreachable waits out a growing back-off (cli/worker-pool.ts), which
 * after an outage of a few seconds would keep the service idle for up to
 * 30 s after the database is back. While any worker waits so, this probes
 * the database every interval with a connection of its own (one `SELECT
 * 1`, bounded in time) and says so on the first answer, so the waiting
 * workers start at once.
 *
 * @module
 */
import postgres from "postgres";

/** Longest a probe may take: a server that accepts and never answers is down too. */
const PROBE_LIMIT_MS = 2_000;

/** Probes the database at `url` while watched; calls `onBack` at its first answer. */
export class DatabaseWatch {
  #watching = false;
  #stopped = false;
  #wake: (() => void) | undefined;

  constructor(private readonly url: string, private readonly everyMs: number, private readonly onBack: () => void) {}

  /** Starts probing, unless it already does. */
  watch(): void {
    if (this.#watching || this.#stopped) return;
    this.#watching = true;
    void this.#probeUntilBack();
  }

  /** Stops for good (the service stops). */
  stop(): void {
    this.#stopped = true;
    this.#wake?.();
  }

  // The first try waits an interval too: a worker that fails at once on a
  // database that answers probes is restarted no faster than that.
  async #probeUntilBack(): Promise<void> {
    while (!this.#stopped) {
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, this.everyMs);
      });
      if (this.#stopped) return;
      if (await answers(this.url)) {
        this.#watching = false;
        if (!this.#stopped) this.onBack();
        return;
      }
    }
  }
}

/** Whether the database answers one `SELECT 1` within PROBE_LIMIT_MS, on a connection opened for it. */
async function answers(url: string): Promise<boolean> {
  const sql = postgres(url, { max: 1, connect_timeout: PROBE_LIMIT_MS / 1000, onnotice: () => {}, connection: { application_name: "pgbg supervisor probe" } });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("no answer")), PROBE_LIMIT_MS)));
    await Promise.race([sql`SELECT 1`, late]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    await sql.end({ timeout: 0 }).catch(() => {});
  }
}
