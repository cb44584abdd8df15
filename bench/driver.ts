/**
 * Closed-loop HTTP/1.1 load driver on raw `node:net` sockets.
 *
 * Hand-written because general-purpose clients (node:http, undici, autocannon) either burn more
 * CPU than the server under test on a 2-core box or report latency at 1 ms resolution, and the
 * target we measure against is p99 < 10 ms. Each connection keeps exactly one request in flight
 * (keep-alive, no pipelining), so the latency of one request never includes queueing behind
 * another request of ours on the same socket.
 */
import net from 'node:net';
import { LatencyHistogram } from './histogram.js';

export interface LoadOptions {
  host: string;
  port: number;
  /** Several servers (a cluster's nodes): connection c goes to servers[c mod n] instead of host:port. */
  servers?: ReadonlyArray<{ host: string; port: number }>;
  connections: number;
  durationS: number;
  warmupS: number;
  /** A complete raw HTTP/1.1 request; `conn` is the connection index, `n` its request counter. */
  request: (conn: number, n: number) => Buffer;
  /** Status counted as success; anything else is an error (but still timed). Default 200. */
  expectStatus?: number;
  /** A request outstanding this long counts as an error and its connection is replaced. Default 10 s. */
  timeoutMs?: number;
}

export interface LoadResult {
  ops: number;
  ops_per_s: number;
  p50_ms: number;
  p99_ms: number;
  p999_ms: number;
  max_ms: number;
  /** Over the whole run, warmup included, so a failing setup is never hidden by the warmup. */
  errors: number;
  /** Driver process CPU over the measured window, % of one core (may exceed 100). */
  driver_cpu_pct: number;
  /** The first error seen, to tell a wrong status from a refused connection without a rerun. */
  first_error?: string;
}

/** Fixed so that every request is byte-for-byte reproducible; pass a `host` header to override. */
const DEFAULT_HOST_HEADER = 'localhost';

/**
 * Builds a raw HTTP/1.1 request. Content-Length is always sent with a body (and on methods that
 * normally carry one) because the driver never uses chunked transfer.
 */
export function httpRequest(method: string, path: string, body?: string | Buffer, headers?: Record<string, string>): Buffer {
  const payload = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  let host = DEFAULT_HOST_HEADER;
  let hasType = false;
  let extra = '';
  for (const [name, value] of Object.entries(headers ?? {})) {
    const lower = name.toLowerCase();
    if (lower === 'host') {
      host = value;
      continue;
    }
    if (lower === 'content-length' || lower === 'transfer-encoding') continue; // we frame the body ourselves
    if (lower === 'content-type') hasType = true;
    extra += `${name}: ${value}\r\n`;
  }
  let head = `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\n${extra}`;
  const carriesBody = payload !== undefined || !(method === 'GET' || method === 'HEAD' || method === 'DELETE');
  if (payload !== undefined && !hasType) head += 'Content-Type: application/json\r\n';
  if (carriesBody) head += `Content-Length: ${payload?.length ?? 0}\r\n`;
  head += '\r\n';
  const headBuf = Buffer.from(head, 'latin1');
  return payload === undefined ? headBuf : Buffer.concat([headBuf, payload]);
}

const CRLF2 = Buffer.from('\r\n\r\n', 'latin1');
/** A response head larger than this means we are not talking to the HTTP server we expect. */
const MAX_HEAD_BYTES = 64 * 1024;
/** Consecutive failed (re)connects before a connection gives up. */
const MAX_RETRIES = 10;

interface Conn {
  readonly id: number;
  socket: net.Socket | null;
  n: number;
  inFlight: boolean;
  startNs: bigint;
  /** Incomplete response head carried over to the next chunk; body bytes are only counted. */
  pending: Buffer | null;
  /** Body bytes still to skip for the current response, or -1 while reading a head. */
  bodyLeft: number;
  status: number;
  closeAfter: boolean;
  /** An error was already counted for the current socket, so its close must not count again. */
  counted: boolean;
  failures: number;
  dead: boolean;
}

class ProtocolError extends Error {}

interface Head {
  status: number;
  length: number;
  close: boolean;
}

