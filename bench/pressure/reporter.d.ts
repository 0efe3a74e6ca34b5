// Types of bench/pressure/reporter.js, which stays plain JavaScript so that `pgbg serve` workers load it without a loader.
/** Epoch ms with sub-ms resolution. */
export declare const now: () => number;
/** Records the start of a task enqueued at `enqueuedAt` (epoch ms); a no-op without BENCH_PRESSURE_PORT. */
export declare function reportStart(enqueuedAt: number): void;
/** Records the end of a task's handler; a no-op without BENCH_PRESSURE_PORT. */
export declare function reportFinish(): void;
