/**
 * Validation of a task's input against its schema, with the issues reduced
 * to path and message. Any Standard Schema is accepted (lib/standard-schema.ts);
 * a valibot schema is run directly, which is what the drain measures: its
 * `~standard.validate` would do the same work behind one more call.
 *
 * @module
 */
import * as v from "valibot";
import type { AnyTask } from "./define.ts";
import { type InputIssue, InvalidInputError } from "./errors.ts";
import type { StandardIssue, StandardResult, StandardSchemaV1 } from "./standard-schema.ts";

type ValibotSchema = v.GenericSchema | v.GenericSchemaAsync;

/** True for a valibot schema (which also speaks Standard Schema). */
function isValibot(schema: unknown): schema is ValibotSchema {
  const s = schema as { kind?: unknown; "~run"?: unknown; "~standard"?: { vendor?: unknown } };
  return s.kind === "schema" && typeof s["~run"] === "function" && s["~standard"]?.vendor === "valibot";
}

/** Reduces valibot issues to `{ path, message }` pairs. */
function valibotIssues(issues: readonly v.BaseIssue<unknown>[]): InputIssue[] {
  return issues.map((issue) => ({ path: v.getDotPath(issue) ?? "", message: issue.message }));
}

/** Reduces Standard Schema issues to `{ path, message }` pairs, the path dotted as valibot's. */
function standardIssues(issues: readonly StandardIssue[]): InputIssue[] {
  return issues.map((issue) => ({
    path: (issue.path ?? []).map((p) => String(typeof p === "object" && p !== null ? p.key : p)).join("."),
    message: issue.message,
  }));
}

/**
 * Validates `input` with the task's schema and returns the schema's output:
 * at once when the schema validates synchronously (no promise, so that a
 * batch of 10,000 inputs is not 10,000 awaits), else as a promise. Throws
 * (or rejects with) {@link InvalidInputError} listing every issue; `index`
 * is reported for inputs of `enqueueMany`.
 */
export function validateInput(task: AnyTask, input: unknown, index?: number): unknown {
  return validate(task.schema, input, (issues) => new InvalidInputError(task.name, issues, index));
}

/**
 * Validates a value with any Standard Schema, as {@link validateInput} does
 * an input: the output at once or as a promise; `refuse` makes the error
 * thrown for the issues.
 */
export function validate(schema: StandardSchemaV1, value: unknown, refuse: (issues: InputIssue[]) => Error): unknown {
  const s = schema as unknown;
  if (isValibot(s)) {
    if (s.async) {
      return v.safeParseAsync(s, value).then((r) => {
        if (!r.success) throw refuse(valibotIssues(r.issues));
        return r.output;
      });
    }
    const r = v.safeParse(s, value);
    if (!r.success) throw refuse(valibotIssues(r.issues));
    return r.output;
  }
  const result = schema["~standard"].validate(value);
  const check = (r: StandardResult<unknown>) => {
    if (r.issues) throw refuse(standardIssues(r.issues));
    return r.value;
  };
  return isThenable(result) ? Promise.resolve(result as PromiseLike<StandardResult<unknown>>).then(check) : check(result as StandardResult<unknown>);
}

/** True when `value` is a promise or another thenable (what validateInput returns for an async schema). */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === "object" || typeof value === "function") && typeof (value as { then?: unknown }).then === "function";
}
