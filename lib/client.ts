/**
 * The database clients pgbg's enqueue and admin functions run on besides
 * postgres.js: node-postgres (`pg`) Clients, PoolClients and Pools, Kysely
 * instances and transactions, Drizzle databases and transactions (over
 * node-postgres or postgres.js), and Prisma clients and interactive
 * transactions. Each is recognised by its shape, so none of
 * those libraries is imported: they stay optional peer dependencies, and an
 * app that uses none of them pays nothing.
 *
 * Every client is reduced to an {@link Executor}: one statement, and a
 * transaction that is the caller's own when the client is already in one,
 * so an enqueue commits or rolls back with the app's writes.
 *
 * @module
 */
import { createHash } from "node:crypto";
import type { Sql, TransactionSql } from "postgres";
import { UnsupportedClientError } from "./errors.ts";

/** The part of a node-postgres `Client` or `PoolClient` pgbg uses. */
export interface NodePgClient {
  // deno-lint-ignore no-explicit-any
  query(config: { text: string; values?: any[]; name?: string }): Promise<{ rows: any[] }>;
}

/** The part of a node-postgres `Pool` pgbg uses. */
export interface NodePgPool extends NodePgClient {
  connect(): Promise<NodePgClient & { release(error?: Error | boolean): void }>;
  readonly totalCount: number;
}

/** The part of a Kysely instance or transaction pgbg uses (`kysely` 0.27 and later). */
export interface KyselyClient {
  // deno-lint-ignore no-explicit-any
  executeQuery(query: any): Promise<{ rows: unknown[] }>;
  // deno-lint-ignore no-explicit-any
  withoutPlugins(): any;
  readonly isTransaction: boolean;
}

/** The part of a Drizzle database or transaction pgbg uses: its session's client (node-postgres or postgres.js). */
export interface DrizzleClient {
  readonly _: { readonly session: unknown };
  // deno-lint-ignore no-explicit-any
  execute(query: any): unknown;
}

/** The part of a Prisma client or interactive transaction pgbg uses. */
export interface PrismaClient {
  // deno-lint-ignore no-explicit-any
  $queryRawUnsafe(query: string, ...values: any[]): Promise<unknown>;
}

/**
 * A database client pgbg's enqueue and admin functions accept: a postgres.js
 * `sql`, reserved connection or transaction; a node-postgres `Client`,
 * `PoolClient` or `Pool`; a Kysely instance or transaction; a Drizzle
 * database or transaction; a Prisma client or interactive transaction. A
 * client inside a transaction runs pgbg's statements in it.
 */
// deno-lint-ignore no-explicit-any
export type DatabaseClient = Sql<any> | TransactionSql<any> | NodePgClient | NodePgPool | KyselyClient | DrizzleClient | PrismaClient;

/**
 * How pgbg begins a transaction of its own: `write` (the server's default
 * isolation), or `snapshot`, read only and REPEATABLE READ, so that every
 * statement in it reads the same snapshot (figures read by several
 * statements agree). Inside the caller's transaction (a postgres.js
 * transaction or reserved connection, a node-postgres client after BEGIN,
 * a Kysely or Drizzle transaction), the statements run in it as they are.
 * A Prisma client gets no transaction for `snapshot`: its own are bound by
 * Prisma's timeouts, and a Prisma 7 transaction client nests, so which one
 * began is not known.
 */
export type TransactionMode = "write" | "snapshot";

/** What pgbg needs of a client: one statement, and a transaction. */
export interface Executor {
  /** Runs one statement with its parameters, as a prepared statement where the client keeps them. */
  // deno-lint-ignore no-explicit-any
  query<T = any>(text: string, params: unknown[]): Promise<T[]>;
  /** Runs `fn` in a transaction (begun in `mode`, default `write`), given the client to run in it: the caller's own transaction when there is one. */
  transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode?: TransactionMode): Promise<T>;
}

/**
 * What follows BEGIN in each mode. Letters and spaces only: postgres.js
 * drops any other character of the options it puts after its BEGIN.
 */
const BEGIN_OPTIONS: Record<TransactionMode, string> = { write: "", snapshot: "ISOLATION LEVEL REPEATABLE READ READ ONLY" };

