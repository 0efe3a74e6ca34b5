/**
 * The loader hooks behind register.mjs. A `.ts` module is turned into
 * JavaScript by esbuild (types dropped, nothing checked: `npm run check`
 * checks) and kept in a cache keyed by its path and text, shared by every
 * process, so that a module is transformed once per change, not once per
 * process. A relative `./x.js` that does not exist is looked up as `./x.ts`.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** Changes whenever the transform's options do, so older cached output is not used. */
const VERSION = "1";
export const cacheDir = join(tmpdir(), `pgbg-ts-loader-${process.getuid?.() ?? "user"}`);
mkdirSync(cacheDir, { recursive: true });

export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (error) {
    if (error?.code !== "ERR_MODULE_NOT_FOUND" || !/^\.{1,2}\/.*\.js$/.test(specifier)) throw error;
    return next(`${specifier.slice(0, -3)}.ts`, context);
  }
}

export async function load(url, context, next) {
  if (!url.startsWith("file:") || !/\.m?ts$/.test(new URL(url).pathname)) return next(url, context);
  const path = fileURLToPath(url);
  return { format: "module", source: await transformed(path, readFileSync(path, "utf8")), shortCircuit: true };
}

/** `source` of the module at `path` as JavaScript, from the cache or newly transformed (and cached). */
export async function transformed(path, source) {
  const cached = join(cacheDir, `${createHash("sha1").update(`${VERSION}\0${path}\0${source}`).digest("hex")}.js`);
  try {
    return readFileSync(cached, "utf8");
  } catch {
    const { transform } = await import("esbuild");
    const { code } = await transform(source, { loader: "ts", format: "esm", target: "es2023", sourcefile: path, sourcemap: "inline" });
    // Written whole under a temporary name first: another process may read it at any moment.
    const temporary = `${cached}.${process.pid}.tmp`;
    writeFileSync(temporary, code);
    renameSync(temporary, cached);
    return code;
  }
}
