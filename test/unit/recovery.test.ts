import { afterEach, describe, expect, it } from 'vitest';
import { CommandLog } from '../../actors/contexts/command-log.js';
import { recover } from '../../actors/contexts/group-host.js';
import { LmdbStore } from '../../actors/contexts/lmdb-store.js';
import { apply } from '../../actors/contexts/state-machine.js';
import type { Command } from '../../actors/contexts/types.js';
import { createLogger } from '../../runtime/log.js';
import { sized } from '../support/machine.js';
import { tempDir } from '../support/server.js';

const machine = { defaultTokenizer: 'approx' as const };
const quiet = createLogger('error', {}, () => {});

function commands(n: number): Command[] {
  const out: Command[] = [{ t: 'put', id: 'r', at: 1, fields: { token_budget: 50, policy: { strategy: 'last_n', config: { limit: 3 } } }, create: 'context' }];
  for (let i = 0; i < n; i++) out.push({ t: 'append', id: 'r', at: 2 + i, messages: [sized(10, `m${i}`)], batch: false, idem: { key: `k${i}`, hash: 'h' } });
  return out;
}

describe('recovery from the command log', () => {
  const open: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const close of open.splice(0)) await close();
  });
  const openBoth = (dir: string) => {
    const store = LmdbStore.open(dir, 16);
    const log = CommandLog.open(dir);
    open.push(async () => {
      await log.close();
      await store.close();
    });
    return { store, log };
  };

  it('rebuilds exactly the state the logged commands produce, then forgets the log', async () => {
    const cmds = commands(40);
    const expected = LmdbStore.open(tempDir(), 16);
    open.push(() => expected.close());
    expected.root.transactionSync(() => cmds.forEach((c) => apply(expected.view, c, machine)));

    const dir = tempDir();
    const { store, log } = openBoth(dir);
    await log.append(cmds).durable;
    expect(await recover(store, log, machine, quiet)).toBe(cmds.length);
    expect(store.appliedIndex()).toBe(cmds.length);
    expect(store.view.getContext('r')).toEqual(expected.view.getContext('r'));
    expect(store.view.messages('r', 1, 100, 100)).toEqual(expected.view.messages('r', 1, 100, 100));
    expect(store.view.getIdem('r', 'k39')).toEqual(expected.view.getIdem('r', 'k39'));
    expect(log.read(1, 10)).toEqual([]);
    expect(log.nextIndex).toBe(cmds.length + 1);
    // Nothing left to do a second time.
    expect(await recover(store, log, machine, quiet)).toBe(0);
  });

  it('refuses a state store that is behind where the log starts (an incomplete data directory)', async () => {
    const dir = tempDir();
    const { store, log } = openBoth(dir);
    await log.append(commands(5)).durable;
    await log.truncate(3); // as if the store had held 1..3 durably, then was lost
    await expect(recover(store, log, machine, quiet)).rejects.toThrow(/data directory is incomplete/);
  });

  it('a command that trips a bug in apply is skipped, not fatal: the ones after it are applied', async () => {
    const { store, log } = openBoth(tempDir());
    const bugs: string[] = [];
    const logger = createLogger('error', {}, (line) => bugs.push(line));
    const cmds: Command[] = [
      ...commands(1),
      { t: 'append', id: 'r', at: 9, messages: [], batch: true }, // the gateway never sends this: apply asserts
      { t: 'append', id: 'r', at: 10, messages: [sized(10, 'after-1')], batch: false },
      { t: 'append', id: 'r', at: 11, messages: [sized(10, 'after-2')], batch: false },
    ];
    await log.append(cmds).durable;
    expect(await recover(store, log, machine, logger)).toBe(cmds.length);
    expect(store.appliedIndex()).toBe(cmds.length);
    expect(store.view.getContext('r')?.last_seq).toBe(3);
    expect(bugs.join('')).toContain('apply failed');
  });

  it('applies only what the state store does not hold yet (nothing twice)', async () => {
    const cmds = commands(20);
    const dir = tempDir();
    const { store, log } = openBoth(dir);
    await log.append(cmds).durable;
    // The store already holds the first 11 commands, as after a crash mid-way.
    store.root.transactionSync(() => {
      cmds.slice(0, 11).forEach((c) => apply(store.view, c, machine));
      store.meta.putSync('applied', 11);
    });
    expect(await recover(store, log, machine, quiet)).toBe(cmds.length - 11);
    const ctx = store.view.getContext('r')!;
    expect(ctx.last_seq).toBe(20);
    expect(store.view.messages('r', 1, 100, 100).map((m) => m.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });
});
