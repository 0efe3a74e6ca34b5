/**
 * Rebuilds the task table's indexes when a drained queue left them bloated
 * (lib/compact.ts says when and how). First a minute after the start (or
 * one interval, when shorter), then once per interval. A role that may not
 * rebuild the indexes is warned about once, and compaction stops.
 *
 * Two hosts compacting at once would be waste, not harm: compactIndexes
 * takes the schema's compaction lease (a row, which holds behind a pooler
 * in transaction mode too) without waiting, and the loser reports `locked`.
 *
 * @module
 */
import type { Sql } from "postgres";
import { type CompactOptions, type CompactResult, compactIndexes } from "../compact.ts";
import { formatBytes } from "../format.ts";
import type { Logger } from "../log.ts";
import type { MaintenanceService } from "./service.ts";

/** Index compaction as a maintenance service. */
export class IndexCompactor implements MaintenanceService {
  readonly name = "index compaction";
  readonly firstAfter: number;
  #interval: number;

  constructor(
    // deno-lint-ignore no-explicit-any
    private readonly sql: Sql<any>,
    private readonly schema: string,
    interval: number,
    private readonly log: Logger,
    /** Bloat thresholds other than the defaults (lib/config.ts). */
    private readonly limits: Pick<CompactOptions, "minIndexBytes" | "bytesPerLiveRow" | "bloatFactor" | "heldSnapshotSeconds"> = {},
  ) {
    this.#interval = interval;
    this.firstAfter = Math.min(interval, 60_000);
  }

  /** How often it runs; 0 once the role turned out not to own the table. */
  get interval(): number {
    return this.#interval;
  }

  /** Compacts when bloated, and reports what it did. */
  async runOnce(): Promise<void> {
    this.#report(await compactIndexes(this.sql, { ...this.limits, schema: this.schema }));
  }

  #report(r: CompactResult): void {
    const fields = {
      outcome: r.outcome, indexBytesBefore: r.before.indexBytes, indexBytesAfter: r.after?.indexBytes, liveRows: r.before.liveRows,
      durationMs: r.durationMs, dropped: r.dropped,
    };
    if (r.dropped.length) this.log.info(`dropped ${r.dropped.length} invalid index(es) an interrupted REINDEX CONCURRENTLY left: ${r.dropped.join(", ")}`, fields);
    if (r.outcome === "compacted") {
      const sizes = `${formatBytes(r.before.indexBytes)} → ${formatBytes(r.after!.indexBytes)}`;
      this.log.info(`compacted the task table's indexes: ${sizes} (~${r.before.liveRows} live rows) in ${r.durationMs} ms`, fields);
    } else if (r.outcome === "horizon-held") {
      this.log.debug(`the task table's indexes are bloated, but a transaction open for ${Math.round(r.before.snapshotAgeSeconds)} s holds vacuum back; compaction waits`, fields);
    } else if (r.outcome === "locked") {
      this.log.debug("another pgbg is compacting the task table's indexes; skipped", fields);
    } else if (r.outcome === "not-permitted") {
      this.#interval = 0;
      this.log.warn(
        `cannot compact the task table's indexes (${formatBytes(r.before.indexBytes)} for ~${r.before.liveRows} live rows): ${r.message}. ` +
          `Rebuilding them needs the owner of ${this.schema}.task: run \`pgbg compact\` as the owner, or set --compact-interval off. Not trying again.`,
        fields,
      );
    }
  }
}
