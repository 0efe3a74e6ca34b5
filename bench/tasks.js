// Tasks for the benchmark's `pgbg serve` runs. Plain JavaScript importing the
// built package by its name, as a user's Node application would.
import process from "node:process";
import * as v from "valibot";
import { defineTask } from "pgbg";
import { reportFinish, reportStart } from "./pressure/reporter.js";

/** Does nothing: the drain measures the queue, not the work. */
export const noop = defineTask({
  name: "noop",
  schema: v.object({ i: v.number() }),
  run() {},
});

/** Does nothing and returns its input's number as its result: the drain with results (kept an hour, by default). */
export const noopResult = defineTask({
  name: "noop-result",
  schema: v.object({ i: v.number() }),
  result: v.number(),
  run: (input) => input.i,
});

/** A batch's completion task: runs once its members all ended (the drain of a batch). */
export const batchDone = defineTask({
  name: "batch-done",
  schema: v.object({}),
  run() {},
});

/** Does nothing, in the group its input names (g): the drains with groups. */
export const noopGrouped = defineTask({
  name: "noop-grouped",
  schema: v.object({ i: v.number(), g: v.string() }),
  group: (input) => input.g,
  run() {},
});

/** Prints when it started, as `latency`, in the group its input names (g): a small tenant behind a backlog. */
export const latencyGrouped = defineTask({
  name: "latency-grouped",
  schema: v.object({ i: v.number(), g: v.string() }),
  group: (input) => input.g,
  run(input) {
    process.stdout.write(`BENCH_START ${input.i} ${performance.timeOrigin + performance.now()}\n`);
  },
});

/** Prints when it started, for the enqueue-to-start latency. */
export const latency = defineTask({
  name: "latency",
  schema: v.object({ i: v.number() }),
  run(input) {
    process.stdout.write(`BENCH_START ${input.i} ${performance.timeOrigin + performance.now()}\n`);
  },
});

/**
 * The pressure bench's task (bench/pressure.ts): reports its start, with the
 * enqueue time its payload carries, sleeps 1 ms, and reports its finish.
 */
export const pressure = defineTask({
  name: "pressure",
  schema: v.object({ t: v.number() }),
  async run(input) {
    reportStart(input.t);
    await new Promise((resolve) => setTimeout(resolve, 1));
    reportFinish();
  },
});

/** The pressure task with a result (its enqueue time), kept an hour: `--pressure --keep`. */
export const pressureKept = defineTask({
  name: "pressure-kept",
  schema: v.object({ t: v.number() }),
  result: v.number(),
  async run(input) {
    reportStart(input.t);
    await new Promise((resolve) => setTimeout(resolve, 1));
    reportFinish();
    return input.t;
  },
});