/** The executor for `client`; throws {@link UnsupportedClientError} naming what was passed when pgbg cannot run on it. */
export function executorFor(client: unknown): Executor {
  if (isPostgresJs(client)) return new PostgresJsExecutor(client);
  if (!client || typeof client !== "object") throw unsupported(client);
  const c = client as Record<string, unknown>;
  if (typeof c.execute === "function" && typeof c._ === "object" && c._ && "session" in c._) return drizzleExecutor(client as DrizzleClient);
  if (typeof c.executeQuery === "function" && typeof c.withoutPlugins === "function") return new KyselyExecutor(client as KyselyClient);
  if (typeof c.$queryRawUnsafe === "function") return new PrismaExecutor(client as PrismaClient);
  if (typeof c.query === "function") {
    return typeof c.connect === "function" && "totalCount" in c
      ? new NodePgPoolExecutor(client as NodePgPool)
      : new NodePgClientExecutor(client as NodePgClient, false);
  }
  throw unsupported(client);
}

/** True for a postgres.js handle: a function with `unsafe`. */
// deno-lint-ignore no-explicit-any
export function isPostgresJs(client: unknown): client is Sql<any> | TransactionSql<any> {
  return typeof client === "function" && typeof (client as { unsafe?: unknown }).unsafe === "function";
}

const ACCEPTED = "a postgres.js sql, reserved connection or transaction; a node-postgres Client, PoolClient or Pool; " +
  "a Kysely instance or transaction; a Drizzle database or transaction; or a Prisma client or interactive transaction";

function unsupported(client: unknown): UnsupportedClientError {
  return new UnsupportedClientError(`pgbg cannot run statements on ${describeClient(client)}: pass ${ACCEPTED}`);
}

/** Names what was passed: its type, or its class and the methods it has. */
function describeClient(client: unknown): string {
  if (client === null || client === undefined) return String(client);
  if (typeof client !== "object" && typeof client !== "function") return `a ${typeof client}`;
  const name = Object.getPrototypeOf(client)?.constructor?.name;
  const kind = typeof client === "function" ? "a function" : name && name !== "Object" ? `an instance of ${name}` : "a plain object";
  const methods = new Set<string>();
  for (let o: object | null = client as object; o && o !== Object.prototype && o !== Function.prototype; o = Object.getPrototypeOf(o)) {
    for (const key of Object.getOwnPropertyNames(o)) {
      if (key !== "constructor" && typeof Object.getOwnPropertyDescriptor(o, key)?.value === "function") methods.add(key);
    }
  }
  const listed = [...methods].slice(0, 8);
  return listed.length ? `${kind} (methods: ${listed.join(", ")}${methods.size > listed.length ? ", …" : ""})` : kind;
}

/** A postgres.js handle: prepared statements; its own transaction unless it is one already. */
class PostgresJsExecutor implements Executor {
  // deno-lint-ignore no-explicit-any
  constructor(private readonly sql: Sql<any> | TransactionSql<any>) {}

  // deno-lint-ignore no-explicit-any
  query<T = any>(text: string, params: unknown[]): Promise<T[]> {
    // deno-lint-ignore no-explicit-any
    return inTurn(this.sql, async () => (await this.sql.unsafe(text, params as any[], { prepare: true })) as unknown as T[]);
  }

  transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode = "write"): Promise<T> {
    // A transaction (or savepoint) handle has no `begin`: it is already in one.
    if (!("begin" in this.sql)) return fn(this.sql);
    const sql = this.sql;
    return inTurn(sql, () => sql.begin(BEGIN_OPTIONS[mode], (tx) => fn(tx)) as Promise<T>);
  }
}

/** Room for `size` operations at once; the rest wait their turn, first come first served. */
class Turns {
  #free: number;
  readonly #waiting: (() => void)[] = [];

