import { createHash, randomBytes as cryptoRandomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { Xoshiro128, type Random } from '../../actors/raft/random.js';
import { RawNode } from '../../actors/raft/raw-node.js';
import { bootstrapSnapshot } from '../../actors/raft/storage.js';
import { EntryType, StateRole, type ConfState, type Entry } from '../../actors/raft/types.js';
import { RaftWal, RaftWalBrokenError, type WalGroupStorage } from '../../actors/raft/wal-storage.js';
import { enc } from './support.js';

const tmpRoot = fs.mkdtempSync(path.join(process.env.FASTPACA_TEST_TMP ?? os.tmpdir(), 'raft-wal-'));
const opened: RaftWal[] = [];
afterAll(() => {
  for (const w of opened) w.close();
  fs.rmSync(tmpRoot, { recursive: true, force: true });
});

/** WAL_TEST_RUNS_SCALE=50 soaks the properties below with 50× their runs. */
const runs = (n: number): number => n * Number(process.env.WAL_TEST_RUNS_SCALE ?? 1);

let dirSeq = 0;
const newDir = (): string => path.join(tmpRoot, `w${++dirSeq}`);
const openWal = (dir: string, opts?: { segmentBytesMax?: number }): RaftWal => {
  const w = RaftWal.open(dir, opts);
  opened.push(w);
  return w;
};

const conf3: ConfState = { voters: [1, 2, 3], learners: [] };
const ents = (from: number, to: number, term: number): Entry[] =>
  Array.from({ length: to - from + 1 }, (_, k) => ({ term, index: from + k, type: EntryType.Normal, data: enc(`e${from + k}t${term}`) }));

const digest = (d: Uint8Array): string => `${d.byteLength}:${createHash('sha256').update(d).digest('hex').slice(0, 16)}`;

/** Everything a group's storage answers, as plain data. */
function dump(s: WalGroupStorage): unknown {
  const first = s.firstIndex();
  const last = s.lastIndex();
  const snap = s.snapshot();
  return {
    init: s.initialState(),
    first,
    last,
    prevTerm: s.term(first - 1),
    snap: { meta: snap.meta, data: digest(snap.data) },
    ents: last >= first ? s.entries(first, last + 1, Infinity).map((e) => [e.index, e.term, e.type, digest(e.data)]) : [],
  };
}

function dumpAll(wal: RaftWal): Record<number, unknown> {
  const out: Record<number, unknown> = {};
  for (const g of wal.groups()) out[g] = dump(wal.group(g));
  return out;
}

function segFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.seg'))
    .sort();
}

function diskBytes(dir: string): number {
  let n = 0;
  for (const f of segFiles(dir)) n += fs.statSync(path.join(dir, f)).size;
  return n;
}

const randomBytes = (r: Random, n: number): Uint8Array => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = r.int(256);
  return b;
};

const confChoices: ConfState[] = [conf3, { voters: [1, 2, 3], learners: [4] }, { voters: [1, 2, 3, 4], learners: [] }, { voters: [2, 3, 4], learners: [5] }];

/**
 * Makes random mutations of one group that a Raft node could ask for: appends at the end,
 * truncations above commit in a new term, commit and term moves, compactions within commit,
 * remembered memberships, snapshots installed from a leader, and dropping their data.
 */
class Driver {
  private confIndex: number;

  constructor(
    private readonly s: WalGroupStorage,
    private readonly r: Random,
  ) {
    this.confIndex = s.snapshot().meta.index;
  }

  step(): void {
    const { s, r } = this;
    if (!s.hasState()) {
      if (r.int(4) === 0) this.install();
      else {
        s.bootstrap(conf3);
        this.confIndex = 1;
      }
      return;
    }
    const hs = s.hardState();
    const last = s.lastIndex();
    const lastTerm = s.term(last);
    const meta = s.snapshot().meta;
    switch (r.int(12)) {
      case 0:
      case 1:
      case 2:
      case 3: {
        const term = Math.max(hs.term, lastTerm, 1);
        s.append(this.entries(last + 1, 1 + r.int(4), term));
        if (term > hs.term) s.setHardState({ term, vote: 0, commit: hs.commit });
        return;
      }
      case 4: {
        if (last <= hs.commit) return;
        const j = hs.commit + 1 + r.int(last - hs.commit);
        const term = Math.max(hs.term, lastTerm) + 1;
        s.append(this.entries(j, 1 + r.int(3), term));
        s.setHardState({ term, vote: r.int(4), commit: hs.commit });
        return;
      }
      case 5:
      case 6:
        if (last > hs.commit) s.setHardState({ ...hs, commit: hs.commit + 1 + r.int(last - hs.commit) });
        return;
      case 7:
        s.setHardState({ term: hs.term + 1, vote: r.int(4), commit: hs.commit });
        return;
      case 8:
      case 9:
        if (hs.commit > meta.index) s.compact(meta.index + 1 + r.int(hs.commit - meta.index));
        else s.compact(meta.index); // drops an installed snapshot's data, if any
        return;
      case 10: {
        const index = Math.max(this.confIndex, hs.commit);
        s.setConfState(confChoices[r.int(confChoices.length)]!, index);
        this.confIndex = index;
        return;
      }
      default:
        if (r.int(3) === 0) this.install();
    }
  }

