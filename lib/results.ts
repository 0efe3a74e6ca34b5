/**
 * Writes the outcomes of attempts back in batches: every success, failure
 * and hand-back that finished while the previous batch was being written
 * goes out in the next one, one statement per kind.
 *
 * @module
 */
import type { Logger } from "./log.ts";
import { describeError } from "./log.ts";
import type { Database } from "./statements.ts";
import { run } from "./statements.ts";

/** A failed attempt, ready to be written. */
export interface Failure {
  id: string;
  leaseToken: number;
  /** Wait before the retry, in ms. */
  delay: number;
  /** JSON-safe description of the error, stored as the task's last_error. */
  error: object;
  /** Fail for good, without retries (input no longer valid). */
  permanent: boolean;
}

interface Lease {
  id: string;
  leaseToken: number;
}

/** Batches completions, failures and hand-backs of one worker. */
export class ResultWriter {
  #done: Lease[] = [];
  #failed: Failure[] = [];
  #released: Lease[] = [];
  #flushing: Promise<void> | undefined;
  #retryDelay = 100;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    private readonly maxAttempts: number,
    private readonly log: Logger,
  ) {}

  /** Records a success: the task will be deleted. */
  complete(lease: Lease): void {
    this.#done.push(lease);
    this.#schedule();
  }

  /** Records a failed attempt. */
  fail(failure: Failure): void {
    this.#failed.push(failure);
    this.#schedule();
  }

  /** Hands a task back to the queue without counting the attempt (shutdown). */
  release(lease: Lease): void {
    this.#released.push(lease);
    this.#schedule();
  }

  /** Number of outcomes not yet written. */
  get pending(): number {
    return this.#done.length + this.#failed.length + this.#released.length;
  }

  /** Resolves once everything recorded so far is written (retrying on errors until `deadline`). */
  async drain(deadline = Number.POSITIVE_INFINITY): Promise<void> {
    while ((this.pending || this.#flushing) && Date.now() < deadline) {
      this.#schedule();
      await this.#flushing;
      if (this.pending) await new Promise((r) => setTimeout(r, Math.min(this.#retryDelay, Math.max(0, deadline - Date.now()))));
    }
  }

  #schedule(): void {
    if (this.#flushing) return;
    // setImmediate-like coalescing: outcomes of the same tick share a batch.
    this.#flushing = new Promise<void>((resolve) => setTimeout(resolve, 0))
      .then(() => this.#flush())
      .finally(() => {
        this.#flushing = undefined;
        if (this.pending) this.#schedule();
      });
  }

  async #flush(): Promise<void> {
    const done = this.#done.splice(0);
    const failed = this.#failed.splice(0);
    const released = this.#released.splice(0);
    try {
      await Promise.all([
        done.length && run(this.db, this.schema, "CompleteTasks", [done.map((d) => d.id), done.map((d) => d.leaseToken)]),
        failed.length &&
          run(this.db, this.schema, "FailTasks", [
            failed.map((f) => f.id),
            failed.map((f) => f.leaseToken),
            failed.map((f) => f.delay),
            failed.map((f) => JSON.stringify(f.error)),
            // postgres.js mis-types boolean arrays; the statement takes 0/1.
            failed.map((f) => (f.permanent ? 1 : 0)),
            this.maxAttempts,
          ]),
        released.length && run(this.db, this.schema, "ReleaseTasks", [released.map((r) => r.id), released.map((r) => r.leaseToken)]),
      ]);
      this.#retryDelay = 100;
    } catch (error) {
      // Keep them for the next batch: the writes are fenced by the lease, so
      // writing one twice, or after the lease moved on, changes nothing.
      this.#done.unshift(...done);
      this.#failed.unshift(...failed);
      this.#released.unshift(...released);
      this.log.warn(`could not write ${done.length + failed.length + released.length} task results; retrying in ${this.#retryDelay} ms`, { error: describeError(error).message });
      await new Promise((r) => setTimeout(r, this.#retryDelay));
      this.#retryDelay = Math.min(this.#retryDelay * 2, 5_000);
    }
  }
}
