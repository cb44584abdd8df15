import type { HttpRequest, HttpResponse } from 'uWebSockets.js';
import { FastpacaError } from '../runtime/errors.js';

/** What a route handler sees: everything copied off the uWS request before the first await. */
export interface Req {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: { idempotencyKey: string };
  params: string[];
  body: Buffer;
}

export interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

const StatusText: Record<number, string> = {
  200: '200 OK',
  201: '201 Created',
  204: '204 No Content',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  409: '409 Conflict',
  410: '410 Gone',
  413: '413 Payload Too Large',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

export function statusLine(status: number): string {
  return StatusText[status] ?? `${status} Status`;
}

export function errorReply(err: FastpacaError): Reply {
  const headers: Record<string, string> = {};
  if (err.retryAfterS !== undefined) headers['retry-after'] = String(err.retryAfterS);
  if (err.code === 'unauthorized') headers['www-authenticate'] = 'Bearer';
  return { status: err.status, body: err.toJSON(), headers };
}

/**
 * Writes a reply unless the client went away. Everything after an await must be corked so
 * uWS sends status, headers and body in one syscall.
 */
/** Per-request state shared by the handler and uWS's abort callback. */
export interface ResState {
  /** The client went away, or the response was already written. */
  aborted: boolean;
  /** Called when the client goes away, so a pending body read can settle. */
  onAbort?: () => void;
}

export function send(res: HttpResponse, state: ResState, reply: Reply, close = false): void {
  if (state.aborted) return;
  state.aborted = true; // a response is written once
  res.cork(() => {
    res.writeStatus(statusLine(reply.status));
    if (reply.headers) for (const [k, v] of Object.entries(reply.headers)) res.writeHeader(k, v);
    if (reply.status === 204) {
      res.endWithoutBody(0, close);
      return;
    }
    if (typeof reply.body === 'string' && reply.headers?.['content-type']) {
      res.end(reply.body, close);
      return;
    }
    res.writeHeader('content-type', 'application/json');
    res.end(JSON.stringify(reply.body ?? {}), close);
  });
}

/**
 * Reads the whole body, refusing it with 413 as soon as it passes `limitBytes`. The declared
 * Content-Length is checked first so an oversized upload is refused before it is read.
 */
export function readBody(res: HttpResponse, req: HttpRequest, state: ResState, limitBytes: number): Promise<Buffer> {
  const declared = req.getHeader('content-length');
  if (declared !== '' && (!/^\d+$/.test(declared) || Number(declared) > limitBytes)) {
    return Promise.reject(tooLarge(limitBytes, declared));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    // A client that leaves mid-body never sends isLast: settle here, or the request would
    // count as in flight forever (and hold up every graceful shutdown).
    state.onAbort = () => {
      if (done) return;
      done = true;
      reject(new FastpacaError('invalid_request', 'the client closed the connection before the body was complete'));
    };
    res.onData((chunk, isLast) => {
      if (done) return;
      size += chunk.byteLength;
      if (size > limitBytes) {
        done = true;
        reject(tooLarge(limitBytes));
        return;
      }
      // uWS reuses the chunk's memory after this callback returns: copy it.
      chunks.push(Buffer.from(chunk.slice(0)));
      if (isLast) {
        done = true;
        resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
      }
    });
  });
}

function tooLarge(limitBytes: number, declared?: string): FastpacaError {
  if (declared !== undefined && !/^\d+$/.test(declared)) return new FastpacaError('invalid_request', 'Content-Length must be a number of bytes');
  return new FastpacaError('payload_too_large', `the request body is larger than the limit of ${limitBytes} bytes`);
}
