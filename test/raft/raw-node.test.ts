/** The Ready/advance contract, and the unstable log under writes in flight. */
import { describe, expect, it } from 'vitest';
import { Unstable } from '../../actors/raft/log-unstable.js';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { RawNode } from '../../actors/raft/raw-node.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { StateRole, type NodeId } from '../../actors/raft/types.js';
import { drain, enc, entriesOf, msg, soloNode, storageWithLog } from './support.js';

const ids: NodeId[] = [1, 2, 3];

describe('Ready and advance', () => {
  it('hands out one Ready at a time', () => {
    const n = soloNode(1, ids);
    n.raw.campaign();
    expect(n.raw.hasReady()).toBe(true);
    n.raw.ready();
    expect(n.raw.hasReady()).toBe(false);
    expect(() => n.raw.ready()).toThrow(/one Ready at a time/);
    n.raw.advance();
    expect(n.raw.hasReady()).toBe(false);
    expect(() => n.raw.advance()).toThrow(/follows ready/);
  });

  it('reports role changes, and whether the write must be synced', () => {
    const n = soloNode(1, [1]);
    n.raw.campaign();
    const rd = n.raw.ready();
    expect(rd.softState).toEqual({ lead: 1, role: StateRole.Leader });
    expect(rd.hardState).toEqual({ term: 2, vote: 1, commit: 1 });
    expect(rd.entries.map((e) => e.index)).toEqual([2]);
    expect(rd.mustSync).toBe(true);
    n.storage.append(rd.entries);
    n.storage.setHardState(rd.hardState!);
    n.raw.advance();
    // Only the commit moved: it need not be synced (it can be learnt again).
    const rd2 = n.raw.ready();
    expect(rd2.hardState).toEqual({ term: 2, vote: 1, commit: 2 });
    expect(rd2.softState).toBeUndefined();
    expect(rd2.entries).toEqual([]);
    expect(rd2.mustSync).toBe(false);
    expect(rd2.committedEntries.map((e) => e.index)).toEqual([2]);
    n.raw.advance();
  });

  it('a leader counts its own copy only once it is persisted (advance), never when appended', () => {
    const n = soloNode(1, [1]);
    n.raw.campaign();
    drain(n);
    const { index } = n.raw.propose(enc('x')) as { index: number };
    expect(n.raft.log.committed).toBe(index - 1);
    const rd = n.raw.ready();
    expect(rd.committedEntries).toEqual([]);
    expect(n.raft.log.committed).toBe(index - 1);
    n.storage.append(rd.entries);
    n.raw.advance();
    expect(n.raft.log.committed).toBe(index);
  });

  it('accepts steps and ticks while a Ready is out; what they produce waits for the next Ready', () => {
    const n = soloNode(2, ids);
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: entriesOf([2, 2]), commit: 1 }));
    const rd1 = n.raw.ready();
    expect(rd1.messages.map((m) => m.kind)).toEqual(['app_resp']);
    // While rd1's write is in flight:
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 3, logTerm: 2, entries: entriesOf([2], 4), commit: 3 }));
    n.storage.append(rd1.entries);
    n.storage.setHardState(rd1.hardState!);
    n.raw.advance();
    const rd2 = n.raw.ready();
    expect(rd2.entries.map((e) => e.index)).toEqual([4]);
    expect(rd2.messages).toMatchObject([{ kind: 'app_resp', index: 4 }]);
    expect(rd2.committedEntries.map((e) => e.index)).toEqual([2, 3]);
    n.storage.append(rd2.entries);
    n.raw.advance();
  });

  it('entries replaced while their write is in flight are not taken for persisted; the replacement is handed out next', () => {
    const n = soloNode(2, ids);
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: entriesOf([2, 2, 2]), commit: 1 }));
    const rd1 = n.raw.ready();
    expect(rd1.entries.map((e) => [e.index, e.term])).toEqual([[2, 2], [3, 2], [4, 2]]);
    // A new leader overwrites indexes 2–3 before rd1 is on disk.
    n.raw.step(msg('app', { from: 3, to: 2, term: 3, index: 1, logTerm: 1, entries: entriesOf([3, 3]), commit: 1 }));
    n.storage.append(rd1.entries);
    n.storage.setHardState(rd1.hardState!);
    n.raw.advance();
    // rd1's entries are on disk, but they are not the log any more: the new ones are unstable.
    expect(n.raft.log.term(2)).toBe(3);
    expect(n.raft.log.lastIndex()).toBe(3);
    const rd2 = n.raw.ready();
    expect(rd2.entries.map((e) => [e.index, e.term])).toEqual([[2, 3], [3, 3]]);
    n.storage.append(rd2.entries);
    n.storage.setHardState(rd2.hardState!);
    n.raw.advance();
    expect(n.storage.lastIndex()).toBe(3);
    expect([n.storage.term(2), n.storage.term(3)]).toEqual([3, 3]);
    expect(n.raft.log.unstable.entries).toEqual([]);
  });

  it('hands out at most committedBytesPerReadyMax of committed entries per Ready (at least one)', () => {
    const n = soloNode(2, ids, { committedBytesPerReadyMax: 1 });
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: entriesOf([2, 2, 2]), commit: 4 }));
    const sizes: number[] = [];
    for (let i = 0; i < 10 && n.raw.hasReady(); i++) {
      const rd = n.raw.ready();
      n.storage.append(rd.entries);
      if (rd.hardState) n.storage.setHardState(rd.hardState);
      sizes.push(rd.committedEntries.length);
      n.raw.advance();
    }
    expect(sizes).toEqual([1, 1, 1]);
  });

  it('restarts from storage: term, vote and log; commit at least the snapshot; applied defaults to the snapshot', () => {
    const s = storageWithLog(ids, [2, 2, 2, 2], 3, 3);
    s.setHardState({ term: 3, vote: 2, commit: 3 });
    s.createSnapshot(4, { voters: ids, learners: [] }, enc('state'));
    const raw = new RawNode({ id: 1, storage: s, random: new Xoshiro128(1) });
    expect(raw.raft.term).toBe(3);
    expect(raw.raft.vote).toBe(2);
    // The stored commit (3) lags the snapshot (4): a snapshot holds only committed state.
    expect(raw.raft.log.committed).toBe(4);
    expect(raw.raft.log.applied).toBe(4);
    expect(raw.raft.log.lastIndex()).toBe(5);
    const again = new RawNode({ id: 1, storage: s, random: new Xoshiro128(1), applied: 4 });
    expect(again.raft.log.applied).toBe(4);
    expect(() => new RawNode({ id: 1, storage: s, random: new Xoshiro128(1), applied: 9 })).toThrow(/applied 9/);
  });

  it('a restarted node applies the committed entries after its snapshot again', () => {
    const s = storageWithLog(ids, [2, 2, 2], 2, 4);
    const raw = new RawNode({ id: 1, storage: s, random: new Xoshiro128(1) });
    const rd = raw.ready();
    expect(rd.committedEntries.map((e) => e.index)).toEqual([2, 3, 4]);
    expect(rd.entries).toEqual([]);
    expect(rd.messages).toEqual([]);
  });

  it('status shows the leader\'s view of every member', () => {
    const n = soloNode(1, ids);
    n.raw.campaign();
    n.raw.step(msg('vote_resp', { from: 2, to: 1, term: 2 }));
    drain(n);
    n.raw.step(msg('app_resp', { from: 2, to: 1, term: 2, index: 2 }));
    const st = n.raw.status();
    expect(st).toMatchObject({ id: 1, term: 2, role: 'leader', lead: 1, lastIndex: 2, conf: { voters: ids, learners: [] } });
    expect(st.progress?.get(2)).toMatchObject({ match: 2, state: 'replicate' });
    expect(st.progress?.get(3)).toMatchObject({ match: 0, state: 'probe' });
  });
});

