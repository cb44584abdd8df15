/** Log compaction, snapshots, and install-snapshot in chunks. */
import { describe, expect, it } from 'vitest';
import { ConfChangeOp } from '../../actors/raft/conf-change.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { MessageKind, type NodeId, type SnapMessage } from '../../actors/raft/types.js';
import { enc, msg, soloNode, TestCluster, type NodeOpts } from './support.js';

const ids: NodeId[] = [1, 2, 3];
const snapsTo = (c: TestCluster, to: NodeId, from = 0) => c.delivered.slice(from).filter((m): m is SnapMessage => m.kind === MessageKind.Snap && m.to === to);

/** Leader 1 compacted while 3 was away: 3 needs the snapshot. */
function laggingFollower(opts: NodeOpts = {}): TestCluster {
  const c = new TestCluster(ids, { preVote: false, checkQuorum: false, ...opts });
  c.elect(1);
  c.propose(1, 'before');
  c.isolate(3);
  for (let i = 0; i < 10; i++) c.propose(1, `x${i}`);
  c.node(1).compact();
  expect(c.raw(1).raft.log.firstIndex()).toBe(c.raw(1).raft.log.lastIndex() + 1);
  return c;
}

describe('snapshots', () => {
  it('a follower behind the leader\'s compacted log is sent the snapshot, then entries again', () => {
    const c = laggingFollower();
    c.heal();
    c.tickAll(3);
    expect(c.node(3).snapshotsInstalled).toBe(1);
    expect(c.node(3).commands()).toEqual(c.node(1).commands());
    expect(c.node(3).storage.snapshot().meta.index).toBe(c.node(1).storage.snapshot().meta.index);
    const before = snapsTo(c, 3).length;
    c.propose(1, 'after');
    expect(snapsTo(c, 3).length).toBe(before);
    expect(c.node(3).commands().at(-1)).toBe('after');
  });

  it('is sent in chunks of at most msgBytesMax bytes, reassembled byte for byte, and handed out in one Ready', () => {
    const c = laggingFollower({ msgBytesMax: 10 });
    const from = c.delivered.length;
    c.heal();
    c.tickAll(3);
    const chunks = snapsTo(c, 3, from);
    const total = c.node(1).storage.snapshot().data.byteLength;
    expect(total).toBeGreaterThan(50);
    expect(chunks.length).toBe(Math.ceil(total / 10));
    expect(chunks.map((m) => m.offset)).toEqual(chunks.map((_, i) => i * 10));
    expect(chunks.every((m) => m.data.byteLength <= 10 && m.totalBytes === total)).toBe(true);
    expect(c.node(3).snapshotsInstalled).toBe(1);
    expect(c.node(3).snapshotData).toEqual(c.node(1).storage.snapshot().data);
  });

  it('lost chunks are sent again from the last byte the follower acknowledged', () => {
    const c = laggingFollower({ msgBytesMax: 10, inflightMsgsMax: 2 });
    let lost = 0;
    c.heal();
    c.filter = (m) => m.kind === 'snap' && m.offset === 20 && lost++ < 2;
    c.tickAll(10);
    expect(lost).toBeGreaterThanOrEqual(2);
    expect(c.node(3).snapshotsInstalled).toBe(1);
    expect(c.node(3).commands()).toEqual(c.node(1).commands());
  });

  it('a follower that restarts in the middle of a transfer asks for it from the start', () => {
    const c = laggingFollower({ msgBytesMax: 10, inflightMsgsMax: 1 });
    let restarted = false;
    c.heal();
    c.filter = (m) => {
      if (m.kind === 'snap' && m.offset === 30 && !restarted) {
        restarted = true;
        c.restart(3); // the chunks it had are gone
      }
      return false;
    };
    c.tickAll(10);
    expect(restarted).toBe(true);
    expect(c.delivered.some((m) => m.kind === MessageKind.SnapResp && m.reject && m.offset === 0)).toBe(true);
    expect(c.node(3).commands()).toEqual(c.node(1).commands());
  });

  it('keeps at most inflightMsgsMax chunks in flight', () => {
    const c = laggingFollower({ msgBytesMax: 10, inflightMsgsMax: 3 });
    const from = c.delivered.length;
    c.heal();
    c.filter = (m) => m.kind === 'snap_resp'; // no chunk is ever acknowledged
    c.tick(1);
    expect(snapsTo(c, 3, from).length).toBe(3);
  });

  it('a snapshot that brings nothing new is acknowledged, not installed', () => {
    const n = soloNode(2, ids);
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: [{ term: 2, index: 2, type: 0, data: enc('a') }], commit: 2 }));
    n.raft.takeMessages();
    n.raw.step(msg('snap', { from: 1, to: 2, term: 2, meta: { index: 2, term: 2, conf: { voters: ids, learners: [] } }, totalBytes: 1, data: enc('x') }));
    expect(n.raft.takeMessages()).toMatchObject([{ kind: 'app_resp', index: 2, reject: false }]);
    expect(n.raft.log.unstable.snapshot).toBeUndefined();
  });

  it('a follower that holds the snapshot\'s last entry only moves its commit forward', () => {
    const n = soloNode(2, ids);
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: [2, 3].map((i) => ({ term: 2, index: i, type: 0 as const, data: enc('a') })), commit: 1 }));
    n.raft.takeMessages();
    n.raw.step(msg('snap', { from: 1, to: 2, term: 2, meta: { index: 2, term: 2, conf: { voters: ids, learners: [] } }, totalBytes: 1, data: enc('x') }));
    expect(n.raft.log.committed).toBe(2);
    expect(n.raft.log.lastIndex()).toBe(3);
    expect(n.raft.log.unstable.snapshot).toBeUndefined();
  });

  it('a node that joins the group gets the founding membership from a snapshot', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.add(4, new MemoryStorage());
    c.elect(1);
    c.propose(1, 'a');
    c.proposeConf(1, { op: ConfChangeOp.AddLearner, node: 4 });
    c.tickAll(3);
    // Its log could not start at index 2: the founding membership is only in the snapshot.
    expect(c.node(4).snapshotsInstalled).toBe(1);
    expect(c.raw(4).raft.confState()).toEqual({ voters: [1, 2, 3], learners: [4] });
    expect(c.node(4).commands()).toEqual(['a']);
  });

  it('when the leader compacts past the snapshot it was sending, it sends the newer one after', () => {
    const c = laggingFollower({ msgBytesMax: 10, inflightMsgsMax: 1 });
    let compacted = false;
    c.heal();
    c.filter = (m) => {
      if (m.kind === 'snap' && m.offset === 20 && !compacted) {
        compacted = true;
        c.raw(1).propose(enc('more'));
        c.process();
        c.node(1).compact();
      }
      return false;
    };
    c.tickAll(10);
    expect(compacted).toBe(true);
    expect(c.node(3).snapshotsInstalled).toBe(2);
    expect(c.node(3).commands()).toEqual(c.node(1).commands());
  });
});
