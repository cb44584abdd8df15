/**
 * Crash durability: kill -9 the server while appends are in flight, restart it on the same data
 * directory, and check the logs against what was acknowledged.
 *
 *   - every acknowledged (201) append is present exactly once, at the seq its ack reported;
 *   - per id the seqs are 1..last_seq with no gap, and last_seq in the record agrees;
 *   - no message appears twice; an unacknowledged append may be present or not, but at most once;
 *   - seqs are never reused after the restart.
 * With idempotency keys, retrying every unacknowledged request after the restart leaves each
 * request present exactly once (a retry of one that was applied but not acknowledged is deduped).
 */
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { startServer, tempDir, type TestServer } from '../support/server.js';

const Ids = 20;
const N = 2000;
const Concurrency = 64;
const RequestTimeoutMs = 15_000;

const servers = new Set<TestServer>();
async function start(dataDir: string): Promise<TestServer> {
  const s = await startServer({ dataDir });
  servers.add(s);
  return s;
}
afterAll(async () => {
  for (const s of servers) await s.kill();
});

interface Ack {
  id: string;
  seq: number | undefined;
  deduped?: boolean;
}

const idOf = (prefix: string, k: number) => `${prefix}-${k % Ids}`;
const tokenOf = (prefix: string, k: number) => `c${idOf(prefix, k)}-n${k}`;
/** About 2 KB each, so a commit round has real work and the kill can catch one half done. */
const messageOf = (prefix: string, k: number) => ({ role: 'user', parts: [{ type: 'text', text: `${tokenOf(prefix, k)} ${'padding '.repeat(250)}` }] });