  private install(): void {
    const { s, r } = this;
    const hs = s.hardState();
    const last = s.lastIndex();
    const index = last + 1 + r.int(10);
    const term = Math.max(hs.term, s.term(last), 1);
    s.applySnapshot({ meta: { index, term, conf: confChoices[r.int(confChoices.length)]! }, data: randomBytes(r, r.int(300)) });
    s.setHardState({ term, vote: term === hs.term ? hs.vote : 0, commit: index });
    this.confIndex = index;
  }

  private entries(from: number, n: number, term: number): Entry[] {
    return Array.from({ length: n }, (_, k) => ({ term, index: from + k, type: this.r.int(8) === 0 ? EntryType.ConfChange : EntryType.Normal, data: randomBytes(this.r, this.r.int(120)) }));
  }
}

/** A round: a few steps on a few of the groups, then persist. Returns what persist returned. */
function round(wal: RaftWal, drivers: Map<number, Driver>, groups: readonly number[], r: Random): number {
  const touched = 1 + r.int(Math.min(8, groups.length));
  for (let i = 0; i < touched; i++) {
    const g = groups[r.int(groups.length)]!;
    let d = drivers.get(g);
    if (d === undefined) {
      d = new Driver(wal.group(g), r);
      drivers.set(g, d);
    }
    for (let k = 1 + r.int(3); k > 0; k--) d.step();
  }
  return wal.persist();
}

function pickGroups(r: Random, n: number): number[] {
  const gs = new Set<number>([0, 65_535]);
  while (gs.size < n) gs.add(r.int(65_536));
  return [...gs];
}

// ---- the storage conformance cases of test/raft/storage.test.ts, against WalGroupStorage -------

/** A fresh WAL and one of its groups; sync() persists; reopen() closes and replays (and later
 * sync() calls persist the reopened WAL). */
function harness(g = 7): { s: WalGroupStorage; sync: () => number; reopen: () => WalGroupStorage } {
  const dir = newDir();
  let wal = openWal(dir);
  return {
    s: wal.group(g),
    sync: () => wal.persist(),
    reopen: () => {
      wal.close();
      wal = openWal(dir);
      return wal.group(g);
    },
  };
}

