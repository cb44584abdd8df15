/** Log replication: fast conflict back-off, probing, flow control and the proposal bound. */
import { describe, expect, it } from 'vitest';
import { ProgressState } from '../../actors/raft/progress.js';
import { EntryOverheadBytes, MessageKind, type AppMessage, type Message, type NodeId } from '../../actors/raft/types.js';
import { drain, enc, msg, soloNode, storageWithLog, TestCluster } from './support.js';

const ids: NodeId[] = [1, 2, 3];
const appsTo = (ms: readonly Message[], to: NodeId) => ms.filter((m): m is AppMessage => m.kind === MessageKind.App && m.to === to);
/** Appends that carry entries (empty ones only carry the commit index and take no window). */
const entryAppsTo = (ms: readonly Message[], to: NodeId) => appsTo(ms, to).filter((m) => m.entries.length > 0);
const rejectsFrom = (ms: readonly Message[], from: NodeId) => ms.filter((m) => m.kind === MessageKind.AppResp && m.from === from && m.reject);

describe('fast conflict back-off', () => {
  it('the leader skips every index of a term the follower cannot match (leader-side hint)', () => {
    // Leader (indexes 2–9): 3 3 3 5 5 5 5 5; follower: 1 1 1 2 2. One rejection, not eight.
    const storage = (id: NodeId) => (id === 2 ? storageWithLog(ids, [1, 1, 1, 2, 2], 5) : storageWithLog(ids, [3, 3, 3, 5, 5, 5, 5, 5], 5));
    const c = new TestCluster(ids, { preVote: false }, { storage });
    c.elect(1);
    expect(rejectsFrom(c.delivered, 2)).toHaveLength(1);
    expect(c.logOf(2)).toEqual(c.logOf(1));
  });

  it('the follower skips its own uncommitted tail of higher terms (follower-side hint)', () => {
    // Leader (indexes 2–9): 3 3 3 3 3 3 3 7; follower: 3 3 4 4 5 5 5 6. Two rejections.
    const storage = (id: NodeId) => (id === 2 ? storageWithLog(ids, [3, 3, 4, 4, 5, 5, 5, 6], 7) : storageWithLog(ids, [3, 3, 3, 3, 3, 3, 3, 7], 7));
    const c = new TestCluster(ids, { preVote: false }, { storage });
    c.elect(1);
    expect(rejectsFrom(c.delivered, 2)).toHaveLength(2);
    expect(c.logOf(2)).toEqual(c.logOf(1));
  });

  it('a rejection answering an older probe is ignored', () => {
    const n = soloNode(1, ids);
    n.raw.campaign();
    n.raw.step(msg('vote_resp', { from: 2, to: 1, term: 2 }));
    drain(n);
    n.raw.step(msg('app_resp', { from: 2, to: 1, term: 2, index: 2 }));
    drain(n);
    const pr = n.raft.prs.get(2)!;
    expect(pr.state).toBe(ProgressState.Replicate);
    // Rejections at or below match are reordered old answers: nothing changes.
    n.raw.step(msg('app_resp', { from: 2, to: 1, term: 2, index: 1, reject: true, rejectHint: 0 }));
    expect(pr.state).toBe(ProgressState.Replicate);
    expect(pr.match).toBe(2);
  });
});

describe('probing', () => {
  it('a follower whose log position is unknown gets one append per heartbeat round, not a stream', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    c.restart(1); // forget the followers' progress ...
    c.raw(1).campaign();
    c.cutOneWay(3, 1); // ... and never hear from 3 again
    c.process();
    const before = appsTo(c.delivered, 3).length;
    for (let i = 0; i < 5; i++) c.propose(1, `x${i}`);
    expect(c.raw(1).raft.prs.get(3)!.state).toBe(ProgressState.Probe);
    expect(appsTo(c.delivered, 3).length - before).toBe(0);
    c.tick(1); // a heartbeat; its answer is lost too, so still nothing
    expect(appsTo(c.delivered, 3).length - before).toBe(0);
    c.heal();
    c.tickAll(2);
    expect(c.logOf(3)).toEqual(c.logOf(1));
  });

  it('lost appends in replicate state are noticed by the next append, or by a heartbeat if none follows', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    c.propose(1, 'a');
    // Every append to 3 (with 'b', then with the commit of 'b') is lost.
    c.filter = (m) => m.kind === 'app' && m.to === 3;
    c.propose(1, 'b');
    c.filter = undefined;
    expect(c.node(3).commands()).toEqual(['a']);
    // The next append does not fit after what 3 holds: rejected, the leader goes back and resends.
    c.propose(1, 'c');
    expect(c.node(3).commands()).toEqual(['a', 'b', 'c']);
    c.filter = (m) => m.kind === 'app' && m.to === 3;
    c.propose(1, 'd');
    c.filter = undefined;
    expect(c.node(3).commands()).toEqual(['a', 'b', 'c']);
    // Nothing follows 'd': the heartbeat answer shows 3 behind, and the leader sends it again.
    c.tickAll(1);
    expect(c.node(3).commands()).toEqual(['a', 'b', 'c', 'd']);
  });
});

