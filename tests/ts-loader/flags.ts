/**
 * The node flags that run this repository's TypeScript in a process the
 * tests start (see register.mjs): `spawn(process.execPath, [...typeScript, file])`.
 */
export const typeScript = ["--import", new URL("./register.mjs", import.meta.url).href];
