/**
 * Samples the queue's depth once a minute into `task_depth`, for the
 * dashboard's depth chart (lib/activity.ts). The count pruner drops the
 * samples past 24 hours.
 *
 * Safe for every host to run at once: the sample of a minute is written
 * by the first host to take it, and the others' statement finds it there
 * and counts nothing (SampleTaskDepth). Hosts run it more often than once a
 * minute, so that a minute is sampled early in it, whichever host is up.
 *
 * @module
 */
import type { MaintenanceService } from "./service.ts";
import { type Database, run } from "../statements.ts";

/** Samples the depth of the current minute, unless a host did. */
export async function sampleTaskDepth(db: Database, schema: string): Promise<void> {
  await run(db, schema, "SampleTaskDepth", []);
}

/** The depth sampling as a maintenance service. */
export class DepthSampler implements MaintenanceService {
  readonly name = "sampling the queue's depth";
  /** First at once, so that a host's first minute is sampled. */
  readonly firstAfter = 0;

  constructor(
    private readonly db: Database,
    private readonly schema: string,
    readonly interval: number,
  ) {}

  /** Samples now. */
  async runOnce(): Promise<void> {
    await sampleTaskDepth(this.db, this.schema);
  }
}
