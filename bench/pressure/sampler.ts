/**
 * The 5 s samples of one subject's run: from the workers' reports (through
 * the collector), the producer, the server's statistics and the machine's
 * load average. The server is asked on a connection of the sampler's own,
 * three catalog reads per sample, nothing that scans the subject's tables.
 */
import { readFileSync } from "node:fs";
import postgres from "postgres";
import type { Sql } from "../harness.ts";
import { type Collector, latencyPercentiles, REPORT_DELAY_MS } from "./collector.ts";
import type { Producer } from "./producer.ts";
import { now } from "./reporter.js";

/** The sampling period. */
export const SAMPLE_MS = 5_000;

/** One sample: the window (t − 5 s, t] of the run's clock for rates and latencies, the instant t for the rest. */
export interface Sample {
  /** Seconds since the run's start at the end of the window. */
  t: number;
  /** The phase (its index in the run's phases) the window's middle falls in. */
  phase: number;
  /** Tasks whose handler finished in the window, per second. */
  completionRate: number;
  /** Tasks whose handler started in the window, per second. */
  startRate: number;
  /** Tasks enqueued (acknowledged) minus tasks started, at t. */
  depth: number;
  /** Tasks due at the producer but not yet sent, at t. */
  producerLag: number;
  /** Start latency percentiles (ms) of the tasks that started in the window; null when none did. */
  p50: number | null;
  p95: number | null;
  p99: number | null;
  /** n_dead_tup summed over the subject's tables. */
  deadTuples: number | null;
  /** pg_total_relation_size summed over the subject's tables (bytes). */
  sizeBytes: number | null;
  /** The age (in transactions) of the oldest xmin holding back the subject's database; null if unread. */
  xminAge: number | null;
  /** The oldest xmin of a session outside the subject's database, and that database (diagnosis on a shared server). */
  outsideXminAge: number | null;
  outsideXminHolder: string | null;
  /** The machine's 1-minute load average. */
  load1: number;
}

/** The machine's load averages (1, 5, 15 min) from /proc/loadavg. */
export function loadAverage(): [number, number, number] {
  const [a, b, c] = readFileSync("/proc/loadavg", "utf8").split(" ").map(Number);
  return [a, b, c];
}

/** What the server says about the subject's tables and its database's oldest xmin. */
interface ServerReading {
  deadTuples: number | null;
  sizeBytes: number | null;
  xminAge: number | null;
  outsideXminAge: number | null;
  outsideXminHolder: string | null;
}

/**
 * Reads dead tuples and total size over every table of `schema` but those
 * whose name is LIKE `leaveOut`
 * (partitions included; a partitioned parent has no storage of its own, so
 * nothing counts twice), and the oldest xmin: that of this database's
 * backends and of replication slots, which is what bounds vacuum of this
 * database's tables (a mere snapshot in another database does not, since
 * PostgreSQL 14). A transaction that holds an xid anywhere on the server
 * still counts, as it should: every snapshot taken here sees it running,
 * so this database's own backends carry it in their xmin. The oldest xmin
 * outside this database is read too, to tell such a neighbour on a shared
 * server from the subject's own.
 */
async function readServer(sql: Sql, schema: string, leaveOut: string | null): Promise<ServerReading> {
  const [tables] = await sql`SELECT coalesce(sum(n_dead_tup), 0)::float8 AS dead, coalesce(sum(pg_total_relation_size(relid)), 0)::float8 AS size
    FROM pg_stat_user_tables WHERE schemaname = ${schema} AND (${leaveOut}::text IS NULL OR relname NOT LIKE ${leaveOut}::text)`;
  const [xmin] = await sql`SELECT
      greatest(
        (SELECT max(greatest(age(backend_xmin), age(backend_xid))) FROM pg_stat_activity WHERE datname = current_database()),
        (SELECT max(greatest(age(xmin), age(catalog_xmin))) FROM pg_replication_slots))::float8 AS here,
      outside.age AS outside, outside.datname AS holder
    FROM (SELECT 1) AS one LEFT JOIN LATERAL (
      SELECT greatest(age(backend_xmin), age(backend_xid))::float8 AS age, datname FROM pg_stat_activity
      WHERE datname IS DISTINCT FROM current_database() AND greatest(age(backend_xmin), age(backend_xid)) IS NOT NULL
      ORDER BY 1 DESC LIMIT 1) AS outside ON true`;
  return { deadTuples: tables.dead, sizeBytes: tables.size, xminAge: xmin.here, outsideXminAge: xmin.outside, outsideXminHolder: xmin.holder };
}

