// The worker side of the pressure bench (bench/pressure.ts): each handler
// tells when its task started (with the enqueue time its payload carries)
// and when it finished, and this module sends those times to the bench
// process as UDP datagrams on localhost, batched every 200 ms. UDP because
// it costs the worker a syscall per batch and the database nothing: the
// bench measures the database under load, so its own accounting must not
// add any. Plain JavaScript, so that `pgbg serve` workers load it from
// bench/tasks.js without a loader, as the peers' workers do through tsx.
//
// Wire format, one datagram (little-endian):
//   u32 pid, u32 sequence number (per process, to count lost datagrams),
//   u32 starts, u32 finishes, then starts × (f64 enqueued, f64 started),
//   then finishes × f64 finished; times in epoch ms of the machine's clock.
import { createSocket } from "node:dgram";
import process from "node:process";

/** Flush period: cheap enough, and short beside the bench's 5 s samples. */
const FLUSH_MS = 200;
/** Values (f64) per datagram: 24 KiB, well under a UDP datagram's 64 KiB. */
const MAX_VALUES = 3_000;
const HEADER = 16;

const port = Number(process.env.BENCH_PRESSURE_PORT ?? 0);
/** Pairs (enqueued, started) and finish times not yet sent. */
let starts = [];
let finishes = [];
let sequence = 0;
let socket;

/** Epoch ms with sub-ms resolution, as the bench process reads its own clock. */
export const now = () => performance.timeOrigin + performance.now();

function flush() {
  while (starts.length || finishes.length) {
    const s = Math.min(starts.length / 2, MAX_VALUES / 2);
    const f = Math.min(finishes.length, MAX_VALUES - 2 * s);
    const buffer = Buffer.alloc(HEADER + 8 * (2 * s + f));
    buffer.writeUInt32LE(process.pid, 0);
    buffer.writeUInt32LE(sequence++ >>> 0, 4);
    buffer.writeUInt32LE(s, 8);
    buffer.writeUInt32LE(f, 12);
    let at = HEADER;
    for (const value of starts.splice(0, 2 * s)) at = buffer.writeDoubleLE(value, at);
    for (const value of finishes.splice(0, f)) at = buffer.writeDoubleLE(value, at);
    socket.send(buffer, port, "127.0.0.1");
  }
}

function ensureSocket() {
  if (socket) return;
  socket = createSocket("udp4");
  // A full send buffer would make a send fail; the bench counts the gap
  // in sequence numbers as lost rather than have a worker crash on it.
  socket.on("error", () => {});
  // The timer must not keep a worker alive that is otherwise done.
  setInterval(flush, FLUSH_MS).unref();
  socket.unref();
}

/**
 * Records the start of a task enqueued at `enqueuedAt` (epoch ms). Without
 * BENCH_PRESSURE_PORT (a task run outside the pressure bench) it does nothing.
 */
export function reportStart(enqueuedAt) {
  if (!port) return;
  ensureSocket();
  starts.push(enqueuedAt, now());
}

/** Records the end of a task's handler. */
export function reportFinish() {
  if (!port) return;
  ensureSocket();
  finishes.push(now());
}
