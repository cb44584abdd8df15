import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { RootDatabase } from 'lmdb';
import { afterAll, describe, expect, it } from 'vitest';
import { LmdbStorage } from '../../actors/raft/lmdb-storage.js';
import { RaftWal, type WalGroupStorage } from '../../actors/raft/wal-storage.js';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { RawNode } from '../../actors/raft/raw-node.js';
import { MemoryStorage, bootstrapSnapshot, type Storage } from '../../actors/raft/storage.js';
import { EntryType, StateRole, type ConfState, type Entry, type HardState, type Snapshot } from '../../actors/raft/types.js';
import { enc } from './support.js';

/** The writes a Ready asks for, and a sync; what both storages offer the node. */
interface WritableStorage extends Storage {
  applySnapshot(s: Snapshot): void;
  append(entries: readonly Entry[]): void;
  setHardState(hs: HardState): void;
  createSnapshot(index: number, conf: ConfState, data: Uint8Array): Snapshot;
  compact(index: number): unknown;
  setConfState(conf: ConfState, index: number): void;
}

interface Backend {
  name: string;
  /** Whether it makes snapshots of the caller's data (RaftWal's compaction point has none: the
   * node's state store is the snapshot). */
  createsSnapshots: boolean;
  /** A fresh, empty storage. */
  open(): WritableStorage;
  /** Makes writes durable (and visible to reads). */
  sync(s: WritableStorage): Promise<void>;
  /** The same storage as read back after a restart. */
  reopen(s: WritableStorage): WritableStorage;
}

const conf3: ConfState = { voters: [1, 2, 3], learners: [] };
const ents = (from: number, to: number, term: number): Entry[] =>
  Array.from({ length: to - from + 1 }, (_, k) => ({ term, index: from + k, type: EntryType.Normal, data: enc(`e${from + k}t${term}`) }));

