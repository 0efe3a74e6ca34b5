/**
 * `npm run bench -- --pressure`: a paced producer at R tasks/s feeds a
 * queue's workers (W tasks in flight, 1 ms each) for about 14 minutes
 * while the server is put under what degrades queues in production: an
 * idle transaction holding the xmin horizon, an overload, and readers
 * taking snapshots back to back, each followed by a recovery. Every 5 s it
 * samples throughput, depth, start latency, dead tuples, size, the oldest
 * xmin and the load average; it prints a Markdown summary with PASS/FAIL per
 * target, and writes it, the raw samples (JSON), one SVG per rate and
 * each subject's worker output (when there is any) to
 * bench/results/pressure/.
 *
 * Usage: npm run bench -- --pressure [--rate 800] [--in-flight 32] [--peers graphile-worker,pg-boss|none] [--scale 1] [--keep] [--queue-limit N] [--flows]
 *        (--keep: pgbg's tasks have a result schema and the service keeps completed tasks an hour;
 *        --queue-limit: pgbg's queue has a concurrency limit of N, above W so that it never binds;
 *        --flows: a tenth of pgbg's tasks arrive as flows of three tasks and a fan-in)
 *        npm run bench -- --pressure --full   (800/s × 32 for all three, then 2,000/s × 64 for pgbg: about 56 min)
 * Uses DATABASE_URL, or starts an embedded PostgreSQL; each subject gets a fresh database.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, hostname, release, totalmem } from "node:os";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { note, progress, type Server, startServer } from "./harness.ts";
import { Collector } from "./pressure/collector.ts";
import { schedule } from "./pressure/phases.ts";
import { plotRuns } from "./pressure/plot.ts";
import { rateSection, type RunSummary, summarise, TARGETS } from "./pressure/report.ts";
import { runSubject, type SubjectRun } from "./pressure/run-subject.ts";
import { loadAverage } from "./pressure/sampler.ts";
import { loadPeers, peerNames, pgbgFlowsPressure, pgbgKeptPressure, pgbgLimitedPressure, pgbgPressure, type PressureSubject } from "./pressure/subjects.ts";

/** One rate of a pressure run: R, W and the subjects run at it, in order. */
interface Step {
  rate: number;
  inFlight: number;
  subjects: PressureSubject[];
}

/** What the command line asks for. */
interface Options {
  steps: Step[];
  scale: number;
  full: boolean;
}

/** Parses the pressure bench's flags (`--pressure` itself included). */
async function parseOptions(argv: string[]): Promise<Options> {
  const { values } = parseArgs({
    args: argv,
    options: {
      pressure: { type: "boolean" },
      full: { type: "boolean", default: false },
      rate: { type: "string", default: "800" },
      "in-flight": { type: "string", default: "32" },
      peers: { type: "string" },
      scale: { type: "string", default: "1" },
      keep: { type: "boolean", default: false },
      "queue-limit": { type: "string" },
      flows: { type: "boolean", default: false },
    },
  });
  const number = (name: string, text: string, check: (n: number) => boolean, rule: string) => {
    const n = Number(text);
    if (!check(n)) throw new Error(`--${name}: ${rule}, not ${text}`);
    return n;
  };
  const rate = number("rate", values.rate, (n) => n > 0 && Number.isFinite(n), "a rate of tasks/s above 0");
  const inFlight = number("in-flight", values["in-flight"], (n) => Number.isInteger(n) && n >= 2 && n % 2 === 0, "an even count from 2 up (2 worker processes × W/2)");
  const scale = number("scale", values.scale, (n) => n > 0 && Number.isFinite(n), "a factor above 0");
  const names = values.peers === "none" ? [] : (values.peers ?? peerNames.join(",")).split(",");
  const peers = await loadPeers(names);
  const limit = values["queue-limit"] === undefined
    ? undefined
    : number("queue-limit", values["queue-limit"], (n) => Number.isInteger(n) && n >= 1, "a whole number of tasks from 1 up");
  const pgbg = limit !== undefined ? pgbgLimitedPressure(limit) : values.keep ? pgbgKeptPressure : values.flows ? pgbgFlowsPressure : pgbgPressure;
  const steps = values.full
    ? [{ rate: 800, inFlight: 32, subjects: [pgbgPressure, ...peers] }, { rate: 2000, inFlight: 64, subjects: [pgbgPressure] }]
    : [{ rate, inFlight, subjects: [pgbg, ...peers] }];
  return { steps, scale, full: values.full };
}

