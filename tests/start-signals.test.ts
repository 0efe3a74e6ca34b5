/**
 * `pgbg serve` catches SIGTERM and SIGINT before anything else loads
 * (cli/start-signals.ts): a signal that comes while nobody listens yet is
 * kept for the next listener, so a stop during start-up exits 0 instead of
 * dying by the signal.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { typeScript } from "./ts-loader/flags.ts";

test("a signal before any listener is kept for the first, and ends nothing; later ones reach the listener; a second unheard one exits 1", () => {
  const fixture = fileURLToPath(new URL("./fixtures/early-signal.ts", import.meta.url));
  const result = spawnSync(process.execPath, [...typeScript, fixture], { encoding: "utf8", timeout: 120_000 });
  assert.deepEqual([result.status, result.signal, result.stdout.trim()], [0, null, "SIGTERM,SIGINT"], result.stderr);
  // A second signal before anyone listens: stop now, with status 1.
  const twice = spawnSync(process.execPath, [...typeScript, fixture, "twice"], { encoding: "utf8", timeout: 120_000 });
  assert.deepEqual([twice.status, twice.signal, twice.stdout.trim()], [1, null, ""], twice.stderr);
});

test("pgbg serve stopped while its database cannot be reached yet exits 0, with one line saying so", () => {
  const cli = fileURLToPath(new URL("../cli/main.ts", import.meta.url));
  // The signal comes once the first log line is out: the service is waiting for the database.
  const script = `
    const { spawn } = require("node:child_process");
    const child = spawn(process.execPath, ["--import", "tsx", ${JSON.stringify(cli)}, "serve", "--tasks", "x.js", "--log-format", "json"], {
      env: { ...process.env, DATABASE_URL: "postgres://nobody@127.0.0.1:1/nowhere" }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d) => { if (!err) child.kill("SIGTERM"); err += d; });
    child.on("exit", (code, signal) => { console.log(JSON.stringify({ code, signal, err })); });`;
  const result = spawnSync(process.execPath, ["-e", script], { encoding: "utf8", timeout: 120_000 });
  const { code, signal, err } = JSON.parse(result.stdout);
  assert.deepEqual([code, signal], [0, null], err);
  assert.match(err, /SIGTERM before the service started; stopping/);
});
