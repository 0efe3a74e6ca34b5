/**
 * The fault-injection scenarios. Each enqueues tasks of tests/chaos/tasks.js,
 * runs real `pgbg serve` supervisors, or apps hosting in-process workers,
 * while it hurts them, and returns once the queue is empty; run.ts then
 * checks the record (check.ts).
 */
import { enqueueMany, setGroupConcurrency, setQueueConcurrency } from "../../mod.ts";
import type { Supervisor } from "./cluster.ts";
import { boundScenarios } from "./bounds.ts";
import { flowsScenario } from "./flows.ts";
import { inProcess } from "./in-process.ts";
import { producerTerminated } from "./producer.ts";
import { type Scenario, sized, type Stage, taskMs } from "./stage.ts";
import { groupedWork, work } from "./tasks.js";

/** Enqueues `n` tasks in committed batches; `hang(i)` marks tasks whose first attempt hangs. */
export async function enqueueTasks(stage: Stage, n: number, hang: (i: number) => boolean = () => false): Promise<void> {
  for (let done = 0; done < n; done += 5_000) {
    const inputs = Array.from({ length: Math.min(5_000, n - done) }, (_, j) => ({ ms: taskMs(), hang: hang(done + j) || undefined }));
    stage.committed.push(...(await enqueueMany(stage.sql, work, inputs)));
  }
}

/**
 * Enqueues `n` tasks while the scenario runs, keeping about `depth` queued:
 * a shallow queue, as in production, where a task released while it still
 * runs would be claimed again at once (behind a long backlog, the first
 * execution would end before the second began, and an overlap would go
 * unseen). Resolves once all are enqueued.
 */
export async function feedTasks(stage: Stage, n: number, depth = 200, groups = 0): Promise<void> {
  for (let fed = 0; fed < n;) {
    const [{ queued }] = await stage.sql`SELECT count(*)::int AS queued FROM pgbg.task WHERE state = 'queued'`;
    if (queued >= depth) {
      await new Promise((r) => setTimeout(r, 10));
      continue;
    }
    const batch = Math.min(depth, n - fed);
    // With `groups`, tasks of groupedWork spread over that many groups.
    const ids = groups
      ? await enqueueMany(stage.sql, groupedWork, Array.from({ length: batch }, (_, i) => ({ ms: taskMs(), g: `tenant-${(fed + i) % groups}` })))
      : await enqueueMany(stage.sql, work, Array.from({ length: batch }, () => ({ ms: taskMs() })));
    stage.committed.push(...ids);
    fed += batch;
  }
}

/** Feeds `n` tasks and kills a random worker of a random supervisor every `everyMs` until they are all done. */
async function killWorkersWhileFeeding(stage: Stage, n: number, supervisors: Supervisor[], everyMs: number, groups = 0): Promise<void> {
  let fed = false;
  const feeding = feedTasks(stage, n, 200, groups).then(() => (fed = true));
  let next = Date.now() + everyMs;
  let kills = 0;
  while (!fed) {
    await Promise.race([feeding, new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())))]);
    if (fed) break;
    next = Date.now() + everyMs;
    if (supervisors[Math.floor(Math.random() * supervisors.length)].killRandomWorker()) kills++;
  }
  await stage.drained();
  // A run that fed its tasks before the first kill would prove nothing.
  if (!kills) throw new Error("no worker was killed: the scenario injected no fault");
}

function competing(supervisors: number): Scenario {
  return {
    name: `${supervisors}-supervisors`,
    allowed: ["killed"],
    async run(stage) {
      const all = Array.from({ length: supervisors }, () => stage.serve({ workers: 2, concurrency: 20 }));
      await killWorkersWhileFeeding(stage, sized(stage, 20_000, 3_000), all, sized(stage, 2_000, 1_500));
    },
  };
}

/**
 * Two supervisors under a queue concurrency limit of 5 while workers are
 * killed, and one supervisor killed with its workers and replaced: the
 * killed attempts' slots come back when their tasks are released.
 */
const underLimit: Scenario = {
  name: "limit-and-schedule",
  allowed: ["killed"],
  limit: 5,
  ticks: true,
  async run(stage) {
    await setQueueConcurrency(stage.sql, "default", 5);
    const supervisors = [stage.serve({ workers: 2, concurrency: 10, ticks: true }), stage.serve({ workers: 2, concurrency: 10, ticks: true })];
    const feeding = killWorkersWhileFeeding(stage, sized(stage, 5_000, 1_500), supervisors, sized(stage, 1_500, 1_000));
    await new Promise((r) => setTimeout(r, 3_000));
    await supervisors[1].killAll();
    supervisors.push(stage.serve({ workers: 2, concurrency: 10, ticks: true }));
    await feeding;
    stage.note("limit 5 over 2 supervisors of 2 × 10, one killed with its workers and replaced; a schedule every second");
  },
};

/**
 * A group limit of 2 over 10 groups (so at most 20 of the 40 slots are
 * used: the limit binds) under worker kills, one supervisor killed with
 * its workers and replaced: no group ever runs more than 2 at once, and
 * one does run 2.
 */
const groupLimit: Scenario = {
  name: "group-limit",
  allowed: ["killed"],
  groupLimit: 2,
  async run(stage) {
    await setGroupConcurrency(stage.sql, "default", 2);
    const supervisors = [stage.serve({ workers: 2, concurrency: 10 }), stage.serve({ workers: 2, concurrency: 10 })];
    const feeding = killWorkersWhileFeeding(stage, sized(stage, 5_000, 1_500), supervisors, sized(stage, 1_500, 1_000), 10);
    await new Promise((r) => setTimeout(r, 3_000));
    await supervisors[1].killAll();
    supervisors.push(stage.serve({ workers: 2, concurrency: 10 }));
    await feeding;
    stage.note("group limit 2 over 10 groups, 2 supervisors of 2 × 10, one killed with its workers and replaced");
  },
};

