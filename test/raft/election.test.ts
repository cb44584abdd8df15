/** Pre-vote, check-quorum and the leader lease (Raft thesis §9.6, §6.2). */
import { describe, expect, it } from 'vitest';
import { ConfChangeOp, encodeConfChange } from '../../actors/raft/conf-change.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { EntryType, MessageKind, StateRole, type NodeId } from '../../actors/raft/types.js';
import { drain, msg, soloNode, storageWithLog, TestCluster } from './support.js';

const ids: NodeId[] = [1, 2, 3];

describe('pre-vote', () => {
  it('a node cut off from the group does not raise its term, and does not disturb the leader when it returns', () => {
    const c = new TestCluster(ids, { preVote: true, checkQuorum: false });
    c.elect(1);
    const term = c.raw(1).raft.term;
    c.isolate(3);
    c.tick(3, 100);
    expect(c.raw(3).raft.term).toBe(term);
    expect(c.raw(3).raft.role).toBe(StateRole.PreCandidate);
    c.heal();
    c.tickAll(30);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
    expect(c.raw(1).raft.term).toBe(term);
    expect(c.raw(3).raft.lead).toBe(1);
  });

  it('without pre-vote, the same node returns with a higher term and forces an election', () => {
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false });
    c.elect(1);
    const term = c.raw(1).raft.term;
    c.isolate(3);
    c.tick(3, 100);
    expect(c.raw(3).raft.term).toBeGreaterThan(term + 3);
    c.heal();
    c.tickAll(30);
    expect(c.raw(1).raft.term).toBeGreaterThan(term);
  });

  it('asks for a vote for term + 1 without anyone changing term; a majority of grants starts the real election', () => {
    const n = soloNode(1, ids, { preVote: true });
    n.raw.campaign();
    expect(n.raft.role).toBe(StateRole.PreCandidate);
    expect(n.raft.term).toBe(1);
    const pre = n.raft.takeMessages();
    expect(pre.map((m) => [m.kind, m.to, m.term])).toEqual([
      ['pre_vote', 2, 2],
      ['pre_vote', 3, 2],
    ]);
    n.raw.step(msg('pre_vote_resp', { from: 2, to: 1, term: 2 }));
    expect(n.raft.role).toBe(StateRole.Candidate);
    expect(n.raft.term).toBe(2);
    expect(n.raft.takeMessages().map((m) => [m.kind, m.to, m.term])).toEqual([
      ['vote', 2, 2],
      ['vote', 3, 2],
    ]);
  });

  it('a voter grants a pre-vote without changing its term, and only to a log at least as up to date', () => {
    const v = soloNode(2, ids, { preVote: true }, storageWithLog(ids, [1, 1], 1));
    v.raw.step(msg('pre_vote', { from: 1, to: 2, term: 2, index: 3, logTerm: 1 }));
    v.raw.step(msg('pre_vote', { from: 3, to: 2, term: 2, index: 2, logTerm: 1 }));
    expect(v.raft.takeMessages().map((m) => [m.kind, m.to, m.term, (m as { reject: boolean }).reject])).toEqual([
      ['pre_vote_resp', 1, 2, false],
      ['pre_vote_resp', 3, 1, true],
    ]);
    expect(v.raft.term).toBe(1);
    expect(v.raft.vote).toBe(0);
  });

  it('a voter that still hears from a leader refuses pre-votes', () => {
    const v = soloNode(2, ids, { preVote: true, checkQuorum: false });
    v.raw.step(msg('heartbeat', { from: 1, to: 2, term: 2 }));
    v.raft.takeMessages();
    v.raw.step(msg('pre_vote', { from: 3, to: 2, term: 3, index: 9, logTerm: 2 }));
    expect(v.raft.takeMessages()).toMatchObject([{ kind: 'pre_vote_resp', reject: true }]);
    for (let i = 0; i < v.raft.cfg.electionTicks; i++) v.raw.tick();
    v.raft.takeMessages();
    v.raw.step(msg('pre_vote', { from: 3, to: 2, term: 3, index: 9, logTerm: 2 }));
    expect(v.raft.takeMessages()).toMatchObject([{ kind: 'pre_vote_resp', reject: false, term: 3 }]);
  });

  it('a pre-candidate rejected by a majority goes back to following, at the term a rejection taught it', () => {
    const n = soloNode(1, ids, { preVote: true });
    n.raw.campaign();
    n.raw.step(msg('pre_vote_resp', { from: 2, to: 1, term: 1, reject: true }));
    n.raw.step(msg('pre_vote_resp', { from: 3, to: 1, term: 1, reject: true }));
    expect(n.raft.role).toBe(StateRole.Follower);
    n.raw.campaign();
    n.raw.step(msg('pre_vote_resp', { from: 2, to: 1, term: 7, reject: true }));
    expect(n.raft.role).toBe(StateRole.Follower);
    expect(n.raft.term).toBe(7);
  });
});

