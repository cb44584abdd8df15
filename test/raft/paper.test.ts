/**
 * One test per scenario of the Raft paper (Ongaro and Ousterhout, "In Search of an
 * Understandable Consensus Algorithm", §5), in the manner of etcd's raft_paper_test.go.
 *
 * Every node here is founded from the bootstrap snapshot: index 1, term 1. So a fresh node is at
 * term 1, its first election is for term 2, and a new leader's empty entry lands at index 2.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { MessageKind, StateRole, type AppMessage, type AppRespMessage, type Message, type NodeId, type VoteMessage } from '../../actors/raft/types.js';
import { drain, enc, entriesOf, kinds, msg, soloNode, storageWithLog, TestCluster, type MsgOf, type TestNode } from './support.js';

const peers3: NodeId[] = [1, 2, 3];

/** Makes node `n` leader of its cluster by injecting every peer's grant. */
function electSolo(n: TestNode): Message[] {
  n.raw.campaign();
  const voters = n.raft.voters;
  for (const id of voters) if (id !== n.id) n.raw.step(msg('vote_resp', { from: id, to: n.id, term: n.raft.term }));
  expect(n.raft.role).toBe(StateRole.Leader);
  return drain(n);
}

/** Acknowledges everything the leader has to every follower, so they reach Replicate. */
function ackAll(n: TestNode): Message[] {
  const last = n.raft.log.lastIndex();
  for (const id of n.raft.voters) if (id !== n.id) n.raw.step(msg('app_resp', { from: id, to: n.id, term: n.raft.term, index: last }));
  return drain(n);
}

const ofKind = <K extends Message['kind']>(ms: readonly Message[], kind: K) => ms.filter((m): m is MsgOf<K> => m.kind === kind);

describe('§5.1 terms', () => {
  it.each([StateRole.Follower, StateRole.Candidate, StateRole.Leader])('a %s that sees a higher term adopts it and becomes a follower', (role) => {
    const n = soloNode(1, peers3);
    if (role === StateRole.Candidate) n.raw.campaign();
    if (role === StateRole.Leader) electSolo(n);
    expect(n.raft.role).toBe(role);
    n.raw.step(msg('app', { from: 2, to: 1, term: 9, index: 1, logTerm: 1 }));
    expect(n.raft.term).toBe(9);
    expect(n.raft.role).toBe(StateRole.Follower);
    expect(n.raft.lead).toBe(2);
  });

  it('a message with a stale term is ignored', () => {
    const n = soloNode(1, peers3, {}, storageWithLog(peers3, [], 3));
    n.raw.step(msg('app', { from: 2, to: 1, term: 2, index: 1, logTerm: 1, entries: entriesOf([2]), commit: 2 }));
    expect(n.raft.term).toBe(3);
    expect(n.raft.log.lastIndex()).toBe(1);
    expect(n.raft.takeMessages()).toEqual([]);
  });
});