/** Every scenario, in the order the suite runs them. */
export const scenarios: Scenario[] = [
  {
    name: "kill-workers",
    allowed: ["killed"],
    async run(stage) {
      const supervisor = stage.serve({ workers: 4, concurrency: 25 });
      await killWorkersWhileFeeding(stage, sized(stage, 50_000, 5_000), [supervisor], sized(stage, 3_000, 2_000));
    },
  },
  {
    name: "kill-supervisor",
    allowed: ["killed"],
    async run(stage) {
      await enqueueTasks(stage, sized(stage, 20_000, 3_000));
      const rounds = sized(stage, 3, 2);
      for (let round = 0; round < rounds; round++) {
        const supervisor = stage.serve({ workers: 2, concurrency: 25 });
        // Let it get going, then kill it with its workers, leases held.
        await new Promise((r) => setTimeout(r, 2_500));
        await supervisor.killAll();
      }
      // The next supervisor releases the dead workers' tasks once their
      // heartbeats are stale (20 s at the default check interval), or their
      // leases expire.
      stage.serve({ workers: 2, concurrency: 25 });
      await stage.drained();
      stage.note(`${rounds} supervisors killed with their workers (SIGKILL to the process group)`);
    },
  },
  {
    name: "restart-postgres",
    // Attempts fail on dropped connections; a worker may exit too: one whose
    // handler waited on the database past its timeout retires, and
    // postgres.js can throw where nothing catches it (porsager/postgres#1154).
    allowed: ["error", "exited"],
    async run(stage) {
      const n = sized(stage, 20_000, 4_000);
      await enqueueTasks(stage, n);
      const supervisor = stage.serve({ workers: 4, concurrency: 25 });
      const restarts = sized(stage, 2, 1);
      for (let i = 1; i <= restarts; i++) {
        // Restart when about i/(restarts+1) of the tasks are done.
        await waitForDone(stage, Math.floor((n * i) / (restarts + 1)));
        await stage.restartServer(2_000);
      }
      await stage.drained();
      if (!supervisor.alive) throw new Error("the supervisor exited during the restarts");
      stage.note(`${restarts} restart(s) of PostgreSQL, down 2 s each`);
    },
  },
  {
    name: "terminate-backends",
    allowed: ["error", "exited"],
    async run(stage) {
      await enqueueTasks(stage, sized(stage, 20_000, 4_000));
      const supervisor = stage.serve({ workers: 4, concurrency: 25 });
      let terminated = 0;
      let next = Date.now() + 1_000;
      await stage.drained(async () => {
        if (Date.now() < next) return;
        next = Date.now() + 1_000;
        const [{ n }] = await stage.sql`SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'pgbg worker%'`;
        terminated += n;
      });
      if (!supervisor.alive) throw new Error("the supervisor exited");
      if (!terminated) throw new Error("no worker connection was terminated: the scenario injected no fault");
      stage.note(`${terminated} worker connections terminated`);
    },
  },
  competing(2),
  competing(4),
  {
    name: "hung-tasks",
    // A hung attempt ends when its retired worker exits; the others running
    // in that worker may end with it.
    allowed: ["hung", "exited"],
    async run(stage) {
      const n = sized(stage, 5_000, 1_000);
      const every = sized(stage, 100, 100);
      await enqueueTasks(stage, n, (i) => i % every === every - 1);
      const supervisor = stage.serve({ workers: 4, concurrency: 10, args: ["--timeout", "1s"] });
      await stage.drained();
      const retired = supervisor.logs().filter((l) => /exited with code 4/.test(l.message)).length;
      if (!retired) throw new Error("no worker retired, though tasks hung past their timeout");
      stage.note(`${Math.floor(n / every)} hung tasks, ${retired} workers retired and replaced`);
    },
  },
  {
    name: "producers-rollback",
    allowed: [],
    async run(stage) {
      stage.serve({ workers: 2, concurrency: 20 });
      const transactions = sized(stage, 1_000, 200);
      let rolledBack = 0;
      const producer = async () => {
        for (let t = 0; t < transactions; t++) {
          const roll = Math.random() < 0.5;
          const inputs = Array.from({ length: 10 }, () => ({ ms: taskMs() }));
          let ids: string[] = [];
          try {
            await stage.sql.begin(async (tx) => {
              ids = await enqueueMany(tx, work, inputs);
              // Give the workers a chance to see what is not yet committed.
              await tx`SELECT pg_sleep(0.002)`;
              if (roll) throw new RollBack();
            });
            stage.committed.push(...ids);
          } catch (error) {
            if (!(error instanceof RollBack)) throw error;
            stage.rolledBack.push(...ids);
            rolledBack++;
          }
        }
      };
      await Promise.all(Array.from({ length: 4 }, producer));
      await stage.drained();
      stage.note(`4 producers, ${4 * transactions} transactions, ${rolledBack} rolled back (${stage.rolledBack.length} tasks)`);
    },
  },

  producerTerminated,
  inProcess,
  underLimit,
  groupLimit,
  flowsScenario,
  ...boundScenarios,
];


class RollBack extends Error {}

async function waitForDone(stage: Stage, count: number): Promise<void> {
  for (const deadline = Date.now() + 600_000; ;) {
    const [{ n }] = await stage.sql`SELECT count(*)::int AS n FROM chaos_done`;
    if (n >= count) return;
    if (Date.now() > deadline) throw new Error(`fewer than ${count} tasks were done after 10 minutes`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
