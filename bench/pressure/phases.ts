/**
 * The pressure bench's schedule and what each phase does to the server
 * beside the queue: hold the xmin horizon with one idle transaction, or
 * keep two sessions counting the task table, each count a snapshot of its own.
 */
import postgres from "postgres";

/** What a phase does: the clean baseline, a pressure, or a recovery after one. */
export type PhaseKind = "clean" | "held" | "recovery" | "overload" | "readers";

/** One phase of a run; times in seconds of the run's clock. */
export interface Phase {
  name: string;
  kind: PhaseKind;
  start: number;
  end: number;
  /** The producer's rate in this phase, as a multiple of R. */
  rateFactor: number;
}

/** The phases at `--scale 1`: kind, seconds, rate factor. */
const PLAN: [string, PhaseKind, number, number][] = [
  ["clean", "clean", 60, 1],
  ["held horizon", "held", 240, 1],
  ["recovery 1", "recovery", 120, 1],
  ["overload 1.5×", "overload", 120, 1.5],
  ["recovery 2", "recovery", 60, 1],
  ["readers", "readers", 120, 1],
  ["recovery 3", "recovery", 120, 1],
];

/** The run's phases with every duration multiplied by `scale`. */
export function schedule(scale: number): Phase[] {
  let start = 0;
  return PLAN.map(([name, kind, seconds, rateFactor]) => {
    const phase = { name, kind, start, end: start + seconds * scale, rateFactor };
    start = phase.end;
    return phase;
  });
}

/** The index of the phase `seconds` falls in (the last one past the end). */
export function phaseIndexAt(phases: Phase[], seconds: number): number {
  const index = phases.findIndex((p) => seconds >= p.start && seconds < p.end);
  return index === -1 ? (seconds < 0 ? 0 : phases.length - 1) : index;
}

/** A pressure under way; `end()` lifts it and tells what it did. */
export interface Pressure {
  end(): Promise<string>;
}

/**
 * Holds the xmin horizon: a session of its own begins a repeatable-read
 * transaction, takes an xid and a snapshot, and sits idle in it until
 * `end()` commits. Every row deleted or updated meanwhile stays unremovable
 * by vacuum, and index entries of dead rows stay unkillable, until then.
 */
export async function holdHorizon(url: string): Promise<Pressure> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let began!: (xid: string) => void;
  const begun = new Promise<string>((resolve) => (began = resolve));
  const transaction = sql.begin("isolation level repeatable read", async (tx) => {
    const [{ xid }] = await tx`SELECT txid_current()::text AS xid`;
    began(xid);
    await released;
  });
  const xid = await Promise.race([begun, transaction.then(() => "")]);
  return {
    async end() {
      release();
      await transaction.catch(() => {});
      await sql.end({ timeout: 5 });
      return `held xid ${xid}`;
    },
  };
}

/**
 * Two (or `sessions`) readers, each counting `table` in a repeatable-read
 * transaction of its own, over and over, until `end()`: a long count is a
 * snapshot that holds the horizon for as long as it runs, and the next one
 * starts at once, so the horizon advances only in steps.
 */
export function readers(url: string, table: string, sessions = 2): Pressure {
  const sql = postgres(url, { max: sessions, onnotice: () => {} });
  let stopping = false;
  let counts = 0;
  let failure: string | undefined;
  const loop = async () => {
    while (!stopping) {
      try {
        await sql.begin("isolation level repeatable read", (tx) => tx.unsafe(`SELECT count(*) FROM ${table}`));
        counts++;
      } catch (error) {
        failure ??= (error as Error).message;
        if (!stopping) await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  };
  const loops = Array.from({ length: sessions }, loop);
  return {
    async end() {
      stopping = true;
      await Promise.all(loops);
      await sql.end({ timeout: 5 });
      return `${counts} counts${failure ? `; error: ${failure}` : ""}`;
    },
  };
}
