/**
 * Flows and batches under worker kills, a supervisor killed with its
 * workers and replaced, and a PostgreSQL restart: every task of every flow
 * and batch runs (lost 0, checked by the verdict of every scenario), no
 * flow's task starts before each of its parents succeeded, each reads every
 * parent's result, and each batch's completion task runs once, after every
 * member, told which failed for good (every 97th is made to) and that the
 * rest succeeded.
 */
import { enqueueBatch, enqueueFlow, flowTask } from "../../mod.ts";
import { type Scenario, sized, type Stage, taskMs } from "./stage.ts";
import { batchDone, join, work } from "./tasks.js";

/** Each batch's completion task, with the members meant to fail for good (every 97th), in id order. */
const failing = new Map<string, string[]>();

async function enqueueFlows(stage: Stage, flows: number, batches: number, members: number): Promise<void> {
  for (let f = 0; f < flows; f++) {
    const flow = await enqueueFlow(stage.sql, {
      a: flowTask(work, { ms: taskMs() }),
      b: flowTask(work, { ms: taskMs() }),
      c: flowTask(work, { ms: taskMs() }),
      fanIn: flowTask(join, { ms: taskMs() }, { dependsOn: ["a", "b", "c"] }),
      next: flowTask(join, { ms: taskMs() }, { dependsOn: ["fanIn", "a"] }),
    });
    stage.committed.push(...Object.values(flow.tasks));
  }
  for (let b = 0; b < batches; b++) {
    const inputs = Array.from({ length: members }, (_, i) => ({ ms: taskMs(), fail: i % 97 === 5 }));
    const batch = await enqueueBatch(stage.sql, work, inputs, { then: flowTask(batchDone, { ms: 0 }) });
    stage.committed.push(...batch.members, batch.then);
    failing.set(batch.then, batch.members.filter((_, i) => inputs[i].fail));
  }
}

/** Throws naming the first flow task or batch whose record breaks a rule. */
async function checkFlows(stage: Stage, flows: number, batches: number, members: number): Promise<void> {
  const joins = await stage.sql`SELECT task_id::text AS id, parents, pending, results FROM chaos_flow`;
  if (joins.length !== flows * 2) throw new Error(`${joins.length} flow children completed, of ${flows * 2}`);
  for (const j of joins) {
    if (j.pending !== 0) throw new Error(`flow task ${j.id} started while ${j.pending} of its ${j.parents} parents had not succeeded`);
    if (j.results !== j.parents) throw new Error(`flow task ${j.id} read ${j.results} results of its ${j.parents} parents`);
  }
  const done = await stage.sql`SELECT task_id::text AS id, size, succeeded, pending, failed_ids::text[] AS failed FROM chaos_batch`;
  if (done.length !== batches) throw new Error(`${done.length} batch completion tasks completed, of ${batches}`);
  for (const d of done) {
    const failed = failing.get(d.id) ?? [];
    if (d.pending !== 0) throw new Error(`batch completion task ${d.id} started while ${d.pending} members were pending`);
    if (d.size !== members || d.succeeded !== members - failed.length) {
      throw new Error(`batch completion task ${d.id} was told ${d.succeeded} of ${d.size} succeeded, not ${members - failed.length} of ${members}`);
    }
    if (d.failed.join() !== failed.join()) throw new Error(`batch completion task ${d.id} was told the members ${d.failed.join(", ")} failed, not ${failed.join(", ")}`);
  }
}

export const flowsScenario: Scenario = {
  name: "flows",
  // Attempts fail on the connections the restart drops; a worker may exit then too.
  allowed: ["killed", "error", "exited"],
  async run(stage) {
    await stage.sql`CREATE TABLE chaos_flow (task_id bigint NOT NULL, parents integer NOT NULL, pending integer NOT NULL, results integer NOT NULL)`;
    await stage.sql`CREATE TABLE chaos_batch (task_id bigint NOT NULL, size integer NOT NULL, succeeded integer NOT NULL, pending integer NOT NULL, failed_ids bigint[] NOT NULL)`;
    // Flows a multiple of 3, batches of 2 (each enqueued in parts).
    const [flows, batches, members] = [sized(stage, 600, 150), sized(stage, 10, 4), sized(stage, 1_000, 300)];
    const supervisors = [stage.serve({ workers: 2, concurrency: 20 }), stage.serve({ workers: 2, concurrency: 20 })];
    let kills = 0;
    const killOne = () => supervisors[Math.floor(Math.random() * supervisors.length)].killRandomWorker() && kills++;
    // A third at a time, each followed by a fault, so that every fault meets flows in flight.
    await enqueueFlows(stage, flows / 3, batches / 2, members);
    killOne();
    await enqueueFlows(stage, flows / 3, batches / 2, members);
    await supervisors[1].killAll();
    supervisors.push(stage.serve({ workers: 2, concurrency: 20 }));
    await enqueueFlows(stage, flows / 3, 0, members);
    await stage.restartServer(2_000);
    let next = Date.now() + 1_000;
    await stage.drained(() => {
      if (Date.now() < next) return;
      next = Date.now() + 1_000;
      killOne();
    });
    if (!kills) throw new Error("no worker was killed: the scenario injected no fault");
    await checkFlows(stage, flows, batches, members);
    stage.note(`${flows} flows of 5 tasks and ${batches} batches of ${members}, ${kills} workers killed, a supervisor killed and replaced, PostgreSQL restarted`);
  },
};
