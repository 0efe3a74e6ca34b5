/**
 * SIGTERM and SIGINT for `pgbg serve`, from the moment its process starts:
 * one pair of handlers, installed first (cli/main.ts), hands each signal to
 * whoever listens now (the schema wait, then the supervisor), and keeps the
 * first one that came while nobody listened, for the next listener; a
 * second one then exits at once (status 1). So no stage of the start-up,
 * from loading the modules to starting the workers, leaves a signal to
 * Node's default (death by the signal, status 143 or 130).
 *
 * @module
 */
import process from "node:process";

/** A stop signal as the service names it. */
export type StopSignal = "SIGTERM" | "SIGINT";

let installed = false;
let pending: StopSignal | undefined;
let listener: ((signal: StopSignal) => void) | undefined;

function deliver(signal: StopSignal): void {
  if (listener) return listener(signal);
  // Asked twice with nobody to hear it (still starting, or shutting down):
  // stop now, as a second signal does while the service runs.
  if (pending) process.exit(1);
  pending = signal;
}

/** Installs the handlers (once); until a listener comes, the first signal is kept. */
export function latchSignals(): void {
  if (installed) return;
  installed = true;
  process.on("SIGTERM", () => deliver("SIGTERM"));
  process.on("SIGINT", () => deliver("SIGINT"));
}

/**
 * Hands every stop signal to `onSignal` until the returned function is
 * called; a signal kept from before comes at once. Installs the handlers
 * if cli/main.ts did not (the service started another way).
 */
export function listenForSignals(onSignal: (signal: StopSignal) => void): () => void {
  latchSignals();
  listener = onSignal;
  const kept = pending;
  pending = undefined;
  if (kept) onSignal(kept);
  return () => {
    if (listener === onSignal) listener = undefined;
  };
}
