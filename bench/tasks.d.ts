// Types of bench/tasks.js, which stays plain JavaScript so that Node runs it without a loader.
import type * as v from "valibot";
import type { Task } from "../mod.ts";

type Input = v.ObjectSchema<{ i: v.NumberSchema<undefined> }, undefined>;
/** Does nothing. */
export declare const noop: Task<Input>;
/** Does nothing; its result is its input's number. */
export declare const noopResult: Task<Input, v.NumberSchema<undefined>>;
/** Prints when it started. */
export declare const latency: Task<Input>;
type GroupedInput = v.ObjectSchema<{ i: v.NumberSchema<undefined>; g: v.StringSchema<undefined> }, undefined>;
/** Does nothing, in the group its input names. */
export declare const noopGrouped: Task<GroupedInput>;
/** Prints when it started, in the group its input names. */
export declare const latencyGrouped: Task<GroupedInput>;
/** A batch's completion task: does nothing. */
export declare const batchDone: Task<v.ObjectSchema<{}, undefined>>;
