import { randomUUID, timingSafeEqual } from 'node:crypto';
import uws from 'uWebSockets.js';
import type { Groups } from '../actors/contexts/groups.js';
import type { Config } from '../runtime/config.js';
import { FastpacaError } from '../runtime/errors.js';
import type { Logger } from '../runtime/log.js';
import { metrics, nodeMetrics, registry } from '../runtime/metrics.js';
import { errorReply, readBody, send, type Reply, type Req, type ResState } from './http.js';
import { buildRoutes, matchRoute } from './routes.js';
import { TokenBucket } from './token-bucket.js';

/** uWebSockets.js silently falls back to a slow JavaScript build when its binary fails to load. */
export function assertNativeUws(): void {
  if (!String(uws.App).includes('[native code]')) {
    throw new Error('uWebSockets.js is running its JavaScript fallback, not the native build; refusing to start');
  }
}

export interface Gateway {
  listen(): Promise<number>;
  /** Stops accepting connections; requests in flight still get their answers. */
  stopListening(): void;
  /** Resolves when every request in flight has been answered (or the deadline passes). */
  drain(deadlineMs: number): Promise<void>;
  /** Closes every connection left (idle keep-alives): the app is done. */
  close(): void;
}

const BodyMethods = new Set(['POST', 'PUT', 'PATCH']);
/** Handlers only read the query; one empty instance serves every request without one. */
const NoQuery = new URLSearchParams();

/** Bound counter children per route and status class: labelling on every request costs a hash. */
const requestCounters = new Map<string, ReturnType<typeof metrics.httpRequests.labels>>();
function requestCounter(route: string, status: number) {
  const cls = `${Math.floor(status / 100)}xx`;
  const key = `${route} ${cls}`;
  let c = requestCounters.get(key);
  if (!c) requestCounters.set(key, (c = metrics.httpRequests.labels(route, cls)));
  return c;
}
/** uWS's LIBUS_LISTEN_EXCLUSIVE_PORT (ListenOptions in its typings, which isolatedModules cannot read). */
const ListenExclusivePort = 1;