// The cases every storage shares run in storage.test.ts; these are RaftWal's own rules.
describe('WalGroupStorage: its own rules', () => {
  it('keeps hard state and membership, and refuses to move the term back, change a vote or lower commit', () => {
    const { s, sync, reopen } = harness();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.setHardState({ term: 4, vote: 2, commit: 1 });
    sync();
    expect(() => s.setHardState({ term: 3, vote: 2, commit: 1 })).toThrow(/term never decreases/);
    expect(() => s.setHardState({ term: 4, vote: 3, commit: 1 })).toThrow(/vote never changes/);
    expect(() => s.setHardState({ term: 4, vote: 2, commit: 0 })).toThrow(/commit never decreases/);
    s.setConfState({ voters: [1, 2, 3], learners: [4] }, 1);
    sync();
    expect(() => s.setConfState(conf3, 0)).toThrow(/log order/);
    const again = reopen();
    expect(again.initialState()).toEqual({ hardState: { term: 4, vote: 2, commit: 1 }, confState: { voters: [1, 2, 3], learners: [4] } });
  });

  it('compacts: the log starts after the compaction point, the snapshot is its meta with empty data', () => {
    const { s, sync, reopen } = harness();
    s.applySnapshot(bootstrapSnapshot(conf3));
    s.append(ents(2, 20, 2));
    s.setHardState({ term: 2, vote: 1, commit: 20 });
    sync();
    s.compact(15);
    sync();
    expect(s.snapshot().meta).toEqual({ index: 15, term: 2, conf: conf3 });
    expect(s.snapshot().data.byteLength).toBe(0);
    expect(s.firstIndex()).toBe(16);
    expect(s.term(15)).toBe(2);
    expect(s.entries(16, 21, Infinity).length).toBe(5);
    expect(() => s.term(14)).toThrow(/within/);
    expect(() => s.entries(15, 16, Infinity)).toThrow(/within/);
    s.compact(10); // behind the compaction point: nothing
    expect(s.firstIndex()).toBe(16);
    expect(() => s.compact(21)).toThrow(/within the log/);
    const again = reopen();
    expect(dump(again)).toEqual(dump(s));
    expect(again.entries(16, 21, Infinity).map((e) => e.index)).toEqual([16, 17, 18, 19, 20]);
  });

  it('never compacts beyond commit, and never persists a commit beyond the log', () => {
    const { s, sync } = harness();
    s.bootstrap(conf3);
    s.append(ents(2, 9, 1));
    s.setHardState({ term: 1, vote: 0, commit: 5 });
    expect(() => s.compact(6)).toThrow(/committed/);
    sync();
    s.setHardState({ term: 1, vote: 0, commit: 12 });
    expect(() => sync()).toThrow(/commit 12 ≤ last index 9/);
  });

  it('rejects gaps, non-consecutive entries and terms that go back', () => {
    const { s } = harness();
    s.applySnapshot(bootstrapSnapshot(conf3));
    expect(() => s.append(ents(5, 6, 2))).toThrow(/gap/);
    expect(() => s.append([...ents(2, 3, 2), ...ents(5, 5, 2)])).toThrow(/consecutive/);
    s.append(ents(2, 3, 2));
    expect(() => s.append(ents(4, 4, 1))).toThrow(/terms never decrease/);
    expect(s.lastIndex()).toBe(3); // a refused append changes nothing
  });

  it('never replaces a committed entry', () => {
    const { s } = harness();
    s.bootstrap(conf3);
    s.append(ents(2, 6, 1));
    s.setHardState({ term: 2, vote: 0, commit: 4 });
    expect(() => s.append(ents(4, 6, 2))).toThrow(/committed/);
    expect(() => s.append(ents(2, 3, 1))).toThrow(/committed/); // would cut off 4
    s.append(ents(5, 6, 2)); // above commit: fine
    s.append(ents(3, 6, 1).slice(0, 2).concat(ents(5, 6, 2))); // re-sent committed prefix, same terms
    expect(s.entries(2, 7, Infinity).map((e) => e.term)).toEqual([1, 1, 1, 2, 2]);
  });

  it('a group founded once stays founded', () => {
    const { s, sync, reopen } = harness();
    s.bootstrap(conf3);
    sync();
    s.bootstrap({ voters: [9], learners: [] });
    expect(reopen().initialState()).toEqual({ hardState: { term: 1, vote: 0, commit: 1 }, confState: conf3 });
  });

  it('compaction takes the membership as of its index; later ones stay remembered', () => {
    const { s, sync, reopen } = harness();
    const c2: ConfState = { voters: [1, 2, 3], learners: [4] };
    const c3: ConfState = { voters: [1, 2, 3, 4], learners: [] };
    s.bootstrap(conf3);
    s.append(ents(2, 20, 1));
    s.setHardState({ term: 1, vote: 0, commit: 20 });
    s.setConfState(c2, 8);
    s.setConfState(c3, 14);
    s.compact(10);
    expect(s.snapshot().meta.conf).toEqual(c2);
    expect(s.initialState().confState).toEqual(c3);
    sync();
    let again = reopen();
    expect(dump(again)).toEqual(dump(s));
    again.compact(16);
    expect(again.snapshot().meta).toEqual({ index: 16, term: 1, conf: c3 });
    // Order within one round does not matter: compaction, then a membership at its index.
    again.compact(18);
    again.setConfState(conf3, 18);
    expect(again.initialState().confState).toEqual(conf3);
    expect(again.snapshot().meta.conf).toEqual(c3);
    sync();
    const before = dump(again);
    again = reopen();
    expect(dump(again)).toEqual(before);
  });

  it('a truncation and a compaction over everything it wrote, in one round, replay exactly', () => {
    const { s, sync, reopen } = harness();
    s.bootstrap(conf3);
    s.append(ents(2, 6, 1));
    s.setHardState({ term: 1, vote: 0, commit: 2 });
    sync();
    // A new leader's entry 3 replaces 3..6; it commits, is applied and compacted, all before the
    // next persist. The round's record holds no entry at all; the old 4..6 must not come back.
    s.append(ents(3, 3, 2));
    s.setHardState({ term: 2, vote: 0, commit: 3 });
    s.compact(3);
    expect([s.firstIndex(), s.lastIndex()]).toEqual([4, 3]);
    sync();
    const again = reopen();
    expect(dump(again)).toEqual(dump(s));
    expect([again.firstIndex(), again.lastIndex(), again.term(3)]).toEqual([4, 3, 2]);
  });

  it('compact at the compaction point drops an installed snapshot\'s data', () => {
    const { s, sync, reopen } = harness();
    s.applySnapshot({ meta: { index: 30, term: 5, conf: conf3 }, data: enc('s30') });
    s.setHardState({ term: 5, vote: 0, commit: 30 });
    sync();
    s.compact(30);
    expect(s.snapshot()).toEqual({ meta: { index: 30, term: 5, conf: conf3 }, data: new Uint8Array(0) });
    sync();
    expect(dump(reopen())).toEqual(dump(s));
  });
});

