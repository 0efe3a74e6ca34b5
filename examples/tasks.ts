/**
 * Example tasks, served by `npm start` (see README).
 */
import * as v from "valibot";
import { defineTask } from "../mod.ts";

/** Pretends to send an email: waits a little, honouring the abort signal. */
export const sendEmail = defineTask({
  name: "send-email",
  schema: v.object({ to: v.pipe(v.string(), v.email()), subject: v.string() }),
  timeout: 10_000,
  async run(input, ctx) {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(resolve, 20 + Math.random() * 80);
      ctx.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(ctx.signal.reason);
      }, { once: true });
    });
    if (Math.random() < 0.05) throw new Error(`mail server refused ${input.to} (a simulated failure, retried)`);
  },
});

/** Adds two numbers; an instant task. */
export const add = defineTask({
  name: "add",
  schema: v.object({ a: v.number(), b: v.number() }),
  retryDelay: 1_000,
  run(input) {
    if (!Number.isFinite(input.a + input.b)) throw new Error("not finite");
  },
});