function parseHead(head: string): Head {
  const afterCode = head[12];
  if (!head.startsWith('HTTP/1.') || head.length < 12 || (afterCode !== undefined && afterCode !== ' ' && afterCode !== '\r')) {
    throw new ProtocolError(`malformed status line: ${JSON.stringify(head.slice(0, 40))}`);
  }
  const status = Number(head.slice(9, 12));
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new ProtocolError(`malformed status line: ${JSON.stringify(head.slice(0, 40))}`);
  }
  let length = -1;
  let chunked = false;
  let close = head[7] === '0'; // HTTP/1.0 closes unless it says keep-alive
  let at = head.indexOf('\r\n');
  while (at >= 0) {
    const next = head.indexOf('\r\n', at + 2);
    const line = head.slice(at + 2, next < 0 ? head.length : next);
    at = next;
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (name === 'content-length') {
      const value = line.slice(colon + 1).trim();
      if (!/^\d+$/.test(value)) throw new ProtocolError(`bad Content-Length: ${JSON.stringify(value)}`);
      length = Number(value);
    } else if (name === 'transfer-encoding') {
      if (line.slice(colon + 1).toLowerCase().includes('chunked')) chunked = true;
    } else if (name === 'connection') {
      const value = line.slice(colon + 1).trim().toLowerCase();
      if (value.includes('close')) close = true;
      else if (value.includes('keep-alive')) close = false;
    }
  }
  if (chunked) throw new ProtocolError(`status ${status} came with chunked encoding, which this driver does not parse`);
  if (length < 0) {
    if ((status >= 100 && status < 200) || status === 204 || status === 304) length = 0;
    else throw new ProtocolError(`status ${status} came without Content-Length; cannot find the end of the body`);
  }
  return { status, length, close };
}

/**
 * Runs a closed loop of `connections` sockets for `warmupS + durationS` seconds and reports the
 * measured window only. Resolves early if every connection has given up reconnecting; rejects
 * on a response it cannot frame (chunked, no length, garbage), because then figures would lie.
 */