describe('§5.2 leader election', () => {
  it('nodes start as followers', () => {
    const n = soloNode(1, peers3);
    expect(n.raft.role).toBe(StateRole.Follower);
    expect(n.raft.lead).toBe(0);
  });

  it('a leader sends heartbeats to every follower every heartbeatTicks', () => {
    const n = soloNode(1, peers3, { heartbeatTicks: 2 });
    electSolo(n);
    n.raw.tick();
    expect(ofKind(n.raft.takeMessages(), MessageKind.Heartbeat)).toEqual([]);
    n.raw.tick();
    const hbs = ofKind(n.raft.takeMessages(), MessageKind.Heartbeat);
    expect(hbs.map((m) => m.to)).toEqual([2, 3]);
    // The commit a heartbeat carries is capped at what that follower is known to hold.
    expect(hbs.every((m) => m.commit === 0 && m.term === 2)).toBe(true);
  });

  it.each([StateRole.Follower, StateRole.Candidate])('a %s that hears nothing for an election timeout campaigns: term + 1, a vote for itself, a request to every voter', (role) => {
    const n = soloNode(1, peers3);
    if (role === StateRole.Candidate) {
      n.raw.campaign();
      n.raft.takeMessages();
    }
    const term = n.raft.term;
    for (let i = 0; i < 2 * n.raft.cfg.electionTicks; i++) n.raw.tick();
    expect(n.raft.role).toBe(StateRole.Candidate);
    expect(n.raft.term).toBe(term + 1);
    expect(n.raft.vote).toBe(1);
    const votes = ofKind(n.raft.takeMessages(), MessageKind.Vote);
    expect(votes.map((m) => [m.to, m.term])).toEqual([[2, term + 1], [3, term + 1]]);
  });

  it.each([
    { size: 1, votes: {}, role: StateRole.Leader },
    { size: 3, votes: { 2: true, 3: true }, role: StateRole.Leader },
    { size: 3, votes: { 2: true }, role: StateRole.Leader },
    { size: 5, votes: { 2: true, 3: true, 4: true, 5: true }, role: StateRole.Leader },
    { size: 5, votes: { 2: true, 3: true, 4: true }, role: StateRole.Leader },
    { size: 5, votes: { 2: true, 3: true }, role: StateRole.Leader },
    { size: 3, votes: {}, role: StateRole.Candidate },
    { size: 5, votes: { 2: true }, role: StateRole.Candidate },
    { size: 5, votes: { 2: false, 3: false }, role: StateRole.Candidate },
    { size: 5, votes: {}, role: StateRole.Candidate },
    { size: 3, votes: { 2: false, 3: false }, role: StateRole.Follower },
    { size: 5, votes: { 2: false, 3: false, 4: false }, role: StateRole.Follower },
  ])('one round of votes in a group of $size with $votes makes a $role', ({ size, votes, role }) => {
    const voters = Array.from({ length: size }, (_, i) => i + 1);
    const n = soloNode(1, voters);
    n.raw.campaign();
    for (const [id, granted] of Object.entries(votes)) n.raw.step(msg('vote_resp', { from: Number(id), to: 1, term: 2, reject: !granted }));
    expect(n.raft.role).toBe(role);
    expect(n.raft.term).toBe(2);
  });

  it.each([
    { voted: 0, candidate: 2, reject: false },
    { voted: 0, candidate: 3, reject: false },
    { voted: 2, candidate: 2, reject: false },
    { voted: 3, candidate: 3, reject: false },
    { voted: 2, candidate: 3, reject: true },
    { voted: 3, candidate: 2, reject: true },
  ])('a follower that voted for $voted answers candidate $candidate: reject=$reject (one vote per term, first come first served)', ({ voted, candidate, reject }) => {
    const s = MemoryStorage.bootstrap({ voters: peers3, learners: [] });
    s.setHardState({ term: 2, vote: voted, commit: 1 });
    const n = soloNode(1, peers3, {}, s);
    n.raw.step(msg('vote', { from: candidate, to: 1, term: 2, index: 1, logTerm: 1 }));
    const [resp] = n.raft.takeMessages();
    expect(resp).toMatchObject({ kind: 'vote_resp', to: candidate, term: 2, reject });
    expect(n.raft.vote).toBe(voted === 0 ? candidate : voted);
  });

  it.each([2, 3])('a candidate that hears from a leader of term %i (≥ its own) becomes its follower', (term) => {
    const n = soloNode(1, peers3);
    n.raw.campaign();
    expect(n.raft.term).toBe(2);
    n.raw.step(msg('app', { from: 2, to: 1, term, index: 1, logTerm: 1 }));
    expect(n.raft.role).toBe(StateRole.Follower);
    expect(n.raft.term).toBe(term);
    expect(n.raft.lead).toBe(2);
  });

  it.each([StateRole.Follower, StateRole.Candidate])('a %s draws its election timeout at random from [electionTicks, 2 × electionTicks)', (role) => {
    const et = 10;
    const seen = new Set<number>();
    for (let seed = 1; seed <= 400; seed++) {
      const n = soloNode(1, peers3, { electionTicks: et }, undefined, seed);
      if (role === StateRole.Candidate) n.raw.campaign();
      const term = n.raft.term;
      let ticks = 0;
      while (n.raft.term === term) {
        n.raw.tick();
        ticks++;
      }
      seen.add(ticks);
    }
    expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: et }, (_, i) => et + i));
  });

  it('randomized timeouts rarely collide: in a 5-node group, two followers time out on the same tick in few rounds', () => {
    let collisions = 0;
    const rounds = 500;
    for (let round = 0; round < rounds; round++) {
      const ns = [1, 2, 3, 4, 5].map((id) => soloNode(id, [1, 2, 3, 4, 5], {}, undefined, round * 10 + id));
      let fired: NodeId[] = [];
      while (fired.length === 0) {
        for (const n of ns) {
          const t = n.raft.term;
          n.raw.tick();
          if (n.raft.term !== t) fired.push(n.id);
        }
      }
      if (fired.length > 1) collisions++;
      fired = [];
    }
    // The expected rate is about 1 − P(the minimum of five draws from ten values is unique) ≈ 0.26.
    expect(collisions / rounds).toBeLessThan(0.4);
  });
});

