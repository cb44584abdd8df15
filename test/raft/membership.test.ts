/** Single-server membership changes, with learners that catch up before they vote. */
import { describe, expect, it } from 'vitest';
import { applyToConf, ConfChangeOp, decodeConfChange, encodeConfChange, type ConfChange } from '../../actors/raft/conf-change.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { StateRole, type NodeId } from '../../actors/raft/types.js';
import { drain, enc, msg, soloNode, TestCluster } from './support.js';

const ids: NodeId[] = [1, 2, 3];
const opts = { preVote: false, checkQuorum: false };

function withJoiner(): TestCluster {
  const c = new TestCluster(ids, opts);
  c.add(4, new MemoryStorage(), opts);
  c.elect(1);
  c.propose(1, 'a');
  return c;
}

describe('membership changes', () => {
  it('a learner receives the log and applies it, but does not count towards commits', () => {
    const c = withJoiner();
    expect(c.proposeConf(1, { op: ConfChangeOp.AddLearner, node: 4 }).ok).toBe(true);
    c.tickAll(2);
    expect(c.raw(1).raft.learners).toEqual([4]);
    expect(c.node(4).commands()).toEqual(['a']);
    // With both voters away, the learner's copy does not make a majority.
    c.isolate(2);
    c.isolate(3);
    c.propose(1, 'b');
    expect(c.node(4).commands()).toEqual(['a']);
    expect(c.raw(4).raft.log.lastIndex()).toBe(c.raw(1).raft.log.lastIndex());
    expect(c.raw(1).raft.log.committed).toBeLessThan(c.raw(1).raft.log.lastIndex());
  });

  it('a learner never campaigns', () => {
    const c = withJoiner();
    c.proposeConf(1, { op: ConfChangeOp.AddLearner, node: 4 });
    c.tickAll(2);
    c.isolate(4);
    const term = c.raw(4).raft.term;
    c.tick(4, 100);
    expect(c.raw(4).raft.term).toBe(term);
    expect(c.raw(4).raft.role).toBe(StateRole.Follower);
  });

  it('a learner is promoted only once it has caught up; then it votes and counts', () => {
    const c = withJoiner();
    c.proposeConf(1, { op: ConfChangeOp.AddLearner, node: 4 });
    c.tickAll(2);
    c.isolate(4);
    for (let i = 0; i < 5; i++) c.propose(1, `x${i}`);
    expect(c.raw(1).proposeConfChange({ op: ConfChangeOp.AddVoter, node: 4 })).toMatchObject({ ok: false, reason: 'learner_behind' });
    c.heal();
    c.tickAll(2);
    expect(c.proposeConf(1, { op: ConfChangeOp.AddVoter, node: 4 }).ok).toBe(true);
    c.tickAll(2);
    for (const id of [1, 2, 3, 4]) expect(c.raw(id).raft.voters).toEqual([1, 2, 3, 4]);
    // Four voters: a majority is three.
    c.isolate(2);
    c.isolate(3);
    c.propose(1, 'needs three');
    expect(c.node(4).commands()).not.toContain('needs three');
    c.heal();
    c.isolate(3);
    c.propose(1, 'three of four');
    c.tickAll(2);
    expect(c.node(4).commands()).toContain('three of four');
  });

  it('removing a voter shrinks the quorum', () => {
    const c = new TestCluster(ids, opts);
    c.elect(1);
    c.proposeConf(1, { op: ConfChangeOp.Remove, node: 3 });
    c.tickAll(2);
    expect(c.raw(1).raft.voters).toEqual([1, 2]);
    c.isolate(3);
    c.propose(1, 'two of two');
    expect(c.node(2).commands()).toEqual(['two of two']);
  });

  it('a leader that removes itself steps down once the change applies, and another leader takes over', () => {
    const c = new TestCluster(ids, opts);
    c.elect(1);
    c.proposeConf(1, { op: ConfChangeOp.Remove, node: 1 });
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    expect(c.raw(1).raft.voters).toEqual([2, 3]);
    c.tickAll(40);
    const lead = c.leader();
    expect([2, 3]).toContain(lead);
    // The removed node does not campaign, however long it waits.
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    c.propose(lead!, 'after');
    expect(c.node(lead === 2 ? 3 : 2).commands()).toEqual(['after']);
  });

  it('one change at a time: a second waits until the first is applied', () => {
    const c = withJoiner();
    c.isolate(2);
    c.isolate(3);
    expect(c.raw(1).proposeConfChange({ op: ConfChangeOp.AddLearner, node: 4 }).ok).toBe(true);
    expect(c.raw(1).proposeConfChange({ op: ConfChangeOp.Remove, node: 3 })).toMatchObject({ ok: false, reason: 'conf_change_pending' });
    c.heal();
    c.tickAll(2);
    expect(c.proposeConf(1, { op: ConfChangeOp.Remove, node: 3 }).ok).toBe(true);
  });

  it('a new leader proposes no change until what its log held when it was elected is applied', () => {
    const n = soloNode(1, ids);
    n.raw.campaign();
    n.raw.step(msg('vote_resp', { from: 2, to: 1, term: 2 }));
    drain(n);
    expect(n.raw.proposeConfChange({ op: ConfChangeOp.Remove, node: 3 })).toMatchObject({ ok: false, reason: 'conf_change_pending' });
    n.raw.step(msg('app_resp', { from: 2, to: 1, term: 2, index: 2 }));
    drain(n);
    expect(n.raw.proposeConfChange({ op: ConfChangeOp.Remove, node: 3 }).ok).toBe(true);
  });

  it.each([
    { cc: { op: ConfChangeOp.AddLearner, node: 2 }, why: 'a voter added as a learner' },
    { cc: { op: ConfChangeOp.AddVoter, node: 9 }, why: 'a stranger promoted' },
    { cc: { op: ConfChangeOp.Remove, node: 9 }, why: 'a stranger removed' },
  ])('refuses a change that makes no sense: $why', ({ cc }) => {
    const c = new TestCluster(ids, opts);
    c.elect(1);
    expect(c.raw(1).proposeConfChange(cc as ConfChange)).toMatchObject({ ok: false, reason: 'invalid_conf_change' });
  });

  it('refuses to remove the last voter', () => {
    const n = soloNode(1, [1]);
    n.raw.campaign();
    drain(n);
    expect(n.raw.proposeConfChange({ op: ConfChangeOp.Remove, node: 1 })).toMatchObject({ ok: false, reason: 'invalid_conf_change' });
    expect(applyToConf({ voters: [1], learners: [] }, { op: ConfChangeOp.Remove, node: 1 })).toEqual({ voters: [1], learners: [] });
  });

  it('applying a change is deterministic, and a nonsensical one changes nothing', () => {
    const conf = { voters: [1, 2, 3], learners: [4] };
    expect(applyToConf(conf, { op: ConfChangeOp.AddLearner, node: 5 })).toEqual({ voters: [1, 2, 3], learners: [4, 5] });
    expect(applyToConf(conf, { op: ConfChangeOp.AddVoter, node: 4 })).toEqual({ voters: [1, 2, 3, 4], learners: [] });
    expect(applyToConf(conf, { op: ConfChangeOp.Remove, node: 2 })).toEqual({ voters: [1, 3], learners: [4] });
    expect(applyToConf(conf, { op: ConfChangeOp.Remove, node: 4 })).toEqual({ voters: [1, 2, 3], learners: [] });
    expect(applyToConf(conf, { op: ConfChangeOp.AddLearner, node: 1 })).toBe(conf);
    expect(applyToConf(conf, { op: ConfChangeOp.Remove, node: 9 })).toBe(conf);
  });

  it('a change is a 9-byte entry that decodes to itself; anything else is refused', () => {
    for (const op of Object.values(ConfChangeOp)) {
      const cc = { op, node: 123_456_789 };
      expect(decodeConfChange(encodeConfChange(cc))).toEqual(cc);
    }
    expect(() => decodeConfChange(enc('nonsense'))).toThrow(/9 bytes/);
    expect(() => decodeConfChange(new Uint8Array(9))).toThrow(/names an op/);
  });

  it('the membership a node restarts with is its snapshot\'s unless it remembered a later one', () => {
    const s = MemoryStorage.bootstrap({ voters: ids, learners: [] });
    expect(s.initialState().confState).toEqual({ voters: ids, learners: [] });
    s.setConfState({ voters: ids, learners: [4] }, 5);
    expect(s.initialState().confState).toEqual({ voters: ids, learners: [4] });
    expect(() => s.setConfState({ voters: ids, learners: [] }, 4)).toThrow(/log order/);
  });
});