export function createGateway(config: Config, groups: Groups, log: Logger): Gateway {
  assertNativeUws();
  const app = uws.App();
  const routes = buildRoutes(groups);
  const bucket = config.rateLimitPerS === undefined ? undefined : new TokenBucket(config.rateLimitPerS, config.rateLimitPerS);
  const apiKey = config.apiKey === undefined ? undefined : Buffer.from(`Bearer ${config.apiKey}`);
  let listenSocket: uws.us_listen_socket | undefined;
  let inflight = 0;

  const authorized = (header: string): boolean => {
    if (!apiKey) return true;
    const given = Buffer.from(header);
    return given.length === apiKey.length && timingSafeEqual(given, apiKey);
  };

  const operational = (path: string): Reply | undefined => {
    if (path === '/health/live') return { status: 200, body: { status: 'ok' } };
    if (path === '/health/ready') {
      const r = groups.readiness();
      return r.ready ? { status: 200, body: { status: 'ready' } } : { status: 503, body: { status: 'starting', reason: r.reason } };
    }
    return undefined;
  };

  app.any('/*', (res, req) => {
    const state: ResState = { aborted: false };
    res.onAborted(() => {
      state.aborted = true;
      state.onAbort?.();
    });
    const method = req.getMethod().toUpperCase();
    const path = req.getUrl();
    const rawQuery = req.getQuery() ?? '';

    if (method === 'GET' && path.startsWith('/health/')) {
      const reply = operational(path);
      if (reply) return send(res, state, reply);
    }
    if (method === 'GET' && path === '/metrics') {
      inflight++;
      void groups.metrics().then(nodeMetrics).then(
        (text) => send(res, state, { status: 200, body: text, headers: { 'content-type': registry.contentType } }),
        (err: unknown) => send(res, state, failure(err, 'metrics')),
      ).finally(() => inflight--);
      return;
    }

    if (config.testHooks && method === 'POST' && path.startsWith('/v1/_test/workers/') && groups.crash) {
      // Test hook (FASTPACA_TEST_HOOKS=1 only): POST /v1/_test/workers/<n>/crash.
      const n = Number(/^\/v1\/_test\/workers\/(\d+)\/crash$/.exec(path)?.[1] ?? NaN);
      inflight++;
      void groups
        .crash(n)
        .then(
          () => send(res, state, { status: 202, body: { crashing: n } }),
          (err: unknown) => send(res, state, failure(err, 'test')),
        )
        .finally(() => inflight--);
      return;
    }

    const match = matchRoute(routes, method, path);
    const routeName = typeof match === 'string' ? match : match.route.name;
    const finish = (reply: Reply, close = false) => {
      requestCounter(routeName, reply.status).inc();
      send(res, state, reply, close);
    };

    if (path.startsWith('/v1/') || path === '/v1') {
      if (!authorized(req.getHeader('authorization'))) return finish(errorReply(new FastpacaError('unauthorized', 'this node requires Authorization: Bearer <key>')));
      if (bucket && !bucket.take()) return finish(errorReply(new FastpacaError('rate_limited', 'this node is over its request rate limit', { retryAfterS: 1 })));
    }
    if (path === '/v1/cluster' && method === 'GET') {
      if (groups.cluster === undefined) return finish({ status: 200, body: { node: config.nodeId, nodes: [{ id: config.nodeId, self: true, connected: true }], groups: groups.count, replicas: 1, mode: 'single' } });
      inflight++;
      void Promise.resolve()
        .then(() => groups.cluster!())
        .then(
          (view) => finish({ status: 200, body: view }),
          (err: unknown) => finish(failure(err, 'cluster')),
        )
        .finally(() => inflight--);
      return;
    }
    if (match === 'not_found') return finish(errorReply(new FastpacaError('not_found', `no route for ${method} ${path}`)));
    if (match === 'method_not_allowed') return finish(errorReply(new FastpacaError('method_not_allowed', `${method} is not allowed on ${path}`)));

    const partial: Omit<Req, 'body'> = {
      method,
      path,
      query: rawQuery === '' ? NoQuery : new URLSearchParams(rawQuery),
      headers: { idempotencyKey: req.getHeader('idempotency-key') },
      params: match.params,
    };
    inflight++;
    const body = BodyMethods.has(method) ? readBody(res, req, state, config.maxBodyBytes) : Promise.resolve(Buffer.alloc(0));
    body
      .then((b) => match.route.handler({ ...partial, body: b }))
      .then(
        (reply) => finish(reply),
        // A refused body is answered before it is read to the end: close that connection.
        (err: unknown) => finish(failure(err, match.route.name), err instanceof FastpacaError && err.code === 'payload_too_large'),
      )
      .finally(() => inflight--);
  });

  function failure(err: unknown, route: string): Reply {
    if (err instanceof FastpacaError) return errorReply(err);
    const requestId = randomUUID();
    metrics.internalErrors.inc();
    log.error('request failed', { err, route, request_id: requestId });
    return { status: 500, body: { error: 'internal', message: `internal error; request id ${requestId}`, request_id: requestId } };
  }

  return {
    listen: () =>
      new Promise((resolve, reject) => {
        // uWS binds with SO_REUSEPORT unless told otherwise: a second node started on the same
        // port would then silently share its traffic. Claim the port exclusively. (The typings
        // lack the host + options overload that the native build has.)
        const listen = app.listen as unknown as (host: string, port: number, options: number, cb: (socket: uws.us_listen_socket | false) => void) => void;
        listen.call(app, config.host, config.port, ListenExclusivePort, (socket) => {
          if (!socket) return reject(new Error(`cannot listen on ${config.host}:${config.port}: the port is taken or the address is not local`));
          listenSocket = socket;
          resolve(uws.us_socket_local_port(socket));
        });
      }),
    stopListening: () => {
      if (listenSocket) uws.us_listen_socket_close(listenSocket);
      listenSocket = undefined;
    },
    drain: async (deadlineMs) => {
      const until = Date.now() + deadlineMs;
      while (inflight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
    },
    close: () => {
      // Native since uWS 20.x, missing from its typings.
      (app as unknown as { close(): void }).close();
    },
  };
}