describe('§5.3 log replication', () => {
  it('the leader appends a proposal to its log and sends it to every follower', () => {
    const n = soloNode(1, peers3);
    electSolo(n);
    ackAll(n);
    const res = n.raw.propose(enc('some data'));
    expect(res).toEqual({ ok: true, index: 3, term: 2 });
    const apps = ofKind(drain(n), MessageKind.App);
    expect(apps.map((m) => [m.to, m.index, m.logTerm, m.entries.map((e) => e.index), m.commit])).toEqual([
      [2, 2, 2, [3], 2],
      [3, 2, 2, [3], 2],
    ]);
    expect(n.storage.lastIndex()).toBe(3);
  });

  it('an entry commits once a majority stores it, and the followers learn the commit index', () => {
    const c = new TestCluster(peers3, { preVote: false });
    c.elect(1);
    c.cut(1, 3);
    expect(c.propose(1, 'x').ok).toBe(true);
    // Leader and node 2 are a majority of three.
    expect(c.raw(1).raft.log.committed).toBe(3);
    expect(c.node(1).commands()).toEqual(['x']);
    expect(c.raw(2).raft.log.committed).toBe(3);
    expect(c.node(2).commands()).toEqual(['x']);
    expect(c.node(3).commands()).toEqual([]);
  });

  it.each([
    { size: 1, acks: [], commit: true },
    { size: 3, acks: [], commit: false },
    { size: 3, acks: [2], commit: true },
    { size: 3, acks: [2, 3], commit: true },
    { size: 5, acks: [2], commit: false },
    { size: 5, acks: [2, 3], commit: true },
    { size: 5, acks: [2, 3, 4, 5], commit: true },
  ])('in a group of $size, acknowledgements from $acks commit the entry: $commit', ({ size, acks, commit }) => {
    const voters = Array.from({ length: size }, (_, i) => i + 1);
    const n = soloNode(1, voters);
    electSolo(n);
    ackAll(n);
    const { index } = n.raw.propose(enc('x')) as { index: number };
    drain(n); // the leader persists its own copy
    for (const id of acks) n.raw.step(msg('app_resp', { from: id, to: 1, term: 2, index }));
    drain(n);
    expect(n.raft.log.committed >= index).toBe(commit);
  });

  it('committing an entry of the current term commits every entry before it, from older terms too', () => {
    const c = new TestCluster(peers3, { preVote: false }, { storage: () => storageWithLog(peers3, [1, 2, 2], 2) });
    c.elect(1);
    expect(c.raw(1).raft.term).toBe(3);
    // The new leader's empty entry (index 5, term 3) commits, and with it indexes 2–4.
    expect(c.raw(1).raft.log.committed).toBe(5);
    expect(c.node(2).applied.map((e) => e.index)).toEqual([2, 3, 4, 5]);
  });

  it('a follower applies entries up to the commit index the leader sends', () => {
    const n = soloNode(2, peers3);
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: 1, logTerm: 1, entries: entriesOf([2, 2, 2]), commit: 3 }));
    drain(n);
    expect(n.raft.log.committed).toBe(3);
    expect(n.applied.map((e) => e.index)).toEqual([2, 3]);
    // Never beyond what this append proved to match, whatever the leader's commit.
    const m = soloNode(3, peers3);
    m.raw.step(msg('app', { from: 1, to: 3, term: 2, index: 1, logTerm: 1, entries: entriesOf([2]), commit: 9 }));
    expect(m.raft.log.committed).toBe(2);
  });

  it.each([
    { prev: [1, 1], reject: false, index: 1, hint: [0, 0] },
    { prev: [2, 1], reject: false, index: 2, hint: [0, 0] },
    { prev: [3, 2], reject: false, index: 3, hint: [0, 0] },
    { prev: [3, 1], reject: true, index: 3, hint: [2, 1] },
    { prev: [4, 2], reject: true, index: 4, hint: [3, 2] },
  ])('a follower holding (2,t1)(3,t2) answers an append after $prev: reject=$reject (the consistency check)', ({ prev, reject, index, hint }) => {
    const n = soloNode(2, peers3, {}, storageWithLog(peers3, [1, 2], 2));
    n.raw.step(msg('app', { from: 1, to: 2, term: 2, index: prev[0]!, logTerm: prev[1]! }));
    const [resp] = n.raft.takeMessages() as AppRespMessage[];
    expect(resp).toMatchObject({ kind: 'app_resp', reject, index });
    if (reject) expect([resp!.rejectHint, resp!.logTerm]).toEqual(hint);
  });

  it.each([
    { prev: [3, 2], ents: [3], want: [1, 2, 3] },
    { prev: [2, 1], ents: [3, 4], want: [1, 3, 4] },
    { prev: [1, 1], ents: [1], want: [1, 2] },
    { prev: [1, 1], ents: [3], want: [3] },
  ])('a follower holding (2,t1)(3,t2) takes an append after $prev of terms $ents: deletes a conflicting suffix, appends the new entries', ({ prev, ents, want }) => {
    const n = soloNode(2, peers3, {}, storageWithLog(peers3, [1, 2], 2));
    n.raw.step(msg('app', { from: 1, to: 2, term: 4, index: prev[0]!, logTerm: prev[1]!, entries: entriesOf(ents, prev[0]! + 1) }));
    drain(n);
    const log = n.raft.log;
    const terms: number[] = [];
    for (let i = 2; i <= log.lastIndex(); i++) terms.push(log.term(i)!);
    expect(terms).toEqual(want);
    expect(n.storage.lastIndex()).toBe(1 + want.length);
  });

  // Figure 7: the leader (term 8) and followers whose logs are missing entries (a, b), hold
  // extra uncommitted entries (c, d), or both (e, f). Index 1 is the bootstrap snapshot.
  const leaderLog = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
  it.each([
    { name: 'a', log: [1, 1, 1, 4, 4, 5, 5, 6, 6] },
    { name: 'b', log: [1, 1, 1, 4] },
    { name: 'c', log: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6] },
    { name: 'd', log: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7] },
    { name: 'e', log: [1, 1, 1, 4, 4, 4, 4] },
    { name: 'f', log: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3] },
  ])('the leader brings follower ($name) of Figure 7 in line with its log', ({ log }) => {
    const storage = (id: NodeId) => (id === 2 ? storageWithLog(peers3, log, 7) : storageWithLog(peers3, leaderLog, 7));
    const c = new TestCluster(peers3, { preVote: false }, { storage });
    c.elect(1);
    expect(c.raw(1).raft.term).toBe(8);
    expect(c.propose(1, 'x').ok).toBe(true);
    c.tickAll(3);
    expect(c.logOf(2)).toEqual(c.logOf(1));
    expect(c.logOf(2).at(-1)).toEqual([13, 8]);
  });
});

