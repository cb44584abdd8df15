import { countTokens as o200k } from 'gpt-tokenizer/encoding/o200k_base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { call, cli, startServer, tempDir, type Res, type TestServer } from '../support/server.js';

const user = (text: string) => ({ role: 'user', parts: [{ type: 'text', text }] });
const isoMs = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

describe('HTTP API (one real node)', () => {
  let s: TestServer;
  let api: (method: string, route: string, body?: unknown, headers?: Record<string, string>) => Promise<Res>;
  beforeAll(async () => {
    s = await startServer();
    api = (method, route, body, headers) => call(s.url, method, route, body, headers);
  });
  afterAll(async () => {
    expect(await s.stop()).toBe(0);
  });

  const expectError = (r: { status: number; body: any }, status: number, code: string) => {
    expect(r.status).toBe(status);
    expect(r.body).toMatchObject({ error: code, message: expect.any(String) });
    expect(r.body.message.length).toBeGreaterThan(0);
  };

  it('health endpoints are open and answer', async () => {
    expect(await api('GET', '/health/live')).toMatchObject({ status: 200, body: { status: 'ok' } });
    expect(await api('GET', '/health/ready')).toMatchObject({ status: 200, body: { status: 'ready' } });
    const metrics = await api('GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toContain('fastpaca_write_rounds_total');
  });

  it('context lifecycle: PUT, GET, append, window, tail, replay, PATCH, compact, DELETE', async () => {
    const put = await api('PUT', '/v1/contexts/life', { token_budget: 1000, metadata: { owner: 'a', tmp: 1 } });
    expect(put.status).toBe(200);
    expect(Object.keys(put.body).sort()).toEqual(
      ['archived_seq', 'created_at', 'id', 'inserted_at', 'last_seq', 'metadata', 'policy', 'status', 'token_budget', 'tokenizer', 'trigger_ratio', 'updated_at', 'version'].sort(),
    );
    expect(put.body).toMatchObject({ id: 'life', status: 'active', token_budget: 1000, trigger_ratio: 0.7, policy: { strategy: 'last_n', config: { limit: 400 } }, tokenizer: 'approx', version: 0, last_seq: 0, archived_seq: 0 });
    expect(put.body.created_at).toMatch(isoMs);

    const a1 = await api('POST', '/v1/contexts/life/messages', { message: user('hello there, how are you today?') });
    expect(a1).toMatchObject({ status: 201, body: { seq: 1, version: 1, token_estimate: 8, token_count: 8 } });
    const a2 = await api('POST', '/v1/contexts/life/messages', { messages: [user('one'), { ...user('two'), token_count: 42, metadata: { k: 'v' } }] });
    expect(a2).toMatchObject({ status: 201, body: { seq: 3, first_seq: 2, last_seq: 3, version: 2, token_count: 43 } });

    const got = await api('GET', '/v1/contexts/life');
    expect(got.body).toMatchObject({ version: 2, last_seq: 3 });

    const win = await api('GET', '/v1/contexts/life/context');
    expect(win.status).toBe(200);
    expect(win.body).toMatchObject({ version: 2, token_count: 51, used_tokens: 51, needs_compaction: false, metadata: { owner: 'a', tmp: 1 }, segments: [{ type: 'live', from_seq: 1, to_seq: 3 }] });
    expect(win.body.messages.map((m: any) => m.seq)).toEqual([1, 2, 3]);
    expect(win.body.messages[2]).toMatchObject({ role: 'user', parts: [{ type: 'text', text: 'two' }], metadata: { k: 'v' }, token_count: 42 });

    const trimmed = await api('GET', '/v1/contexts/life/context?budget_tokens=45');
    expect(trimmed.body.messages.map((m: any) => m.seq)).toEqual([2, 3]);
    expect(trimmed.body.token_count).toBe(43);
    expect((await api('GET', '/v1/contexts/life/context?if_version=2')).status).toBe(200);
    const stale = await api('GET', '/v1/contexts/life/context?if_version=1');
    expectError(stale, 409, 'conflict');
    expect(stale.body.current_version).toBe(2);
    expect(stale.body.message).toContain('2');

    const tail = await api('GET', '/v1/contexts/life/tail?limit=2');
    expect(tail.body.messages.map((m: any) => m.seq)).toEqual([2, 3]);
    expect(tail.body.messages[0]).toEqual({ seq: 2, role: 'user', parts: [{ type: 'text', text: 'one' }], metadata: {}, token_count: 1, inserted_at: expect.stringMatching(isoMs) });
    expect((await api('GET', '/v1/contexts/life/tail?offset=1&limit=1')).body.messages.map((m: any) => m.seq)).toEqual([2]);
    expect((await api('GET', '/v1/contexts/life/messages?from=2')).body.messages.map((m: any) => m.seq)).toEqual([2, 3]);
    expect((await api('GET', '/v1/contexts/life/messages?from_seq=3&limit=5')).body.messages.map((m: any) => m.seq)).toEqual([3]);
    expect((await api('GET', '/v1/contexts/life/messages?limit=1')).body.messages.map((m: any) => m.seq)).toEqual([1]);

    const patched = await api('PATCH', '/v1/contexts/life/metadata', { metadata: { tmp: null, added: true } });
    expect(patched).toMatchObject({ status: 200, body: { metadata: { owner: 'a', added: true }, version: 2 } });

    const compact = await api('POST', '/v1/contexts/life/compact', { replacement: [{ role: 'system', parts: [{ type: 'text', text: 'summary of 1-3' }] }], if_version: 2 });
    expect(compact).toMatchObject({ status: 200, body: { version: 3 } });
    await api('POST', '/v1/contexts/life/messages', { message: user('after') });
    const after = await api('GET', '/v1/contexts/life/context');
    expect(after.body.segments).toEqual([
      { type: 'summary', from_seq: 1, to_seq: 3 },
      { type: 'live', from_seq: 4, to_seq: 4 },
    ]);
    expect(after.body.messages.map((m: any) => m.role)).toEqual(['system', 'user']);
    expect((await api('GET', '/v1/contexts/life/tail')).body.messages).toHaveLength(4); // the log is untouched

    const upd = await api('PUT', '/v1/contexts/life', { trigger_ratio: 0.9 });
    expect(upd.body).toMatchObject({ token_budget: 1000, trigger_ratio: 0.9, version: 4, metadata: { owner: 'a', added: true } });

    const del = await api('DELETE', '/v1/contexts/life');
    expect(del.status).toBe(204);
    expect((await api('DELETE', '/v1/contexts/life')).status).toBe(204);
    expect((await api('DELETE', '/v1/contexts/never-existed')).status).toBe(204);
    expect((await api('GET', '/v1/contexts/life')).body.status).toBe('tombstoned');
    expectError(await api('POST', '/v1/contexts/life/messages', { message: user('x') }), 409, 'context_tombstoned');
    expectError(await api('PUT', '/v1/contexts/life', { token_budget: 5 }), 409, 'context_tombstoned');
    expectError(await api('POST', '/v1/contexts/life/compact', { replacement: [] }), 409, 'context_tombstoned');
    // Reads keep working.
    expect((await api('GET', '/v1/contexts/life/tail')).body.messages).toHaveLength(4);
    expect((await api('GET', '/v1/contexts/life/context')).status).toBe(200);
  });

  it('conversation façade shapes and codes', async () => {
    const put = await api('PUT', '/v1/conversations/conv-1', { metadata: { topic: 'x' } });
    expect(put.status).toBe(200);
    expect(Object.keys(put.body).sort()).toEqual(['archived_seq', 'created_at', 'id', 'last_seq', 'metadata', 'tombstoned', 'updated_at', 'version'].sort());
    expect(put.body).toMatchObject({ id: 'conv-1', version: 0, tombstoned: false, metadata: { topic: 'x' }, last_seq: 0 });
    expect((await api('PUT', '/v1/conversations/conv-empty')).status).toBe(200);

    const a = await api('POST', '/v1/conversations/conv-1/messages', { message: user('hi') });
    expect(a.status).toBe(201);
    expect(a.body).toEqual({ seq: 1, version: 1, token_count: 1 });
    expect((await api('GET', '/v1/conversations/conv-1/tail')).body.messages.map((m: any) => m.seq)).toEqual([1]);
    expect((await api('GET', '/v1/conversations/conv-1/messages?from=1')).body.messages).toHaveLength(1);
    // Same object through the other façade.
    expect((await api('GET', '/v1/contexts/conv-1')).body).toMatchObject({ id: 'conv-1', last_seq: 1 });

    const conflict = await api('POST', '/v1/conversations/conv-1/messages', { message: user('hi'), if_version: 7 });
    expectError(conflict, 409, 'conflict');
    expect(conflict.body.message).toContain('current version 1');
    expectError(await api('POST', '/v1/conversations/missing/messages', { message: user('x') }), 404, 'conversation_not_found');
    expectError(await api('GET', '/v1/conversations/missing'), 404, 'conversation_not_found');
    expect((await api('DELETE', '/v1/conversations/conv-1')).status).toBe(204);
    expect((await api('GET', '/v1/conversations/conv-1')).body.tombstoned).toBe(true);
    expectError(await api('POST', '/v1/conversations/conv-1/messages', { message: user('x') }), 410, 'conversation_tombstoned');
    expectError(await api('PUT', '/v1/conversations/conv-1', { metadata: {} }), 410, 'conversation_tombstoned');
  });

  it('unknown ids: 404 for record, window, append, compact, patch; empty lists for tail and replay', async () => {
    expectError(await api('GET', '/v1/contexts/ghost'), 404, 'context_not_found');
    expectError(await api('GET', '/v1/contexts/ghost/context'), 404, 'context_not_found');
    expectError(await api('POST', '/v1/contexts/ghost/messages', { message: user('x') }), 404, 'context_not_found');
    expectError(await api('POST', '/v1/contexts/ghost/compact', { replacement: [] }), 404, 'context_not_found');
    expectError(await api('PATCH', '/v1/contexts/ghost/metadata', { metadata: {} }), 404, 'context_not_found');
    expect(await api('GET', '/v1/contexts/ghost/tail')).toMatchObject({ status: 200, body: { messages: [] } });
    expect(await api('GET', '/v1/contexts/ghost/messages')).toMatchObject({ status: 200, body: { messages: [] } });
  });

  it('versions: +1 per append request, none for PUT/PATCH; if_version on append and compact', async () => {
    await api('PUT', '/v1/contexts/ver', { token_budget: 100000 });
    expect((await api('POST', '/v1/contexts/ver/messages', { message: user('a'), if_version: 0 })).body.version).toBe(1);
    expect((await api('POST', '/v1/contexts/ver/messages?if_version=1', { message: user('b') })).body.version).toBe(2);
    const c = await api('POST', '/v1/contexts/ver/messages', { message: user('c'), if_version: 1 });
    expectError(c, 409, 'conflict');
    expect(c.body.current_version).toBe(2);
    await api('PATCH', '/v1/contexts/ver/metadata', { metadata: { a: 1 } });
    await api('PUT', '/v1/contexts/ver', { metadata: { b: 2 } });
    expect((await api('GET', '/v1/contexts/ver')).body).toMatchObject({ version: 2, last_seq: 2, metadata: { b: 2 } });
    expectError(await api('POST', '/v1/contexts/ver/compact', { replacement: [], if_version: 0 }), 409, 'conflict');
    expect((await api('POST', '/v1/contexts/ver/compact', { replacement: [], if_version: 2 })).body.version).toBe(3);
  });

  it('idempotency: body key and header key; a retry is deduped and appends nothing; other content conflicts', async () => {
    await api('PUT', '/v1/contexts/idem', { token_budget: 100000 });
    const first = await api('POST', '/v1/contexts/idem/messages', { message: user('once'), idempotency_key: 'req-1' });
    expect(first.status).toBe(201);
    const retry = await api('POST', '/v1/contexts/idem/messages', { message: user('once'), idempotency_key: 'req-1' });
    expect(retry.status).toBe(201);
    expect(retry.body).toEqual({ ...first.body, deduped: true });
    const viaHeader = await api('POST', '/v1/contexts/idem/messages', { message: user('once') }, { 'Idempotency-Key': 'req-1' });
    expect(viaHeader.body).toEqual({ ...first.body, deduped: true });
    expectError(await api('POST', '/v1/contexts/idem/messages', { message: user('different') }, { 'Idempotency-Key': 'req-1' }), 409, 'idempotency_conflict');
    expectError(await api('POST', '/v1/contexts/idem/messages', { message: user('x'), idempotency_key: 'a' }, { 'Idempotency-Key': 'b' }), 400, 'invalid_request');
    expect((await api('GET', '/v1/contexts/idem/tail')).body.messages).toHaveLength(1);
    expect((await api('GET', '/v1/contexts/idem')).body.version).toBe(1);
  });

  it('policies over HTTP: last_n, skip_parts, manual, and the budget guarantee', async () => {
    await api('PUT', '/v1/contexts/pol-last', { token_budget: 100, trigger_ratio: 0.5, policy: { strategy: 'last_n', config: { limit: 3 } } });
    // 10 tokens each: the 6th crosses 0.5 × 100 and leaves [4,5,6]; the 9th crosses again.
    for (let i = 1; i <= 8; i++) await api('POST', '/v1/contexts/pol-last/messages', { message: { ...user(`m${i}`), token_count: 10 } });
    expect((await api('GET', '/v1/contexts/pol-last/context')).body.messages.map((m: any) => m.seq)).toEqual([4, 5, 6, 7, 8]);
    await api('POST', '/v1/contexts/pol-last/messages', { message: { ...user('m9'), token_count: 10 } });
    expect((await api('GET', '/v1/contexts/pol-last/context')).body.messages.map((m: any) => m.seq)).toEqual([7, 8, 9]);

    await api('PUT', '/v1/contexts/pol-skip', { token_budget: 1000, trigger_ratio: 0.01, policy: { strategy: 'skip_parts', config: {} } });
    await api('POST', '/v1/contexts/pol-skip/messages', {
      message: { role: 'assistant', parts: [{ type: 'reasoning', text: 'thinking...' }, { type: 'tool_use', name: 'search' }, { type: 'text', text: 'final answer' }] },
    });
    const skip = await api('GET', '/v1/contexts/pol-skip/context');
    expect(skip.body.messages[0].parts).toEqual([{ type: 'text', text: 'final answer' }]);
    expect(skip.body.token_count).toBe(3);

    await api('PUT', '/v1/contexts/pol-manual', { token_budget: 20, policy: { strategy: 'manual' } });
    for (let i = 0; i < 4; i++) await api('POST', '/v1/contexts/pol-manual/messages', { message: { ...user('x'), token_count: 10 } });
    const manual = await api('GET', '/v1/contexts/pol-manual/context');
    expect(manual.body).toMatchObject({ needs_compaction: true, token_count: 40 });
    expect(manual.body.messages).toHaveLength(4);
    await api('POST', '/v1/contexts/pol-manual/compact', { replacement: [user('summary')] });
    expect((await api('GET', '/v1/contexts/pol-manual/context')).body).toMatchObject({ needs_compaction: false, token_count: 2 });

    await api('PUT', '/v1/contexts/pol-budget', { token_budget: 50, trigger_ratio: 1, policy: { strategy: 'last_n', config: { limit: 100 } } });
    for (let i = 0; i < 10; i++) await api('POST', '/v1/contexts/pol-budget/messages', { message: { ...user('x'), token_count: 12 } });
    const budget = await api('GET', '/v1/contexts/pol-budget/context');
    expect(budget.body.token_count).toBeLessThanOrEqual(50);
    expect(budget.body.messages.map((m: any) => m.seq)).toEqual([7, 8, 9, 10]);
    await api('POST', '/v1/contexts/pol-budget/messages', { message: { ...user('huge'), token_count: 500 } });
    const huge = await api('GET', '/v1/contexts/pol-budget/context');
    expect(huge.body.messages.map((m: any) => m.seq)).toEqual([11]); // a single oversized message stays
  });

  it('exact BPE counts (o200k_base) are computed for contexts that ask for them', async () => {
    const text = 'Tokenizers split text into pieces: naïve café ☕ and 12345!';
    await api('PUT', '/v1/contexts/bpe', { token_budget: 1000, tokenizer: 'o200k_base' });
    const r = await api('POST', '/v1/contexts/bpe/messages', { message: user(text) });
    expect(r.body.token_count).toBe(o200k(text));
    expect((await api('GET', '/v1/contexts/bpe')).body.tokenizer).toBe('o200k_base');
  });

  it('POST /v1/batch appends to many ids; each item succeeds or fails on its own', async () => {
    await api('PUT', '/v1/contexts/batch-a', { token_budget: 1000 });
    await api('PUT', '/v1/conversations/batch-b', {});
    const r = await api('POST', '/v1/batch', {
      appends: [
        { id: 'batch-a', message: user('1') },
        { id: 'batch-b', message: user('2'), idempotency_key: 'k' },
        { id: 'batch-missing', message: user('3') },
        { id: 'bad id!', message: user('4') },
        { id: 'batch-a', message: { role: '' } },
        { id: 'batch-a', message: user('5'), if_version: 99 },
        { id: 'batch-b', message: user('2'), idempotency_key: 'k' },
      ],
    });
    expect(r.status).toBe(200);
    const [a, b, missing, badId, badMsg, conflict, dup] = r.body.results;
    expect(a).toMatchObject({ id: 'batch-a', seq: 1, version: 1 });
    expect(b).toMatchObject({ id: 'batch-b', seq: 1, version: 1 });
    expect(missing).toMatchObject({ id: 'batch-missing', error: 'context_not_found' });
    expect(badId).toMatchObject({ id: 'bad id!', error: 'invalid_id' });
    expect(badMsg).toMatchObject({ id: 'batch-a', error: 'invalid_request' });
    expect(conflict).toMatchObject({ id: 'batch-a', error: 'conflict' });
    expect(dup).toMatchObject({ id: 'batch-b', seq: 1, deduped: true });
    expectError(await api('POST', '/v1/batch', { appends: Array.from({ length: 1001 }, () => ({ id: 'x', message: user('x') })) }), 400, 'invalid_request');
  });

  it('listing pages through ids with a cursor and a prefix', async () => {
    for (const id of ['list-a', 'list-b', 'list-c', 'other-1']) await api('PUT', `/v1/contexts/${id}`, { token_budget: 10 });
    const p1 = await api('GET', '/v1/contexts?prefix=list-&limit=2');
    expect(p1.body.contexts.map((c: any) => c.id)).toEqual(['list-a', 'list-b']);
    expect(p1.body.next_cursor).toEqual(expect.any(String));
    const p2 = await api('GET', `/v1/contexts?prefix=list-&limit=2&cursor=${p1.body.next_cursor}`);
    expect(p2.body.contexts.map((c: any) => c.id)).toEqual(['list-c']);
    expect(p2.body.next_cursor).toBeNull();
    const convs = await api('GET', '/v1/conversations?prefix=list-a');
    expect(convs.body.conversations.map((c: any) => c.id)).toEqual(['list-a']);
    expectError(await api('GET', '/v1/contexts?cursor=!!!'), 400, 'invalid_request');
  });

  it('bad input: invalid_id, invalid_json, invalid_request, not_found, method_not_allowed', async () => {
    await api('PUT', '/v1/contexts/valid', { token_budget: 10 });
    expectError(await api('GET', '/v1/contexts/%ZZ'), 400, 'invalid_id');
    expectError(await api('GET', `/v1/contexts/${'x'.repeat(257)}`), 400, 'invalid_id');
    expectError(await api('GET', '/v1/contexts/a%20b'), 400, 'invalid_id');
    expectError(await api('GET', '/v1/contexts/a%2Fb/tail'), 400, 'invalid_id');
    expect((await api('GET', `/v1/contexts/${'x'.repeat(256)}/tail`)).status).toBe(200);
    expectError(await api('POST', '/v1/contexts/valid/messages', '{"message":'), 400, 'invalid_json');
    expectError(await api('POST', '/v1/contexts/valid/messages', '[1,2]'), 400, 'invalid_json');
    expectError(await api('POST', '/v1/contexts/valid/messages', ''), 400, 'invalid_json');
    expectError(await api('POST', '/v1/contexts/valid/messages', { message: { role: 'user', parts: [] } }), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', { message: { role: 'user', parts: [{ type: 'text' }] } }), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', { message: { ...user('x'), token_count: -1 } }), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', {}), 400, 'invalid_request');
    expectError(await api('PUT', '/v1/contexts/new-one', {}), 400, 'invalid_request'); // token_budget required to create
    expectError(await api('PUT', '/v1/contexts/valid', { trigger_ratio: 0 }), 400, 'invalid_request');
    expectError(await api('PUT', '/v1/contexts/valid', { policy: { strategy: 'newest' } }), 400, 'invalid_request');
    expectError(await api('PUT', '/v1/contexts/valid', { status: 'active' }), 400, 'invalid_request');
    expectError(await api('PUT', '/v1/contexts/valid', { tokenizer: 'gpt2' }), 400, 'invalid_request');
    expectError(await api('GET', '/v1/contexts/valid/tail?limit=abc'), 400, 'invalid_request');
    expectError(await api('GET', '/v1/contexts/valid/tail?limit=1001'), 400, 'invalid_request');
    expectError(await api('GET', '/v1/contexts/valid/context?budget_tokens=-5'), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', { message: user('x'), idempotency_key: 'x'.repeat(257) }), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', JSON.stringify({ message: { ...user('x'), metadata: JSON.parse('['.repeat(100) + ']'.repeat(100)) } })), 400, 'invalid_request');
    expectError(await api('GET', '/v1/contexts/...'), 400, 'invalid_id');
    // What cannot be stored and returned exactly is refused, never silently changed.
    expectError(await api('PUT', '/v1/contexts/valid', '{"metadata":{"__proto__":{"x":1}}}'), 400, 'invalid_request');
    expectError(await api('POST', '/v1/contexts/valid/messages', '{"message":{"role":"user","parts":[{"type":"text","text":"\\ud800"}]}}'), 400, 'invalid_request');
    expectError(await api('PATCH', '/v1/contexts/valid/metadata', '{"metadata":{"\\udc00":1}}'), 400, 'invalid_request');
    expectError(await api('GET', '/v1/nothing-here'), 404, 'not_found');
    expectError(await api('GET', '/nope'), 404, 'not_found');
    expectError(await api('POST', '/v1/contexts/valid'), 405, 'method_not_allowed');
    expectError(await api('DELETE', '/v1/contexts/valid/tail'), 405, 'method_not_allowed');
  });
});

