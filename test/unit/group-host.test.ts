import { afterEach, describe, expect, it } from 'vitest';
import { CommandLog } from '../../actors/contexts/command-log.js';
import { GroupHost, recover } from '../../actors/contexts/group-host.js';
import { LmdbStore } from '../../actors/contexts/lmdb-store.js';
import { LogApplier } from '../../actors/contexts/log-applier.js';
import { DirectStateWriter, InlineStateWriter, logStamper } from '../../actors/contexts/state-writer.js';
import type { AppendResult, CommandResult } from '../../actors/contexts/types.js';
import { FastpacaError } from '../../runtime/errors.js';
import { createLogger } from '../../runtime/log.js';
import { tempDir } from '../support/server.js';

const machine = { defaultTokenizer: 'approx' as const };
const quiet = createLogger('error', {}, () => {});
const user = (text: string) => ({ role: 'user', parts: [{ type: 'text', text }], metadata: {} });

type HostOptions = Parameters<typeof GroupHost.create>[2];
/** direct-batched: the direct writer committing every 30 ms rather than every turn. */
type WriterKind = 'direct' | 'direct-batched' | 'inline';

async function openHost(dir: string, writer: WriterKind, overrides: Partial<HostOptions> = {}, direct: { commitIntervalMs?: number; onPersisted?: (index: number) => void } = {}) {
  const store = LmdbStore.open(dir, 16);
  const log = CommandLog.open(dir);
  await recover(store, log, machine, quiet);
  const host = await GroupHost.create(store, log, {
    machine,
    counter: { countParts: async () => Promise.reject(new Error('no BPE in this test')) },
    now: () => 1_000,
    log: quiet,
    pendingMax: 10_000,
    batchMax: 7,
    roundsInflightMax: 3,
    bufferedWritesMax: 1_000_000,
    stateWriter:
      writer === 'inline'
        ? (events) => new InlineStateWriter(new LogApplier(store, log, machine, quiet), events)
        : (events) =>
            new DirectStateWriter(store, logStamper(store, log.id), { ...events, persisted: (i) => (direct.onPersisted?.(i), events.persisted(i)) }, direct.commitIntervalMs ?? (writer === 'direct-batched' ? 30 : 0)),
    ...overrides,
  });
  return {
    host,
    store,
    close: async () => {
      await host.close();
      await log.close();
      await store.close();
    },
  };
}

const value = <T>(r: CommandResult) => {
  if (!r.ok) throw new Error(r.error.message);
  return r.value as T;
};

// The host's contract holds whichever way the state store follows the command log.
describe.each<WriterKind>(['direct', 'direct-batched', 'inline'])('GroupHost with the %s state writer', (writer) => {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
  });

  it('answers writes in log order across pipelined rounds, and reads see every answered write', async () => {
    const dir = tempDir();
    const { host, close } = await openHost(dir, writer);
    closers.push(close);
    await host.submit({ t: 'put', id: 'h', fields: { token_budget: 1_000_000 }, create: 'context' });
    // 100 appends in one burst: several rounds of 7, up to 3 awaiting their fsync at once.
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => host.submit({ t: 'append', id: 'h', messages: [user(`m${i}`)], batch: false })));
    expect(results.map((r) => value<AppendResult>(r).seq)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    const read = await host.read({ q: 'messages', id: 'h', fromSeq: 1, limit: 1000 });
    expect(read.q === 'messages' && read.messages.map((m) => m.parts[0]!.text)).toEqual(Array.from({ length: 100 }, (_, i) => `m${i}`));
  });

  it('after close, writes are refused with 503 unavailable and readiness says why', async () => {
    const { host, close } = await openHost(tempDir(), writer);
    closers.push(close);
    expect(host.unavailableReason).toBeUndefined();
    await host.close();
    const refused = await host.submit({ t: 'put', id: 'x', fields: { token_budget: 5 }, create: 'context' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(FastpacaError);
    expect(refused).toMatchObject({ code: 'unavailable', status: 503, retryAfterS: 1 });
    expect(host.unavailableReason).toBe('shutting down');
  });

  it('a full queue is refused at once with 503 overloaded', async () => {
    const { host, close } = await openHost(tempDir(), writer, { pendingMax: 1 });
    closers.push(close);
    const first = host.submit({ t: 'put', id: 'o', fields: { token_budget: 5 }, create: 'context' });
    await expect(host.submit({ t: 'put', id: 'p', fields: { token_budget: 5 }, create: 'context' })).rejects.toMatchObject({ code: 'overloaded', status: 503 });
    expect((await first).ok).toBe(true);
  });

  it('what was answered before a close is there after reopening', async () => {
    const dir = tempDir();
    const a = await openHost(dir, writer);
    await a.host.submit({ t: 'put', id: 'r', fields: { token_budget: 1_000_000 }, create: 'context' });
    await Promise.all(Array.from({ length: 30 }, (_, i) => a.host.submit({ t: 'append', id: 'r', messages: [user(`m${i}`)], batch: false })));
    await a.close();
    const b = await openHost(dir, writer);
    closers.push(b.close);
    const r = await b.host.read({ q: 'get', id: 'r' });
    expect(r.q === 'get' && r.ctx?.last_seq).toBe(30);
  });
});

describe('the direct state writer with a commit interval', () => {
  it('commits the writes of many rounds together, at most once per interval, each with its applied index', async () => {
    const persisted: number[] = [];
    const { host, store, close } = await openHost(tempDir(), 'direct', { batchMax: 3, roundsInflightMax: 2 }, { commitIntervalMs: 200, onPersisted: (i) => persisted.push(i) });
    await host.submit({ t: 'put', id: 'b', fields: { token_budget: 1_000_000 }, create: 'context' });
    await Promise.all(Array.from({ length: 20 }, (_, i) => host.submit({ t: 'append', id: 'b', messages: [user(`m${i}`)], batch: false })));
    // Answered (logged, applied, readable) but not yet in the store: the interval has not passed.
    const read = await host.read({ q: 'get', id: 'b' });
    expect(read.q === 'get' && read.ctx?.last_seq).toBe(20);
    expect(store.appliedIndex(0)).toBe(0);
    await new Promise((r) => setTimeout(r, 300));
    expect(persisted).toEqual([21]);
    store.root.resetReadTxn();
    expect(store.appliedIndex(0)).toBe(21);
    expect(store.view.getContext('b')!.last_seq).toBe(20);
    // Close commits what is waiting rather than dropping it.
    await host.submit({ t: 'append', id: 'b', messages: [user('last')], batch: false });
    await close();
    expect(persisted).toEqual([21, 22]);
  });
});