export function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const { host, port, connections, durationS, warmupS } = opts;
  if (!Number.isInteger(connections) || connections < 1) return Promise.reject(new RangeError('connections must be a positive integer'));
  if (!(durationS > 0) || !(warmupS >= 0)) return Promise.reject(new RangeError('durationS must be > 0 and warmupS >= 0'));
  const expect = opts.expectStatus ?? 200;
  const timeoutNs = BigInt(Math.round((opts.timeoutMs ?? 10_000) * 1e6));

  return new Promise<LoadResult>((resolve, reject) => {
    const hist = new LatencyHistogram();
    const conns: Conn[] = [];
    let ops = 0;
    let errors = 0;
    let firstError: string | undefined;
    let stopping = false;
    let warmEndNs: bigint | null = null;
    let cpuStart: NodeJS.CpuUsage | null = null;
    // A Set, not an array: reconnect timers remove themselves, so a flapping server cannot grow it.
    const timers = new Set<NodeJS.Timeout>();
    const later = (ms: number, fn: () => void): void => {
      const t = setTimeout(() => {
        timers.delete(t);
        fn();
      }, ms);
      timers.add(t);
    };

    const noteError = (what: string): void => {
      errors++;
      firstError ??= what;
    };

    const finish = (failure?: Error): void => {
      if (stopping) return;
      stopping = true;
      const endNs = process.hrtime.bigint();
      const cpu = cpuStart === null ? null : process.cpuUsage(cpuStart);
      for (const t of timers) clearTimeout(t);
      clearInterval(sweeper);
      for (const c of conns) c.socket?.destroy();
      if (failure !== undefined) {
        reject(failure);
        return;
      }
      const windowS = warmEndNs === null ? 0 : Number(endNs - warmEndNs) / 1e9;
      const result: LoadResult = {
        ops,
        ops_per_s: windowS > 0 ? ops / windowS : 0,
        p50_ms: hist.quantileMs(0.5),
        p99_ms: hist.quantileMs(0.99),
        p999_ms: hist.quantileMs(0.999),
        max_ms: hist.maxMs(),
        errors,
        driver_cpu_pct: cpu !== null && windowS > 0 ? ((cpu.user + cpu.system) / 1e6 / windowS) * 100 : 0,
      };
      if (firstError !== undefined) result.first_error = firstError;
      resolve(result);
    };

    const send = (c: Conn): void => {
      const socket = c.socket;
      if (stopping || socket === null) return;
      const req = opts.request(c.id, c.n++);
      c.inFlight = true;
      c.startNs = process.hrtime.bigint();
      socket.write(req);
    };

    const complete = (c: Conn): void => {
      const endNs = process.hrtime.bigint();
      c.inFlight = false;
      c.failures = 0;
      if (warmEndNs !== null && c.startNs >= warmEndNs) {
        hist.recordNs(Number(endNs - c.startNs));
        ops++;
      }
      if (c.status !== expect) noteError(`status ${c.status} (expected ${expect})`);
    };

    const onData = (c: Conn, chunk: Buffer): void => {
      if (stopping) return;
      const data = c.pending === null ? chunk : Buffer.concat([c.pending, chunk]);
      c.pending = null;
      let off = 0;
      while (off < data.length) {
        if (c.bodyLeft < 0) {
          const end = data.indexOf(CRLF2, off);
          if (end < 0) {
            if (data.length - off > MAX_HEAD_BYTES) throw new ProtocolError(`response head over ${MAX_HEAD_BYTES} bytes`);
            c.pending = data.subarray(off);
            return;
          }
          const head = parseHead(data.toString('latin1', off, end));
          off = end + 4;
          if (head.status < 200 && head.status !== 101) continue; // interim (100 Continue): the real answer follows
          if (!c.inFlight) throw new ProtocolError('response arrived with no request outstanding');
          c.status = head.status;
          c.closeAfter = head.close;
          c.bodyLeft = head.length;
        }
        const avail = data.length - off;
        if (avail < c.bodyLeft) {
          c.bodyLeft -= avail;
          return;
        }
        off += c.bodyLeft;
        c.bodyLeft = -1;
        complete(c);
        // Without pipelining nothing may follow a complete response; bytes here would be
        // attributed to the next request and corrupt every later latency on this socket.
        if (off < data.length) throw new ProtocolError(`${data.length - off} unexpected bytes after a complete response`);
        if (c.closeAfter) {
          c.socket?.end(); // server closes; 'close' reconnects without counting an error
          return;
        }
        send(c);
      }
    };

    const connect = (c: Conn): void => {
      if (stopping) return;
      const socket = net.connect(opts.servers?.length ? opts.servers[c.id % opts.servers.length]! : { host, port });
      c.socket = socket;
      c.pending = null;
      c.bodyLeft = -1;
      c.inFlight = false;
      c.counted = false;
      c.closeAfter = false;
      socket.setNoDelay(true);
      socket.on('connect', () => send(c));
      socket.on('data', (chunk: Buffer) => {
        try {
          onData(c, chunk);
        } catch (err) {
          finish(err instanceof Error ? err : new Error(String(err)));
        }
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (stopping || c.socket !== socket || c.counted) return;
        c.counted = true;
        noteError(err.code ?? err.message);
      });
      socket.on('close', () => {
        if (stopping || c.socket !== socket) return;
        c.socket = null;
        const graceful = c.closeAfter && !c.inFlight && !c.counted;
        if (c.inFlight && !c.counted) noteError('connection closed with a request outstanding');
        c.inFlight = false;
        if (graceful) {
          connect(c);
          return;
        }
        c.failures++;
        if (c.failures > MAX_RETRIES) {
          c.dead = true;
          if (conns.every((x) => x.dead)) finish();
          return;
        }
        later(Math.min(1000, 10 * 2 ** c.failures), () => connect(c));
      });
    };

    // One interval for all timeouts instead of a timer per request, which would cost more than
    // the request itself at these rates.
    const sweeper = setInterval(() => {
      const now = process.hrtime.bigint();
      for (const c of conns) {
        if (c.inFlight && c.socket !== null && !c.counted && now - c.startNs > timeoutNs) {
          c.counted = true;
          noteError('request timed out');
          c.socket.destroy();
        }
      }
    }, 250);

    later(warmupS * 1000, () => {
      warmEndNs = process.hrtime.bigint();
      cpuStart = process.cpuUsage();
    });
    later((warmupS + durationS) * 1000, () => finish());

    for (let i = 0; i < connections; i++) {
      const c: Conn = {
        id: i,
        socket: null,
        n: 0,
        inFlight: false,
        startNs: 0n,
        pending: null,
        bodyLeft: -1,
        status: 0,
        closeAfter: false,
        counted: false,
        failures: 0,
        dead: false,
      };
      conns.push(c);
      connect(c);
    }
  });
}
