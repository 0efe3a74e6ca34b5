/**
 * What the dashboard's server shares between its page and its API: the
 * headers of every answer (a strict Content-Security-Policy among them),
 * errors with their HTTP status, and reading and sending bodies.
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from "node:http";

/** The headers of every answer. */
export const HEADERS = {
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
};

/** An error answered with its HTTP status and message. */
export class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** Sends `body` as `type` with `status` and the dashboard's headers. */
export function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { ...HEADERS, "content-type": `${type}; charset=utf-8` }).end(body);
}

/** Sends `value` as JSON. */
export function sendJson(res: ServerResponse, value: unknown): void {
  send(res, 200, "application/json", JSON.stringify(value));
}

/** The request body as text, refused past 64 KiB. */
export async function readBody(req: IncomingMessage): Promise<string> {
  let body = "";
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 65_536) throw new HttpError(413, "request too large");
  }
  return body;
}

/** The request body as a JSON object, or a 400. */
export async function readJson(req: IncomingMessage): Promise<{ ids?: unknown; all?: unknown; queue?: unknown; name?: unknown; id?: unknown }> {
  try {
    const value = JSON.parse(await readBody(req));
    if (typeof value === "object" && value !== null) return value;
  } catch (error) {
    if (error instanceof HttpError) throw error;
  }
  throw new HttpError(400, "send a JSON object");
}
