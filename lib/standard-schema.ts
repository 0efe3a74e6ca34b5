/**
 * The Standard Schema protocol, version 1 (https://standardschema.dev): the
 * `~standard` property through which valibot, zod (3.24 and later), arktype
 * and others validate a value and state their input and output types. pgbg
 * validates every task input through it, so a task's schema may come from
 * any of them. Declared here from the protocol's description, so that the
 * package needs no dependency for a handful of types.
 *
 * @module
 */

/** A schema that speaks Standard Schema v1. */
export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly "~standard": StandardSchemaProps<Input, Output>;
}

/** What a Standard Schema carries under `~standard`. */
export interface StandardSchemaProps<Input = unknown, Output = Input> {
  readonly version: 1;
  /** The library that made the schema, such as "valibot" or "zod". */
  readonly vendor: string;
  /** Validates a value: its (possibly transformed) output, or the issues found. */
  readonly validate: (value: unknown) => StandardResult<Output> | Promise<StandardResult<Output>>;
  /** Types only, never read at run time. */
  readonly types?: { readonly input: Input; readonly output: Output } | undefined;
}

/** The result of `validate`: the output, or the issues. */
export type StandardResult<Output> =
  | { readonly value: Output; readonly issues?: undefined }
  | { readonly issues: ReadonlyArray<StandardIssue> };

/** One problem `validate` found, and where. */
export interface StandardIssue {
  readonly message: string;
  readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined;
}

/** The type a Standard Schema accepts. */
export type StandardInput<S extends StandardSchemaV1> = NonNullable<S["~standard"]["types"]>["input"];

/** The type a Standard Schema produces. */
export type StandardOutput<S extends StandardSchemaV1> = NonNullable<S["~standard"]["types"]>["output"];

/** True when `schema` speaks Standard Schema v1. */
export function isStandardSchema(schema: unknown): schema is StandardSchemaV1 {
  const props = (schema as { "~standard"?: { version?: unknown; validate?: unknown } } | null)?.["~standard"];
  return (typeof schema === "object" || typeof schema === "function") && schema !== null &&
    typeof props === "object" && props !== null && props.version === 1 && typeof props.validate === "function";
}
