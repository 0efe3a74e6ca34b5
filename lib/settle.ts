/**
 * Waiting on promises: parallel queries that all finish before a failure is
 * reported, and a wait bounded in time.
 *
 * @module
 */

/**
 * Resolves true when `promise` resolves within `ms`, false once `ms` pass
 * first (the promise runs on); rejects as it does within `ms`.
 */
export async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  return await Promise.race([promise.then(() => true), late]).finally(() => clearTimeout(timer));
}

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
