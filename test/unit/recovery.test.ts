import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';
import { afterEach, describe, expect, it } from 'vitest';
import { recoverLogs } from '../../actors/contexts/groups.js';
import { loadConfig } from '../../runtime/config.js';
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
    expect(store.appliedIndex(0)).toBe(cmds.length);
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
    log.truncate(3); // as if the store had held 1..3 durably, then was lost
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
    expect(store.appliedIndex(0)).toBe(cmds.length);
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
      store.stampApplied(0, 11);
    });
    expect(await recover(store, log, machine, quiet)).toBe(cmds.length - 11);
    const ctx = store.view.getContext('r')!;
    expect(ctx.last_seq).toBe(20);
    expect(store.view.messages('r', 1, 100, 100).map((m) => m.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });
});

describe('data directories written by other configurations', () => {
  const config = (dir: string, workers: number) => ({ ...loadConfig({}), dataDir: dir, groups: 16, workers, logLevel: 'error' as const });

  it('a format-1 directory (one log in wal/, one applied index) is upgraded and its log tail applied', async () => {
    const dir = tempDir();
    const cmds = commands(20);
    // Write what the single-threaded release left: the store holding the first 11 commands,
    // its log (in wal/ itself) holding all of them.
    {
      const store = LmdbStore.open(dir, 16);
      store.root.transactionSync(() => {
        for (const c of cmds.slice(0, 11)) apply(store.view, c, machine);
        store.meta.putSync('applied', 11);
        store.meta.putSync('layout', { format: 1, groups: 16 });
      });
      const legacy = open<Command, number>({ path: path.join(dir, 'wal'), noSubdir: false });
      for (let i = 0; i < cmds.length; i++) await legacy.put(i + 1, cmds[i]!);
      await legacy.close();
      await store.close();
    }
    await recoverLogs(config(dir, 1), quiet, () => true);
    const store = LmdbStore.open(dir, 16);
    try {
      expect(store.meta.get('layout')).toEqual({ format: 2, groups: 16 });
      expect(store.appliedIndex(0)).toBe(cmds.length);
      expect(store.view.getContext('r')!.last_seq).toBe(20);
      expect(fs.existsSync(path.join(dir, 'wal', 'data.mdb'))).toBe(false);
    } finally {
      await store.close();
    }
  });

  it('logs of workers that no longer exist are applied before the remaining ones serve', async () => {
    const dir = tempDir();
    // Two workers wrote: log 1 holds commands for an id of its groups that the store lacks.
    {
      const store = LmdbStore.open(dir, 16);
      const log1 = CommandLog.open(dir, 1);
      await log1.append(commands(5)).durable;
      await log1.close();
      await store.close();
    }
    // Restarted with one worker: log 1 has no writer now and is applied at start-up.
    await recoverLogs(config(dir, 1), quiet, (id) => id >= 1);
    const store = LmdbStore.open(dir, 16);
    try {
      expect(store.appliedIndex(1)).toBe(6);
      expect(store.view.getContext('r')!.last_seq).toBe(5);
    } finally {
      await store.close();
    }
  });
});