const tmpRoot = fs.mkdtempSync(path.join(process.env.FASTPACA_TEST_TMP ?? os.tmpdir(), 'raft-lmdb-'));
const envs: RootDatabase[] = [];
afterAll(async () => {
  for (const env of envs) await env.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

let groupSeq = 0;
const memory: Backend = {
  name: 'MemoryStorage',
  createsSnapshots: true,
  open: () => new MemoryStorage(),
  sync: async () => {},
  reopen: (s) => s,
};
const env = LmdbStorage.openEnv(path.join(tmpRoot, 'env'));
envs.push(env);
const lmdb: Backend = {
  name: 'LmdbStorage',
  createsSnapshots: true,
  // Many groups share one environment: each test gets its own group number.
  open: () => LmdbStorage.open(env, ++groupSeq),
  sync: (s) => (s as LmdbStorage).sync(),
  reopen: (s) => LmdbStorage.open(env, (s as LmdbStorage).group),
};

const wals: RaftWal[] = [];
afterAll(() => {
  for (const w of wals) w.close();
});
let walSeq = 0;
/** One RaftWal per storage under test (group 7 of it); reopening replays the directory. */
const walOf = new Map<WalGroupStorage, { dir: string; wal: RaftWal }>();
const wal: Backend = {
  name: 'RaftWal',
  createsSnapshots: false,
  open: () => {
    const dir = path.join(tmpRoot, `wal-${++walSeq}`);
    const w = RaftWal.open(dir);
    wals.push(w);
    const s = w.group(7);
    walOf.set(s, { dir, wal: w });
    return s as unknown as WritableStorage;
  },
  sync: async (s) => void walOf.get(s as unknown as WalGroupStorage)!.wal.persist(),
  reopen: (s) => {
    const { dir, wal: w } = walOf.get(s as unknown as WalGroupStorage)!;
    w.close();
    const again = RaftWal.open(dir);
    wals.push(again);
    const g = again.group(7);
    walOf.set(g, { dir, wal: again });
    return g as unknown as WritableStorage;
  },
};

describe.each([memory, lmdb, wal])('$name', (b) => {
  it('starts empty: index 0, term 0, no members', () => {
    const s = b.open();
    expect(s.firstIndex()).toBe(1);
    expect(s.lastIndex()).toBe(0);
    expect(s.term(0)).toBe(0);
    expect(s.initialState()).toEqual({ hardState: { term: 0, vote: 0, commit: 0 }, confState: { voters: [], learners: [] } });
  });

  it('appends, reads back within a byte limit, and truncates a conflicting suffix', async () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.append(ents(2, 10, 2));
    await b.sync(s);
    expect(s.firstIndex()).toBe(2);
    expect(s.lastIndex()).toBe(10);
    expect(s.term(1)).toBe(1);
    expect(s.term(7)).toBe(2);
    expect(s.entries(2, 11, Infinity).map((e) => e.index)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10]);
    // Each entry is charged its data plus 16 bytes; at least one entry always comes back.
    expect(s.entries(2, 11, 1).length).toBe(1);
    expect(s.entries(2, 11, 2 * (16 + 5)).length).toBe(2);
    s.append(ents(6, 7, 3));
    await b.sync(s);
    expect(s.lastIndex()).toBe(7);
    expect(s.entries(5, 8, Infinity).map((e) => [e.index, e.term])).toEqual([[5, 2], [6, 3], [7, 3]]);
    expect(new TextDecoder().decode(s.entries(7, 8, Infinity)[0]!.data)).toBe('e7t3');
  });

  it('keeps hard state and membership, and refuses to move the term back or change a vote', async () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.setHardState({ term: 4, vote: 2, commit: 1 });
    await b.sync(s);
    expect(() => s.setHardState({ term: 3, vote: 2, commit: 1 })).toThrow(/term never decreases/);
    expect(() => s.setHardState({ term: 4, vote: 3, commit: 1 })).toThrow(/vote never changes/);
    s.setConfState({ voters: [1, 2, 3], learners: [4] }, 1);
    await b.sync(s);
    const again = b.reopen(s);
    expect(again.initialState()).toEqual({ hardState: { term: 4, vote: 2, commit: 1 }, confState: { voters: [1, 2, 3], learners: [4] } });
  });

  if (b.createsSnapshots) it('snapshots and compacts: the log starts after the snapshot, the snapshot keeps its data', async () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.append(ents(2, 20, 2));
    s.setHardState({ term: 2, vote: 1, commit: 20 });
    await b.sync(s);
    const snap = s.createSnapshot(15, conf3, enc('state@15'));
    s.compact(15);
    await b.sync(s);
    expect(snap.meta).toEqual({ index: 15, term: 2, conf: conf3 });
    expect(s.snapshot().meta.index).toBe(15);
    expect(new TextDecoder().decode(s.snapshot().data)).toBe('state@15');
    expect(s.firstIndex()).toBe(16);
    expect(s.term(15)).toBe(2);
    expect(s.entries(16, 21, Infinity).length).toBe(5);
  });

  it('installs a snapshot from the leader, replacing the whole log', async () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.append(ents(2, 9, 2));
    await b.sync(s);
    s.applySnapshot({ meta: { index: 30, term: 5, conf: { voters: [1, 2, 3], learners: [4] } }, data: enc('s30') });
    await b.sync(s);
    expect(s.firstIndex()).toBe(31);
    expect(s.lastIndex()).toBe(30);
    expect(s.term(30)).toBe(5);
    expect(s.initialState().confState).toEqual({ voters: [1, 2, 3], learners: [4] });
    expect(() => s.applySnapshot({ meta: { index: 20, term: 4, conf: conf3 }, data: enc('old') })).toThrow(/newer/);
    s.append(ents(31, 33, 5));
    await b.sync(s);
    const again = b.reopen(s);
    expect(again.firstIndex()).toBe(31);
    expect(again.lastIndex()).toBe(33);
    expect(again.entries(31, 34, Infinity).map((e) => e.term)).toEqual([5, 5, 5]);
    expect(new TextDecoder().decode(again.snapshot().data)).toBe('s30');
  });

  it('skips entries the snapshot already covers', async () => {
    const s = b.open();
    s.applySnapshot({ meta: { index: 10, term: 3, conf: conf3 }, data: enc('s') });
    s.append(ents(8, 12, 3));
    await b.sync(s);
    expect(s.firstIndex()).toBe(11);
    expect(s.lastIndex()).toBe(12);
  });

  it('rejects gaps', () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot(conf3));
    expect(() => s.append(ents(5, 6, 2))).toThrow(/gap/);
  });

  it('a node restarts from it with its term, vote, commit and log', async () => {
    const s = b.open();
    s.applySnapshot(bootstrapSnapshot({ voters: [1], learners: [] }));
    s.setHardState({ term: 1, vote: 0, commit: 1 });
    await b.sync(s);
    let raw = new RawNode({ id: 1, storage: s, random: new Xoshiro128(1) });
    raw.campaign();
    for (let i = 0; i < 5; i++) {
      if (!raw.hasReady()) break;
      const rd = raw.ready();
      s.append(rd.entries);
      if (rd.hardState) s.setHardState(rd.hardState);
      await b.sync(s);
      raw.advance();
    }
    expect(raw.raft.role).toBe(StateRole.Leader);
    expect(raw.propose(enc('x')).ok).toBe(true);
    const rd = raw.ready();
    s.append(rd.entries);
    if (rd.hardState) s.setHardState(rd.hardState);
    await b.sync(s);
    raw.advance();
    const rd2 = raw.ready(); // the commit of 'x', known after its own persistence
    if (rd2.hardState) s.setHardState(rd2.hardState);
    await b.sync(s);
    raw.advance();
    const term = raw.raft.term;
    raw = new RawNode({ id: 1, storage: b.reopen(s), random: new Xoshiro128(2) });
    expect(raw.raft.term).toBe(term);
    expect(raw.raft.vote).toBe(1);
    expect(raw.raft.log.committed).toBe(3);
    expect(raw.raft.log.lastIndex()).toBe(3);
  });
});

