/**
 * The ceiling: the same enqueue and dequeue work done by hand-written SQL on
 * the same server, with none of a queue's bookkeeping. pgbg's figures are
 * reported as fractions of these.
 */
import { connect, type Socket } from "node:net";
import postgres from "postgres";
import { CpuMeter, type Database, inFlight, type Server, since, type Sql } from "./harness.ts";

/** The hand-written queue table: what a task needs to be claimed, leased and deleted. */
export async function setupRaw(db: Database): Promise<void> {
  await db.sql.unsafe(`
    CREATE TABLE raw_task (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      queue text NOT NULL DEFAULT 'default',
      name text NOT NULL,
      payload jsonb NOT NULL,
      run_at timestamptz NOT NULL DEFAULT now(),
      state smallint NOT NULL DEFAULT 0,
      attempts integer NOT NULL DEFAULT 0,
      lease_expires_at timestamptz
    );
    CREATE INDEX raw_task_claim ON raw_task (queue, run_at, id) WHERE state = 0;`);
}

const payload = (i: number) => JSON.stringify({ i });

/** One INSERT per task, prepared, `parallel` in flight. */
export async function rawInsertSingle(db: Database, n: number, parallel: number): Promise<number> {
  const t0 = performance.now();
  await inFlight(n, parallel, (i) => db.sql`INSERT INTO raw_task (name, payload) VALUES ('noop', ${payload(i)}::text::jsonb) RETURNING id`);
  return since(t0);
}

/**
 * Which table the hand-written SQL runs on: its own (`raw`, the ceiling), or
 * pgbg's task table as pgbg migrated it (`pgbg`, the floor under pgbg's own
 * statements: the same statements, paying for the table's row, indexes,
 * constraints and triggers but for none of pgbg's bookkeeping).
 */
export type RawTable = "raw" | "pgbg";

/** `INSERT … SELECT FROM unnest` of `batch` rows per statement, returning the ids. */
export async function rawInsertUnnest(db: Database, n: number, batch: number, table: RawTable = "raw"): Promise<number> {
  const t0 = performance.now();
  for (let done = 0; done < n; done += batch) {
    const size = Math.min(batch, n - done);
    const payloads = Array.from({ length: size }, (_, i) => payload(done + i));
    if (table === "raw") {
      await db.sql`INSERT INTO raw_task (name, payload)
        SELECT 'noop', p::jsonb FROM unnest(${payloads}::text[]) AS p RETURNING id`;
    } else {
      await db.sql`INSERT INTO pgbg.task (queue, name, payload)
        SELECT 'default', 'noop', p::jsonb FROM unnest(${payloads}::text[]) AS p RETURNING id`;
    }
  }
  return since(t0);
}

/**
 * A client whose socket sends at once (TCP_NODELAY). postgres.js writes a
 * COPY's data and its end as two messages; with Nagle's algorithm the second
 * waits for the server's delayed acknowledgement, up to 40 ms per COPY on
 * some hosts (88 ms per COPY of 100 rows measured here), which would make
 * the ceiling the network's, not the server's.
 */
function noDelayClient(url: string): Sql {
  // `socket` is a documented postgres.js option that its types leave out: a
  // connected socket for the client to use.
  const options = {
    max: 1,
    onnotice: () => {},
    socket: ({ host, port }: { host: string[]; port: number[] }) =>
      new Promise<Socket>((resolve, reject) => {
        const socket = connect(port[0], host[0]);
        socket.setNoDelay(true);
        socket.once("connect", () => resolve(socket));
        socket.once("error", reject);
      }),
  };
  return postgres(url, options as postgres.Options<Record<string, never>>) as unknown as Sql;
}

/** COPY of `batch` rows per statement. */
export async function rawInsertCopy(db: Database, n: number, batch: number): Promise<number> {
  const sql = noDelayClient(db.url);
  try {
    await sql`SELECT 1`;
    const t0 = performance.now();
    for (let done = 0; done < n; done += batch) {
      const size = Math.min(batch, n - done);
      const lines = Array.from({ length: size }, (_, i) => `noop\t${payload(done + i)}\n`).join("");
      const stream = await sql`COPY raw_task (name, payload) FROM STDIN`.writable();
      await new Promise<void>((resolve, reject) => {
        stream.on("error", reject);
        stream.on("finish", resolve);
        stream.end(lines);
      });
    }
    return since(t0);
  } finally {
    await sql.end();
  }
}

