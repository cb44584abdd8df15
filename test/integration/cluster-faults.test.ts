/**
 * A bounded fault test of a three-node cluster: a fault-injecting TCP proxy on every node pair
 * (partitions, one-way partitions, delays, resets) and random kill -9 with restart, while
 * clients append with idempotency keys and read, recording every request and response. Then a
 * checker reads the final logs and the stores of every replica and proves the history sound.
 *
 * FASTPACA_FAULT_SECONDS sets how long the faults go on (default 60); FASTPACA_FAULT_SEED the
 * nemesis' seed (printed, so a failing schedule can be run again).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { TestCluster, assertReplicasIdentical } from '../support/cluster.js';
import { FaultProxy, type ProxyMode } from '../support/fault-proxy.js';
import { checkHistory, type Attempt, type ReadObservation } from '../support/history.js';

const FaultSeconds = Number(process.env.FASTPACA_FAULT_SECONDS ?? 60);
const Seed = Number(process.env.FASTPACA_FAULT_SEED ?? Date.now() % 1_000_000);
const Clients = 6;
const IdsPerClient = 3;
const RequestTimeoutMs = 4_000;

const proxies: FaultProxy[] = [];
let cluster: TestCluster | undefined;
afterAll(async () => {
  await cluster?.close();
  await Promise.all(proxies.map((p) => p.close()));
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every message of `id` through node `url`, page by page; undefined when a page fails. */
async function readAll(url: string, id: string): Promise<Array<{ seq: number; text: string }> | undefined> {
  const out: Array<{ seq: number; text: string }> = [];
  for (;;) {
    const r = await request(url, 'GET', `/v1/contexts/${id}/messages?from_seq=${out.length + 1}&limit=1000`);
    if (r?.status !== 200) return undefined;
    for (const m of r.body.messages) out.push({ seq: m.seq, text: m.parts[0].text });
    if (r.body.messages.length < 1000) return out;
  }
}

async function request(url: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any } | undefined> {
  try {
    const r = await fetch(url + path, {
      method,
      headers: { 'content-type': 'application/json', ...headers },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(RequestTimeoutMs),
    });
    const text = await r.text();
    return { status: r.status, body: text === '' ? null : JSON.parse(text) };
  } catch {
    return undefined; // refused, reset, timed out: the outcome is unknown
  }
}

