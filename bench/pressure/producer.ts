/**
 * The paced producer: every ~10 ms it enqueues, as one batch, the tasks due
 * by then at the current rate. At most `maxInFlight` batches are in flight,
 * so that a slow database holds the producer back too: the tasks due but
 * not yet sent are its lag, a series of its own, and the next batch takes
 * them all (up to `MAX_BATCH`) once a slot frees.
 */
import { now } from "./reporter.js";
import type { Enqueuer } from "./subjects.ts";

const TICK_MS = 10;
/** The largest batch: after a long stall, the backlog goes out in batches of this size. */
const MAX_BATCH = 5_000;

/** Paces tasks into an enqueuer. */
export class Producer {
  #rate = 0;
  /** Tasks due at `#since`, and the epoch ms the rate last changed. */
  #dueAtChange = 0;
  #since = 0;
  #sent = 0;
  #inFlight = 0;
  #timer?: NodeJS.Timeout;
  #idle?: () => void;
  /** Tasks whose enqueue was acknowledged. */
  acked = 0;
  /** Batches that failed (their tasks are not counted as enqueued), and the first error. */
  failedBatches = 0;
  firstError?: string;

  constructor(
    private readonly enqueuer: Enqueuer,
    private readonly maxInFlight: number,
    /** Called with each acknowledged batch's size and the epoch ms of its acknowledgement. */
    private readonly onAck: (n: number, at: number) => void,
  ) {}

  /** Tasks due by `at` (epoch ms) at the rates set so far. */
  #due(at: number): number {
    return this.#dueAtChange + (this.#rate * Math.max(0, at - this.#since)) / 1000;
  }

  /** Sets the rate (tasks/s) from now on; the first call starts the timer. */
  setRate(rate: number): void {
    const at = now();
    this.#dueAtChange = this.#timer ? this.#due(at) : 0;
    this.#since = at;
    this.#rate = rate;
    this.#timer ??= setInterval(() => this.#tick(), TICK_MS);
  }

  /** Tasks due but not yet sent. */
  lag(): number {
    return Math.max(0, Math.floor(this.#due(now())) - this.#sent);
  }

  #tick(): void {
    if (this.#inFlight >= this.maxInFlight) return;
    const n = Math.min(MAX_BATCH, Math.floor(this.#due(now())) - this.#sent);
    if (n <= 0) return;
    this.#sent += n;
    this.#inFlight++;
    // The payload's time is the producer's clock as the batch goes out: the
    // start latency runs from the enqueue, not from when the task was due
    // (the producer's own delay is its lag).
    this.enqueuer.enqueue(n, now()).then(
      () => {
        this.acked += n;
        this.onAck(n, now());
      },
      (error: Error) => {
        this.failedBatches++;
        this.firstError ??= error.message;
      },
    ).finally(() => {
      this.#inFlight--;
      if (this.#inFlight === 0) this.#idle?.();
    });
  }

  /** Stops sending and waits for the batches in flight. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#inFlight > 0) await new Promise<void>((resolve) => (this.#idle = resolve));
  }
}
