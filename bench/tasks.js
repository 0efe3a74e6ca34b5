// Tasks for the benchmark's `pgbg serve` runs. Plain JavaScript importing the
// built package by its name, as a user's Node application would.
import process from "node:process";
import * as v from "valibot";
import { defineTask } from "pgbg";

/** Does nothing: the drain measures the queue, not the work. */
export const noop = defineTask({
  name: "noop",
  schema: v.object({ i: v.number() }),
  run() {},
});

/** Prints when it started, for the enqueue-to-start latency. */
export const latency = defineTask({
  name: "latency",
  schema: v.object({ i: v.number() }),
  run(input) {
    process.stdout.write(`BENCH_START ${input.i} ${performance.timeOrigin + performance.now()}\n`);
  },
});
