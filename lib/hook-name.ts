/**
 * What an onFailed hook's task name adds to its task's: defineTask keeps
 * room for it, lib/hooks.ts names the hook with it, and the statement that
 * enqueues hooks (sql/queries/worker.sql, EnqueueFailedHooks, through
 * migration 007's function) writes the same text.
 *
 * @module
 */

/** The suffix of a hook's task name. */
export const HOOK_SUFFIX = ":on-failed";