async function putContext(url: string, id: string): Promise<void> {
  const r = await fetch(`${url}/v1/contexts/${id}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token_budget: 1000 }) });
  expect(r.status).toBe(200);
}

/** One append; resolves to the ack, or to the reason there was none. */
async function append(url: string, prefix: string, k: number, key?: { key: string; inHeader: boolean }): Promise<Ack | { error: string }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  const body: Record<string, unknown> = { message: messageOf(prefix, k) };
  if (key?.inHeader) headers['idempotency-key'] = key.key;
  else if (key) body.idempotency_key = key.key;
  try {
    const r = await fetch(`${url}/v1/contexts/${idOf(prefix, k)}/messages`, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(RequestTimeoutMs) });
    if (r.status !== 201) return { error: `status ${r.status}: ${await r.text().catch(() => '')}` };
    // The status line only leaves the server after the write is durable: a 201 is an ack even
    // if the body is cut off by the kill (then the seq is unknown, but presence is still owed).
    const parsed = (await r.json().catch(() => undefined)) as { seq?: number; deduped?: boolean } | undefined;
    return { id: idOf(prefix, k), seq: parsed?.seq, deduped: parsed?.deduped === true };
  } catch (err) {
    return { error: String((err as Error).cause ?? err) };
  }
}

/**
 * Sends the appends `ks` with bounded concurrency and kills the server (SIGKILL) a few
 * milliseconds after `killAfter` of them are acknowledged. The workers keep sending until the
 * kill, so it lands while requests are in flight. Whether any of them is still inside the server
 * (queued, being applied, waiting for its fsync) rather than already answered is a race the
 * caller checks through `cutOff`.
 */
async function appendUntilKilled(server: TestServer, prefix: string, withKeys: boolean, ks: number[], killAfter: number) {
  const acks = new Map<number, Ack>();
  const failures = new Map<number, string>();
  let next = 0;
  let inflight = 0;
  let killed = false;
  let killScheduled = false;
  let inflightAtKill = -1;
  const worker = async () => {
    while (!killed && next < ks.length) {
      const k = ks[next++]!;
      inflight++;
      const r = await append(server.url, prefix, k, withKeys ? { key: `key-${k}`, inHeader: k % 2 === 0 } : undefined);
      inflight--;
      if ('error' in r) failures.set(k, r.error);
      else acks.set(k, r);
      if (acks.size >= killAfter && !killScheduled) {
        killScheduled = true;
        setTimeout(() => {
          killed = true;
          inflightAtKill = inflight;
          void server.kill(); // SIGKILL goes out synchronously; a 201 seen after it was written before it
        }, 1 + Math.floor(Math.random() * 4));
      }
    }
  };
  await Promise.all(Array.from({ length: Concurrency }, worker));
  await server.kill();
  return { acks, cutOff: failures, inflightAtKill, sent: next };
}

/**
 * Crash cycles on one data directory: start, append (the first cycle kills after half of all N
 * are acknowledged, later ones after at most 150 more), kill -9, restart. A cycle whose kill
 * cut no request off (every in-flight one was already answered) is followed by another, up to
 * MaxCycles, so the kill is known to have landed mid-request. Returns a running server.
 */
const MaxCycles = 6;
async function crashCycles(dataDir: string, prefix: string, withKeys: boolean) {
  const acks = new Map<number, Ack>();
  const cutOff = new Map<number, string>();
  const log: string[] = [];
  let remaining = Array.from({ length: N }, (_, k) => k);
  let server = await start(dataDir);
  for (let i = 0; i < Ids; i++) await putContext(server.url, `${prefix}-${i}`);
  for (let cycle = 1; ; cycle++) {
    const r = await appendUntilKilled(server, prefix, withKeys, remaining, cycle === 1 ? N / 2 : Math.min(150, Math.ceil(remaining.length / 2)));
    for (const [k, a] of r.acks) acks.set(k, a);
    for (const [k, e] of r.cutOff) cutOff.set(k, e);
    remaining = remaining.slice(r.sent);
    log.push(`cycle ${cycle}: sent=${r.sent} acknowledged=${r.acks.size} cut-off=${r.cutOff.size} in-flight-at-kill=${r.inflightAtKill}`);
    expect(r.inflightAtKill, 'the kill came while appends were in flight').toBeGreaterThan(0);
    server = await start(dataDir);
    if (cutOff.size > 0 || cycle >= MaxCycles || remaining.length < 2 * Concurrency) break;
  }
  expect(cutOff.size, `some kill landed mid-request (${log.join('; ')})`).toBeGreaterThan(0);
  return { server, acks, cutOff, log, notSent: remaining };
}

interface Stored {
  id: string;
  seq: number;
  k: number;
}

/** Every message of every id after the restart, checking contiguity on the way. */
async function readBack(url: string, prefix: string): Promise<Stored[]> {
  const out: Stored[] = [];
  for (let i = 0; i < Ids; i++) {
    const id = `${prefix}-${i}`;
    const rec = (await (await fetch(`${url}/v1/contexts/${id}`)).json()) as { last_seq: number };
    const messages: Array<{ seq: number; parts: Array<{ text: string }> }> = [];
    for (let from = 1; ; ) {
      const r = await fetch(`${url}/v1/contexts/${id}/messages?from=${from}&limit=1000`);
      expect(r.status).toBe(200);
      const page = ((await r.json()) as { messages: typeof messages }).messages;
      messages.push(...page);
      if (page.length < 1000) break;
      from = page[page.length - 1]!.seq + 1;
    }
    // Contiguous 1..last_seq, no gap, and the record agrees.
    expect(messages.map((m) => m.seq), `${id} seqs`).toEqual(Array.from({ length: messages.length }, (_, j) => j + 1));
    expect(rec.last_seq, `${id} last_seq`).toBe(messages.length);
    for (const m of messages) {
      const match = /^c(.+)-n(\d+) /.exec(m.parts[0]!.text);
      expect(match, `message text ${m.parts[0]!.text}`).not.toBeNull();
      expect(match![1], `message ${m.parts[0]!.text} stored under ${id}`).toBe(id);
      out.push({ id, seq: m.seq, k: Number(match![2]) });
    }
  }
  return out;
}

/** Checks acks against what is stored; returns the counts. */
function reconcile(stored: Stored[], acks: Map<number, Ack>) {
  const byK = new Map<number, Stored[]>();
  for (const s of stored) byK.set(s.k, [...(byK.get(s.k) ?? []), s]);
  const duplicated = [...byK.values()].filter((v) => v.length > 1);
  const lost: Array<{ k: number; ack: Ack; found: Stored[] | undefined }> = [];
  for (const [k, ack] of acks) {
    const found = byK.get(k);
    if (!found || found.length !== 1 || found[0]!.id !== ack.id || (ack.seq !== undefined && found[0]!.seq !== ack.seq)) lost.push({ k, ack, found });
  }
  return { present: byK.size, duplicated, lost, unackedPresent: [...byK.keys()].filter((k) => !acks.has(k)).length };
}

describe('crash durability (kill -9 with appends in flight)', () => {
  it('every acknowledged append survives exactly once at its seq; no gaps, no duplicates', async () => {
    const dataDir = tempDir('fastpaca-crash-');
    const prefix = 'crash';
    let server: TestServer | undefined;
    try {
      const t0 = Date.now();
      const run = await crashCycles(dataDir, prefix, false);
      server = run.server;
      const { acks } = run;
      // Seqs in the acks are unique per id.
      const ackKeys = [...acks.values()].filter((a) => a.seq !== undefined).map((a) => `${a.id}#${a.seq}`);
      expect(new Set(ackKeys).size).toBe(ackKeys.length);

      const stored = await readBack(server.url, prefix);
      const { present, duplicated, lost, unackedPresent } = reconcile(stored, acks);
      console.log(
        `crash: ${run.log.join('; ')}\ncrash: acknowledged=${acks.size} cut-off=${run.cutOff.size} present=${present} ` +
          `unacknowledged-but-present=${unackedPresent} lost=${lost.length} duplicated=${duplicated.length} (${Date.now() - t0} ms)`,
      );
      expect(lost, 'acknowledged appends missing or at another seq').toEqual([]);
      expect(duplicated, 'messages stored twice').toEqual([]);
      expect(present).toBe(acks.size + unackedPresent);
      expect(unackedPresent).toBeLessThanOrEqual(run.cutOff.size);

      // Seqs are never reused after the restart.
      const last = Math.max(0, ...stored.filter((s) => s.id === `${prefix}-0`).map((s) => s.seq));
      const again = await append(server.url, prefix, N, undefined); // k = N maps to id 0
      expect('seq' in again && again.seq).toBe(last + 1);
    } finally {
      await server?.kill();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);

  it('with idempotency keys, retrying every unacknowledged request after the restart leaves each exactly once', async () => {
    const dataDir = tempDir('fastpaca-crash-idem-');
    const prefix = 'idem';
    let server: TestServer | undefined;
    try {
      const run = await crashCycles(dataDir, prefix, true);
      server = run.server;
      const { acks } = run;
      const firstAcks = acks.size;
      const url = server.url;

      // Retry every request without an ack (those cut off by the kill and those never sent) with its key.
      const todo = Array.from({ length: N }, (_, k) => k).filter((k) => !acks.has(k));
      let dedupedRetries = 0;
      const retryFailures: string[] = [];
      const retry = async () => {
        for (let k = todo.pop(); k !== undefined; k = todo.pop()) {
          const r = await append(url, prefix, k, { key: `key-${k}`, inHeader: k % 3 === 0 });
          if ('error' in r) retryFailures.push(`k=${k}: ${r.error}`);
          else {
            acks.set(k, r);
            if (r.deduped) dedupedRetries++;
          }
        }
      };
      const retried = N - firstAcks;
      await Promise.all(Array.from({ length: Concurrency }, retry));
      expect(retryFailures).toEqual([]);

      // Retrying some that were acknowledged before the crash returns the original result.
      for (let k = 0; k < N; k += 37) {
        const original = acks.get(k)!;
        const r = await append(url, prefix, k, { key: `key-${k}`, inHeader: k % 2 === 1 });
        expect(r, `retry of k=${k}`).toMatchObject({ id: original.id, seq: original.seq, deduped: true });
      }

      const stored = await readBack(url, prefix);
      const { present, duplicated, lost } = reconcile(stored, acks);
      console.log(
        `crash+idempotency: ${run.log.join('; ')}\ncrash+idempotency: acknowledged-before-restart=${firstAcks} cut-off=${run.cutOff.size} never-sent=${run.notSent.length} retried=${retried} ` +
          `retries-deduped(applied-before-kill)=${dedupedRetries} present=${present} lost=${lost.length} duplicated=${duplicated.length}`,
      );
      expect(lost, 'requests missing or at another seq').toEqual([]);
      expect(duplicated, 'messages stored twice').toEqual([]);
      expect(present).toBe(N);
      expect(stored.length).toBe(N);
    } finally {
      await server?.kill();
      fs.rmSync(dataDir, { recursive: true, force: true });
    }
  }, 120_000);
});
