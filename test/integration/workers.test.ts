/**
 * Supervision of the group workers, on a real node with two workers: a worker that crashes
 * under load (test hook, FASTPACA_TEST_HOOKS=1) is restarted, the other worker's groups keep
 * being served meanwhile, requests caught by the crash get 503, and every acknowledged append
 * is there exactly once afterwards, at the seq its ack reported.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { workerOf } from '../../runtime/actor.js';
import { groupOf } from '../../runtime/hash.js';
import { call, startServer, type TestServer } from '../support/server.js';

const Ids = 24;
const Concurrency = 32;
const Workers = 2;

const servers: TestServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.kill();
});

const idOf = (k: number) => `sup-${k % Ids}`;
const workerOfId = (id: string) => workerOf(groupOf(id, 256), Workers);

interface Outcome {
  k: number;
  id: string;
  at: number;
  status: number;
  seq?: number;
}

describe('a group worker that crashes under load', () => {
  it('is restarted; the other worker keeps serving; every acknowledged append is there exactly once', async () => {
    const server = await startServer({ env: { FASTPACA_WORKERS: String(Workers), FASTPACA_TEST_HOOKS: '1' } });
    servers.push(server);
    const ids = Array.from({ length: Ids }, (_, i) => `sup-${i}`);
    expect(new Set(ids.map(workerOfId)).size, 'the ids span both workers').toBe(Workers);
    for (const id of ids) expect((await call(server.url, 'PUT', `/v1/contexts/${id}`, { token_budget: 1_000_000 })).status).toBe(200);

    const outcomes: Outcome[] = [];
    let k = 0;
    let stop = false;
    const loop = async () => {
      while (!stop) {
        const mine = k++;
        const id = idOf(mine);
        const r = await call(server.url, 'POST', `/v1/contexts/${id}/messages`, { message: { role: 'user', parts: [{ type: 'text', text: `n${mine}` }] } }).catch(() => ({ status: 0, body: undefined }));
        outcomes.push({ k: mine, id, at: performance.now(), status: r.status, seq: r.status === 201 ? (r.body as { seq: number }).seq : undefined });
        if (r.status === 503) await new Promise((res) => setTimeout(res, 20));
      }
    };
    const loops = Array.from({ length: Concurrency }, loop);
    await new Promise((r) => setTimeout(r, 800));
    const crashAt = performance.now();
    const crash = await call(server.url, 'POST', '/v1/_test/workers/0/crash');
    expect(crash.status, `crash hook answered ${JSON.stringify(crash.body)}; server output:\n${server.output().slice(-4000)}`).toBe(202);
    // Keep the load on until worker 0 is back and has served appends again.
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && !outcomes.some((o) => o.at > crashAt && o.status === 201 && workerOfId(o.id) === 0 && o.at > firstUnavailable(outcomes, crashAt))) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await new Promise((r) => setTimeout(r, 300));
    stop = true;
    await Promise.all(loops);

    const after = outcomes.filter((o) => o.at > crashAt);
    const statuses = new Set(outcomes.map((o) => o.status));
    expect([...statuses].every((s) => s === 201 || s === 503), `only 201 or 503: ${[...statuses]}`).toBe(true);
    expect(after.some((o) => o.status === 503 && workerOfId(o.id) === 0), 'the crash caught requests of worker 0').toBe(true);
    // While worker 0 was down (between its first 503 and its first 201 after), worker 1 answered.
    const down = firstUnavailable(outcomes, crashAt);
    const back = after.find((o) => o.status === 201 && workerOfId(o.id) === 0 && o.at > down)!.at;
    expect(back, 'worker 0 came back').toBeGreaterThan(down);
    expect(after.filter((o) => o.status === 503 && workerOfId(o.id) === 1), 'worker 1 never failed').toEqual([]);
    expect(after.some((o) => o.status === 201 && workerOfId(o.id) === 1 && o.at > down && o.at < back), 'worker 1 served while worker 0 was down').toBe(true);

    console.log(
      `workers: acknowledged=${outcomes.filter((o) => o.status === 201).length} unavailable=${outcomes.filter((o) => o.status === 503).length} ` +
        `worker-0 down ${(back - down).toFixed(0)} ms, worker-1 acks meanwhile=${after.filter((o) => o.status === 201 && workerOfId(o.id) === 1 && o.at > down && o.at < back).length}`,
    );
    expect((await call(server.url, 'GET', '/health/ready')).status).toBe(200);
    const metrics = (await call<string>(server.url, 'GET', '/metrics')).body;
    expect(metrics).toMatch(/^fastpaca_worker_restarts_total 1$/m);

    // Every acknowledged append exactly once at its seq; an unacknowledged one at most once.
    for (const id of ids) {
      const r = await call(server.url, 'GET', `/v1/contexts/${id}/messages?from_seq=1&limit=1000`);
      expect(r.status).toBe(200);
      const messages = (r.body as { messages: Array<{ seq: number; parts: Array<{ text: string }> }> }).messages;
      expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i + 1));
      const texts = messages.map((m) => m.parts[0]!.text);
      expect(new Set(texts).size, `no message twice in ${id}`).toBe(texts.length);
      const bySeq = new Map(messages.map((m) => [m.seq, m.parts[0]!.text]));
      for (const o of outcomes.filter((x) => x.id === id && x.status === 201)) expect(bySeq.get(o.seq!), `ack n${o.k} of ${id}`).toBe(`n${o.k}`);
    }
    expect(await server.stop()).toBe(0);
  });

  it('the crash hook does not exist unless test hooks are on', async () => {
    const server = await startServer({ env: { FASTPACA_WORKERS: '1' } });
    servers.push(server);
    expect((await call(server.url, 'POST', '/v1/_test/workers/0/crash')).status).toBe(404);
    expect(await server.stop()).toBe(0);
  });
});

function firstUnavailable(outcomes: Outcome[], after: number): number {
  return outcomes.find((o) => o.at > after && o.status === 503 && workerOfId(o.id) === 0)?.at ?? Infinity;
}
