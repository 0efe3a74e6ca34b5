/**
 * Validation of a task's input against its valibot schema, with the issues
 * reduced to path and message.
 *
 * @module
 */
import * as v from "valibot";
import type { AnyTask } from "./define.ts";
import { type InputIssue, InvalidInputError } from "./errors.ts";

/** Reduces valibot issues to `{ path, message }` pairs. */
export function toInputIssues(issues: readonly v.BaseIssue<unknown>[]): InputIssue[] {
  return issues.map((issue) => ({ path: v.getDotPath(issue) ?? "", message: issue.message }));
}

/**
 * Validates `input` with the task's schema and returns the schema's output.
 * Throws {@link InvalidInputError} listing every issue; `index` is reported
 * for inputs of `enqueueMany`.
 */
export async function parseInput(task: AnyTask, input: unknown, index?: number): Promise<unknown> {
  const schema = task.schema;
  if (!schema.async) return parseInputSync(task, input, index);
  const result = await v.safeParseAsync(schema, input);
  if (!result.success) throw new InvalidInputError(task.name, toInputIssues(result.issues), index);
  return result.output;
}

/**
 * parseInput for a schema without async parts, without a promise: a batch
 * of 10,000 inputs validates several times faster than with one await each.
 */
export function parseInputSync(task: AnyTask, input: unknown, index?: number): unknown {
  const result = v.safeParse(task.schema as v.GenericSchema, input);
  if (!result.success) throw new InvalidInputError(task.name, toInputIssues(result.issues), index);
  return result.output;
}