/** How the hand-written consumers take tasks. */
export type RawDequeue = "lease" | "delete";

async function consume(sql: Sql, style: RawDequeue, batch: number, table: RawTable): Promise<number> {
  if (table === "pgbg") return consumePgbgTable(sql, batch);
  if (style === "delete") {
    const rows = await sql`DELETE FROM raw_task WHERE id IN (
      SELECT id FROM raw_task WHERE state = 0 AND run_at <= now() ORDER BY queue, run_at, id LIMIT ${batch} FOR UPDATE SKIP LOCKED)
      RETURNING id, payload`;
    return rows.length;
  }
  // Lease-style: claim (state, lease, attempts) and then delete the batch, as a queue that
  // survives worker crashes must.
  const claimed = await sql`UPDATE raw_task t SET state = 1, attempts = attempts + 1, lease_expires_at = now() + interval '30 seconds'
    FROM (SELECT id FROM raw_task WHERE state = 0 AND run_at <= now() ORDER BY queue, run_at, id LIMIT ${batch} FOR UPDATE SKIP LOCKED) c
    WHERE t.id = c.id RETURNING t.id, t.payload`;
  if (!claimed.length) return 0;
  await sql`DELETE FROM raw_task WHERE id = ANY(${claimed.map((r) => r.id)}::bigint[])`;
  return claimed.length;
}

/**
 * The lease-style claim then delete on pgbg's task table, from its one lane
 * (queue "default", name "noop", priority 0) in its order through
 * task_lane_idx: an update a task, which pgbg's own claim by claim rows
 * does not write (migration 029), so since then it is a reference beside
 * pgbg, not a floor under it. Its insert stages no task, as a hand-written
 * insert does not, and the lane's unstaged tasks come last in the index:
 * it reads them in id order. A running row must
 * have a holder (task_running_has_lease), so the claim names one. It says
 * it knows claim rows, as pgbg's own claims do (a sub-select run once):
 * otherwise the guard of migration 028 runs for every row it claims, as
 * for an earlier release's claims, and the floor drained at a third of its
 * rate (bench/RESULTS.md, "The guard of claim rows").
 */
async function consumePgbgTable(sql: Sql, batch: number): Promise<number> {
  const claimed = await sql`UPDATE pgbg.task t SET state = 'running', attempts = t.attempts + 1, lease_token = t.lease_token + 1,
      worker_id = '00000000-0000-0000-0000-000000000001', lease_expires_at = now() + interval '30 seconds'
    FROM (SELECT id FROM pgbg.task WHERE state = 'queued' AND group_name IS NULL AND queue = 'default' AND name = 'noop' AND priority = 0
            AND run_at <= now()
          ORDER BY queue, name, priority, staged_xact, id LIMIT ${batch} FOR UPDATE SKIP LOCKED) c
    WHERE t.id = c.id AND (SELECT set_config('pgbg_claim.known', 'on', true)) = 'on' RETURNING t.id, t.payload`;
  if (!claimed.length) return 0;
  await sql`DELETE FROM pgbg.task WHERE id = ANY(${claimed.map((r) => r.id)}::bigint[])`;
  return claimed.length;
}

/** Drains the raw table (or pgbg's, `table`) with `connections` consumers taking `batch` at a time. */
export async function rawDrain(db: Database, server: Server, style: RawDequeue, connections: number, batch: number, table: RawTable = "raw") {
  const meter = new CpuMeter(server);
  const t0 = performance.now();
  let jobs = 0;
  await Promise.all(Array.from({ length: connections }, async () => {
    for (;;) {
      const got = await consume(db.sql, style, batch, table);
      if (!got) return;
      jobs += got;
    }
  }));
  const seconds = since(t0);
  return { jobs, seconds, serverCpu: meter.read().server, setting: `${connections} connections × ${batch}` };
}
