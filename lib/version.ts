/**
 * pgbg's version. It must equal `version` in package.json and deno.json
 * (tests/package.test.ts checks it); the CLI prints it.
 *
 * @module
 */

/** The version of this pgbg release. */
export const VERSION = "0.1.0";
