/**
 * What a maintenance duty is to the runner (lib/maintenance.ts): a name, an
 * interval and a `runOnce()`. Its own module, so that the duties and the
 * runner import it without importing each other.
 *
 * @module
 */

/** One maintenance duty. */
export interface MaintenanceService {
  /** What it does, for log lines. */
  readonly name: string;
  /** How long after the start it first runs, in ms. @default its interval */
  readonly firstAfter?: number;
  /** How often it runs, in ms; 0: never. */
  readonly interval: number;
  /** Runs the duty once; rejects when the database could not be reached (the runner logs it and tries again at the next interval). */
  runOnce(): Promise<void>;
}
