/**
 * The loader hooks behind register.mjs. A `.ts` module is turned into
 * JavaScript by esbuild (types dropped, nothing checked: `npm run check`
 * checks) and kept in a cache keyed by esbuild's version and the module's
 * path and text, shared by every process, so that a module is transformed
 * once per change, not once per process. A relative `./x.js` that does not
 * exist is looked up as `./x.ts`, as tsx does.
 *
 * The cache is `node_modules/.cache/pgbg-ts-loader` (inside the checkout, so
 * that no other user of the machine can put code in it, and gone with
 * `node_modules`). Old entries are not removed: a few kilobytes per edited file.
 */
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const cacheDir = fileURLToPath(new URL("../../node_modules/.cache/pgbg-ts-loader/", import.meta.url));
/**
 * The transform's options, part of the cache's key. The inline source maps
 * leave the source text out (sourcesContent): stack traces name the
 * TypeScript's lines all the same, and each process decodes a map per
 * module it loads, a third of the size.
 */
const OPTIONS = { loader: "ts", format: "esm", target: "es2023", sourcemap: "inline", sourcesContent: false };
const esbuildVersion = JSON.parse(readFileSync(new URL("../../node_modules/esbuild/package.json", import.meta.url), "utf8")).version;

/** Resolves as node does; a relative `.js` that is not there is tried as `.ts`. */
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (error) {
    if (error?.code !== "ERR_MODULE_NOT_FOUND" || !/^\.{1,2}\/.*\.js$/.test(specifier)) throw error;
    return next(`${specifier.slice(0, -3)}.ts`, context);
  }
}

/** Loads a `.ts` file as an ES module of JavaScript; anything else as node does. */
export async function load(url, context, next) {
  if (!url.startsWith("file:") || !/\.m?ts$/.test(new URL(url).pathname)) return next(url, context);
  const path = fileURLToPath(url);
  return { format: "module", source: await transformed(path, readFileSync(path, "utf8")), shortCircuit: true };
}

/** `source`, the module at `path`, as JavaScript: from the cache, or transformed and cached. */
async function transformed(path, source) {
  const cached = `${cacheDir}${createHash("sha1").update(`${esbuildVersion}\0${JSON.stringify(OPTIONS)}\0${path}\0${source}`).digest("hex")}.js`;
  try {
    return readFileSync(cached, "utf8");
  } catch {
    const { transform } = await import("esbuild");
    const { code } = await transform(source, { ...OPTIONS, sourcefile: path });
    try {
      // Written whole under a temporary name first: another process may read it at any moment.
      mkdirSync(cacheDir, { recursive: true });
      const temporary = `${cached}.${process.pid}.tmp`;
      writeFileSync(temporary, code);
      renameSync(temporary, cached);
    } catch {
      // Not cached (a full disk, a read-only checkout): the next process transforms it again.
    }
    return code;
  }
}