/**
 * Which pgbg was measured: the commit, and the files of the package's
 * source that differ from it. `npm run bench` builds the working tree as it
 * is, and a checkout others work in may hold their changes in progress.
 */
function sourceState(): string {
  const root = fileURLToPath(new URL("..", import.meta.url));
  try {
    const git = (...args: string[]) => execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    const changed = git("status", "--porcelain", "--", "mod.ts", "lib", "cli", "sql", "package.json").split("\n").filter(Boolean);
    return `commit ${git("rev-parse", "--short=10", "HEAD")}${changed.length ? `, with uncommitted changes to ${changed.length} file(s) of the package's source, built in: ${changed.map((l) => l.slice(3)).join(", ")}` : ", no uncommitted change to the package's source"}`;
  } catch {
    return "unknown (no git)";
  }
}

/** The report's header: what ran where, and under which load. */
function headerMarkdown(argv: string[], server: Server, options: Options, loadStart: number[], loadEnd: number[], when: string, source: string, incomplete?: string): string {
  const phases = schedule(options.scale).map((p) => `${p.name} ${Math.round((p.end - p.start) * 10) / 10} s`).join(", ");
  const settings = Object.entries(server.settings).map(([k, v]) => `${k}=${v}`).join(", ");
  const lines = [
    `# Pressure bench, ${when.slice(0, 16).replace("T", " ")} UTC, ${hostname()}`, "",
    `- Command: \`npm run bench -- ${argv.join(" ")}\``,
    ...(incomplete ? [`- **Incomplete: ${incomplete}; only the subjects' runs that completed are below**`] : []),
    `- pgbg: ${source} (as the run started)`,
    `- Machine: ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}, ${Math.round(totalmem() / 2 ** 30)} GiB, Linux ${release()}; Node ${process.version}`,
    `- Load average (1, 5, 15 min): ${loadStart.join(", ")} at the start, ${loadEnd.join(", ")} at the end (a shared machine: others' work weighs on every figure)`,
    `- PostgreSQL ${server.version} (${server.source}); ${settings}`,
    ...(server.settings.autovacuum === "off"
      ? ["- **autovacuum is off on this server**: nothing but the queues' own upkeep removes dead rows, so dead tuples and size cannot come back by vacuum"]
      : []),
    `- Scale ${options.scale}: ${phases}; a sample every 5 s; before the clean phase, one task on each of the producer's connections, started by the workers (a warm producer)`,
    `- Targets, each phase taken whole: tasks done ≥ tasks acknowledged less the depth baseline; start-latency p99 over every start ≤ ${TARGETS.p99.held} ms ` +
    `with the horizon held and ≤ ${TARGETS.p99.clean} ms in every other phase; after each pressure, depth back at the baseline within ` +
    `${TARGETS.depthBackSeconds} s and size within ${TARGETS.sizeBackSeconds / 60} min ("n/a": the phase is shorter than the target and it was not back)`,
    "",
  ];
  return lines.join("\n");
}

