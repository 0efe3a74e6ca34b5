// One application process of the bench's in-process drain: it hosts one
// `createWorker` and nothing else. Plain JavaScript importing the built
// package by its name, as a user's Node application would, so that it runs
// the same compiled engine as the `pgbg serve` workers it is compared with.
//
// Usage: node bench/in-process-host.js CONCURRENCY   (DATABASE_URL in the environment)
// Prints "READY" once the worker is registered; SIGTERM stops it gracefully.
import process from "node:process";
import postgres from "postgres";
import { createWorker } from "pgbg";
import * as tasks from "./tasks.js";

const concurrency = Number(process.argv[2]);
// The app's own client; the worker opens its own pool (4, as a serve
// worker's), heartbeat and LISTEN connections with these settings.
const sql = postgres(process.env.DATABASE_URL ?? "", { max: 1, onnotice: () => {} });
// Every task of tasks.js, as `pgbg serve --tasks bench/tasks.js` registers
// them: the claim filters by the registered names, so both claim alike.
const worker = createWorker(sql, { tasks: Object.values(tasks), concurrency });
await worker.start();
process.stdout.write("READY\n");

process.once("SIGTERM", async () => {
  await worker.stop();
  await sql.end({ timeout: 2 });
  process.exit(0);
});