describe('unstable log', () => {
  const e = (index: number, term: number) => ({ index, term, type: 0 as const, data: new Uint8Array(0) });

  it('appends, truncates and replaces, moving the in-progress mark back over what it replaced', () => {
    const u = new Unstable(5);
    u.truncateAndAppend([e(5, 1), e(6, 1), e(7, 1)]);
    u.acceptInProgress();
    expect(u.hasNextEntries()).toBe(false);
    u.truncateAndAppend([e(8, 1)]);
    expect(u.nextEntries().map((x) => x.index)).toEqual([8]);
    u.truncateAndAppend([e(6, 2)]);
    expect(u.entries.map((x) => [x.index, x.term])).toEqual([[5, 1], [6, 2]]);
    expect(u.nextEntries().map((x) => x.index)).toEqual([6]);
    u.truncateAndAppend([e(4, 3)]);
    expect(u.offset).toBe(4);
    expect(u.nextEntries().map((x) => [x.index, x.term])).toEqual([[4, 3]]);
  });

  it('stableTo ignores an entry whose term changed meanwhile', () => {
    const u = new Unstable(5);
    u.truncateAndAppend([e(5, 1), e(6, 1)]);
    u.acceptInProgress();
    u.truncateAndAppend([e(6, 2)]);
    u.stableTo(6, 1);
    expect(u.offset).toBe(5);
    u.stableTo(6, 2);
    expect(u.offset).toBe(7);
    expect(u.entries).toEqual([]);
  });

  it('a restored snapshot replaces everything', () => {
    const u = new Unstable(5);
    u.truncateAndAppend([e(5, 1)]);
    const snap = { meta: { index: 10, term: 2, conf: { voters: [1], learners: [] } }, data: new Uint8Array(0) };
    u.restore(snap);
    expect(u.maybeFirstIndex()).toBe(11);
    expect(u.maybeLastIndex()).toBe(10);
    expect(u.maybeTerm(10)).toBe(2);
    expect(u.hasNextSnapshot()).toBe(true);
    u.acceptInProgress();
    expect(u.hasNextSnapshot()).toBe(false);
    u.stableSnapTo(10);
    expect(u.snapshot).toBeUndefined();
    expect(() => u.truncateAndAppend([e(12, 2)])).toThrow(/gap/);
  });

  it('storage for a node that never ran holds nothing', () => {
    const s = new MemoryStorage();
    expect([s.firstIndex(), s.lastIndex(), s.term(0)]).toEqual([1, 0, 0]);
  });
});
