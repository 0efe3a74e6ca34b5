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

/** ANSI colours of the pretty format's levels, on a terminal. */
const PAINT: Record<string, string> = { error: "31", fatal: "31", warn: "33", info: "36", debug: "90" };

/**
 * The pretty format's line: `[component] HH:MM:SS level message`, one line
 * per record and nothing between them (consola's own reporter set records
 * apart with blank lines and boxes), the level coloured on a terminal
 * unless NO_COLOR is set.
 */
export function prettyLine(component: string, date: Date, type: string, message: string, color: boolean): string {
  const level = type.padEnd(5);
  const time = date.toTimeString().slice(0, 8);
  return `[${component}] ${time} ${color && PAINT[type] ? `\x1b[${PAINT[type]}m${level}\x1b[0m` : level} ${message}`;
}

/** Creates a Logger writing to stderr, tagged with `component` (supervisor, worker 2…). */
export function createLogger(level: LogLevel, format: "pretty" | "json", component: string): Logger {
  const color = Boolean(process.stderr.isTTY) && !process.env.NO_COLOR;
  // Our own reporters, either format: consola's fancy one changes its
  // layout when CI, TEST or NODE_ENV=test is set, and a format the user
  // chose should not change with the environment.
  const reporter = format === "json"
    ? (entry: LogObject) => {
      const [message, fields] = entry.args as [string, LogFields | undefined];
      process.stderr.write(`${JSON.stringify({ time: entry.date.toISOString(), level: entry.type, component, pid: process.pid, message, ...fields })}\n`);
    }
    : (entry: LogObject) => {
      const [message, fields] = entry.args as [string, LogFields | undefined];
      const text = fields && "error" in fields && typeof fields.error === "string" ? `${message} (${fields.error})` : message;
      statusLine.write(`${prettyLine(component, entry.date, entry.type, text, color)}\n`);
    };
  const consola = createConsola({ level: LEVELS[level], reporters: [{ log: reporter }] });
  const write = (type: "debug" | "info" | "warn" | "error") => (message: string, fields?: LogFields) => consola[type](message, fields);
  return {
    debug: write("debug"), info: write("info"), warn: write("warn"), error: write("error"),
    isEnabled: (type) => LEVELS[type] <= LEVELS[level],
  };
}

/**
 * A line at the foot of a terminal that rewrites itself (`pgbg serve`'s
 * progress): the log's lines are written above it, and it is written again
 * after each. Off the terminal, or until a status is set, it writes nothing.
 */
class StatusLine {
  #text = "";
  readonly #tty = Boolean(process.stderr.isTTY);

  /**
   * Writes `record` (whole lines) above the status line. On a terminal the
   * line is cleared first: it may hold the status line of this process or,
   * for a worker sharing the supervisor's terminal, of the supervisor,
   * which draws it again at its next tick.
   */
  write(record: string): void {
    process.stderr.write(this.#tty ? `\r\x1b[2K${record}${this.#text}` : record);
  }

  /** Draws the status line with `text` (on a terminal only); an empty text removes it. */
  set(text: string): void {
    if (!this.#tty) return;
    process.stderr.write(`\r\x1b[2K${text}`);
    this.#text = text;
  }
}

/** The process's status line (see StatusLine). */
export const statusLine = new StatusLine();
