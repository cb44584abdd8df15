import { afterEach, describe, expect, it } from 'vitest';
import type { CommandLog as Log } from '../../actors/contexts/command-log.js';
import type { LmdbStore as Store } from '../../actors/contexts/lmdb-store.js';
import type { ThreadStateWriter as Writer } from '../../actors/contexts/state-writer.js';
import type { Command } from '../../actors/contexts/types.js';
import { createLogger } from '../../runtime/log.js';
import { sized } from '../support/machine.js';
import { tempDir } from '../support/server.js';

// The writer thread runs compiled JavaScript, so this uses the build (npm test builds first).
const built = (m: string) => `../../dist/actors/contexts/${m}.js`;
const { CommandLog } = (await import(built('command-log'))) as { CommandLog: typeof Log };
const { LmdbStore } = (await import(built('lmdb-store'))) as { LmdbStore: typeof Store };
const { ThreadStateWriter } = (await import(built('state-writer'))) as { ThreadStateWriter: typeof Writer };

const machine = { defaultTokenizer: 'approx' as const };
const appends = (from: number, n: number): Command[] => Array.from({ length: n }, (_, i) => ({ t: 'append', id: 'w', at: from + i, messages: [sized(1, `m${from + i}`)], batch: false }));

describe('state writer thread', () => {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
  });

  it('follows the command log into the state store, and after a crash starts again and catches up', async () => {
    const dir = tempDir();
    const store = LmdbStore.open(dir, 16);
    const log = CommandLog.open(dir);
    const persisted: number[] = [];
    const failures: Error[] = [];
    let waiter: (() => void) | undefined;
    const until = (index: number) => new Promise<void>((resolve) => {
      const check = () => (persisted.at(-1) ?? 0) >= index ? resolve() : (waiter = check);
      check();
    });
    const writer = await ThreadStateWriter.start({ dataDir: dir, groups: 16, log: 0, machine, logLevel: 'error', nodeId: 'test' }, {
      persisted: (i) => { persisted.push(i); waiter?.(); },
      durable: () => {},
      failed: (err) => failures.push(err),
    }, createLogger('error'));
    closers.push(async () => {
      await writer.close();
      await log.close();
      await store.close();
    });

    await log.append([{ t: 'put', id: 'w', at: 1, fields: { token_budget: 1_000_000 }, create: 'context' }, ...appends(2, 499)]).durable;
    writer.upTo(500);
    await until(500);
    store.root.resetReadTxn();
    expect(store.view.getContext('w')?.last_seq).toBe(499);

    await writer.kill(); // as a crash would; the writer starts a new thread
    await log.append(appends(501, 500)).durable;
    writer.upTo(1000);
    await until(1000);
    store.root.resetReadTxn();
    expect(store.view.getContext('w')?.last_seq).toBe(999);
    expect(store.view.messages('w', 1, 2000, 2000).map((m) => m.seq)).toEqual(Array.from({ length: 999 }, (_, i) => i + 1));
    expect(store.appliedIndex(0)).toBe(1000);
    expect(failures).toEqual([]);
    // Indexes only move forward.
    expect([...persisted].sort((a, b) => a - b)).toEqual(persisted);
  });
});
