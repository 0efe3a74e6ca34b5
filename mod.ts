/**
 * pgbg: a background task queue for TypeScript that keeps its queue in
 * PostgreSQL. This module is the library that applications import to define
 * and enqueue tasks, to run them in their own process (`createWorker`,
 * `drain`), to wait for their results (`waitForResult`), and to look after
 * them (`getTask`, `listTasks`, `retry`, `cancel`, `status`); the service that runs them in supervised
 * subprocesses is `pgbg serve`.
 *
 * @example
 * ```ts
 * import * as v from "valibot";
 * import postgres from "postgres";
 * import { defineTask, enqueue, migrate } from "pgbg";
 *
 * const sendEmail = defineTask({
 *   name: "send-email",
 *   schema: v.object({ to: v.pipe(v.string(), v.email()), subject: v.string() }),
 *   async run(input, ctx) { console.log("sending", input.subject, "attempt", ctx.attempt); },
 * });
 *
 * const sql = postgres(process.env.DATABASE_URL!);
 * await migrate(sql);
 * await enqueue(sql, sendEmail, { to: "a@b.c", subject: "hi" });
 * ```
 *
 * @module
 */
export { defineTask } from "./lib/define.ts";
export type { AnyTask, BatchOutcome, InputSchema, ParentResult, RetryBackoff, RunReturn, Task, TaskContext, TaskInput, TaskResult } from "./lib/define.ts";
export type { Retention } from "./lib/retention.ts";
export { waitForResult } from "./lib/wait.ts";
export type { WaitOptions } from "./lib/wait.ts";
export type { StandardInput, StandardIssue, StandardOutput, StandardResult, StandardSchemaProps, StandardSchemaV1 } from "./lib/standard-schema.ts";
export { enqueue, enqueueMany } from "./lib/enqueue.ts";
export { enqueueBatch, enqueueFlow, flowTask } from "./lib/flow.ts";
export type { EnqueueBatchOptions, EnqueuedBatch, EnqueuedFlow, EnqueueFlowOptions, FlowTask, FlowTaskOptions, OnParentFailure } from "./lib/flow.ts";
export { cancelFlow, getBatch, getFlow, recentFlows } from "./lib/flow-admin.ts";
export type { BatchInfo, FlowInfo, FlowSummary, FlowTaskInfo } from "./lib/flow-admin.ts";
export type { EnqueueManyOptions, EnqueueOptions } from "./lib/enqueue.ts";
export { createWorker } from "./lib/host.ts";
export type { WorkerHost, WorkerHostOptions } from "./lib/host.ts";
export { cancel, countTasks, getTask, listTasks, retry, status, TASK_STATES } from "./lib/admin.ts";
export { activity } from "./lib/activity.ts";
export type { ActivityMinute, ActivityOptions } from "./lib/activity.ts";
export { listSchedules, MAX_RATE_LIMIT, pausedQueues, pauseQueue, queueSettings, resumeQueue, runSchedule, setGroupConcurrency, setGroupRateLimit, setQueueConcurrency, setQueueRateLimit } from "./lib/controls.ts";
export type { GroupRate, PausedQueue, QueueRate, QueueSettings, RateLimit, ScheduleInfo } from "./lib/controls.ts";
export { defineSchedule } from "./lib/schedule.ts";
export type { CatchUp, Schedule, ScheduleDefinition, ScheduleEnqueueOptions } from "./lib/schedule.ts";
export type {
  AdminOptions,
  CancelResult,
  CancelTarget,
  CountTasksOptions,
  ListTasksOptions,
  QueueStatus,
  RetryTarget,
  Status,
  TaskCount,
  TaskInfo,
  TaskPage,
  TaskState,
  WorkerStatus,
} from "./lib/admin.ts";
export type { AttemptEvent, ErrorInfo, TaskEventListener, TaskEventName, TaskEvents } from "./lib/events.ts";
export { drain } from "./lib/drain.ts";
export type { DrainOptions, DrainResult } from "./lib/drain.ts";
export type { LogFields, Logger } from "./lib/log.ts";
export { LATEST_SCHEMA_VERSION, migrate, schemaVersion } from "./lib/migrate.ts";
export type { MigrateOptions, MigrateResult } from "./lib/migrate.ts";
export type { Database } from "./lib/statements.ts";
export type { DatabaseClient, DrizzleClient, KyselyClient, NodePgClient, NodePgPool } from "./lib/client.ts";
export { forTransactionPooling } from "./lib/client.ts";
export {
  InputVersionError,
  FlowError,
  InvalidConfigError,
  InvalidInputError,
  InvalidOptionsError,
  InvalidPayloadError,
  InvalidResultError,
  InvalidScheduleError,
  InvalidTaskError,
  LeaseLostError,
  PayloadTooLargeError,
  PermanentError,
  PgbgError,
  SchemaError,
  UnknownScheduleError,
  UnsupportedClientError,
  WaitError,
} from "./lib/errors.ts";
export type { ErrorCode, InputIssue, WaitErrorCode } from "./lib/errors.ts";
export { VERSION } from "./lib/version.ts";