// ---- the WAL --------------------------------------------------------------------------------------

describe('RaftWal', () => {
  it('many groups interleaved: persist, close, reopen gives every group its state', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.constantFrom(4096, 64 * 1024 * 1024), (seed, segmentBytesMax) => {
        const r = new Xoshiro128(seed);
        const dir = newDir();
        let wal = openWal(dir, { segmentBytesMax });
        const groups = pickGroups(r, 24);
        const drivers = new Map<number, Driver>();
        for (let i = 0; i < 40; i++) {
          round(wal, drivers, groups, r);
          if (segmentBytesMax === 4096) wal.collect();
        }
        const before = dumpAll(wal);
        wal.close();
        wal = openWal(dir, { segmentBytesMax });
        expect(dumpAll(wal)).toEqual(before);
        expect(wal.groups()).toEqual(Object.keys(before).map(Number));
        // The replayed WAL carries on: more rounds, and again.
        drivers.clear();
        for (let i = 0; i < 10; i++) {
          round(wal, drivers, groups, r);
          if (segmentBytesMax === 4096) wal.collect();
        }
        const after = dumpAll(wal);
        wal.close();
        wal = openWal(dir, { segmentBytesMax });
        expect(dumpAll(wal)).toEqual(after);
        wal.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }),
      { numRuns: runs(8) },
    );
  });

  it('a crash keeps exactly what was persisted: changes made after the last persist are absent', () => {
    const r = new Xoshiro128(7);
    const dir = newDir();
    const wal = openWal(dir);
    const groups = pickGroups(r, 10);
    const drivers = new Map<number, Driver>();
    for (let i = 0; i < 20; i++) round(wal, drivers, groups, r);
    const persisted = dumpAll(wal);
    // More changes, visible at once, never persisted.
    for (const g of groups) {
      const s = wal.group(g);
      if (!s.hasState()) s.bootstrap(conf3);
      const hs = s.hardState();
      s.append(ents(s.lastIndex() + 1, s.lastIndex() + 3, Math.max(hs.term, s.term(s.lastIndex()), 1) + 1));
      s.setHardState({ term: s.term(s.lastIndex()), vote: 1, commit: hs.commit });
    }
    expect(dumpAll(wal)).not.toEqual(persisted);
    // The "crash": the files as they are now, opened by another WAL while this one is still open.
    const copy = newDir();
    fs.cpSync(dir, copy, { recursive: true });
    const recovered = openWal(copy);
    expect(dumpAll(recovered)).toEqual(persisted);
    recovered.close();
    wal.close(); // close() does not persist either
    expect(dumpAll(openWal(dir))).toEqual(persisted);
  });

  it('a torn tail yields exactly a prefix of the persisted rounds, the same for every group', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.integer({ min: 0, max: 1 << 20 }), fc.constantFrom(4096, 1024 * 1024), (seed, cutAt, segmentBytesMax) => {
        const r = new Xoshiro128(seed);
        const dir = newDir();
        const wal = openWal(dir, { segmentBytesMax });
        const groups = pickGroups(r, 6);
        const drivers = new Map<number, Driver>();
        // After round k: dumps[k] the state, ends[k] where its append ended (the last segment
        // and its size), checkpointed[k] whether a checkpoint followed the round in that append.
        const dumps: Array<Record<number, unknown>> = [{}];
        const ends: Array<{ file: string; size: number }> = [{ file: '', size: 0 }];
        const checkpointed = [false];
        for (let k = 1; k <= 30; k++) {
          const cp = wal.stats().lastCheckpoint;
          round(wal, drivers, groups, r);
          dumps.push(dumpAll(wal));
          const file = segFiles(dir).at(-1) ?? '';
          ends.push({ file, size: file === '' ? 0 : fs.statSync(path.join(dir, file)).size });
          checkpointed.push(wal.stats().lastCheckpoint !== cp);
        }
        wal.close();
        const file = segFiles(dir).at(-1)!;
        const cut = Math.floor((cutAt / (1 << 20)) * fs.statSync(path.join(dir, file)).size);
        const copy = newDir();
        fs.cpSync(dir, copy, { recursive: true });
        fs.truncateSync(path.join(copy, file), cut);
        const torn = openWal(copy, { segmentBytesMax });
        const got = JSON.stringify(dumpAll(torn));
        // The last round whose whole append survived, or the one after it if only its
        // checkpoint (appended after the round, in the same write) was torn.
        let whole = 0;
        while (whole + 1 < ends.length && (ends[whole + 1]!.file < file || ends[whole + 1]!.size <= cut)) whole++;
        const ok = JSON.stringify(dumps[whole]) === got || (checkpointed[whole + 1] === true && JSON.stringify(dumps[whole + 1]) === got);
        if (!ok) expect(JSON.parse(got)).toEqual(dumps[whole]);
        // Appending after the cut works, and replays.
        for (const g of groups) {
          const s = torn.group(g);
          if (!s.hasState()) s.bootstrap(conf3);
          const hs = s.hardState();
          const term = Math.max(hs.term, s.term(s.lastIndex()), 1) + 1;
          s.append(ents(s.lastIndex() + 1, s.lastIndex() + 2, term));
          s.setHardState({ term, vote: 2, commit: hs.commit });
        }
        torn.persist();
        const next = dumpAll(torn);
        torn.close();
        const reopened = openWal(copy, { segmentBytesMax });
        expect(dumpAll(reopened)).toEqual(next);
        reopened.close();
        fs.rmSync(dir, { recursive: true, force: true });
        fs.rmSync(copy, { recursive: true, force: true });
      }),
      { numRuns: runs(30) },
    );
  });

  it('a persisted compaction releases the records its entries were in; compacting data releases the snapshot', () => {
    // Default segments: no checkpoint is due, so round k is record k.
    const wal = openWal(newDir());
    const s = wal.group(9);
    s.bootstrap(conf3); // record 1: no data, nothing pinned
    wal.persist();
    expect(wal.stats().oldestNeeded).toBe(Infinity);
    for (let k = 2; k <= 11; k++) {
      s.append(ents(2 * k - 2, 2 * k - 1, 1)); // record k holds entries 2k−2 and 2k−1
      s.setHardState({ term: 1, vote: 0, commit: 2 * k - 1 });
      wal.persist();
    }
    expect(wal.stats().oldestNeeded).toBe(2);
    s.compact(7);
    expect(wal.stats().oldestNeeded).toBe(2); // not before it is persisted
    wal.persist();
    expect(wal.stats().oldestNeeded).toBe(5); // entry 8
    s.compact(9);
    wal.persist();
    expect(wal.stats().oldestNeeded).toBe(6); // entry 10
    s.compact(21);
    wal.persist();
    expect(wal.stats()).toMatchObject({ oldestNeeded: Infinity, spans: 0 });
    s.applySnapshot({ meta: { index: 40, term: 2, conf: conf3 }, data: enc('leader state') });
    s.setHardState({ term: 2, vote: 0, commit: 40 });
    const at = wal.stats().nextRecord;
    wal.persist();
    expect(wal.stats().oldestNeeded).toBe(at);
    s.compact(40);
    wal.persist();
    expect(wal.stats().oldestNeeded).toBe(Infinity);
  });

  it('compaction and GC with small segments: old segments go, disk stays bounded, idle groups keep their state', () => {
    const segmentBytesMax = 4096;
    const dir = newDir();
    let wal = openWal(dir, { segmentBytesMax });
    const r = new Xoshiro128(42);
    const busy = [1, 2, 3, 4].map((g) => wal.group(g));
    for (const s of busy) s.bootstrap(conf3);
    // Idle after this round: one with uncompacted entries (some above commit), one compacted,
    // one holding a snapshot from a leader that is never compacted.
    const idleA = wal.group(5);
    idleA.bootstrap(conf3);
    idleA.append(ents(2, 6, 2));
    idleA.setHardState({ term: 2, vote: 1, commit: 4 });
    const idleB = wal.group(6);
    idleB.bootstrap(conf3);
    idleB.append(ents(2, 9, 1));
    idleB.setHardState({ term: 3, vote: 2, commit: 9 });
    idleB.compact(9);
    const idleC = wal.group(7);
    idleC.applySnapshot({ meta: { index: 50, term: 4, conf: conf3 }, data: randomBytes(r, 500) });
    idleC.setHardState({ term: 4, vote: 0, commit: 50 });
    expect(wal.persist()).toBe(7);
    const idle = { 5: dump(idleA), 6: dump(idleB), 7: dump(idleC) };
    let maxDisk = 0;
    let maxFiles = 0;
    let maxSpans = 0;
    for (let k = 0; k < 2000; k++) {
      for (const s of busy) {
        const last = s.lastIndex();
        const n = 1 + r.int(3);
        s.append(Array.from({ length: n }, (_, j) => ({ term: 1, index: last + 1 + j, type: EntryType.Normal, data: randomBytes(r, 40) })));
        s.setHardState({ term: 1, vote: 0, commit: last + n });
        if (k % 5 === 4) s.compact(s.lastIndex() - 3);
      }
      wal.persist();
      wal.collect();
      maxDisk = Math.max(maxDisk, diskBytes(dir));
      maxFiles = Math.max(maxFiles, segFiles(dir).length);
      maxSpans = Math.max(maxSpans, wal.stats().spans);
    }
    expect(segFiles(dir)).not.toContain('00000000000000000001.seg');
    expect(wal.stats().firstRecord).toBeGreaterThan(1500);
    // ~1 KiB a round, 2,000 rounds: 2 MiB written; on disk a handful of segments at any time.
    expect(maxDisk).toBeLessThan(12 * segmentBytesMax);
    expect(maxFiles).toBeLessThanOrEqual(12);
    expect(maxSpans).toBeLessThan(40);
    const before = dumpAll(wal);
    expect({ 5: before[5], 6: before[6], 7: before[7] }).toEqual(idle);
    wal.close();
    wal = openWal(dir, { segmentBytesMax });
    expect(dumpAll(wal)).toEqual(before);
    expect(wal.group(5).entries(2, 7, Infinity).map((e) => e.index)).toEqual([2, 3, 4, 5, 6]);
    expect(wal.group(5).hardState()).toEqual({ term: 2, vote: 1, commit: 4 });
    // It carries on after a replay of a collected log, and replays again.
    for (let k = 0; k < 50; k++) {
      const s = wal.group(1 + (k % 4));
      const last = s.lastIndex();
      s.append(ents(last + 1, last + 2, 1));
      s.setHardState({ term: 1, vote: 0, commit: last + 2 });
      if (k % 7 === 0) s.compact(last);
      wal.persist();
      wal.collect();
    }
    const after = dumpAll(wal);
    wal.close();
    wal = openWal(dir, { segmentBytesMax });
    expect(dumpAll(wal)).toEqual(after);
  });

  it('segments collect() deleted that come back after a crash (unlinks not yet durable) change nothing', () => {
    const segmentBytesMax = 4096;
    const dir = newDir();
    const saved = newDir();
    let wal = openWal(dir, { segmentBytesMax });
    const r = new Xoshiro128(11);
    const groups = [1, 2, 3, 4, 5, 6];
    const drivers = new Map<number, Driver>();
    for (let k = 0; k < 60; k++) {
      round(wal, drivers, groups, r);
      wal.collect();
      if (k === 20) fs.cpSync(dir, saved, { recursive: true });
    }
    for (const g of groups) {
      // Compact everything committed, so that GC can go past round 20.
      const s = wal.group(g);
      s.compact(s.hardState().commit);
    }
    for (let k = 0; k < 40; k++) {
      const s = wal.group(groups[k % groups.length]!);
      const hs = s.hardState();
      const term = Math.max(hs.term, s.term(s.lastIndex()), 1);
      s.append(ents(s.lastIndex() + 1, s.lastIndex() + 5, term));
      s.setHardState({ term, vote: hs.vote, commit: hs.term === term ? s.lastIndex() : hs.commit });
      wal.persist();
      wal.collect();
    }
    const before = dumpAll(wal);
    wal.close();
    const gone = segFiles(saved).filter((f) => !segFiles(dir).includes(f));
    expect(gone.length).toBeGreaterThan(1);
    // Some of them back: only the oldest (a gap after it), then all of them (a longer prefix).
    for (const back of [gone.slice(0, 1), gone]) {
      for (const f of back) fs.copyFileSync(path.join(saved, f), path.join(dir, f));
      wal = openWal(dir, { segmentBytesMax });
      expect(dumpAll(wal)).toEqual(before);
      wal.close();
    }
  });

  it('drives a single-voter RawNode: committed entries are re-delivered from applied on after a restart', () => {
    const dir = newDir();
    let wal = openWal(dir);
    let s = wal.group(3);
    s.bootstrap({ voters: [1], learners: [] });
    wal.persist();
    let raw = new RawNode({ id: 1, storage: s, random: new Xoshiro128(1) });
    let applied: Entry[] = [];
    const handle = (): void => {
      while (raw.hasReady()) {
        const rd = raw.ready();
        if (rd.snapshot) s.applySnapshot(rd.snapshot);
        s.append(rd.entries);
        if (rd.hardState) s.setHardState(rd.hardState);
        wal.persist(); // durable before anything is sent or applied
        applied.push(...rd.committedEntries);
        raw.advance();
      }
    };
    raw.campaign();
    handle();
    expect(raw.raft.role).toBe(StateRole.Leader);
    for (let i = 0; i < 300; i++) {
      expect(raw.propose(enc(`cmd${i}`)).ok).toBe(true);
      if (i % 3 === 2) handle();
      // The state machine holds what it applied: compact now and then, keeping a few.
      if (i % 50 === 49 && i < 250) s.compact(raw.raft.log.applied - 5);
    }
    handle();
    const cmds = applied.filter((e) => e.type === EntryType.Normal && e.data.byteLength > 0);
    expect(cmds.map((e) => new TextDecoder().decode(e.data))).toEqual(Array.from({ length: 300 }, (_, i) => `cmd${i}`));
    // The state machine's durable point: applied up to `kept`, which is compacted.
    const kept = applied[applied.length - 1]!.index - 40;
    s.compact(kept);
    wal.persist();
    const hs = s.hardState();
    const original = applied.filter((e) => e.index > kept);
    wal.close();

    wal = openWal(dir);
    s = wal.group(3);
    expect(s.hardState()).toEqual(hs);
    expect(s.firstIndex()).toBe(kept + 1);
    raw = new RawNode({ id: 1, storage: s, random: new Xoshiro128(2), applied: kept });
    applied = [];
    handle();
    const redelivered = applied.filter((e) => e.index <= hs.commit);
    expect(redelivered.map((e) => [e.index, e.term, e.type, digest(e.data)])).toEqual(original.map((e) => [e.index, e.term, e.type, digest(e.data)]));
    // And it leads again and commits more.
    raw.campaign();
    handle();
    expect(raw.raft.role).toBe(StateRole.Leader);
    expect(raw.propose(enc('after')).ok).toBe(true);
    handle();
    expect(new TextDecoder().decode(applied[applied.length - 1]!.data)).toBe('after');
  });

  it('a round larger than a record is split, and replay takes it whole or not at all', () => {
    const dir = newDir();
    const wal = openWal(dir);
    const a = wal.group(1);
    const b = wal.group(2);
    a.bootstrap(conf3);
    b.bootstrap(conf3);
    wal.persist();
    const small = dumpAll(wal);
    const big = (index: number): Entry => ({ term: 1, index, type: EntryType.Normal, data: cryptoRandomBytes(7 * 1024 * 1024) });
    a.append([big(2), big(3), big(4)]);
    b.append(ents(2, 5, 1));
    b.setHardState({ term: 1, vote: 0, commit: 5 });
    a.setHardState({ term: 1, vote: 0, commit: 4 });
    const before = wal.stats().nextRecord;
    expect(wal.persist()).toBe(2);
    expect(wal.stats().nextRecord - before).toBeGreaterThanOrEqual(2);
    const full = dumpAll(wal);
    wal.close();
    expect(dumpAll(openWal(dir))).toEqual(full);
    // Cut inside the second record of the round: the first one survives alone and is ignored.
    const file = path.join(dir, segFiles(dir)[0]!);
    const size = fs.statSync(file).size;
    const copy = newDir();
    fs.cpSync(dir, copy, { recursive: true });
    fs.truncateSync(path.join(copy, segFiles(copy)[0]!), size - 1024 * 1024);
    const torn = openWal(copy);
    expect(dumpAll(torn)).toEqual(small);
    // New rounds after the orphaned record replay on their own.
    torn.group(2).append(ents(2, 2, 1));
    torn.persist();
    const next = dumpAll(torn);
    torn.close();
    expect(dumpAll(openWal(copy))).toEqual(next);
  });

  it('refuses further writes once a persist failed (fdatasync error)', () => {
    const dir = newDir();
    const wal = openWal(dir);
    const s = wal.group(1);
    s.bootstrap(conf3);
    wal.persist();
    const good = dumpAll(wal);
    s.append(ents(2, 4, 1));
    const spy = vi.spyOn(fs, 'fdatasyncSync').mockImplementationOnce(() => {
      throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    });
    try {
      expect(() => wal.persist()).toThrow(RaftWalBrokenError);
    } finally {
      spy.mockRestore();
    }
    const failed = dumpAll(wal);
    expect(() => wal.persist()).toThrow(/broken/);
    expect(() => s.append(ents(5, 5, 1))).toThrow(/broken/);
    expect(() => s.setHardState({ term: 2, vote: 0, commit: 1 })).toThrow(/broken/);
    expect(() => wal.collect()).toThrow(/broken/);
    wal.close();
    // Whether the failed round reached the disk is unknown: either state is acceptable.
    const got = dumpAll(openWal(dir));
    expect([JSON.stringify(good), JSON.stringify(failed)]).toContain(JSON.stringify(got));
  });

  it('group numbers are bounded', () => {
    const wal = openWal(newDir());
    expect(() => wal.group(65_536)).toThrow(/below 65536/);
    expect(() => wal.group(-1)).toThrow();
    expect(wal.group(65_535).group).toBe(65_535);
  });
});