describe('HTTP API limits and auth (one real node each)', () => {
  it('413 payload_too_large past FASTPACA_MAX_BODY_BYTES', async () => {
    const s = await startServer({ env: { FASTPACA_MAX_BODY_BYTES: '2048' } });
    try {
      await call(s.url, 'PUT', '/v1/contexts/big', { token_budget: 10 });
      const r = await call(s.url, 'POST', '/v1/contexts/big/messages', { message: user('x'.repeat(5000)) });
      expect(r.status).toBe(413);
      expect(r.body).toMatchObject({ error: 'payload_too_large' });
      expect((await call(s.url, 'GET', '/v1/contexts/big')).body.last_seq).toBe(0);
    } finally {
      await s.stop();
    }
  });

  it('a client that leaves mid-body does not hold up a graceful shutdown', async () => {
    const s = await startServer();
    const sock = net.connect(s.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write('POST /v1/contexts/a/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mess');
    await new Promise((r) => setTimeout(r, 100));
    sock.destroy();
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    expect(await s.stop()).toBe(0);
    expect(Date.now() - started).toBeLessThan(5_000);
  });

  it('401 unauthorized without the bearer key; health and metrics stay open', async () => {
    const s = await startServer({ env: { FASTPACA_API_KEY: 'sekret' } });
    try {
      const r = await call(s.url, 'GET', '/v1/contexts');
      expect(r).toMatchObject({ status: 401, body: { error: 'unauthorized' } });
      expect(r.headers.get('www-authenticate')).toBe('Bearer');
      expect((await call(s.url, 'GET', '/v1/contexts', undefined, { Authorization: 'Bearer wrong' })).status).toBe(401);
      expect((await call(s.url, 'GET', '/v1/contexts', undefined, { Authorization: 'Bearer sekret' })).status).toBe(200);
      expect((await call(s.url, 'GET', '/health/live')).status).toBe(200);
      expect((await call(s.url, 'GET', '/metrics')).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  it('429 rate_limited with Retry-After over FASTPACA_RATE_LIMIT', async () => {
    const s = await startServer({ env: { FASTPACA_RATE_LIMIT: '5' } });
    try {
      const rs = await Promise.all(Array.from({ length: 30 }, () => call(s.url, 'GET', '/v1/contexts')));
      const limited = rs.filter((r) => r.status === 429);
      expect(limited.length).toBeGreaterThan(0);
      expect(limited[0]!.body).toMatchObject({ error: 'rate_limited' });
      expect(limited[0]!.headers.get('retry-after')).toBe('1');
      expect((await call(s.url, 'GET', '/health/live')).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  it('503 overloaded with Retry-After when the write queue is full, and nothing half-done', async () => {
    const s = await startServer({ env: { FASTPACA_PENDING_MAX: '2' } });
    try {
      await call(s.url, 'PUT', '/v1/contexts/busy', { token_budget: 100000 });
      const rs = await Promise.all(Array.from({ length: 200 }, (_, i) => call(s.url, 'POST', '/v1/contexts/busy/messages', { message: user(`m${i}`) })));
      const over = rs.filter((r) => r.status === 503);
      const created = rs.filter((r) => r.status === 201);
      expect(over.length).toBeGreaterThan(0);
      expect(over[0]!.body).toMatchObject({ error: 'overloaded' });
      expect(over[0]!.headers.get('retry-after')).toBe('1');
      expect(created.length + over.length).toBe(200);
      expect((await call(s.url, 'GET', '/v1/contexts/busy')).body.last_seq).toBe(created.length);
    } finally {
      await s.stop();
    }
  });

  it('refuses to share its port with another process (no silent SO_REUSEPORT)', async () => {
    const s = await startServer();
    try {
      const second = spawnSync(process.execPath, [cli, 'serve'], {
        env: { ...process.env, PORT: String(s.port), HOST: '127.0.0.1', FASTPACA_DATA_DIR: tempDir(), LOG_LEVEL: 'warn' },
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(second.status).toBe(1);
      expect(second.stderr + second.stdout).toMatch(/cannot listen/);
      expect((await call(s.url, 'GET', '/health/live')).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  it('refuses to start on data created with another FASTPACA_GROUPS, with a clear message', async () => {
    const s = await startServer({ env: { FASTPACA_GROUPS: '16' } });
    await s.stop();
    await expect(startServer({ dataDir: s.dataDir, env: { FASTPACA_GROUPS: '32' } })).rejects.toThrow(/FASTPACA_GROUPS=32/);
  });
});