  constructor(size: number) {
    this.#free = size;
  }

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await fn();
    } finally {
      // The room passes straight to the next in line, or is freed.
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

/** The turns of each postgres.js client pgbg made for a pooler in transaction mode (onePerConnection). */
const turns = new WeakMap<object, Turns>();

/**
 * Marks `sql`, a postgres.js client pgbg made to reach PostgreSQL through a
 * pooler in transaction mode, so that pgbg runs no more statements (or
 * transactions) on it at once than it has connections. Returns `sql`.
 *
 * postgres.js sends a statement behind one still running on a busy
 * connection when none is free. Without named statements, a statement with
 * parameters begins with a Parse and Describe that end in a Flush, not a
 * Sync; PgBouncer 1.18 gives the server session back at the first
 * statement's ReadyForQuery, drops the answers to the second ("got packet
 * '1' from server when not linked"), and the client waits for them
 * forever, logging nothing (an in-process worker stalled so, twice in CI:
 * tests/pgbouncer.test.ts). With no more at once than connections, every
 * statement finds a connection free: postgres.js frees a connection before
 * the statement that held it settles. postgres.js's `max_pipeline: 0`
 * would send one at a time too, but its `begin` then fails.
 */
// deno-lint-ignore no-explicit-any
export function onePerConnection<T extends Sql<any>>(sql: T): T {
  turns.set(sql, new Turns(sql.options.max));
  return sql;
}

/** Runs `fn`, a statement or transaction on `sql`, in its turn when `sql` is marked by {@link onePerConnection}; at once otherwise. */
export function inTurn<T>(sql: object, fn: () => Promise<T>): Promise<T> {
  const own = turns.get(sql);
  return own ? own.run(fn) : fn();
}

/** node-postgres clients and pools that {@link forTransactionPooling} marked: their statements go unnamed. */
const unnamed = new WeakSet<object>();

/**
 * Marks a node-postgres `Pool`, `Client` or `PoolClient` that reaches
 * PostgreSQL through a pooler in transaction mode (PgBouncer's
 * `pool_mode = transaction`): pgbg then runs unnamed statements on it,
 * because a named one prepared on one server session is unknown to the
 * next. Returns the same object. A marked pool marks every client it opens from
 * then on, so a client the app (or Drizzle's transaction) checks out of it
 * is marked too; mark a pool before its first query.
 * A postgres.js client says the same with its `prepare: false` option, and
 * Kysely's and Prisma's never name statements.
 *
 * @example
 * ```ts
 * const db = forTransactionPooling(new pg.Pool({ connectionString: process.env.PGBOUNCER_URL }));
 * await enqueue(db, sendEmail, { to: "a@example.com" });
 * ```
 */
export function forTransactionPooling<T extends NodePgClient>(client: T): T {
  unnamed.add(client);
  // A pool's clients, as it opens them: so those that Drizzle's and Kysely's
  // transactions check out of it, which pgbg then runs on, are marked too.
  const pool = client as Partial<NodePgPool> & { on?: (event: string, listener: (c: NodePgClient) => void) => unknown };
  if (typeof pool.connect === "function" && "totalCount" in pool && typeof pool.on === "function") pool.on("connect", (c) => unnamed.add(c));
  return client;
}

// node-postgres keeps a prepared statement per connection under the name
// given with it; one name per text, the same in every process, so two
// copies of pgbg in one app never give one name two texts. None for a
// client marked for transaction pooling.
const statementNames = new Map<string, string>();

function statementName(client: NodePgClient, text: string): string | undefined {
  if (unnamed.has(client)) return undefined;
  let name = statementNames.get(text);
  if (!name) {
    name = `pgbg_${createHash("sha1").update(text).digest("hex").slice(0, 24)}`;
    statementNames.set(text, name);
  }
  return name;
}

const SAVEPOINT = "pgbg_transaction";

/** A node-postgres Client or PoolClient: in a transaction when the app began one, or when pgbg did. */
class NodePgClientExecutor implements Executor {
  constructor(private readonly client: NodePgClient, private readonly inTransaction: boolean) {}

  // deno-lint-ignore no-explicit-any
  async query<T = any>(text: string, params: unknown[]): Promise<T[]> {
    return (await this.client.query({ name: statementName(this.client, text), text, values: params })).rows as T[];
  }

  async transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode = "write"): Promise<T> {
    if (this.inTransaction) return fn(this.client);
    // A client does not say whether the app began a transaction on it: a
    // savepoint answers, refused (25P01) outside one. Inside one, a failure
    // rolls back to it, so nothing of pgbg's is left for the app to commit.
    try {
      await this.client.query({ text: `SAVEPOINT ${SAVEPOINT}` });
    } catch (error) {
      if ((error as { code?: unknown }).code !== "25P01") throw error;
      return inOwnTransaction(this.client, fn, mode);
    }
    try {
      const result = await fn(this.client);
      await this.client.query({ text: `RELEASE SAVEPOINT ${SAVEPOINT}` });
      return result;
    } catch (error) {
      await this.client.query({ text: `ROLLBACK TO SAVEPOINT ${SAVEPOINT}` }).catch(() => {});
      throw error;
    }
  }
}

