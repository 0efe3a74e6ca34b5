/**
 * npx (npm exec) runs the command under a shell that dies with it on
 * SIGTERM, leaving the service running with nobody to stop it. When a
 * package runner started this process, its exit counts as SIGTERM. The
 * runner is read at start-up, before anything can outlive it.
 *
 * @module
 */
import process from "node:process";

const launcher = process.env.npm_command === "exec" ? process.ppid : undefined;

/** True once the package runner that started this process has exited. */
export function launcherGone(): boolean {
  return launcher !== undefined && process.ppid !== launcher;
}

/** The runner's name for log lines: the npm script, else npx. */
export function launcherName(): string {
  return process.env.npm_lifecycle_event ?? "npx";
}
