/**
 * Generates the Prisma client of tests/fixtures/prisma/schema.prisma for
 * the tests that enqueue through Prisma, from the npm registry alone:
 * Prisma 7's `generate` does not run its schema engine, but its CLI
 * downloads one at start unless PRISMA_SCHEMA_ENGINE_BINARY names one, so
 * it names a program that is never run.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after } from "node:test";

/**
 * Generates the client in a folder of this process's own (test files run in
 * parallel), removed after the tests, and returns the path of its module.
 */
export function generatePrismaClient(): string {
  const dir = fileURLToPath(new URL(`./fixtures/prisma/run-${process.pid}/`, import.meta.url));
  mkdirSync(dir, { recursive: true });
  after(() => rmSync(dir, { recursive: true, force: true }));
  copyFileSync(new URL("./fixtures/prisma/schema.prisma", import.meta.url), `${dir}schema.prisma`);
  const cli = fileURLToPath(new URL("../node_modules/prisma/build/index.js", import.meta.url));
  const result = spawnSync(process.execPath, [cli, "generate", "--schema", `${dir}schema.prisma`], {
    encoding: "utf8",
    env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: "1", CHECKPOINT_DISABLE: "1" },
    timeout: 120_000,
  });
  if (result.status !== 0) throw new Error(`prisma generate failed: ${result.stderr || result.stdout}`);
  return `${dir}generated/client.ts`;
}