/** Runs `fn` between BEGIN (of `mode`) and COMMIT on `client`, rolling back on a failure; rejects with the failure. */
async function inOwnTransaction<T>(client: NodePgClient, fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode): Promise<T> {
  await client.query({ text: `BEGIN ${BEGIN_OPTIONS[mode]}` });
  try {
    const result = await fn(client);
    await client.query({ text: "COMMIT" });
    return result;
  } catch (error) {
    await client.query({ text: "ROLLBACK" }).catch(() => {});
    throw error;
  }
}

/** A node-postgres Pool: one statement on any of its clients; a transaction on one it checks out. */
class NodePgPoolExecutor implements Executor {
  constructor(private readonly pool: NodePgPool) {}

  // deno-lint-ignore no-explicit-any
  async query<T = any>(text: string, params: unknown[]): Promise<T[]> {
    return (await this.pool.query({ name: statementName(this.pool, text), text, values: params })).rows as T[];
  }

  async transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode = "write"): Promise<T> {
    const client = await this.pool.connect();
    if (unnamed.has(this.pool)) unnamed.add(client);
    try {
      const result = await inOwnTransaction(client, fn, mode);
      client.release();
      return result;
    } catch (error) {
      // Destroyed, not pooled: its ROLLBACK may not have been heard.
      client.release(error instanceof Error ? error : true);
      throw error;
    }
  }
}

/**
 * A Kysely instance or transaction. Statements run without the instance's
 * plugins, so a result-shaping plugin (such as CamelCasePlugin) cannot
 * rename the columns pgbg reads. Kysely's drivers do not prepare named
 * statements, so neither does this.
 */
class KyselyExecutor implements Executor {
  // deno-lint-ignore no-explicit-any
  readonly #plain: any;

  constructor(private readonly db: KyselyClient) {
    this.#plain = db.withoutPlugins();
  }

  // deno-lint-ignore no-explicit-any
  async query<T = any>(text: string, params: unknown[]): Promise<T[]> {
    // What Kysely's CompiledQuery.raw builds, without importing Kysely.
    const compiled = { sql: text, parameters: params, query: { kind: "RawNode", sqlFragments: [text], parameters: [] }, queryId: { queryId: "pgbg" } };
    return (await this.#plain.executeQuery(compiled)).rows as T[];
  }

  transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode = "write"): Promise<T> {
    if (this.db.isTransaction) return fn(this.db);
    // deno-lint-ignore no-explicit-any
    let builder = (this.db as any).transaction();
    if (mode === "snapshot") {
      builder = builder.setIsolationLevel("repeatable read");
      // setAccessMode came in a later 0.27 release than the oldest Kysely pgbg accepts.
      if (typeof builder.setAccessMode === "function") builder = builder.setAccessMode("read only");
    }
    return builder.execute((trx: KyselyClient) => fn(trx));
  }
}

/**
 * A Prisma client or interactive transaction. Prisma returns int8 columns
 * as BigInt where the other drivers give strings; pgbg reads ids through
 * `String()`, so both read alike (tests/clients.test.ts compares them).
 */
class PrismaExecutor implements Executor {
  constructor(private readonly prisma: PrismaClient) {}

  // deno-lint-ignore no-explicit-any
  async query<T = any>(text: string, params: unknown[]): Promise<T[]> {
    return (await this.prisma.$queryRawUnsafe(text, ...params)) as T[];
  }

  transaction<T>(fn: (tx: DatabaseClient) => Promise<T>, mode: TransactionMode = "write"): Promise<T> {
    // No transaction for a read (TransactionMode says why).
    if (mode === "snapshot") return fn(this.prisma);
    // Prisma 7's transaction clients nest; an older one's has no $transaction and is in its transaction already.
    const begin = (this.prisma as { $transaction?: unknown }).$transaction;
    // deno-lint-ignore no-explicit-any
    return typeof begin === "function" ? (begin.call(this.prisma, (tx: PrismaClient) => fn(tx)) as Promise<T>) : fn(this.prisma);
  }
}

/** A Drizzle database or transaction runs on its session's client: a node-postgres or postgres.js one. */
function drizzleExecutor(db: DrizzleClient): Executor {
  const client = (db._.session as { client?: unknown } | null)?.client;
  if (client === undefined || client === db) throw unsupported(db);
  try {
    return executorFor(client);
  } catch {
    throw new UnsupportedClientError(
      `pgbg cannot run statements on this Drizzle database, whose driver's client is ${describeClient(client)}: use Drizzle over node-postgres or postgres.js`,
    );
  }
}
