/**
 * The lifecycle events of an in-process worker (`worker.on(...)`): what
 * became of each attempt, told once the database has it. A completion,
 * failure or snooze is told after its write went through the lease's fence;
 * one the fence refused is told as `leaseLost` instead, since another worker
 * holds the task now.
 *
 * @module
 */
import type { Logger } from "./log.ts";
import { describeError } from "./log.ts";

/** The attempt an event is about. */
export interface AttemptEvent {
  id: string;
  name: string;
  queue: string;
  /** The attempt's number, from 1. */
  attempt: number;
}

/** Each event's name and what its listeners receive. */
export interface TaskEvents {
  /** An attempt started. */
  started: AttemptEvent;
  /** The task succeeded and is done. */
  /** `result`: what was stored as its result (a task with a result schema). */
  completed: AttemptEvent & { durationMs: number; result?: unknown };
  /** The attempt failed; the task is queued again after `delayMs`. */
  retrying: AttemptEvent & { durationMs: number; error: ErrorInfo; delayMs: number };
  /** The attempt failed and the task is kept as failed: no attempt is left, or the error was permanent. */
  failed: AttemptEvent & { durationMs: number; error: ErrorInfo };
  /** The handler snoozed (ctx.retryAfter): queued again after `delayMs`, the attempt not counted. */
  snoozed: AttemptEvent & { durationMs: number; delayMs: number };
  /** The task was cancelled (`cancel`) and its attempt has ended: it is deleted. */
  cancelled: AttemptEvent;
  /** The attempt's outcome was refused: its lease had passed to another worker, which runs the task now. */
  leaseLost: AttemptEvent;
}

/** One of the names of {@link TaskEvents}. */
export type TaskEventName = keyof TaskEvents;

/** Every event's name. */
export const EVENT_NAMES: readonly TaskEventName[] = ["started", "completed", "retrying", "failed", "snoozed", "cancelled", "leaseLost"];

/** An error as an event carries it: name, message, and the code of a pgbg error. */
export interface ErrorInfo {
  name: string;
  message: string;
  code?: string;
}

/** A listener of event `E`. */
export type TaskEventListener<E extends TaskEventName> = (event: TaskEvents[E]) => void;

/**
 * Listeners by event. `has` is checked before an event is built, so a
 * worker nobody listens to pays nothing per attempt.
 */
export class TaskEventEmitter {
  readonly #listeners = new Map<TaskEventName, Set<(event: never) => void>>();
  /** The listeners of every event: `listening` is asked once an attempt, and a walk of the sets made an iterator each time. */
  #count = 0;
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Adds a listener; returns the function that removes it. */
  on<E extends TaskEventName>(name: E, listener: TaskEventListener<E>): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    const added = listener as (event: never) => void;
    if (!set.has(added)) this.#count++;
    set.add(added);
    return () => {
      if (set.delete(added)) this.#count--;
    };
  }

  /** True when any event has a listener. */
  get listening(): boolean {
    return this.#count > 0;
  }

  /** True when event `name` has a listener. */
  has(name: TaskEventName): boolean {
    return (this.#listeners.get(name)?.size ?? 0) > 0;
  }

  /** Calls each listener of `name`; a listener that throws is logged and does not stop the others, nor the worker. */
  emit<E extends TaskEventName>(name: E, event: TaskEvents[E]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const listener of set) {
      try {
        (listener as TaskEventListener<E>)(event);
      } catch (error) {
        this.#log.error(`a "${name}" listener threw: ${describeError(error).message}`, { task: event.name, id: event.id });
      }
    }
  }
}
