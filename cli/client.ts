/**
 * The postgres.js clients of `pgbg serve`, its workers and the operators'
 * commands, made one way: notices kept quiet, a name that shows in
 * pg_stat_activity, and behind a pooler in transaction mode no named
 * statements and no more statements at once than connections.
 *
 * @module
 */
import postgres from "postgres";
import { onePerConnection } from "../lib/client.ts";

/** A client of `max` connections to `url`, named `name`; `transactionPooling`: the URL reaches a pooler in transaction mode. */
// deno-lint-ignore no-explicit-any
export function connect(url: string, max: number, name: string, transactionPooling: boolean): postgres.Sql<any> {
  const sql = postgres(url, {
    max,
    onnotice: () => {},
    // A statement prepared on one server session is unknown to the next the pooler hands out.
    prepare: !transactionPooling,
    connection: { application_name: name },
  });
  return transactionPooling ? onePerConnection(sql) : sql;
}