/** Takes a sample every 5 s of the run's clock until stopped. */
export class Sampler {
  readonly samples: Sample[] = [];
  #sql: Sql;
  #timer?: NodeJS.Timeout;
  #pending = new Set<Promise<void>>();
  #k = 1;
  #reading = false;
  #stopped = false;

  constructor(
    url: string,
    private readonly schema: string,
    /** Tables of the schema left out of dead tuples and size (a LIKE pattern of their names), or null. */
    private readonly leaveOut: string | null,
    private readonly collector: Collector,
    private readonly producer: Producer,
    /** Epoch ms of the run's start. */
    private readonly t0: number,
    /** The phase index at `seconds` of the run's clock. */
    private readonly phaseAt: (seconds: number) => number,
    /** Called every sample; throws if the subject's workers died. */
    private readonly check: () => void,
    /** Called with each sample once complete. */
    private readonly onSample: (s: Sample) => void,
  ) {
    this.#sql = postgres(url, { max: 1, onnotice: () => {} });
    this.#schedule();
  }

  /** The error that ended sampling, if any (a dead worker); the run checks it between phases. */
  failure?: Error;

  #schedule(): void {
    const due = this.t0 + this.#k * SAMPLE_MS;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, due - now()));
  }

  #tick(): void {
    const k = this.#k++;
    this.#schedule();
    try {
      this.check();
    } catch (error) {
      this.failure ??= error as Error;
    }
    const taken = this.#take(k).catch((error: Error) => {
      this.failure ??= error;
    });
    this.#pending.add(taken);
    taken.finally(() => this.#pending.delete(taken));
  }

  async #take(k: number): Promise<void> {
    const end = k * SAMPLE_MS;
    const load1 = loadAverage()[0];
    const producerLag = this.producer.lag();
    // A server too slow to answer within a period leaves that sample's
    // server figures empty rather than pile queries onto it.
    let server: ServerReading = { deadTuples: null, sizeBytes: null, xminAge: null, outsideXminAge: null, outsideXminHolder: null };
    if (!this.#reading) {
      this.#reading = true;
      try {
        server = await readServer(this.#sql, this.schema, this.leaveOut);
      } finally {
        this.#reading = false;
      }
    }
    // The workers' reports of the window's last moments arrive up to a flush later.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, this.t0 + end + REPORT_DELAY_MS - now())));
    const w = this.collector.window(end - SAMPLE_MS, end);
    const { p50, p95, p99 } = latencyPercentiles(w.latencies);
    const orNull = (x: number) => (Number.isNaN(x) ? null : x);
    const sample: Sample = {
      t: end / 1000, phase: this.phaseAt((end - SAMPLE_MS / 2) / 1000),
      completionRate: w.finished / (SAMPLE_MS / 1000), startRate: w.started / (SAMPLE_MS / 1000),
      depth: this.collector.depth(end), producerLag,
      p50: orNull(p50), p95: orNull(p95), p99: orNull(p99), ...server, load1,
    };
    this.samples.push(sample);
    this.onSample(sample);
  }

  /** Stops sampling; the samples of windows already closed are completed first. A second call does nothing. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    await Promise.all(this.#pending);
    await this.#sql.end({ timeout: 5 });
    this.samples.sort((a, b) => a.t - b.t);
  }
}
