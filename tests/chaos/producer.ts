/**
 * The chaos scenario of an application that enqueues through node-postgres
 * (the README's mitigation for porsager/postgres#1154) while PostgreSQL
 * ends its connections under its transactions: the application (here, the
 * runner's own process) must keep running, every enqueue whose COMMIT
 * returned must run, and none that rolled back may.
 */
import pg from "pg";
import { enqueueMany } from "../../mod.ts";
import { type Scenario, sized, type Stage, taskMs } from "./stage.ts";
import { work } from "./tasks.js";

const APPLICATION_NAME = "chaos producer";

/** The outcome of one producer transaction: committed, rolled back, or unknown (the connection died around COMMIT). */
type Outcome = "committed" | "rolledBack" | "unknown";

/** One transaction of 10 tasks on a client of `pool`; records its ids under its outcome. */
async function produce(stage: Stage, pool: pg.Pool, unknown: string[]): Promise<Outcome> {
  const client = await pool.connect();
  let ids: string[] = [];
  let committing = false;
  try {
    await client.query("BEGIN");
    ids = await enqueueMany(client, work, Array.from({ length: 10 }, () => ({ ms: taskMs() })));
    committing = true;
    await client.query("COMMIT");
    client.release();
    stage.committed.push(...ids);
    return "committed";
  } catch (error) {
    client.release(error as Error);
    // Failed before COMMIT was sent: rolled back. During it: either.
    (committing ? unknown : stage.rolledBack).push(...ids);
    return committing ? "unknown" : "rolledBack";
  }
}

/** Sorts the ids whose COMMIT had no answer by what the database holds: a committed task is queued, running, failed or done. */
async function settleUnknown(stage: Stage, unknown: string[]): Promise<void> {
  if (!unknown.length) return;
  const held = new Set((await stage.sql`
    SELECT id::text FROM pgbg.task WHERE id IN ${stage.sql(unknown)}
    UNION SELECT task_id::text FROM chaos_done WHERE task_id IN ${stage.sql(unknown)}`).map((r) => r.id as string));
  for (const id of unknown) (held.has(id) ? stage.committed : stage.rolledBack).push(id);
}

export const producerTerminated: Scenario = {
  name: "producer-terminated",
  allowed: [],
  async run(stage) {
    stage.serve({ workers: 2, concurrency: 20 });
    const pool = new pg.Pool({ connectionString: stage.url, max: 4, application_name: APPLICATION_NAME });
    // A lost connection is an error event on the pool (idle clients) and on the client, from its creation.
    pool.on("error", () => {});
    pool.on("connect", (client) => client.on("error", () => {}));
    const transactions = sized(stage, 1_000, 200);
    const outcomes: Record<Outcome, number> = { committed: 0, rolledBack: 0, unknown: 0 };
    const unknown: string[] = [];
    let producing = true;
    let terminated = 0;
    const terminator = (async () => {
      while (producing) {
        const [{ n }] = await stage.sql`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = ${APPLICATION_NAME}`;
        terminated += n;
        await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
      }
    })();
    const producer = async () => {
      for (let t = 0; t < transactions; t++) outcomes[await produce(stage, pool, unknown)]++;
    };
    try {
      await Promise.all(Array.from({ length: 4 }, producer));
    } finally {
      producing = false;
      await terminator;
      await pool.end();
    }
    await settleUnknown(stage, unknown);
    await stage.drained();
    if (!terminated) throw new Error("no producer connection was terminated: the scenario injected no fault");
    if (!outcomes.rolledBack && !outcomes.unknown) throw new Error("no producer transaction was cut: the scenario injected no fault");
    stage.note(`4 producers through node-postgres, ${4 * transactions} transactions (${outcomes.committed} committed, ${outcomes.rolledBack} rolled back, ` +
      `${outcomes.unknown} unanswered at COMMIT), ${terminated} producer connections terminated`);
  },
};