describe('a three-node cluster under network faults and kill -9', () => {
  it(`loses no acknowledged append, duplicates none, and keeps every replica identical (about ${FaultSeconds} s)`, async () => {
    const rng = new Xoshiro128(Seed);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rng.float() * xs.length)]!;
    console.log(`fault test seed ${Seed} (FASTPACA_FAULT_SEED=${Seed} replays the nemesis' choices)`);
    // One proxy per node pair, on the path of the smaller id's dial to the larger.
    const pairProxy = new Map<string, FaultProxy>();
    const c = await TestCluster.start(3, {
      env: { FASTPACA_REQUEST_TIMEOUT_MS: '3000', FASTPACA_RAFT_LAG_ENTRIES: '50' },
      dial: async (from, to, port) => {
        if (from > to) return port; // the larger id never dials
        const p = await FaultProxy.start({ host: '127.0.0.1', port });
        proxies.push(p);
        pairProxy.set(`${from}-${to}`, p);
        return p.port;
      },
    });
    cluster = c;
    const pairs = [...pairProxy.keys()];

    const ids = Array.from({ length: Clients * IdsPerClient }, (_, i) => `fault-${i}`);
    for (const id of ids) expect((await request(c.url(0), 'PUT', `/v1/contexts/${id}`, { token_budget: 1_000_000 }))?.status).toBeLessThan(300);

    const attempts: Attempt[] = [];
    const reads: ReadObservation[] = [];
    let stop = false;
    const liveUrls = () => c.nodes.filter((n) => n.server !== undefined).map((n) => n.server!.url);

    // Clients: each appends to its own ids, one operation at a time, retrying with the same
    // idempotency key until acknowledged (or the test ends), against a random live node.
    const client = async (k: number): Promise<void> => {
      let n = 0;
      const mine = ids.slice(k * IdsPerClient, (k + 1) * IdsPerClient);
      while (!stop) {
        const id = mine[n % mine.length]!;
        const text = `${id}:c${k}:${n}`;
        const attempt: Attempt = { id, text, start: Date.now(), end: 0, seq: undefined };
        attempts.push(attempt);
        for (let tries = 0; attempt.seq === undefined; tries++) {
          const urls = liveUrls();
          if (urls.length === 0 || (stop && tries > 0)) break;
          const r = await request(pick(urls), 'POST', `/v1/contexts/${id}/messages`, { message: { role: 'user', parts: [{ type: 'text', text }] } }, { 'idempotency-key': text });
          if (r && (r.status === 201 || r.status === 200)) attempt.seq = r.body.seq;
          else if (r && r.status !== 503 && r.status !== 429) throw new Error(`append answered ${r.status}: ${JSON.stringify(r.body)}`);
          else await sleep(50);
        }
        attempt.end = Date.now();
        n++;
        if (rng.float() < 0.3) {
          const urls = liveUrls();
          if (urls.length === 0) continue;
          const readId = pick(mine);
          const messages = await readAll(pick(urls), readId);
          if (messages) reads.push({ id: readId, messages });
        }
      }
    };

    // The nemesis: every 1.5-4 s one fault, healed before the next (at most one node down).
    const faults: string[] = [];
    const nemesis = async (): Promise<void> => {
      const until = Date.now() + FaultSeconds * 1000;
      let down: number | undefined;
      while (Date.now() < until) {
        const choice = rng.float();
        if (choice < 0.25 && down === undefined) {
          down = Math.floor(rng.float() * 3);
          faults.push(`kill -9 n${down}`);
          await c.kill(down);
        } else if (choice < 0.6) {
          const pair = pick(pairs);
          const mode = pick<ProxyMode>(['drop', 'drop', 'drop-to-target', 'drop-from-target']);
          faults.push(`${mode} ${pair}`);
          pairProxy.get(pair)!.mode = mode;
        } else if (choice < 0.8) {
          const pair = pick(pairs);
          const ms = 20 + Math.floor(rng.float() * 200);
          faults.push(`delay ${ms}ms ${pair}`);
          pairProxy.get(pair)!.delayMs = ms;
        } else {
          const pair = pick(pairs);
          faults.push(`reset ${pair}`);
          pairProxy.get(pair)!.reset();
        }
        await sleep(1_500 + rng.float() * 2_500);
        for (const p of pairProxy.values()) {
          p.mode = 'pass';
          p.delayMs = 0;
        }
        if (down !== undefined && rng.float() < 0.6) {
          faults.push(`restart n${down}`);
          await c.startNode(down, {}, 'live');
          down = undefined;
        }
      }
      if (down !== undefined) await c.startNode(down, {}, 'live');
    };

    const running = Array.from({ length: Clients }, (_, k) => client(k));
    await nemesis();
    stop = true;
    await Promise.all(running);

    // Healed, all up: wait until every replica has caught up, then read the final logs.
    await c.converged(60_000);
    const finalLogs = new Map<string, Array<{ seq: number; text: string }>>();
    for (const id of ids) {
      let seen: string | undefined;
      for (let i = 0; i < 3; i++) {
        const log = await readAll(c.url(i), id);
        expect(log, `node ${i} serves the log of ${id}`).toBeDefined();
        const json = JSON.stringify(log);
        if (seen !== undefined) expect(json, `node ${i} reads another log of ${id}`).toBe(seen);
        seen = json;
        finalLogs.set(id, log!);
      }
    }

    // ---- the checker (test/support/history.ts; test/unit/history.test.ts shows it catches each bug) ----
    const v = checkHistory(attempts, reads, finalLogs);

    await c.close();
    const compared = await assertReplicasIdentical(c);
    console.log(
      `fault test: ${FaultSeconds} s, ${faults.length} faults (${faults.filter((f) => f.startsWith('kill')).length} kill -9), seed ${Seed}\n` +
        `  acknowledged ${v.acknowledged}, lost ${v.lost}, duplicated ${v.duplicated}, at another seq ${v.misplaced}, out of order ${v.reordered}, seq gaps ${v.gaps}, ` +
        `reads ${reads.length} (phantom messages ${v.phantom}), unacknowledged ${v.indeterminate}, messages in the logs ${v.present}, groups compared across replicas ${compared}`,
    );
    expect(faults.length).toBeGreaterThan(5);
    expect(v.acknowledged).toBeGreaterThan(100);
    expect({ lost: v.lost, duplicated: v.duplicated, misplaced: v.misplaced, reordered: v.reordered, phantom: v.phantom, gaps: v.gaps }).toEqual({ lost: 0, duplicated: 0, misplaced: 0, reordered: 0, phantom: 0, gaps: 0 });
  }, (FaultSeconds + 150) * 1000);
});
