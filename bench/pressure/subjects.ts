/**
 * The queues under pressure: for each, how to install it, start its worker
 * processes at W tasks in flight in all, enqueue a batch of pressure tasks,
 * and where its tables are. pgbg runs as `pgbg serve` of the built package
 * (bench/pgbg.ts `serve()`); the peers run their bench worker scripts
 * (bench/peers/*-run.ts), loaded only when asked for, from ./peers.ts.
 */
import postgres from "postgres";
import type * as v from "valibot";
import { enqueueFlow, enqueueMany, flowTask, migrate, setQueueConcurrency, type Task, VERSION } from "../../mod.ts";
import { type Child, type Database, stop } from "../harness.ts";
import { serve } from "../pgbg.ts";
import * as benchTasks from "../tasks.js";

/** Sends batches of pressure tasks for the producer. */
export interface Enqueuer {
  /** Enqueues `n` pressure tasks whose payload carries `t` (epoch ms), in one statement. */
  enqueue(n: number, t: number): Promise<void>;
  /** Closes its connections. */
  close(): Promise<void>;
}

/** A subject's running worker processes. */
export interface Workers {
  /** Throws if a worker process has exited. */
  check(): void;
  /** Stops them all. */
  stop(): Promise<void>;
  /** What their processes printed last (up to 64 KiB each), for the run's log file. */
  output(): string;
}

/** A queue under the pressure bench. */
export interface PressureSubject {
  name: string;
  version: string;
  /** The PostgreSQL schema holding all of its tables. */
  schema: string;
  /**
   * Tables left out of the dead tuples and size (a LIKE pattern of their
   * names): what the subject keeps on purpose, which grows with its
   * retention, not with bloat.
   */
  sizeLeavesOut?: string;
  /** Its task table, qualified: what the readers phase counts. */
  taskTable: string;
  /** Installs it into an empty database. */
  setup(db: Database): Promise<void>;
  /** Its worker processes at `inFlight` tasks in flight in all, described for the report. */
  describeWorkers(inFlight: number): string;
  /** Starts them and waits until they are ready to work. */
  startWorkers(db: Database, inFlight: number): Promise<Workers>;
  /** Opens an enqueuer with up to `connections` batches in flight. */
  openEnqueuer(db: Database, connections: number): Promise<Enqueuer>;
}

type PressureInput = v.ObjectSchema<{ t: v.NumberSchema<undefined> }, undefined>;
// bench/tasks.d.ts types the older tasks only; the pressure task is looked
// up by name, so that the enqueue uses the very definition the workers run.
const pressureTask = (benchTasks as unknown as Record<string, Task<PressureInput> | undefined>).pressure;
const pressureKeptTask = (benchTasks as unknown as Record<string, Task<PressureInput, v.NumberSchema<undefined>> | undefined>).pressureKept;

/** Workers for processes started by the harness (or the peers' WorkerProcess): alive while none exited. */
export function childWorkers(label: string, children: Child[]): Workers {
  return {
    check() {
      const gone = children.find((c) => c.child.exitCode !== null || c.child.signalCode !== null);
      if (gone) throw new Error(`a ${label} process exited during the run: ${gone.output().slice(-2_000)}`);
    },
    async stop() {
      await Promise.all(children.map((c) => stop(c)));
    },
    output() {
      return children.map((c) => c.output()).join("");
    },
  };
}

/** pgbg: `pgbg serve` with 2 workers × W/2 (1 × W when W is 1). */
export const pgbgPressure: PressureSubject = {
  name: "pgbg",
  version: VERSION,
  schema: "pgbg",
  taskTable: "pgbg.task",
  async setup(db) {
    await migrate(db.sql);
  },
  describeWorkers(inFlight) {
    const { workers, concurrency } = pgbgSetting(inFlight);
    return `pgbg serve, ${workers} workers × ${concurrency}`;
  },
  async startWorkers(db, inFlight) {
    return childWorkers("pgbg serve", [await serve(db, pgbgSetting(inFlight))]);
  },
  openEnqueuer(db, connections) {
    if (!pressureTask) throw new Error("bench/tasks.js exports no `pressure` task");
    return enqueuerOf(db, connections, pressureTask);
  },
};

/**
 * pgbg keeping what issue 17 keeps: tasks with a result schema (kept an
 * hour) under a service with --completed-retention 1h; `--pressure --keep`.
 */