describe('RaftWal damage', () => {
  it('refuses a directory that lost a middle segment holding a group\'s entries, rather than dropping them', () => {
    const dir = newDir();
    const segmentBytesMax = 4096;
    let wal = openWal(dir, { segmentBytesMax });
    const g = wal.group(1);
    const busy = wal.group(2);
    g.bootstrap(conf3);
    busy.bootstrap(conf3);
    wal.persist();
    const e = (i: number, n: number, t = 1): Entry => ({ term: t, index: i, type: EntryType.Normal, data: new Uint8Array(n) });
    const round = () => {
      const l = busy.lastIndex();
      busy.append([e(l + 1, 300)]);
      busy.setHardState({ term: 1, vote: 0, commit: l + 1 });
      busy.compact(l);
      wal.persist();
    };
    for (let k = 0; k < 30; k++) round();
    const gRecord = wal.stats().nextRecord;
    // Group 1 takes entries 2..6 (say, from a leader that counts on them) and then stays idle.
    g.append([2, 3, 4, 5, 6].map((i) => e(i, 50, 2)));
    g.setHardState({ term: 2, vote: 3, commit: 1 });
    wal.persist();
    const before = wal.stats().lastCheckpoint;
    while (wal.stats().lastCheckpoint === before) round();
    const checkpoint = wal.stats().lastCheckpoint;
    for (let k = 0; k < 3; k++) round();
    wal.close();
    // Damage, not a crash: the segments from group 1's record up to the checkpoint are lost.
    const segs = segFiles(dir);
    const first = (f: string) => Number(f.slice(0, 20));
    const holding = (w: number) => segs.filter((f) => first(f) <= w).at(-1)!;
    for (const f of segs) if (first(f) >= first(holding(gRecord)) && first(f) < first(holding(checkpoint))) fs.rmSync(path.join(dir, f));
    expect(segFiles(dir).length).toBeLessThan(segs.length);
    expect(() => (wal = RaftWal.open(dir, { segmentBytesMax }))).toThrow(/log ends at 6 but its entries after 1 are missing/);
  });
});
