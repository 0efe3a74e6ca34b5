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

test("mod.ts stays dependency-light: its module graph holds no CLI module, consola or citty", () => {
  const root = new URL("..", import.meta.url).href;
  const seen = new Set<string>();
  const packages = new Set<string>();
  // Static imports and re-exports, side-effect imports, and dynamic imports of a literal.
  const specifiers = /(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"|(?:^|\n)\s*import\s+"([^"]+)"|import\(\s*"([^"]+)"\s*\)/g;
  const visit = (url: URL) => {
    if (seen.has(url.href)) return;
    seen.add(url.href);
    for (const match of readFileSync(url, "utf8").matchAll(specifiers)) {
      const spec = match[1] ?? match[2] ?? match[3];
      if (spec.startsWith(".")) visit(new URL(spec, url));
      else packages.add(spec.startsWith("node:") ? "node:" : spec);
    }
  };
  visit(new URL("../mod.ts", import.meta.url));
  const modules = [...seen].map((href) => href.slice(root.length));
  assert.ok(modules.includes("lib/enqueue.ts") && modules.includes("lib/migrate.ts"), `the walk found the library: ${modules.join(", ")}`);
  assert.deepEqual(modules.filter((m) => !m.startsWith("lib/") && m !== "mod.ts"), [], "only mod.ts and lib/");
  // croner reads the cron expressions of schedules (lib/schedule.ts).
  assert.deepEqual([...packages].filter((p) => !["node:", "postgres", "valibot", "croner"].includes(p)), [], "no package beside postgres, valibot and croner");
});
