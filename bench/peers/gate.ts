/**
 * The child side of a gated peer worker (see worker-process.ts): stdin is
 * the parent's pipe, a "GO" line opens the gate, and its end means the
 * parent is gone, so the child stops as harness stop() would have.
 */
import process from "node:process";
import { createInterface } from "node:readline";

/** When `gated`, prints READY and resolves on the parent's "GO"; otherwise at once. */
export async function passGate(gated: boolean): Promise<void> {
  const lines = createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.on("line", (line) => line.trim() === "GO" && resolve()));
  lines.on("close", () => process.kill(process.pid, "SIGTERM"));
  if (!gated) return;
  process.stdout.write("READY\n");
  await go;
}
