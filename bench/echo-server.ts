/**
 * Bare uWebSockets.js server used as the benchmark baseline: the same socket layer and request
 * shape as the real node, with no storage, routing or JSON work. The ratio of the real node to
 * this tells how much of the machine our own code costs, independent of how fast the box is.
 *
 * Usage: node dist/bench/echo-server.js <port> [host]
 * Prints `{"listening":<port>}` once listening; exits on SIGTERM/SIGINT.
 */
import uws from 'uWebSockets.js';
import type { HttpResponse, us_listen_socket } from 'uWebSockets.js';

// The package silently falls back to a pure-JS implementation when no binary matches this
// Node ABI; a baseline measured on that would be meaningless.
if (!String(uws.App).includes('[native code]')) {
  process.stderr.write('echo-server: uWebSockets.js native build not loaded (JS fallback in use); refusing to run\n');
  process.exit(1);
}

const port = Number(process.argv[2]);
const host = process.argv[3] ?? '127.0.0.1';
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write('usage: echo-server <port> [host]\n');
  process.exit(2);
}

let seq = 0;
let listenSocket: us_listen_socket | null = null;

function reply(res: HttpResponse, status: string, body: string): void {
  res.cork(() => {
    res.writeStatus(status).writeHeader('content-type', 'application/json').end(body);
  });
}

uws
  .App()
  .post('/*', (res) => {
    let aborted = false;
    // uWS requires the abort handler before any asynchronous use of `res`.
    res.onAborted(() => {
      aborted = true;
    });
    // Read (copy) the whole body like the real node must: the ArrayBuffer is only valid inside
    // the callback, so skipping the copy would make the baseline unfairly cheap.
    const chunks: Buffer[] = [];
    res.onData((chunk, isLast) => {
      chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (!isLast || aborted) return;
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      seq++;
      reply(res, '201 Created', `{"seq":${seq},"version":${seq},"bytes":${body.length}}`);
    });
  })
  .get('/health/live', (res) => {
    reply(res, '200 OK', '{"status":"ok"}');
  })
  .any('/*', (res) => {
    reply(res, '404 Not Found', '{"error":"not_found","message":"echo server only answers POST and /health/live"}');
  })
  .listen(host, port, (socket) => {
    if (socket === false) {
      process.stderr.write(`echo-server: cannot listen on ${host}:${port}\n`);
      process.exit(1);
    }
    listenSocket = socket;
    process.stdout.write(`${JSON.stringify({ listening: port })}\n`);
  });

function shutdown(): void {
  if (listenSocket !== null) {
    uws.us_listen_socket_close(listenSocket);
    listenSocket = null;
  }
  // Closing the listen socket leaves accepted keep-alive sockets open and there is no app.close()
  // in this uWS build; give clients a moment to hang up, then leave regardless.
  setTimeout(() => process.exit(0), 500).unref();
}

process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
