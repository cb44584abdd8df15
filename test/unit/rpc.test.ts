import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { FastpacaError } from '../../runtime/errors.js';
import { createMailboxRings } from '../../runtime/mailbox.js';
import { Rpc, type RpcOptions } from '../../runtime/rpc.js';

type Echo = { op: 'echo'; value: unknown } | { op: 'fail'; code: 'conflict' | 'overloaded' } | { op: 'bug' } | { op: 'never' } | { op: 'later'; ms: number };

const options: RpcOptions = { timeoutMs: 5_000, inflightMax: 10_000, outboxMax: 100_000 };

/** Two ends over one pair of rings, on this thread (waitAsync wakes the same thread as well). */
function pair(capacity = 64 * 1024, opts: Partial<RpcOptions> = {}) {
  const { a, b } = createMailboxRings(capacity);
  const handler = (call: Echo): unknown => {
    switch (call.op) {
      case 'echo':
        return call.value;
      case 'fail':
        throw new FastpacaError(call.code, `failed with ${call.code}`, { retryAfterS: 2, extra: { current_version: 7 } });
      case 'bug':
        throw new TypeError('x is not a function');
      case 'never':
        return new Promise(() => {});
      case 'later':
        return new Promise((resolve) => setTimeout(() => resolve(call.ms), call.ms));
    }
  };
  // eslint-disable-next-line prefer-const
  let server: Rpc<never, never, Echo, unknown>;
  const client: Rpc<Echo, unknown, never, never> = new Rpc(a, () => Promise.reject(new Error('no calls this way')), (r) => server.mailbox.receiveOversize(r), { ...options, ...opts });
  server = new Rpc(b, handler, (r) => client.mailbox.receiveOversize(r), options);
  client.start();
  server.start();
  return { client, server, close: () => (client.close(new Error('closed')), server.close(new Error('closed'))) };
}

describe('Rpc over the mailbox', () => {
  const closers: Array<() => void> = [];
  afterEach(() => {
    for (const c of closers.splice(0)) c();
  });

  it('answers every call with its own answer, whatever the order of completion', async () => {
    const { client, close } = pair(1024 * 1024);
    closers.push(close);
    const calls = Array.from({ length: 2_000 }, (_, i) => (i % 3 === 0 ? client.call({ op: 'later', ms: i % 7 }) : client.call({ op: 'echo', value: { i, s: 'x'.repeat(i % 50) } })));
    const answers = await Promise.all(calls);
    answers.forEach((a, i) => expect(a).toEqual(i % 3 === 0 ? i % 7 : { i, s: 'x'.repeat(i % 50) }));
    expect(client.inflight).toBe(0);
  });

  it('round-trips any JSON value as JSON sees it (fast-check)', async () => {
    const { client, close } = pair();
    closers.push(close);
    await fc.assert(
      // Keys named "__proto__" are excluded: msgpack decoders rename them, and the gateway
      // refuses them at the edge (gateway/validate.ts), so they never reach a mailbox.
      fc.asyncProperty(fc.jsonValue().filter((v) => !JSON.stringify(v).includes('"__proto__"')), async (value) => {
        // -0 comes back as 0, as it would through JSON: values here come from JSON bodies.
        expect(await client.call({ op: 'echo', value })).toEqual(JSON.parse(JSON.stringify(value)));
      }),
      { numRuns: 300 },
    );
  });

  it('carries typed errors across with their code, extra fields and Retry-After; anything else is internal', async () => {
    const { client, close } = pair();
    closers.push(close);
    await expect(client.call({ op: 'fail', code: 'conflict' })).rejects.toMatchObject({ code: 'conflict', status: 409, retryAfterS: 2, extra: { current_version: 7 } });
    const bug = await client.call({ op: 'bug' }).catch((e: unknown) => e);
    expect(bug).toBeInstanceOf(FastpacaError);
    expect(bug).toMatchObject({ code: 'internal', status: 500 });
    expect((bug as Error).message).toMatch(/TypeError: x is not a function/);
  });

  it('a record larger than the ring goes by the side channel, both ways', async () => {
    const { client, close } = pair(64 * 1024);
    closers.push(close);
    const big = 'y'.repeat(200_000);
    expect(await client.call({ op: 'echo', value: big })).toBe(big);
    expect(client.mailbox.oversized).toBe(1);
    // A batch larger than one record (40 KB, records here hold 32 KB) is split; none is lost.
    const many = await Promise.all(Array.from({ length: 40 }, (_, i) => client.call({ op: 'echo', value: `${i}:${'w'.repeat(1_000)}` })));
    expect(many.map((m) => Number(String(m).split(':')[0]))).toEqual(Array.from({ length: 40 }, (_, i) => i));
  });

  it('a full ring refuses the call at the end of its turn with 503 overloaded', async () => {
    const { a } = createMailboxRings(64 * 1024);
    // Nobody reads the other end: the ring fills up.
    const client = new Rpc<Echo, unknown, never, never>(a, () => undefined as never, () => {}, options);
    closers.push(() => client.close(new Error('closed')));
    const made: Array<Promise<unknown>> = [];
    let refused: unknown;
    for (let i = 0; i < 10_000 && refused === undefined; i++) {
      const p = client.call({ op: 'echo', value: 'z'.repeat(500) });
      p.catch((e: unknown) => (refused ??= e));
      made.push(p);
      await new Promise((r) => setImmediate(r)); // one record per turn
    }
    await new Promise((r) => setImmediate(r));
    expect(refused).toMatchObject({ code: 'overloaded', status: 503, retryAfterS: 1 });
    expect(client.inflight).toBeGreaterThan(50);
    expect(client.inflight).toBeLessThan(200);
  });

  it('bounds the calls in flight: the next one is refused with 503 overloaded', async () => {
    const { client, close } = pair(64 * 1024, { inflightMax: 3 });
    closers.push(close);
    const held = [client.call({ op: 'never' }), client.call({ op: 'never' }), client.call({ op: 'never' })];
    held.forEach((p) => p.catch(() => {}));
    await expect(client.call({ op: 'echo', value: 1 })).rejects.toMatchObject({ code: 'overloaded' });
  });

  it('a call not answered by its deadline fails with 503 unavailable; a late answer is dropped', async () => {
    const { client, close } = pair(64 * 1024, { timeoutMs: 150 });
    closers.push(close);
    const started = performance.now();
    await expect(client.call({ op: 'later', ms: 600 })).rejects.toMatchObject({ code: 'unavailable', status: 503 });
    const waited = performance.now() - started;
    expect(waited).toBeGreaterThanOrEqual(140);
    expect(waited).toBeLessThan(500);
    await new Promise((r) => setTimeout(r, 600));
    expect(await client.call({ op: 'echo', value: 'after' })).toBe('after');
  });

  it('closing fails the calls in flight and every later call with the reason', async () => {
    const { client, close } = pair();
    closers.push(close);
    const pending = client.call({ op: 'never' });
    client.close(new FastpacaError('unavailable', 'the worker stopped', { retryAfterS: 1 }));
    await expect(pending).rejects.toMatchObject({ code: 'unavailable', message: 'the worker stopped' });
    await expect(client.call({ op: 'echo', value: 1 })).rejects.toMatchObject({ code: 'unavailable' });
  });
});