describe('§5.4 safety', () => {
  it.each([
    { terms: [1], index: 2, logTerm: 1 },
    { terms: [1, 2], index: 3, logTerm: 2 },
  ])('a vote request carries the last index and term of the candidate ($terms)', ({ terms, index, logTerm }) => {
    const n = soloNode(1, [1, 2, 3, 4, 5], {}, storageWithLog([1, 2, 3, 4, 5], terms));
    n.raw.campaign();
    const votes = n.raft.takeMessages() as VoteMessage[];
    expect(votes.map((m) => [m.to, m.index, m.logTerm])).toEqual([2, 3, 4, 5].map((to) => [to, index, logTerm]));
  });

  it.each([
    // same last term: the longer log wins
    { voter: [1], cand: [2, 1], reject: false },
    { voter: [1], cand: [3, 1], reject: false },
    { voter: [1, 1], cand: [2, 1], reject: true },
    // a higher last term wins however short
    { voter: [1], cand: [2, 2], reject: false },
    { voter: [1, 1], cand: [2, 2], reject: false },
    { voter: [1, 1], cand: [3, 2], reject: false },
    // a lower last term loses however long
    { voter: [2], cand: [2, 1], reject: true },
    { voter: [2], cand: [3, 1], reject: true },
    { voter: [1, 2], cand: [9, 1], reject: true },
  ])('a voter holding terms $voter answers a candidate whose log ends at $cand: reject=$reject (§5.4.1)', ({ voter, cand, reject }) => {
    const n = soloNode(1, peers3, {}, storageWithLog(peers3, voter, 2));
    n.raw.step(msg('vote', { from: 2, to: 1, term: 3, index: cand[0]!, logTerm: cand[1]! }));
    const [resp] = n.raft.takeMessages();
    expect(resp).toMatchObject({ kind: 'vote_resp', term: 3, reject });
  });

  /**
   * Figure 8, with the empty entry every new leader appends (index 2 here is the first leader's).
   * Returns the cluster at (c): S1 leads term 4, indexes 2–3 (term 2) are on S1–S4, and S1's
   * entry of term 4 (index 4) has reached no one else when `stopAt4` holds.
   */
  function figure8(stopAt4: boolean): TestCluster {
    const ids = [1, 2, 3, 4, 5];
    // One entry per append message, so replication can be stopped between two entries.
    const c = new TestCluster(ids, { preVote: false, checkQuorum: false, msgBytesMax: 1 });
    // (a) S1 leads term 2 and replicates its entries (2: empty, 3: 'e2') to S2 only.
    c.filter = (m) => m.kind === 'app' && m.from === 1 && m.to !== 2;
    c.elect(1);
    expect(c.propose(1, 'e2').ok).toBe(true);
    expect(c.logOf(2).map(([, t]) => t)).toEqual([2, 2]);
    expect(c.logOf(3).map(([, t]) => t)).toEqual([]);
    // (b) S1 is cut off (in the paper: crashes); S5 leads term 3 with S3 and S4, and appends entries nobody else gets.
    c.heal();
    c.isolate(1);
    c.cut(5, 2);
    c.filter = (m) => m.kind === 'app' && m.from === 5;
    c.elect(5);
    expect(c.raw(5).raft.term).toBe(3);
    c.isolate(5);
    expect(c.raw(5).propose(enc('e3')).ok).toBe(true);
    c.process();
    // (c) S5 is cut off (crashes); S1 restarts and leads term 4 (its first try, for term 3, fails: S3 and
    // S4 voted for S5). It copies indexes 2–3 to the others; with stopAt4, no append carrying
    // its own entry of term 4 gets anywhere.
    c.heal();
    c.isolate(5);
    c.restart(1);
    // (Appends a receiver is sure to reject, for lacking index 3, pass: they reveal its log.)
    if (stopAt4) c.filter = (m) => m.kind === 'app' && m.from === 1 && m.entries.some((e) => e.index >= 4) && c.raw(m.to).raft.log.lastIndex() >= 3;
    electUntil(c, 1);
    expect(c.raw(1).raft.term).toBe(4);
    c.tickAll(3);
    return c;
  }

  function electUntil(c: TestCluster, id: NodeId): void {
    for (let i = 0; i < 5 && c.raw(id).raft.role !== StateRole.Leader; i++) c.campaign(id);
    expect(c.raw(id).raft.role).toBe(StateRole.Leader);
  }

  it('Figure 8: a leader does not commit an entry of an older term by counting its replicas', () => {
    const c = figure8(true);
    for (const id of [3, 4]) expect(c.logOf(id).map(([, t]) => t)).toEqual([2, 2]);
    // Index 3 (term 2) is on S1–S4, a majority, but it is not of term 4: it must not commit.
    expect(c.raw(1).raft.log.committed).toBe(1);
    // (d) S1 goes down; S5 (last term 3) wins term 5 with S3 and S4 and overwrites indexes 2–3:
    // which is safe only because index 3 was never committed.
    c.heal();
    c.isolate(1);
    c.restart(5);
    electUntil(c, 5);
    c.tickAll(3);
    for (const id of [2, 3, 4, 5]) expect(c.logOf(id).slice(0, 3).map(([, t]) => t)).toEqual([3, 3, 5]);
    for (const id of [1, 2, 3, 4, 5]) expect(c.node(id).commands()).not.toContain('e2');
    expect(c.node(3).commands()).toEqual(['e3']);
  });

  it('Figure 8 (e): once the term-4 leader commits an entry of its own term, the older entries before it are committed and no later leader lacks them', () => {
    const c = figure8(false);
    expect(c.raw(1).raft.log.committed).toBe(4);
    expect(c.node(1).commands()).toEqual(['e2']);
    c.heal();
    c.isolate(1);
    c.restart(5);
    for (let i = 0; i < 5; i++) c.campaign(5);
    expect(c.raw(5).raft.role).not.toBe(StateRole.Leader);
    c.heal();
    c.tickAll(60);
    for (const id of [1, 2, 3, 4, 5]) expect(c.node(id).commands()).toEqual(['e2']);
  });
});

