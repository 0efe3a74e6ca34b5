/**
 * pgbg's settings and their defaults, in one place. The library's options,
 * the service's flags and its environment variables all map onto these.
 *
 * @module
 */

/** The defaults of every pgbg setting. Durations are in milliseconds. */
export const defaults = {
  /** PostgreSQL schema holding pgbg's tables. */
  schema: "pgbg",
  /** Queue of a task that names none. */
  queue: "default",
  /** Largest payload accepted by enqueue, in bytes of JSON (1 MiB). */
  maxPayloadBytes: 1024 * 1024,
  /** Attempts before a task is kept as failed. */
  maxAttempts: 25,
  /** Time limit of one attempt. */
  timeout: 30_000,
  /** Wait before a failed attempt is retried. */
  retryDelay: 5_000,
  /** Worker subprocesses per supervisor. */
  workers: 2,
  /** Tasks one worker runs at once. */
  concurrency: 10,
  /** Connections of an in-process worker's pool (its heartbeat and LISTEN add one each). */
  poolSize: 4,
  /** How often the supervisor checks its workers and heartbeats. */
  checkInterval: 1_000,
  /** How long a worker sleeps on an empty queue when no wake-up arrives. */
  idleSleep: 1_000,
  /** How long a stopping service lets running tasks finish. */
  shutdownTimeout: 30_000,
  /**
   * How often the supervisor checks whether the task table's indexes need
   * compacting; 0: never. A check reads the catalog only; a rebuild follows
   * only when the indexes are bloated and their dead rows gone.
   */
  compactInterval: 30_000,
  /** How often a host checks whether the task table needs a vacuum (lib/maintenance/table-vacuumer.ts); 0: never. */
  vacuumInterval: 5_000,
  /** How long completed tasks are kept in the history, for tasks whose definition sets none (lib/retention.ts); 0: not kept (a task with a result schema keeps it an hour). */
  completedRetention: 0,
  /** How long tasks failed for good are kept, for tasks whose definition sets none; Infinity: for ever. */
  failedRetention: Number.POSITIVE_INFINITY,
  /** How often a host looks after the history (rotation, emptying expired slots) and prunes expired failed tasks. */
  historyInterval: 60_000,
  /** How often a host with schedules checks for due ticks and runs asked for (ms); ticks fire at most this late. */
  scheduleInterval: 1_000,
  /** Indexes smaller than this in all are never compacted (8 MiB): rebuilding them would gain little. */
  compactMinIndexBytes: 8 * 1024 * 1024,
  /**
   * What the indexes of one live task take, generously: about 100 bytes
   * across the indexes (the lane index's entry, about 32 since migration
   * 031 keyed it by a hash of the lane, and the primary key's, 16).
   */
  compactBytesPerLiveRow: 100,
  /** The indexes are bloated when over this many times what the live rows need. */
  compactBloatFactor: 4,
} as const;

/** The largest number of inputs `enqueueMany` writes in one statement. */
export const MAX_BATCH_INPUTS = 100_000;
