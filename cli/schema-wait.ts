/**
 * The supervisor's start: migrates (or checks) the schema, waiting with
 * back-off while the database is unreachable, and stops cleanly, with
 * status 0, on a signal that comes meanwhile.
 *
 * @module
 */
import type postgres from "postgres";
import { describeError, type Logger } from "../lib/log.ts";
import { assertSchemaCurrent, migrate } from "../lib/migrate.ts";
import type { ServeConfig } from "./config.ts";
import { launcherGone, launcherName } from "./launcher.ts";
import { isConnectionError } from "./connection-error.ts";
import { listenForSignals } from "./start-signals.ts";

/**
 * Makes the schema ready. A signal meanwhile (or one that came while the
 * process started: cli/start-signals.ts) stops the wait. Resolves with
 * undefined once ready, or with what stopped it (a signal, or the
 * launcher's exit); rejects on a final error.
 */
// deno-lint-ignore no-explicit-any
export async function waitForSchema(sql: postgres.Sql<any>, config: ServeConfig, log: Logger): Promise<string | undefined> {
  let signal: string | undefined;
  let onSignal = () => {};
  // A signal ends the wait at once, even in a connect that hangs (a server
  // that takes connections and never answers waits out the connect
  // timeout, 30 s): the attempt under way is left, and the caller closes
  // its connections.
  const signalled = new Promise<false>((resolve) => (onSignal = () => resolve(false)));
  const stopListening = listenForSignals((s) => {
    signal ??= s;
    onSignal();
  });
  const stopReason = () => signal ?? (launcherGone() ? `${launcherName()} exited` : undefined);
  try {
    if (stopReason()) return stopReason();
    const preparing = prepareSchema(sql, config, log, stopReason);
    preparing.catch(() => {}); // left behind on a signal: its end no longer matters
    const ready = await Promise.race([preparing, signalled]);
    return ready && !signal ? undefined : stopReason();
  } finally {
    stopListening();
  }
}

/** Migrates or checks the schema, retrying connection errors with back-off; false when `stopReason` names one meanwhile. */
// deno-lint-ignore no-explicit-any
async function prepareSchema(sql: postgres.Sql<any>, config: ServeConfig, log: Logger, stopReason: () => string | undefined): Promise<boolean> {
  for (let delay = 500; ; delay = Math.min(delay * 2, 15_000)) {
    try {
      if (config.migrate) await migrate(sql, { schema: config.schema });
      else await assertSchemaCurrent(sql, { schema: config.schema });
      return true;
    } catch (error) {
      if (!isConnectionError(error)) throw error;
      if (stopReason()) return false; // closed under it by the stop
      log.error(`cannot reach the database (${describeError(error).message}); retrying in ${delay} ms`);
      for (const end = Date.now() + delay; Date.now() < end;) {
        if (stopReason()) return false;
        await new Promise((r) => setTimeout(r, Math.min(250, end - Date.now())));
      }
    }
  }
}