describe('LmdbStorage durability', () => {
  it('reads see a write only once it has committed; sync() waits for the commit and the flush', async () => {
    const s = LmdbStorage.open(env, ++groupSeq);
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.append(ents(2, 4, 1));
    // The indexes reflect the write at once; the entries are readable once sync() resolves.
    expect(s.lastIndex()).toBe(4);
    await s.sync();
    expect(s.entries(2, 5, Infinity).map((e) => e.index)).toEqual([2, 3, 4]);
    // Data read back is a copy: later reads do not change it.
    const first = s.entries(2, 3, Infinity)[0]!;
    s.entries(3, 5, Infinity);
    expect(new TextDecoder().decode(first.data)).toBe('e2t1');
  });

  it('many groups share one environment without seeing each other', async () => {
    const a = LmdbStorage.open(env, ++groupSeq);
    const b = LmdbStorage.open(env, ++groupSeq);
    a.applySnapshot(bootstrapSnapshot(conf3));
    b.applySnapshot(bootstrapSnapshot(conf3));
    a.append(ents(2, 5, 1));
    b.append(ents(2, 3, 7));
    await Promise.all([a.sync(), b.sync()]);
    expect(LmdbStorage.open(env, a.group).lastIndex()).toBe(5);
    expect(LmdbStorage.open(env, b.group).lastIndex()).toBe(3);
    expect(LmdbStorage.open(env, b.group).term(3)).toBe(7);
  });

  it('a group founded once stays founded', async () => {
    const s = LmdbStorage.open(env, ++groupSeq);
    s.bootstrap(conf3);
    await s.sync();
    s.bootstrap({ voters: [9], learners: [] });
    expect(LmdbStorage.open(env, s.group).initialState()).toEqual({ hardState: { term: 1, vote: 0, commit: 1 }, confState: conf3 });
  });
});