/** The properties of §5.4 over random schedules of elections, partitions and proposals. */
describe('§5.4 properties on random schedules', () => {
  type Op = { op: 'tick'; n: number } | { op: 'propose' } | { op: 'campaign'; id: number } | { op: 'isolate'; id: number } | { op: 'cut'; a: number; b: number } | { op: 'heal' };
  const ops = fc.oneof(
    fc.record({ op: fc.constant('tick' as const), n: fc.integer({ min: 1, max: 25 }) }),
    fc.record({ op: fc.constant('propose' as const) }),
    fc.record({ op: fc.constant('campaign' as const), id: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ op: fc.constant('isolate' as const), id: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ op: fc.constant('cut' as const), a: fc.integer({ min: 1, max: 5 }), b: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ op: fc.constant('heal' as const) }),
  );

  function run(schedule: Op[], preVote: boolean): void {
    const ids = [1, 2, 3, 4, 5];
    const c = new TestCluster(ids, { preVote, checkQuorum: preVote, msgBytesMax: 64 });
    const committed = new Map<number, number>(); // index → term
    let seq = 0;
    const check = () => {
      // Log matching: same (index, term) ⇒ same entries up to there.
      const logs = ids.map((id) => c.logOf(id));
      for (let a = 0; a < logs.length; a++) {
        for (let b = a + 1; b < logs.length; b++) {
          const la = new Map(logs[a]);
          let lastShared = 0;
          for (const [i, t] of logs[b]!) if (la.get(i) === t) lastShared = Math.max(lastShared, i);
          for (const [i, t] of logs[b]!) if (i <= lastShared) expect(la.get(i)).toBe(t);
        }
      }
      // Commits are recorded; a committed entry never changes.
      for (const id of ids) {
        const log = c.raw(id).raft.log;
        for (let i = log.firstIndex(); i <= log.committed; i++) {
          const t = log.term(i)!;
          if (committed.has(i)) expect(t).toBe(committed.get(i));
          else committed.set(i, t);
        }
      }
      // Leader completeness: the leader of the newest term holds every committed entry (a
      // deposed leader that has not noticed yet need not hold what was committed after it).
      const newest = c.leader();
      if (newest !== undefined) {
        const log = c.raw(newest).raft.log;
        for (const [i, t] of committed) if (i >= log.firstIndex()) expect(log.term(i)).toBe(t);
      }
      // Election safety.
      const terms = c.leaders().map((id) => c.raw(id).raft.term);
      expect(new Set(terms).size).toBe(terms.length);
    };
    for (const s of schedule) {
      switch (s.op) {
        case 'tick':
          c.tickAll(s.n);
          break;
        case 'propose': {
          const l = c.leader();
          if (l !== undefined) c.propose(l, `c${seq++}`);
          break;
        }
        case 'campaign':
          c.campaign(s.id);
          break;
        case 'isolate':
          c.isolate(s.id);
          break;
        case 'cut':
          if (s.a !== s.b) c.cut(s.a, s.b);
          break;
        case 'heal':
          c.heal();
          break;
      }
      check();
    }
    // State machine safety: applied sequences are prefixes of one another.
    const applied = ids.map((id) => c.node(id).commands());
    const longest = applied.reduce((a, b) => (a.length >= b.length ? a : b));
    for (const a of applied) expect(a).toEqual(longest.slice(0, a.length));
  }

  it.each([false, true])('log matching, leader completeness, election and state machine safety hold (pre-vote and check-quorum: %s)', (preVote) => {
    fc.assert(
      fc.property(fc.array(ops, { minLength: 5, maxLength: 40 }), (schedule) => run(schedule, preVote)),
      { numRuns: 60, seed: preVote ? 42 : 7 },
    );
  });
});

describe('the leader only sends what the Ready contract allows', () => {
  it('messages come out in a Ready together with the state they depend on', () => {
    const n = soloNode(1, peers3);
    n.raw.campaign();
    const rd = n.raw.ready();
    // The votes leave with the hard state that records our own vote: the caller persists first.
    expect(rd.hardState).toEqual({ term: 2, vote: 1, commit: 1 });
    expect(rd.mustSync).toBe(true);
    expect(kinds(rd.messages)).toEqual(['vote:1->2', 'vote:1->3']);
    n.raw.advance();
    // A vote granted by a follower goes out with its recorded vote.
    const f = soloNode(2, peers3);
    f.raw.step(msg('vote', { from: 1, to: 2, term: 2, index: 1, logTerm: 1 }));
    const frd = f.raw.ready();
    expect(frd.hardState).toEqual({ term: 2, vote: 1, commit: 1 });
    expect(frd.messages.map((m) => (m as AppMessage).kind)).toEqual(['vote_resp']);
  });
});
