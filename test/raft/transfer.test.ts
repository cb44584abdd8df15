/** Leadership transfer (Raft thesis §3.10), used on graceful shutdown. */
import { describe, expect, it } from 'vitest';
import { MessageKind, StateRole, type NodeId } from '../../actors/raft/types.js';
import { enc, TestCluster } from './support.js';

const ids: NodeId[] = [1, 2, 3];

describe('leadership transfer', () => {
  it.each([
    { preVote: false, checkQuorum: false },
    { preVote: true, checkQuorum: true },
  ])('hands leadership to an up-to-date voter at once (pre-vote $preVote, check-quorum $checkQuorum)', (opts) => {
    const c = new TestCluster(ids, opts);
    c.elect(1);
    c.propose(1, 'a');
    expect(c.raw(1).transferLeader(2)).toEqual({ ok: true });
    c.process();
    expect(c.delivered.filter((m) => m.kind === MessageKind.TimeoutNow).map((m) => m.to)).toEqual([2]);
    expect(c.raw(2).raft.role).toBe(StateRole.Leader);
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    expect(c.raw(1).raft.lead).toBe(2);
    c.propose(2, 'b');
    expect(c.node(3).commands()).toEqual(['a', 'b']);
  });

  it('brings a lagging transferee up to date first, then hands over', () => {
    const c = new TestCluster(ids, { preVote: false });
    c.elect(1);
    c.isolate(3);
    for (let i = 0; i < 5; i++) c.propose(1, `x${i}`);
    c.heal();
    c.cut(1, 3);
    c.raw(1).transferLeader(3);
    c.process();
    expect(c.raw(3).raft.role).toBe(StateRole.Follower);
    c.heal();
    c.tick(1);
    expect(c.raw(3).raft.role).toBe(StateRole.Leader);
    expect(c.logOf(3)).toEqual(c.logOf(2));
  });

  it('refuses proposals while transferring, and gives up after an election timeout', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false });
    c.elect(1);
    c.isolate(3);
    c.propose(1, 'a'); // 3 is now behind, so the transfer must wait
    c.raw(1).transferLeader(3);
    expect(c.raw(1).propose(enc('b'))).toEqual({ ok: false, reason: 'transferring', lead: 1 });
    c.tick(1, c.raw(1).raft.cfg.electionTicks);
    expect(c.raw(1).raft.leadTransferee).toBe(0);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
    expect(c.raw(1).propose(enc('b')).ok).toBe(true);
  });

  it('refuses a transfer to itself, to a learner or to a stranger, and on a follower', () => {
    const c = new TestCluster(ids, { preVote: false }, { learners: [4] });
    c.elect(1);
    for (const to of [1, 4, 9]) expect(c.raw(1).transferLeader(to)).toMatchObject({ ok: false, reason: 'invalid_target' });
    expect(c.raw(2).transferLeader(3)).toMatchObject({ ok: false, reason: 'not_leader', lead: 1 });
  });
});