describe('flow control', () => {
  it('at most inflightMsgsMax appends are in flight to a follower', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, inflightMsgsMax: 2, msgBytesMax: 1 });
    c.elect(1);
    c.cutOneWay(3, 1); // 3's acks are lost: its window never drains
    const before = entryAppsTo(c.delivered, 3).length;
    for (let i = 0; i < 10; i++) c.propose(1, `x${i}`);
    expect(entryAppsTo(c.delivered, 3).length - before).toBe(2);
    expect(c.raw(1).raft.prs.get(3)!.inflights.count).toBe(2);
    // Node 2 is not held back by 3.
    expect(c.node(2).commands()).toHaveLength(10);
    c.heal();
    c.tickAll(5);
    expect(c.node(3).commands()).toHaveLength(10);
  });

  it('at most inflightBytesMax entry bytes are in flight to a follower', () => {
    const size = 100 + EntryOverheadBytes;
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, inflightMsgsMax: 100, msgBytesMax: size, inflightBytesMax: 3 * size });
    c.elect(1);
    c.cutOneWay(3, 1);
    const before = entryAppsTo(c.delivered, 3).length;
    for (let i = 0; i < 10; i++) c.raw(1).propose(new Uint8Array(100));
    c.process();
    expect(entryAppsTo(c.delivered, 3).length - before).toBe(3);
    expect(c.raw(1).raft.prs.get(3)!.inflights.bytes).toBe(3 * size);
  });

  it('an append carries at most msgBytesMax bytes of entries (a larger single entry goes alone)', () => {
    const c = new TestCluster(ids, { preVote: false, msgBytesMax: 500 });
    c.elect(1);
    const before = c.delivered.length;
    expect(c.raw(1).proposeBatch(Array.from({ length: 20 }, () => new Uint8Array(100))).ok).toBe(true);
    c.raw(1).propose(new Uint8Array(2000));
    c.process();
    const apps = appsTo(c.delivered.slice(before), 2).filter((m) => m.entries.length > 0);
    for (const m of apps) {
      const bytes = m.entries.reduce((s, e) => s + e.data.byteLength + EntryOverheadBytes, 0);
      expect(m.entries.length === 1 || bytes <= 500).toBe(true);
    }
    expect(apps.reduce((s, m) => s + m.entries.length, 0)).toBe(21);
    expect(Math.max(...apps.map((m) => m.entries.length))).toBe(4);
    expect(c.node(2).applied.at(-1)!.data.byteLength).toBe(2000);
  });

  it('a heartbeat answer frees one slot of a full window whose acks were lost', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, inflightMsgsMax: 1, msgBytesMax: 1 });
    c.elect(1);
    c.filter = (m) => m.kind === 'app_resp' && m.from === 3;
    c.propose(1, 'a');
    c.propose(1, 'b');
    const pr = c.raw(1).raft.prs.get(3)!;
    expect(pr.inflights.full()).toBe(true);
    c.filter = undefined;
    c.tickAll(4);
    expect(c.node(3).commands()).toEqual(['a', 'b']);
    expect(pr.inflights.count).toBe(0);
  });
});

describe('the proposal bound', () => {
  it('refuses proposals with overloaded once uncommittedBytesMax is reached, and takes them again once they commit', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, uncommittedBytesMax: 1000 });
    c.elect(1);
    c.isolate(1);
    const results = Array.from({ length: 20 }, () => c.raw(1).propose(new Uint8Array(100 - EntryOverheadBytes)));
    c.process();
    // 10 × 100 bytes fit; the 11th would exceed 1000.
    expect(results.filter((r) => r.ok)).toHaveLength(10);
    expect(results[10]).toEqual({ ok: false, reason: 'overloaded', lead: 1 });
    c.heal();
    c.tickAll(3);
    expect(c.raw(1).propose(new Uint8Array(10)).ok).toBe(true);
  });

  it('takes a single proposal larger than the bound when nothing is uncommitted', () => {
    const c = new TestCluster(ids, { preVote: false, uncommittedBytesMax: 100 });
    c.elect(1);
    expect(c.raw(1).propose(new Uint8Array(10_000)).ok).toBe(true);
    expect(c.raw(1).propose(new Uint8Array(1)).ok).toBe(false);
    c.process();
    expect(c.raw(1).propose(new Uint8Array(1)).ok).toBe(true);
  });

  it('a follower refuses proposals and names the leader', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    expect(c.raw(2).propose(enc('x'))).toEqual({ ok: false, reason: 'not_leader', lead: 1 });
  });

  it('the outbox is bounded: messages beyond outboxMsgsMax are dropped and counted, and Raft recovers', () => {
    const c = new TestCluster(ids, { preVote: false, outboxMsgsMax: 16, msgBytesMax: 1 });
    c.elect(1);
    for (let i = 0; i < 40; i++) c.raw(1).propose(enc(`x${i}`));
    expect(c.raw(1).raft.msgs.length).toBe(16);
    expect(c.raw(1).status().msgsDropped).toBeGreaterThan(0);
    c.process();
    c.tickAll(10);
    expect(c.node(2).commands()).toHaveLength(40);
  });
});
