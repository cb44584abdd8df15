import type { Groups } from '../actors/contexts/groups.js';
import type { QueryResult } from '../actors/contexts/queries.js';
import type { ReadRequest, WriteRequest } from '../actors/contexts/requests.js';
import type { AppendResult, CommandResult, ContextState, DomainError, Outcome } from '../actors/contexts/types.js';
import { groupOf } from '../runtime/hash.js';
import { FastpacaError, assert, invalid } from '../runtime/errors.js';
import type { Reply, Req } from './http.js';
import {
  Limits,
  contentHash,
  isObject,
  isValidId,
  parseAppendBody,
  parseBody,
  parseContextFields,
  parseId,
  parseIdempotencyKey,
  parseIfVersion,
  parseMessage,
  parseMessages,
  parseMetadataPatch,
  queryInt,
} from './validate.js';
import { messageView, recordView, windowView, type Facade } from './views.js';

export type Handler = (req: Req) => Promise<Reply>;

export interface Route {
  method: string;
  /** Path segments; ':id' matches one segment, passed to the handler in req.params. */
  pattern: string[];
  /** A stable name for metrics (no ids). */
  name: string;
  handler: Handler;
}

/** Maps a state machine refusal to the façade's error code (API.md). */
export function domainError(facade: Facade, e: DomainError): FastpacaError {
  switch (e.code) {
    case 'not_found':
      // The state machine does not know which façade asked; the noun is the façade's.
      return new FastpacaError(facade === 'contexts' ? 'context_not_found' : 'conversation_not_found', e.message.replace('context or conversation', noun(facade)));
    case 'tombstoned':
      return new FastpacaError(facade === 'contexts' ? 'context_tombstoned' : 'conversation_tombstoned', e.message);
    case 'conflict':
      return new FastpacaError('conflict', e.message, { extra: { current_version: e.currentVersion } });
    case 'idempotency_conflict':
      return new FastpacaError('idempotency_conflict', e.message);
    case 'invalid':
      return invalid(e.message);
  }
}

function unwrap<T>(facade: Facade, r: CommandResult): T {
  const outcome = r as Outcome<T>;
  if (!outcome.ok) throw domainError(facade, outcome.error);
  return outcome.value;
}

function appendView(facade: Facade, r: AppendResult) {
  const view: Record<string, unknown> = { seq: r.seq, version: r.version };
  if (facade === 'contexts') view.token_estimate = r.token_count;
  view.token_count = r.token_count;
  if (r.batch) {
    view.first_seq = r.first_seq;
    view.last_seq = r.last_seq;
  }
  if (r.deduped) view.deduped = true;
  return view;
}

const noun = (facade: Facade) => (facade === 'contexts' ? 'context' : 'conversation');

function notFound(facade: Facade, id: string): FastpacaError {
  return domainError(facade, { code: 'not_found', message: `no context or conversation with id ${JSON.stringify(id)}` });
}

const encodeCursor = (id: string) => Buffer.from(id, 'utf8').toString('base64url');
function decodeCursor(raw: string | null): string {
  if (raw === null || raw === '') return '';
  const id = Buffer.from(raw, 'base64url').toString('utf8');
  if (!isValidId(id) || encodeCursor(id) !== raw) throw invalid('cursor is not one this server issued');
  return id;
}

