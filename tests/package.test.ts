import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { VERSION } from "../mod.ts";

const read = (file: string) => JSON.parse(readFileSync(new URL(`../${file}`, import.meta.url), "utf8"));

test("package.json, deno.json and the code agree on the version", () => {
  const npm = read("package.json").version;
  const jsr = read("deno.json").version;
  assert.match(npm, /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/);
  assert.equal(jsr, npm, "deno.json's version is package.json's");
  assert.equal(VERSION, npm, "lib/version.ts's VERSION is package.json's");
});

test("package.json and deno.json declare the same runtime dependencies", () => {
  const npm: Record<string, string> = read("package.json").dependencies;
  const jsr: Record<string, string> = read("deno.json").imports;
  const fromJsr = Object.fromEntries(Object.entries(jsr).map(([name, spec]) => {
    const match = /^npm:(@?[^@]+)@(.+)$/.exec(spec);
    assert.ok(match, `deno.json import ${name} is an npm: specifier with a version`);
    assert.equal(match[1], name);
    return [name, match[2]];
  }));
  assert.deepEqual(fromJsr, npm);
});
