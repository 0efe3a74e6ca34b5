/**
 * The service's logger, on consola: readable on a terminal, one JSON object
 * per line otherwise, so log shippers can index the fields.
 *
 * @module
 */
import { createConsola, type LogObject } from "consola";
import type { Logger, LogFields } from "../lib/log.ts";
import type { LogLevel } from "./config.ts";

const LEVELS: Record<LogLevel, number> = { error: 0, warn: 1, info: 3, debug: 4 };

/** Creates a Logger writing to stderr, tagged with `component` (supervisor, worker 2…). */
export function createLogger(level: LogLevel, format: "pretty" | "json", component: string): Logger {
  const reporters = format === "json"
    ? [{
      log(entry: LogObject) {
        const [message, fields] = entry.args as [string, LogFields | undefined];
        process.stderr.write(`${JSON.stringify({ time: entry.date.toISOString(), level: entry.type, component, pid: process.pid, message, ...fields })}\n`);
      },
    }]
    : undefined;
  // fancy is forced for pretty: left to itself, consola switches to a
  // different line layout when CI, TEST or NODE_ENV=test is set, and a
  // format the user chose should not change with the environment.
  const consola = createConsola({ level: LEVELS[level], ...(reporters ? { reporters } : { fancy: true }) }).withTag(component);
  const write = (type: "debug" | "info" | "warn" | "error") => (message: string, fields?: LogFields) => {
    if (format === "json") consola[type](message, fields);
    else if (fields && "error" in fields && typeof fields.error === "string") consola[type](`${message} (${fields.error})`);
    else consola[type](message);
  };
  return {
    debug: write("debug"), info: write("info"), warn: write("warn"), error: write("error"),
    isEnabled: (type) => LEVELS[type] <= LEVELS[level],
  };
}