export const pgbgKeptPressure: PressureSubject = {
  ...pgbgPressure,
  name: "pgbg kept",
  // The history (pgbg.history_0 to _7) holds an hour of completed tasks by design; emptied by TRUNCATE, it has no dead rows.
  sizeLeavesOut: "history%",
  describeWorkers(inFlight) {
    return `${pgbgPressure.describeWorkers(inFlight)}, --completed-retention 1h, tasks with a result schema`;
  },
  async startWorkers(db, inFlight) {
    return childWorkers("pgbg serve", [await serve(db, pgbgSetting(inFlight), ["--completed-retention", "1h"])]);
  },
  openEnqueuer(db, connections) {
    if (!pressureKeptTask) throw new Error("bench/tasks.js exports no `pressureKept` task");
    return enqueuerOf(db, connections, pressureKeptTask);
  },
};

/**
 * pgbg with a concurrency limit of `limit` on the pressure task's queue
 * (`default`), far above the tasks in flight so that it never binds: what
 * the limited claim costs under pressure; `--pressure --queue-limit N`.
 */
export function pgbgLimitedPressure(limit: number): PressureSubject {
  return {
    ...pgbgPressure,
    name: "pgbg limited",
    describeWorkers(inFlight) {
      return `${pgbgPressure.describeWorkers(inFlight)}, queue limit ${limit}`;
    },
    async setup(db) {
      await pgbgPressure.setup(db);
      await setQueueConcurrency(db.sql, "default", limit);
    },
  };
}

/**
 * pgbg with a tenth of the tasks arriving as flows (`--pressure --flows`):
 * of every 40 tasks paced, 4 go as one flow, three tasks and a fourth that
 * waits for them (a fan-in), the rest as before. A fan-in's start latency
 * runs from its enqueue, so it includes its parents' run.
 */
export const pgbgFlowsPressure: PressureSubject = {
  ...pgbgPressure,
  name: "pgbg flows",
  describeWorkers(inFlight) {
    return `${pgbgPressure.describeWorkers(inFlight)}, a tenth of the tasks in flows of 3 and a fan-in`;
  },
  openEnqueuer(db, connections) {
    const task = pressureTask;
    if (!task) throw new Error("bench/tasks.js exports no `pressure` task");
    const sql = postgres(db.url, { max: connections, onnotice: () => {} });
    let paced = 0;
    return Promise.resolve({
      async enqueue(n: number, t: number) {
        // Flows for each 40 tasks paced that this batch completes.
        const flows = Math.floor((paced + n) / 40) - Math.floor(paced / 40);
        paced += n;
        const plain = n - 4 * Math.min(flows, Math.floor(n / 4));
        const writes: Promise<unknown>[] = plain ? [enqueueMany(sql, task, Array.from({ length: plain }, () => ({ t })))] : [];
        for (let f = 0; f < Math.min(flows, Math.floor(n / 4)); f++) {
          writes.push(enqueueFlow(sql, {
            a: flowTask(task, { t }), b: flowTask(task, { t }), c: flowTask(task, { t }),
            join: flowTask(task, { t }, { dependsOn: ["a", "b", "c"] }),
          }));
        }
        await Promise.all(writes);
      },
      async close() {
        await sql.end({ timeout: 5 });
      },
    });
  },
};

/** An enqueuer of `task` over up to `connections` connections, each batch one enqueueMany. */
// deno-lint-ignore no-explicit-any
function enqueuerOf(db: Database, connections: number, task: Task<PressureInput, any>): Promise<Enqueuer> {
  const sql = postgres(db.url, { max: connections, onnotice: () => {} });
  return Promise.resolve({
    async enqueue(n: number, t: number) {
      await enqueueMany(sql, task, Array.from({ length: n }, () => ({ t })));
    },
    async close() {
      await sql.end({ timeout: 5 });
    },
  });
}

function pgbgSetting(inFlight: number): { workers: number; concurrency: number } {
  return inFlight >= 2 ? { workers: 2, concurrency: Math.ceil(inFlight / 2) } : { workers: 1, concurrency: 1 };
}

// Loaded only when asked for, so that a run without peers needs none of them.
const peerLoaders: Record<string, () => Promise<PressureSubject>> = {
  "graphile-worker": async () => (await import("./peers.ts")).graphileWorkerPressure,
  "pg-boss": async () => (await import("./peers.ts")).pgBossPressure,
};

/** The names --peers knows. */
export const peerNames: string[] = Object.keys(peerLoaders);

/** Loads the peer subjects named in `names`. */
export function loadPeers(names: string[]): Promise<PressureSubject[]> {
  for (const name of names) if (!peerLoaders[name]) throw new Error(`--peers: unknown peer ${name}; known: ${peerNames.join(", ")}`);
  return Promise.all(names.map((name) => peerLoaders[name]()));
}