export function buildRoutes(groups: Groups): Route[] {
  const write = (req: WriteRequest) => groups.write(groupOf(req.id, groups.count), req);
  const read = (req: ReadRequest & { id: string }): Promise<QueryResult> => groups.read(groupOf(req.id, groups.count), req);
  const get = async (id: string): Promise<ContextState | undefined> => {
    const r = await read({ q: 'get', id });
    assert(r.q === 'get', 'get answered with a record');
    return r.ctx;
  };

  const routes: Route[] = [];
  const add = (method: string, path: string, name: string, handler: Handler) => routes.push({ method, pattern: path.split('/').slice(1), name, handler });

  add('POST', '/v1/cluster/nodes/:id/replace', 'cluster.replace', async (req) => {
    if (groups.replaceNode === undefined) throw new FastpacaError('not_found', 'this node is not part of a cluster');
    return { status: 200, body: await groups.replaceNode(req.params[0]!) };
  });

  for (const facade of ['contexts', 'conversations'] as const) {
    const base = `/v1/${facade}`;

    add('PUT', `${base}/:id`, `${facade}.put`, async (req) => {
      const id = parseId(req.params[0]!);
      const body = parseBody(req.body, facade === 'conversations');
      const fields = facade === 'contexts' ? parseContextFields(body) : parseContextFields({ metadata: body.metadata });
      const ctx = unwrap<ContextState>(facade, await write({ t: 'put', id, fields, create: facade === 'contexts' ? 'context' : 'conversation' }));
      return { status: 200, body: recordView(facade, ctx) };
    });

    add('GET', `${base}/:id`, `${facade}.get`, async (req) => {
      const id = parseId(req.params[0]!);
      const ctx = await get(id);
      if (!ctx) throw notFound(facade, id);
      return { status: 200, body: recordView(facade, ctx) };
    });

    add('DELETE', `${base}/:id`, `${facade}.delete`, async (req) => {
      const id = parseId(req.params[0]!);
      unwrap<null>(facade, await write({ t: 'tombstone', id }));
      return { status: 204 };
    });

    add('POST', `${base}/:id/messages`, `${facade}.append`, async (req) => {
      const id = parseId(req.params[0]!);
      const body = parseBody(req.body);
      const { messages, batch } = parseAppendBody(body);
      const ifVersion = parseIfVersion(body, req.query);
      const key = parseIdempotencyKey(body, req.headers.idempotencyKey);
      const idem = key === undefined ? undefined : { key, hash: contentHash(messages, batch) };
      const result = unwrap<AppendResult>(facade, await write({ t: 'append', id, messages, batch, ifVersion, idem }));
      return { status: 201, body: appendView(facade, result) };
    });

    add('GET', `${base}/:id/tail`, `${facade}.tail`, async (req) => {
      const id = parseId(req.params[0]!);
      const offset = queryInt(req.query, 'offset', 0, 0, Number.MAX_SAFE_INTEGER);
      const limit = queryInt(req.query, 'limit', 100, 0, Limits.readLimitMax);
      const r = await read({ q: 'tail', id, offset, limit });
      assert(r.q === 'messages', 'tail answered with messages');
      return { status: 200, body: { messages: r.messages.map(messageView) } };
    });

    add('GET', `${base}/:id/messages`, `${facade}.replay`, async (req) => {
      const id = parseId(req.params[0]!);
      const from = req.query.has('from') ? 'from' : 'from_seq';
      const fromSeq = queryInt(req.query, from, 1, 0, Number.MAX_SAFE_INTEGER);
      const limit = queryInt(req.query, 'limit', 100, 0, Limits.readLimitMax);
      const r = await read({ q: 'messages', id, fromSeq, limit });
      assert(r.q === 'messages', 'replay answered with messages');
      return { status: 200, body: { messages: r.messages.map(messageView) } };
    });

    add('GET', base, `${facade}.list`, async (req) => {
      const limit = queryInt(req.query, 'limit', 100, 1, Limits.readLimitMax);
      const after = decodeCursor(req.query.get('cursor'));
      const prefix = req.query.get('prefix') ?? '';
      if (prefix.length > Limits.idBytesMax) throw invalid(`prefix is at most ${Limits.idBytesMax} characters`);
      const r = await groups.list({ q: 'list', prefix, after, limit: limit + 1 });
      assert(r.q === 'list', 'list answered with records');
      const page = r.contexts.slice(0, limit);
      const more = r.contexts.length > limit;
      return { status: 200, body: { [facade]: page.map((c) => recordView(facade, c)), next_cursor: more ? encodeCursor(page[page.length - 1]!.id) : null } };
    });
  }

  add('PATCH', '/v1/contexts/:id/metadata', 'contexts.patch_metadata', async (req) => {
    const id = parseId(req.params[0]!);
    const metadata = parseMetadataPatch(parseBody(req.body));
    const ctx = unwrap<ContextState>('contexts', await write({ t: 'patch', id, metadata }));
    return { status: 200, body: recordView('contexts', ctx) };
  });

  add('GET', '/v1/contexts/:id/context', 'contexts.window', async (req) => {
    const id = parseId(req.params[0]!);
    const budget = queryInt(req.query, 'budget_tokens', undefined, 1, Number.MAX_SAFE_INTEGER);
    const ifVersion = parseIfVersion(undefined, req.query);
    const r = await read({ q: 'window', id });
    assert(r.q === 'window', 'window answered with a window');
    if (!r.ctx) throw notFound('contexts', id);
    if (ifVersion !== undefined && ifVersion !== r.ctx.version) {
      throw domainError('contexts', { code: 'conflict', message: `if_version ${ifVersion} does not match the current version ${r.ctx.version}`, currentVersion: r.ctx.version });
    }
    return { status: 200, body: windowView(r.ctx, r.messages, budget) };
  });

  add('POST', '/v1/contexts/:id/compact', 'contexts.compact', async (req) => {
    const id = parseId(req.params[0]!);
    const body = parseBody(req.body);
    const replacement = parseMessages(body.replacement, 'replacement', 0, Limits.replacementMessagesMax);
    const ifVersion = parseIfVersion(body, req.query);
    const r = unwrap<{ version: number }>('contexts', await write({ t: 'compact', id, replacement, ifVersion }));
    return { status: 200, body: { version: r.version } };
  });

  add('POST', '/v1/batch', 'batch', async (req) => {
    const body = parseBody(req.body);
    const items = body.appends;
    if (!Array.isArray(items) || items.length > Limits.batchItemsMax) throw invalid(`appends must be an array of at most ${Limits.batchItemsMax} items`);
    const results = await Promise.all(items.map((item: unknown, i) => batchItem(item, i)));
    return { status: 200, body: { results } };
  });

  /** One item of POST /v1/batch: succeeds or fails on its own. */
  async function batchItem(item: unknown, i: number): Promise<Record<string, unknown>> {
    const id = isObject(item) && typeof item.id === 'string' ? item.id : null;
    try {
      if (!isObject(item)) throw invalid(`appends[${i}] must be an object with id and message`);
      if (!isValidId(item.id)) throw new FastpacaError('invalid_id', `appends[${i}].id must be 1–${Limits.idBytesMax} bytes of URL-safe characters`);
      const itemId = item.id;
      const message = parseMessage(item.message, `appends[${i}].message`);
      const ifVersion = parseIfVersion(item, new URLSearchParams());
      const key = parseIdempotencyKey(item, '');
      const idem = key === undefined ? undefined : { key, hash: contentHash([message], false) };
      const r = unwrap<AppendResult>('contexts', await write({ t: 'append', id: itemId, messages: [message], batch: false, ifVersion, idem }));
      return { id: itemId, seq: r.seq, version: r.version, token_count: r.token_count, ...(r.deduped ? { deduped: true } : {}) };
    } catch (err) {
      if (!(err instanceof FastpacaError)) throw err;
      return { id, ...err.toJSON() };
    }
  }

  return routes;
}

/** Finds the route for a path; distinguishes an unknown path (404) from a wrong method (405). */
export function matchRoute(routes: Route[], method: string, path: string): { route: Route; params: string[] } | 'not_found' | 'method_not_allowed' {
  const segments = path.split('/').slice(1);
  let pathMatched = false;
  for (const route of routes) {
    if (route.pattern.length !== segments.length) continue;
    const params: string[] = [];
    let ok = true;
    for (let i = 0; i < segments.length; i++) {
      const p = route.pattern[i]!;
      const s = segments[i]!;
      if (p.startsWith(':')) {
        params.push(s); // an empty or malformed id is the handler's 400 invalid_id, not a 404
      } else if (p !== s) {
        ok = false;
        break;
      }
    }
    if (!ok) continue;
    pathMatched = true;
    if (route.method === method) return { route, params };
  }
  return pathMatched ? 'method_not_allowed' : 'not_found';
}
