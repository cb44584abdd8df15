/** ReadIndex (Raft thesis §6.4): linearizable reads without writing to the log. */
import { describe, expect, it } from 'vitest';
import { MessageKind, StateRole, type NodeId } from '../../actors/raft/types.js';
import { drain, enc, msg, soloNode, TestCluster } from './support.js';

const ids: NodeId[] = [1, 2, 3];

describe('ReadIndex', () => {
  it('a leader answers with its commit index once a quorum confirms it still leads', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    c.propose(1, 'a');
    expect(c.raw(1).readIndex('r1')).toEqual({ ok: true });
    c.process();
    expect(c.node(1).readStates).toEqual([{ index: 3, context: 'r1' }]);
  });

  it('waits while no quorum answers, and is answered by the next heartbeats once one does', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false });
    c.elect(1);
    c.isolate(1);
    c.raw(1).readIndex('r1');
    c.process();
    c.tick(1, 3);
    expect(c.node(1).readStates).toEqual([]);
    c.heal();
    c.tick(1);
    expect(c.node(1).readStates).toEqual([{ index: 2, context: 'r1' }]);
  });

  it('one quorum round confirms every read that arrived before it, in order', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false });
    c.elect(1);
    c.isolate(1);
    for (const ctx of ['r1', 'r2', 'r3']) c.raw(1).readIndex(ctx);
    c.process();
    c.heal();
    c.tick(1);
    expect(c.node(1).readStates.map((r) => r.context)).toEqual(['r1', 'r2', 'r3']);
  });

  it('a follower forwards the request and gets the leader\'s read index back', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    c.propose(1, 'a');
    c.propose(1, 'b');
    expect(c.raw(3).readIndex('f1')).toEqual({ ok: true });
    c.process();
    expect(c.node(3).readStates).toEqual([{ index: 4, context: 'f1' }]);
    // Contexts from different nodes never collide.
    c.raw(2).readIndex('same');
    c.raw(3).readIndex('same');
    c.raw(1).readIndex('same');
    c.process();
    for (const id of ids) expect(c.node(id).readStates.filter((r) => r.context === 'same')).toEqual([{ index: 4, context: 'same' }]);
  });

  it('a follower with no leader refuses', () => {
    const n = soloNode(2, ids);
    expect(n.raw.readIndex('x')).toEqual({ ok: false, reason: 'not_leader', lead: 0 });
  });

  it('a new leader answers only after an entry of its own term commits (its commit index may lag until then)', () => {
    const n = soloNode(1, ids);
    n.raw.campaign();
    n.raw.step(msg('vote_resp', { from: 2, to: 1, term: 2 }));
    drain(n);
    expect(n.raft.log.committed).toBe(1);
    n.raw.readIndex('early');
    const msgs = drain(n);
    expect(msgs.filter((m) => m.kind === MessageKind.Heartbeat)).toEqual([]);
    // The empty entry of term 2 commits: the read is taken, at index 2.
    n.raw.step(msg('app_resp', { from: 2, to: 1, term: 2, index: 2 }));
    const hbs = drain(n).filter((m) => m.kind === MessageKind.Heartbeat);
    expect(hbs.length).toBe(2);
    const ctx = (hbs[0] as { context: string }).context;
    n.raw.step(msg('heartbeat_resp', { from: 3, to: 1, term: 2, context: ctx }));
    drain(n);
    expect(n.readStates).toEqual([{ index: 2, context: 'early' }]);
  });

  it('a deposed leader that has not noticed yet cannot serve reads', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false });
    c.elect(1);
    c.isolate(1);
    c.elect(2);
    c.propose(2, 'written after 1 was deposed');
    c.raw(1).readIndex('stale?');
    c.process();
    c.heal();
    c.tickAll(3);
    // The heartbeats for the read met a higher term: 1 stepped down and the read is dropped.
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    expect(c.node(1).readStates).toEqual([]);
  });

  it('a group of one answers at once', () => {
    const n = soloNode(1, [1]);
    n.raw.campaign();
    drain(n);
    n.raw.propose(enc('a'));
    drain(n);
    n.raw.readIndex('r');
    drain(n);
    expect(n.readStates).toEqual([{ index: 3, context: 'r' }]);
  });

  it('is bounded: beyond readIndexPendingMax waiting reads, it refuses with overloaded', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, readIndexPendingMax: 3 });
    c.elect(1);
    c.isolate(1);
    const res = ['a', 'b', 'c', 'd'].map((ctx) => c.raw(1).readIndex(ctx));
    expect(res.map((r) => r.ok)).toEqual([true, true, true, false]);
    expect(res[3]).toMatchObject({ reason: 'overloaded' });
  });
});