/** Writes the Markdown, the JSON and the SVGs; returns the Markdown. */
function writeResults(argv: string[], server: Server, options: Options, runs: SubjectRun[], loadStart: number[], when: string, source: string, incomplete?: string): string {
  const dir = fileURLToPath(new URL("./results/pressure/", import.meta.url));
  mkdirSync(dir, { recursive: true });
  const base = `${when.slice(0, 19).replace(/[:T]/g, "-")}-${hostname()}${options.scale === 1 ? "" : `-scale-${options.scale}`}`;
  const loadEnd = loadAverage();
  const sections: string[] = [];
  const summaries: RunSummary[] = runs.map(summarise);
  for (const rate of [...new Set(runs.map((r) => r.rate))]) {
    const at = summaries.filter((s) => s.run.rate === rate);
    const svg = `${base}-r${rate}.svg`;
    const title = `Pressure bench: R = ${rate.toLocaleString("en")} tasks/s, W = ${at[0].run.inFlight}, scale ${options.scale}, ${hostname()} ${when.slice(0, 16).replace("T", " ")} UTC`;
    writeFileSync(`${dir}${svg}`, plotRuns(at.map((s) => s.run), title));
    sections.push(rateSection(at, svg));
  }
  const markdown = [headerMarkdown(argv, server, options, loadStart, loadEnd, when, source, incomplete), ...sections].join("\n");
  writeFileSync(`${dir}${base}.md`, markdown);
  const json = {
    date: when, argv, pgbgSource: source, scale: options.scale, full: options.full, warmProducer: true, incomplete, loadAverage: { start: loadStart, end: loadEnd },
    machine: { host: hostname(), cpus: cpus().length, cpu: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release() },
    runtime: { node: process.version },
    postgres: { version: server.version, source: server.source, settings: server.settings },
    targets: TARGETS,
    runs: summaries.map(({ run: { serviceLog: _, ...run }, ...s }) => ({ ...run, depthBaseline: s.depthBaseline, sizeBaseline: s.sizeBaseline, phaseSummaries: s.phases.map(({ phase, ...rest }) => ({ phase: phase.name, ...rest })) })),
  };
  writeFileSync(`${dir}${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
  // Each subject's worker output beside the report: what the workers said
  // during a stall is where its cause is looked for first.
  const logs = runs.map((r) => ({ file: `${base}-${r.subject.replace(/\W+/g, "-")}-r${r.rate}.log`, text: r.serviceLog })).filter((l) => l.text);
  for (const l of logs) writeFileSync(`${dir}${l.file}`, l.text);
  note(`\nwritten: ${dir}${base}.{md,json} and ${[...new Set(runs.map((r) => r.rate))].map((r) => `-r${r}.svg`).join(", ")}${logs.map((l) => `, ${l.file}`).join("")}`);
  return markdown;
}

/** Runs the pressure bench with `argv`; resolves with the exit code. */
export async function main(argv: string[]): Promise<number> {
  const options = await parseOptions(argv);
  // Ctrl-C stops the run where it is; everything started is stopped, and
  // the runs already complete are written. A second Ctrl-C exits at once;
  // but one press arrives more than once (from the terminal, and relayed by
  // npm and tsx), so only a signal a second or more after the first counts.
  const abort = new AbortController();
  let firstSignal = 0;
  const onSigint = () => {
    if (abort.signal.aborted) {
      if (performance.now() - firstSignal > 1_000) process.exit(130);
      return;
    }
    firstSignal = performance.now();
    note("\npressure: stopping (Ctrl-C again to exit at once)");
    abort.abort();
  };
  process.on("SIGINT", onSigint);
  process.on("SIGTERM", onSigint);
  const server = await startServer();
  const runs: SubjectRun[] = [];
  const when = new Date().toISOString();
  const loadStart = loadAverage();
  const source = sourceState();
  let failure: unknown;
  let collector: Collector | undefined;
  try {
    collector = await Collector.open();
    // Inherited by every worker process started from here on (pgbg serve passes it to its workers).
    process.env.BENCH_PRESSURE_PORT = String(collector.port);
    note(`pressure: PostgreSQL ${server.version} (${server.source}); autovacuum ${server.settings.autovacuum}; scale ${options.scale}; load ${loadStart.join(" ")}`);
    for (const step of options.steps) {
      for (const subject of step.subjects) {
        runs.push(await runSubject({ server, collector, signal: abort.signal }, subject, step.rate, step.inFlight, options.scale));
      }
    }
  } catch (error) {
    failure = error;
  } finally {
    progress("");
    collector?.close();
    await server.stop();
    process.off("SIGINT", onSigint);
    process.off("SIGTERM", onSigint);
  }
  const incomplete = !failure ? undefined : abort.signal.aborted ? "stopped by Ctrl-C" : `failed: ${(failure as Error).message}`;
  if (runs.length) console.log(writeResults(argv, server, options, runs, loadStart, when, source, incomplete));
  if (failure) {
    note(`pressure: ${abort.signal.aborted ? "stopped" : `failed: ${(failure as Error).stack ?? failure}`}`);
    return abort.signal.aborted ? 130 : 1;
  }
  return 0;
}

// Run directly (tsx bench/pressure.ts …) as well as through bench/run.ts.
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exit(await main(process.argv.slice(2)));