describe('check-quorum and the leader lease', () => {
  it('a leader that hears from no quorum steps down within two election timeouts', () => {
    const c = new TestCluster(ids, { checkQuorum: true });
    c.elect(1);
    c.isolate(1);
    // The first check may still count what the followers said before the cut.
    c.tick(1, c.raw(1).raft.cfg.electionTicks);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
    c.tick(1, c.raw(1).raft.cfg.electionTicks);
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    expect(c.raw(1).raft.lead).toBe(0);
  });

  it('a leader that hears from a quorum stays, even with one follower gone', () => {
    const c = new TestCluster(ids, { checkQuorum: true });
    c.elect(1);
    c.isolate(3);
    c.tick(1, 5 * c.raw(1).raft.cfg.electionTicks);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
  });

  it('without check-quorum, a leader cut off from everyone keeps believing it leads', () => {
    const c = new TestCluster(ids, { checkQuorum: false, preVote: false });
    c.elect(1);
    c.isolate(1);
    c.tick(1, 5 * c.raw(1).raft.cfg.electionTicks);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
  });

  it('a follower that hears from its leader ignores vote requests of a higher term (the lease); a transfer overrides it', () => {
    const v = soloNode(2, ids, { checkQuorum: true, preVote: false });
    v.raw.step(msg('heartbeat', { from: 1, to: 2, term: 2 }));
    v.raft.takeMessages();
    v.raw.step(msg('vote', { from: 3, to: 2, term: 3, index: 5, logTerm: 2 }));
    expect(v.raft.takeMessages()).toEqual([]);
    expect(v.raft.term).toBe(2);
    v.raw.step(msg('vote', { from: 3, to: 2, term: 3, index: 5, logTerm: 2, transfer: true }));
    expect(v.raft.term).toBe(3);
    expect(v.raft.takeMessages()).toMatchObject([{ kind: 'vote_resp', reject: false }]);
  });

  it('once the lease has run out, the follower votes', () => {
    const v = soloNode(2, ids, { checkQuorum: true, preVote: false, electionTicks: 10 });
    v.raw.step(msg('heartbeat', { from: 1, to: 2, term: 2 }));
    v.raft.takeMessages();
    for (let i = 0; i < 10; i++) v.raw.tick();
    v.raft.takeMessages();
    v.raw.step(msg('vote', { from: 3, to: 2, term: 3, index: 5, logTerm: 2 }));
    expect(v.raft.takeMessages()).toMatchObject([{ kind: 'vote_resp', term: 3, reject: false }]);
  });

  it('a node at a higher term answers an old leader directly, so the old leader steps down', () => {
    const v = soloNode(2, ids, { checkQuorum: true }, storageWithLog(ids, [], 5));
    v.raw.step(msg('app', { from: 1, to: 2, term: 3, index: 1, logTerm: 1 }));
    expect(v.raft.takeMessages()).toMatchObject([{ kind: 'app_resp', to: 1, term: 5 }]);
    const c = new TestCluster(ids, { checkQuorum: true });
    c.elect(1);
    c.raw(1).step(msg('app_resp', { from: 2, to: 1, term: 5 }));
    expect(c.raw(1).raft.role).toBe(StateRole.Follower);
    expect(c.raw(1).raft.term).toBe(5);
  });

  it('a removed node that never learnt of its removal cannot disturb the group (lease and pre-vote)', () => {
    const c = new TestCluster([1, 2, 3, 4], { checkQuorum: true, preVote: true });
    c.elect(1);
    c.proposeConf(1, { op: ConfChangeOp.Remove, node: 4 });
    expect(c.raw(1).raft.voters).toEqual([1, 2, 3]);
    const term = c.raw(1).raft.term;
    c.tickAll(100);
    expect(c.raw(1).raft.role).toBe(StateRole.Leader);
    expect(c.raw(1).raft.term).toBe(term);
  });
});

describe('election timer and campaign guards', () => {
  it('a follower that learns a higher term from a vote it refuses keeps its election timer running (paper, Figure 2)', () => {
    const v = soloNode(2, ids, { preVote: false, checkQuorum: false, electionTicks: 10 }, storageWithLog(ids, [1, 1], 1));
    for (let i = 0; i < 8; i++) v.raw.tick();
    // A candidate with a shorter log: refused, but its term is adopted.
    v.raw.step(msg('vote', { from: 3, to: 2, term: 4, index: 1, logTerm: 1 }));
    expect(v.raft.term).toBe(4);
    expect(v.raft.electionElapsed).toBe(8);
    // Granting a vote does reset it.
    v.raw.step(msg('vote', { from: 1, to: 2, term: 5, index: 3, logTerm: 1 }));
    expect(v.raft.vote).toBe(1);
    expect(v.raft.electionElapsed).toBe(0);
  });

  it('a node with a committed but unapplied membership change does not campaign', () => {
    const s = MemoryStorage.bootstrap({ voters: ids, learners: [] });
    s.append([{ term: 1, index: 2, type: EntryType.ConfChange, data: encodeConfChange({ op: ConfChangeOp.Remove, node: 3 }) }]);
    s.setHardState({ term: 1, vote: 0, commit: 2 });
    const n = soloNode(1, ids, {}, s);
    n.raw.campaign();
    expect(n.raft.role).toBe(StateRole.Follower);
    drain(n); // applies the change
    n.raw.campaign();
    expect(n.raft.role).toBe(StateRole.Candidate);
    expect(n.raft.voters).toEqual([1, 2]);
  });

  it('a group of one elects itself at once', () => {
    const n = soloNode(1, [1]);
    n.raw.campaign();
    expect(n.raft.role).toBe(StateRole.Leader);
    expect(n.raft.takeMessages().filter((m) => m.kind === MessageKind.Vote)).toEqual([]);
  });
});
