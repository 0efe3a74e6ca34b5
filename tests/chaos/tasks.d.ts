// Types of tests/chaos/tasks.js, which stays plain JavaScript so that Node runs it without a loader.
import type * as v from "valibot";
import type { Task } from "../../mod.ts";

type Input = v.ObjectSchema<{
  ms: v.NumberSchema<undefined>;
  hang: v.OptionalSchema<v.BooleanSchema<undefined>, undefined>;
  late: v.OptionalSchema<v.NumberSchema<undefined>, undefined>;
  fail: v.OptionalSchema<v.BooleanSchema<undefined>, undefined>;
}, undefined>;
type Result = v.ObjectSchema<{ p: v.NumberSchema<undefined>; n: v.NumberSchema<undefined> }, undefined>;
/** Sleeps, then records its success and completes itself in one transaction, its result naming the execution; `hang` and `late` make its first attempt ignore its abort signal; `fail` fails every attempt for good. */
export declare const work: Task<Input, Result>;
type GroupedInput = v.ObjectSchema<{ ms: v.NumberSchema<undefined>; g: v.StringSchema<undefined> }, undefined>;
/** As `work`, in the group its input names. */
export declare const groupedWork: Task<GroupedInput, Result>;
type MsInput = v.ObjectSchema<{ ms: v.NumberSchema<undefined> }, undefined>;
/** A task of a flow: as `work`, recording in chaos_flow its parents, those still pending at its start, and the results it read. */
export declare const join: Task<MsInput, Result>;
/** A batch's completion task: as `work`, recording in chaos_batch what ctx.batch() said and the members pending at its start. */
export declare const batchDone: Task<MsInput, Result>;
