#!/usr/bin/env node
/**
 * The `pgbg` command line's entry: for `pgbg serve`, it catches SIGTERM and
 * SIGINT before anything else loads (cli/start-signals.ts), then loads the
 * commands (cli/commands.ts). Loading them takes a few hundred ms, during
 * which a signal would otherwise end the service by Node's default, exit
 * status 143, where a stop before the service started exits 0.
 *
 * Exit codes: 0 success, 1 the operation failed, 2 bad usage.
 *
 * @module
 */
import process from "node:process";
import { latchSignals } from "./start-signals.ts";

if (process.argv[2] === "serve") latchSignals();
await import("./commands.ts");
