/**
 * Parallel queries that all finish before a failure is reported.
 *
 * @module
 */

/**
 * Like `Promise.all`, but it waits for every promise before it throws the
 * first rejection. `Promise.all` rejects at the first failure and leaves the
 * other queries running; a caller that then ends its postgres.js client with
 * a timeout cuts the connections those queries were still opening, and
 * postgres.js (3.4) keeps such a half-opened connection (a socket and a
 * timer) alive past `end()`, so the process does not exit: seen as a test
 * file that passed and never ended, under load, when `pgbg status` failed
 * on a missing schema.
 */
export async function allSettledOrThrow<T extends readonly unknown[] | []>(promises: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const outcomes: PromiseSettledResult<unknown>[] = await Promise.allSettled(promises as readonly unknown[]);
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === "rejected");
  if (failed) throw failed.reason;
  return outcomes.map((o) => (o as PromiseFulfilledResult<unknown>).value) as { -readonly [K in keyof T]: Awaited<T[K]> };
}
