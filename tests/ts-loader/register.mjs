/**
 * `node --import ./tests/ts-loader/register.mjs file.ts`: runs this
 * repository's TypeScript in the test suite's processes, as tsx does, for a
 * third of its start-up CPU. The suite starts about 360 node processes (test
 * files, supervisors, workers, the README's examples) on a 2-core machine,
 * and tsx's start-up (about 0.35 s of CPU each) was a sixth of the suite's
 * CPU. What it does not do: tsconfig paths, CommonJS TypeScript, JSX.
 */
import { register } from "node:module";

process.setSourceMapsEnabled(true);
register("./hooks.mjs", import.meta.url);
