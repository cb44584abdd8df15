import { assert } from '../../runtime/errors.js';
import { applyToConf, ConfChangeOp, encodeConfChange, type ConfChange } from './conf-change.js';
import { validateConfig, type RaftConfig, type RaftConfigInput } from './config.js';
import { RaftLog } from './log.js';
import { Progress, ProgressState } from './progress.js';
import { committedIndex, majority, voteResult, VoteResult } from './quorum.js';
import { ReadOnly } from './read-only.js';
import {
  EmptyData,
  EntryOverheadBytes,
  EntryType,
  MessageKind,
  None,
  StateRole,
  entryBytes,
  type AppMessage,
  type AppRespMessage,
  type ConfState,
  type Entry,
  type HardState,
  type HeartbeatMessage,
  type HeartbeatRespMessage,
  type Message,
  type NodeId,
  type ReadState,
  type Snapshot,
  type SnapMessage,
  type SnapRespMessage,
  type SnapshotMeta,
  type VoteMessage,
  type VoteRespMessage,
} from './types.js';

/** Why the core did not take a proposal (or a read, or a transfer). */
export const Refusal = {
  /** This node is not the leader; `lead` says who is, if known. */
  NotLeader: 'not_leader',
  /** A leadership transfer is in progress; retry on the new leader. */
  Transferring: 'transferring',
  /** The proposal bound (uncommittedBytesMax) or the read queue is full: back off. */
  Overloaded: 'overloaded',
  /** A membership change is still unapplied; one at a time. */
  ConfChangePending: 'conf_change_pending',
  /** The change makes no sense for the current membership. */
  InvalidConfChange: 'invalid_conf_change',
  /** A transfer to ourselves, or to a node that is not a voter. */
  InvalidTarget: 'invalid_target',
  /** A learner is promoted only once it holds everything committed. */
  LearnerBehind: 'learner_behind',
} as const;
export type Refusal = (typeof Refusal)[keyof typeof Refusal];

export type ProposeResult =
  | { readonly ok: true; /** Index of the first entry proposed. */ readonly index: number; readonly term: number }
  | { readonly ok: false; readonly reason: Refusal; readonly lead: NodeId };

export type RequestResult = { readonly ok: true } | { readonly ok: false; readonly reason: Refusal; readonly lead: NodeId };

/** A snapshot being received in chunks, from one leader in one term: two leaders' encodings of
 * the same state need not be byte-identical, so chunks of different senders never mix. */
interface IncomingSnapshot {
  readonly from: NodeId;
  readonly term: number;
  readonly meta: SnapshotMeta;
  readonly buf: Uint8Array;
  /** Bytes [0, received) of buf are filled; ≤ buf.byteLength. */
  received: number;
}

/** Entries a leader appended in its term and not yet committed: [last index, bytes], oldest first. */
interface UncommittedBatch {
  readonly last: number;
  readonly bytes: number;
}

/**
 * The Raft state machine (Ongaro and Ousterhout; Ongaro's thesis for pre-vote, check-quorum,
 * ReadIndex, leadership transfer and single-server membership changes), shaped after etcd's
 * raft. It does no I/O and reads no clock: time is tick(), input is step(), and everything it
 * wants done (persist, send, apply) is collected for RawNode to hand out in a Ready.
 *
 * Invariants (asserted where they can break): term never decreases; at most one vote per term;
 * applied ≤ committed ≤ last index; committed entries are never truncated; a leader never
 * overwrites its own log and commits only entries of its own term by counting replicas.
 */
export class Raft {
  readonly id: NodeId;
  readonly cfg: RaftConfig;
  readonly log: RaftLog;
  /** Never decreases. */
  term = 0;
  /** Who we voted for in `term`; set at most once per term. */
  vote: NodeId = None;
  /** The leader of `term` as far as we know. */
  lead: NodeId = None;
  role: StateRole = StateRole.Follower;

  /** Sorted; disjoint from learners. Membership as of the last applied conf change. */
  voters: NodeId[] = [];
  learners: NodeId[] = [];
  /** One per member (self included); meaningful while leader. */
  readonly prs = new Map<NodeId, Progress>();
  /** Answers to our current (pre-)campaign. */
  private readonly votes = new Map<NodeId, boolean>();

  /** Outbox for the next Ready; ≤ outboxMsgsMax. */
  msgs: Message[] = [];
  /** Messages dropped because the outbox was full (the caller was not draining Readies). */
  msgsDropped = 0;
  readStates: ReadState[] = [];

  /** Ticks since we last heard from a leader (follower) or since the last quorum check (leader). */
  electionElapsed = 0;
  heartbeatElapsed = 0;
  /** In [electionTicks, 2 × electionTicks); drawn anew on every term change. */
  randomizedElectionTimeout = 0;

  /** Leader: the voter leadership is being handed to; proposals are refused meanwhile. */
  leadTransferee: NodeId = None;
  /** Leader: index of the newest conf change proposed; a new one waits until it is applied. */
  pendingConfIndex = 0;
  /** Leader: entry bytes proposed in this term and not yet committed (the proposal bound). */
  private uncommittedBytes = 0;
  private uncommitted: UncommittedBatch[] = [];
  private uncommittedHead = 0;

  private readonly readOnly = new ReadOnly();
  /** Leader: reads that arrived before the leader committed an entry of its term. */
  private pendingReads: Array<{ context: string; from: NodeId }> = [];

  /** Follower: a snapshot arriving in chunks. */
  private incoming: IncomingSnapshot | undefined = undefined;

  constructor(input: RaftConfigInput) {
    this.cfg = validateConfig(input);
    this.id = this.cfg.id;
    const storage = this.cfg.storage;
    const { hardState, confState } = storage.initialState();
    // The state machine restarts from the snapshot (which may be newer than the compaction
    // point, firstIndex − 1), unless the caller says it kept more.
    const snapIndex = storage.snapshot().meta.index;
    const applied = this.cfg.applied ?? snapIndex;
    // A snapshot holds only committed state, so its index bounds commit from below even when
    // the hard state's commit (which is written without an fsync of its own) lags it.
    this.log = new RaftLog(storage, Math.max(hardState.commit, snapIndex), applied);
    assert(hardState.term >= this.log.lastTerm(), `hard state term ${hardState.term} ≥ last log term ${this.log.lastTerm()}`);
    this.term = hardState.term;
    this.vote = hardState.vote;
    this.setConf(confState);
    this.becomeFollower(this.term, None);
  }

  // ---- observation ---------------------------------------------------------------------------

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  confState(): ConfState {
    return { voters: this.voters.slice(), learners: this.learners.slice() };
  }

  isVoter(id: NodeId): boolean {
    return this.voters.includes(id);
  }

  /** Whether this node may campaign: a voter, not in the middle of installing a snapshot. */
  promotable(): boolean {
    return this.isVoter(this.id) && this.log.unstable.snapshot === undefined;
  }

  takeMessages(): Message[] {
    const out = this.msgs;
    this.msgs = [];
    return out;
  }

  takeReadStates(): ReadState[] {
    const out = this.readStates;
    this.readStates = [];
    return out;
  }

  // ---- time ----------------------------------------------------------------------------------

  tick(): void {
    if (this.role === StateRole.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.hup(false);
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum && !this.quorumActive()) {
        // Cut off from a majority: it cannot commit, and another leader may already exist.
        this.becomeFollower(this.term, None);
        return;
      }
      // A transfer that did not finish within an election timeout is abandoned, so proposals
      // are not refused forever.
      if (this.leadTransferee !== None) this.leadTransferee = None;
    }
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.bcastHeartbeat();
    }
  }

  /** Counts voters heard from since the last check (self included), then forgets them. */
  private quorumActive(): boolean {
    let active = 0;
    for (const id of this.voters) {
      const pr = this.prs.get(id);
      if (id === this.id || pr?.recentActive) active++;
    }
    for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
    return active >= majority(this.voters.length);
  }

  // ---- role changes --------------------------------------------------------------------------

  private reset(term: number, keepElapsed = false): void {
    if (term !== this.term) {
      assert(term > this.term, `term never decreases (${term} < ${this.term})`);
      this.term = term;
      this.vote = None;
    }
    this.lead = None;
    if (!keepElapsed) this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.cfg.electionTicks + this.cfg.random.int(this.cfg.electionTicks);
    this.leadTransferee = None;
    this.votes.clear();
    this.pendingConfIndex = 0;
    this.uncommittedBytes = 0;
    this.uncommitted = [];
    this.uncommittedHead = 0;
    this.readOnly.reset();
    this.pendingReads = [];
    const next = this.log.lastIndex() + 1;
    for (const [id, pr] of this.prs) {
      const fresh = new Progress(next, this.cfg.inflightMsgsMax, this.cfg.inflightBytesMax, pr.isLearner);
      if (id === this.id) {
        fresh.match = this.log.persistedIndex();
        fresh.recentActive = true;
      }
      this.prs.set(id, fresh);
    }
  }

  /**
   * keepElapsed: the election timer keeps running (Figure 2 of the paper resets it only on
   * hearing from the leader or granting a vote). A node that merely learns of a higher term from
   * a candidate that cannot win must not have its own, possibly winning, campaign postponed.
   */
  becomeFollower(term: number, lead: NodeId, keepElapsed = false): void {
    this.reset(term, keepElapsed);
    this.lead = lead;
    this.role = StateRole.Follower;
  }

  private becomePreCandidate(): void {
    assert(this.role !== StateRole.Leader, 'a leader never pre-campaigns');
    // Neither the term nor the vote change: a pre-vote disturbs nobody.
    this.votes.clear();
    this.lead = None;
    this.role = StateRole.PreCandidate;
  }

  private becomeCandidate(): void {
    assert(this.role !== StateRole.Leader, 'a leader never campaigns');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = StateRole.Candidate;
  }

  private becomeLeader(): void {
    assert(this.role === StateRole.Candidate, 'only a candidate becomes leader');
    this.reset(this.term);
    this.lead = this.id;
    this.role = StateRole.Leader;
    // The empty entry of the new term: committing it commits everything before it (§5.4.2),
    // and makes ReadIndex safe. Not charged to the proposal bound.
    const e: Entry = { term: this.term, index: this.log.lastIndex() + 1, type: EntryType.Normal, data: EmptyData };
    this.log.append([e]);
    // No membership change until this entry is applied: conf changes already in the log may
    // be unapplied, and a leader must commit an entry of its own term before changing
    // membership (Ongaro, "bug in single-server membership changes", raft-dev 2015).
    this.pendingConfIndex = e.index;
    this.bcastAppend(false);
  }

  // ---- elections -----------------------------------------------------------------------------

  /** Starts an election (after a pre-vote, if enabled) unless that would be unsafe or pointless. */
  hup(transfer: boolean): void {
    if (this.role === StateRole.Leader) return;
    if (!this.promotable()) return;
    // With conf changes committed but unapplied, our membership is stale: we could count
    // votes by the wrong voters.
    if (this.hasUnappliedConfChanges()) return;
    this.campaign(this.cfg.preVote && !transfer ? 'pre' : 'election', transfer);
  }

  private hasUnappliedConfChanges(): boolean {
    let lo = Math.max(this.log.applied + 1, this.log.firstIndex());
    const hi = this.log.committed + 1;
    while (lo < hi) {
      const ents = this.log.slice(lo, hi, this.cfg.committedBytesPerReadyMax);
      assert(ents !== undefined && ents.length > 0, 'unapplied committed entries are in the log');
      for (const e of ents) if (e.type === EntryType.ConfChange) return true;
      lo = ents[ents.length - 1]!.index + 1;
    }
    return false;
  }

  private campaign(kind: 'pre' | 'election', transfer: boolean): void {
    let term: number;
    let msgKind: typeof MessageKind.Vote | typeof MessageKind.PreVote;
    if (kind === 'pre') {
      this.becomePreCandidate();
      term = this.term + 1;
      msgKind = MessageKind.PreVote;
    } else {
      this.becomeCandidate();
      term = this.term;
      msgKind = MessageKind.Vote;
    }
    this.votes.set(this.id, true);
    if (voteResult(this.voters, this.votes) === VoteResult.Won) {
      // A group of one: our own vote decides.
      if (kind === 'pre') this.campaign('election', transfer);
      else this.becomeLeader();
      return;
    }
    const index = this.log.lastIndex();
    const logTerm = this.log.lastTerm();
    for (const id of this.voters) {
      if (id === this.id) continue;
      this.send({ kind: msgKind, from: this.id, to: id, term, index, logTerm, transfer });
    }
  }

  private handleVoteRequest(m: VoteMessage): void {
    const pre = m.kind === MessageKind.PreVote;
    // We can vote for m.from if we already did in this term, or have not voted and know no
    // leader of this term; a pre-vote is for a future term, so only the log matters — and
    // whether we still hear from a leader (thesis §9.6: a live leader makes pre-votes fail).
    const leaderAlive = this.lead !== None && this.electionElapsed < this.cfg.electionTicks;
    const sameTermOk = this.vote === m.from || (this.vote === None && this.lead === None);
    const canVote = pre && m.term > this.term ? !leaderAlive : sameTermOk;
    const respKind = pre ? MessageKind.PreVoteResp : MessageKind.VoteResp;
    if (canVote && this.log.isUpToDate(m.index, m.logTerm)) {
      // Answer with the request's term: a pre-vote's is in our future, and a grant sent with
      // our (older) term would be ignored by the pre-candidate.
      this.send({ kind: respKind, from: this.id, to: m.from, term: m.term, reject: false });
      if (!pre) {
        this.electionElapsed = 0;
        this.vote = m.from;
      }
    } else {
      this.send({ kind: respKind, from: this.id, to: m.from, term: this.term, reject: true });
    }
  }

  // ---- input ---------------------------------------------------------------------------------

  step(m: Message): void {
    if (m.to !== this.id) return;
    if (m.term > this.term) {
      if (m.kind === MessageKind.Vote || m.kind === MessageKind.PreVote) {
        // The leader lease: while we hear from a leader, a vote request is most likely from a
        // node that was cut off (or removed), and must not depose a working leader.
        const inLease = this.cfg.checkQuorum && this.lead !== None && this.electionElapsed < this.cfg.electionTicks;
        if (inLease && !m.transfer) return;
      }
      if (m.kind === MessageKind.PreVote) {
        // Never change our term for a pre-vote.
      } else if (m.kind === MessageKind.PreVoteResp && !m.reject) {
        // A grant carries the term we would campaign in; we take it when we win.
      } else {
        const fromLeader = m.kind === MessageKind.App || m.kind === MessageKind.Heartbeat || m.kind === MessageKind.Snap;
        if (fromLeader) this.becomeFollower(m.term, m.from);
        else this.becomeFollower(m.term, None, this.role !== StateRole.Leader);
      }
    } else if (m.term < this.term) {
      if ((this.cfg.checkQuorum || this.cfg.preVote) && (m.kind === MessageKind.App || m.kind === MessageKind.Heartbeat || m.kind === MessageKind.Snap)) {
        // A leader of an older term. With check-quorum or pre-vote our higher term may never
        // reach it through votes, so tell it directly: our answer's term makes it step down.
        this.send({ kind: MessageKind.AppResp, from: this.id, to: m.from, term: this.term, index: 0, reject: false, rejectHint: 0, logTerm: 0 });
      } else if (m.kind === MessageKind.PreVote) {
        // Reject explicitly, so a pre-candidate with an older term learns ours.
        this.send({ kind: MessageKind.PreVoteResp, from: this.id, to: m.from, term: this.term, reject: true });
      }
      return;
    }

    if (m.kind === MessageKind.Vote || m.kind === MessageKind.PreVote) {
      this.handleVoteRequest(m);
      return;
    }
    switch (this.role) {
      case StateRole.Leader:
        this.stepLeader(m);
        break;
      case StateRole.Candidate:
      case StateRole.PreCandidate:
        this.stepCandidate(m);
        break;
      case StateRole.Follower:
        this.stepFollower(m);
        break;
    }
  }

  private stepLeader(m: Message): void {
    switch (m.kind) {
      case MessageKind.ReadIndex:
        this.handleReadIndex(m.context, m.from);
        return;
      case MessageKind.AppResp:
        this.handleAppResp(m);
        return;
      case MessageKind.HeartbeatResp:
        this.handleHeartbeatResp(m);
        return;
      case MessageKind.SnapResp:
        this.handleSnapResp(m);
        return;
      default:
        // App/Heartbeat/Snap of our own term would mean two leaders in one term: impossible
        // unless the network forges messages; ignore rather than obey.
        return;
    }
  }

  private stepCandidate(m: Message): void {
    switch (m.kind) {
      case MessageKind.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        return;
      case MessageKind.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageKind.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapChunk(m);
        return;
      case MessageKind.VoteResp:
      case MessageKind.PreVoteResp:
        this.handleVoteResp(m);
        return;
      default:
        return;
    }
  }

  private handleVoteResp(m: VoteRespMessage): void {
    const wanted = this.role === StateRole.PreCandidate ? MessageKind.PreVoteResp : MessageKind.VoteResp;
    if (m.kind !== wanted) return;
    if (!this.votes.has(m.from)) this.votes.set(m.from, !m.reject);
    switch (voteResult(this.voters, this.votes)) {
      case VoteResult.Won:
        if (this.role === StateRole.PreCandidate) this.campaign('election', false);
        else this.becomeLeader();
        return;
      case VoteResult.Lost:
        // A rejection at a higher term has already made us a follower of that term.
        this.becomeFollower(this.term, None);
        return;
      case VoteResult.Pending:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.kind) {
      case MessageKind.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case MessageKind.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageKind.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapChunk(m);
        return;
      case MessageKind.TimeoutNow:
        // The leader hands over: campaign at once, past pre-vote and the voters' lease.
        this.hup(true);
        return;
      case MessageKind.ReadIndexResp:
        this.readStates.push({ index: m.index, context: m.context });
        return;
      default:
        return;
    }
  }

  // ---- follower: replication -----------------------------------------------------------------

  private handleAppend(m: AppMessage): void {
    if (m.index < this.log.committed) {
      // Everything up to our commit matches any leader's log; tell it where we are.
      this.sendAppResp(m.from, this.log.committed);
      return;
    }
    const last = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (last !== undefined) {
      this.sendAppResp(m.from, last);
      return;
    }
    // No match at m.index. Hint the largest index whose term is ≤ the leader's term there:
    // entries after it all have higher terms and cannot match (fast back-off, thesis §5.3).
    const [hintIndex, hintTerm] = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
    this.send({ kind: MessageKind.AppResp, from: this.id, to: m.from, term: this.term, index: m.index, reject: true, rejectHint: hintIndex, logTerm: hintTerm });
  }

  private sendAppResp(to: NodeId, index: number): void {
    this.send({ kind: MessageKind.AppResp, from: this.id, to, term: this.term, index, reject: false, rejectHint: 0, logTerm: 0 });
  }

  private handleHeartbeat(m: HeartbeatMessage): void {
    // The leader caps commit at our match, which only covers entries we acknowledged after
    // persisting them: it never exceeds our log.
    this.log.commitTo(m.commit);
    this.send({ kind: MessageKind.HeartbeatResp, from: this.id, to: m.from, term: this.term, context: m.context });
  }

  private handleSnapChunk(m: SnapMessage): void {
    if (m.meta.index <= this.log.committed) {
      // Nothing new in it (we have caught up meanwhile, or installed it already).
      this.incoming = undefined;
      this.sendAppResp(m.from, this.log.committed);
      return;
    }
    let inc = this.incoming;
    const same = inc !== undefined && inc.from === m.from && inc.term === m.term && inc.meta.index === m.meta.index && inc.meta.term === m.meta.term && inc.buf.byteLength === m.totalBytes;
    if (!same) {
      if (m.offset !== 0) {
        this.incoming = undefined;
        this.sendSnapResp(m.from, m.meta.index, 0, true);
        return;
      }
      inc = this.incoming = { from: m.from, term: m.term, meta: m.meta, buf: new Uint8Array(m.totalBytes), received: 0 };
    }
    assert(inc !== undefined, 'an incoming snapshot is being assembled');
    const end = m.offset + m.data.byteLength;
    if (m.offset > inc.received || end > m.totalBytes) {
      // A gap (a chunk was lost or reordered): ask for the bytes from where we are.
      this.sendSnapResp(m.from, m.meta.index, inc.received, true);
      return;
    }
    if (end > inc.received) {
      inc.buf.set(m.data.subarray(inc.received - m.offset), inc.received);
      inc.received = end;
    }
    if (inc.received < m.totalBytes) {
      this.sendSnapResp(m.from, m.meta.index, inc.received, false);
      return;
    }
    this.incoming = undefined;
    const snap: Snapshot = { meta: inc.meta, data: inc.buf };
    if (this.restore(snap)) this.sendAppResp(m.from, this.log.lastIndex());
    else this.sendAppResp(m.from, this.log.committed);
  }

  private sendSnapResp(to: NodeId, snapIndex: number, offset: number, reject: boolean): void {
    this.send({ kind: MessageKind.SnapResp, from: this.id, to, term: this.term, snapIndex, offset, reject });
  }

  /** Installs a complete snapshot from the leader; false if it brings nothing new. */
  private restore(s: Snapshot): boolean {
    if (s.meta.index <= this.log.committed) return false;
    assert(this.role === StateRole.Follower, 'only a follower restores a snapshot');
    if (this.log.matchTerm(s.meta.index, s.meta.term)) {
      // Our log already holds the snapshot's last entry, hence everything before it.
      this.log.commitTo(s.meta.index);
      return false;
    }
    this.log.restore(s);
    this.setConf(s.meta.conf);
    return true;
  }

  // ---- leader: replication -------------------------------------------------------------------

  private handleAppResp(m: AppRespMessage): void {
    const pr = this.prs.get(m.from);
    if (!pr || m.from === this.id) return;
    pr.recentActive = true;
    if (m.reject) {
      let nextProbe = m.rejectHint;
      if (m.logTerm > 0) {
        // The follower's entry at rejectHint has term logTerm, so we can skip every index of
        // ours whose term is above it: they cannot match either.
        [nextProbe] = this.log.findConflictByTerm(m.rejectHint, m.logTerm);
      }
      if (pr.maybeDecrTo(m.index, nextProbe)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.sendAppendLoop(m.from, true);
      }
      return;
    }
    const updated = pr.maybeUpdate(m.index);
    if (updated || (pr.match === m.index && pr.state === ProgressState.Probe)) {
      if (pr.state === ProgressState.Probe) {
        pr.becomeReplicate();
      } else if (pr.state === ProgressState.Snapshot) {
        if (pr.match + 1 >= this.log.firstIndex()) {
          pr.becomeProbe();
          pr.becomeReplicate();
        } else if (pr.transfer !== undefined && pr.match >= pr.transfer.snapshot.meta.index) {
          // The follower holds the snapshot we sent, but we have compacted past it since:
          // send the newer one.
          pr.becomeSnapshot(this.log.snapshot());
          this.sendSnapshotChunks(m.from, pr);
        }
      } else {
        pr.inflights.freeLE(m.index);
      }
      if (this.maybeCommit()) {
        this.bcastAppend(true);
      }
      this.sendAppendLoop(m.from, false);
      if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) {
        this.sendTimeoutNow(m.from);
      }
    }
  }

  private handleHeartbeatResp(m: HeartbeatRespMessage): void {
    const pr = this.prs.get(m.from);
    if (!pr || m.from === this.id) return;
    pr.recentActive = true;
    pr.probeSent = false;
    if (pr.state === ProgressState.Replicate && pr.inflights.full()) {
      // Acks for a whole window may have been lost; free one slot so a probe gets through.
      pr.inflights.freeFirstOne();
    }
    if (pr.state === ProgressState.Snapshot) {
      const t = pr.transfer;
      if (t !== undefined) {
        if (!t.progressed) {
          // No chunk acknowledged for a heartbeat round: chunks were lost; go back to the
          // last acknowledged byte.
          t.sentBytes = t.ackedBytes;
          t.allSent = false;
          this.sendSnapshotChunks(m.from, pr);
        }
        t.progressed = false;
      }
    } else if (pr.match < this.log.lastIndex() || pr.state === ProgressState.Probe) {
      this.sendAppendLoop(m.from, true);
    }
    if (m.context !== undefined) {
      const acks = this.readOnly.recvAck(m.from, m.context);
      if (acks !== undefined && this.hasQuorum(acks)) {
        for (const rs of this.readOnly.advance(m.context)) this.answerRead(rs.from, rs.context, rs.index);
      }
    }
  }

  private handleSnapResp(m: SnapRespMessage): void {
    const pr = this.prs.get(m.from);
    if (!pr || m.from === this.id) return;
    pr.recentActive = true;
    const t = pr.transfer;
    if (pr.state !== ProgressState.Snapshot || t === undefined || m.snapIndex !== t.snapshot.meta.index) return;
    const total = t.snapshot.data.byteLength;
    const offset = Math.min(m.offset, total);
    t.progressed = true;
    if (m.reject) {
      t.ackedBytes = offset;
      t.sentBytes = offset;
      t.allSent = false;
    } else if (offset > t.ackedBytes) {
      t.ackedBytes = offset;
      if (t.sentBytes < offset) t.sentBytes = offset;
    }
    this.sendSnapshotChunks(m.from, pr);
  }

  private hasQuorum(acks: ReadonlySet<NodeId>): boolean {
    let n = 0;
    for (const id of this.voters) if (acks.has(id)) n++;
    return n >= majority(this.voters.length);
  }

  /** Sends one append, then more while flow control allows. */
  private sendAppendLoop(to: NodeId, sendIfEmpty: boolean): void {
    if (!this.maybeSendAppend(to, sendIfEmpty)) return;
    while (this.maybeSendAppend(to, false)) {
      // until paused or nothing left
    }
  }

  /**
   * Sends the follower the entries after its `next`, or starts a snapshot if those are
   * compacted. Returns whether an append was sent.
   */
  private maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to);
    if (!pr || to === this.id || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    const prevTerm = this.log.term(prevIndex);
    const last = this.log.lastIndex();
    const ents = prevTerm === undefined ? undefined : this.log.slice(pr.next, last + 1, this.cfg.msgBytesMax);
    if (prevTerm === undefined || ents === undefined) {
      pr.becomeSnapshot(this.log.snapshot());
      this.sendSnapshotChunks(to, pr);
      return false;
    }
    if (ents.length === 0 && !sendIfEmpty) return false;
    this.send({ kind: MessageKind.App, from: this.id, to, term: this.term, index: prevIndex, logTerm: prevTerm, entries: ents, commit: this.log.committed });
    if (pr.state === ProgressState.Replicate) {
      if (ents.length > 0) {
        const lastSent = ents[ents.length - 1]!.index;
        let bytes = 0;
        for (const e of ents) bytes += entryBytes(e);
        pr.optimisticUpdate(lastSent);
        pr.inflights.add(lastSent, bytes);
      }
    } else {
      pr.probeSent = true;
    }
    return true;
  }

  /** Streams snapshot chunks while the window allows (inflightMsgsMax chunks, inflightBytesMax bytes). */
  private sendSnapshotChunks(to: NodeId, pr: Progress): void {
    const t = pr.transfer;
    if (t === undefined) return;
    const total = t.snapshot.data.byteLength;
    const chunk = this.cfg.msgBytesMax;
    const window = Math.min(this.cfg.inflightMsgsMax * chunk, this.cfg.inflightBytesMax);
    while (!t.allSent && t.sentBytes - t.ackedBytes < window) {
      const offset = t.sentBytes;
      const end = Math.min(total, offset + chunk);
      this.send({ kind: MessageKind.Snap, from: this.id, to, term: this.term, meta: t.snapshot.meta, offset, totalBytes: total, data: t.snapshot.data.subarray(offset, end) });
      t.sentBytes = end;
      if (end === total) t.allSent = true;
    }
  }

  /** sendIfEmpty: also send when there are no new entries (to carry the commit index). */
  private bcastAppend(sendIfEmpty: boolean): void {
    for (const id of this.prs.keys()) {
      if (id !== this.id) this.sendAppendLoop(id, sendIfEmpty);
    }
  }

  private bcastHeartbeat(): void {
    const context = this.readOnly.lastKey();
    for (const [id, pr] of this.prs) {
      if (id === this.id) continue;
      this.send({ kind: MessageKind.Heartbeat, from: this.id, to: id, term: this.term, commit: Math.min(pr.match, this.log.committed), context });
    }
  }

  /**
   * Commits the largest index a majority of voters hold, but only if it is of this term:
   * an older entry counted on a majority can still be overwritten (the paper's Figure 8); it
   * becomes committed indirectly, with the first entry of ours.
   */
  private maybeCommit(): boolean {
    assert(this.voters.length > 0, 'a leader has voters');
    const mci = committedIndex(this.voters, (id) => this.prs.get(id)?.match ?? 0);
    if (mci <= this.log.committed) return false;
    if (this.log.term(mci) !== this.term) return false;
    this.log.commitTo(mci);
    this.releaseUncommitted();
    if (this.pendingReads.length > 0) {
      const reads = this.pendingReads;
      this.pendingReads = [];
      for (const r of reads) this.handleReadIndex(r.context, r.from);
    }
    return true;
  }

  private releaseUncommitted(): void {
    const c = this.log.committed;
    while (this.uncommittedHead < this.uncommitted.length && this.uncommitted[this.uncommittedHead]!.last <= c) {
      this.uncommittedBytes -= this.uncommitted[this.uncommittedHead]!.bytes;
      this.uncommittedHead++;
    }
    if (this.uncommittedHead > 1024 && this.uncommittedHead * 2 > this.uncommitted.length) {
      this.uncommitted = this.uncommitted.slice(this.uncommittedHead);
      this.uncommittedHead = 0;
    }
    assert(this.uncommittedBytes >= 0, 'uncommitted bytes never go negative');
  }

  /** RawNode.advance: entries up to the log's persisted index are on disk. */
  onPersisted(): void {
    if (this.role !== StateRole.Leader) return;
    const self = this.prs.get(this.id);
    if (!self) return;
    if (self.maybeUpdate(this.log.persistedIndex()) && this.maybeCommit()) this.bcastAppend(true);
  }

  // ---- proposals -----------------------------------------------------------------------------

  private refuse(reason: Refusal): { ok: false; reason: Refusal; lead: NodeId } {
    return { ok: false, reason, lead: this.lead };
  }

  private canPropose(): Refusal | undefined {
    if (this.role !== StateRole.Leader || !this.prs.has(this.id)) return Refusal.NotLeader;
    if (this.leadTransferee !== None) return Refusal.Transferring;
    return undefined;
  }

  /** Appends commands to the leader's log; all or none. */
  propose(datas: readonly Uint8Array[], type: EntryType = EntryType.Normal): ProposeResult {
    assert(datas.length > 0, 'a proposal carries at least one entry');
    const refusal = this.canPropose();
    if (refusal) return this.refuse(refusal);
    let bytes = 0;
    for (const d of datas) bytes += d.byteLength + EntryOverheadBytes;
    // A leader with nothing uncommitted takes any one proposal, so a single huge command is
    // slow rather than impossible.
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.uncommittedBytesMax) return this.refuse(Refusal.Overloaded);
    const first = this.log.lastIndex() + 1;
    const ents: Entry[] = new Array<Entry>(datas.length);
    for (let i = 0; i < datas.length; i++) ents[i] = { term: this.term, index: first + i, type, data: datas[i]! };
    this.log.append(ents);
    this.uncommittedBytes += bytes;
    this.uncommitted.push({ last: first + datas.length - 1, bytes });
    this.bcastAppend(false);
    return { ok: true, index: first, term: this.term };
  }

  proposeConfChange(cc: ConfChange): ProposeResult {
    const refusal = this.canPropose();
    if (refusal) return this.refuse(refusal);
    if (this.pendingConfIndex > this.log.applied) return this.refuse(Refusal.ConfChangePending);
    const voter = this.voters.includes(cc.node);
    const learner = this.learners.includes(cc.node);
    switch (cc.op) {
      case ConfChangeOp.AddLearner:
        if (voter || learner) return this.refuse(Refusal.InvalidConfChange);
        break;
      case ConfChangeOp.AddVoter: {
        if (!learner) return this.refuse(Refusal.InvalidConfChange);
        const pr = this.prs.get(cc.node);
        if (!pr || pr.match < this.log.committed) return this.refuse(Refusal.LearnerBehind);
        break;
      }
      case ConfChangeOp.Remove:
        if (!voter && !learner) return this.refuse(Refusal.InvalidConfChange);
        if (voter && this.voters.length === 1) return this.refuse(Refusal.InvalidConfChange);
        break;
    }
    const res = this.propose([encodeConfChange(cc)], EntryType.ConfChange);
    if (res.ok) this.pendingConfIndex = res.index;
    return res;
  }

  /** The caller applies a committed conf change entry; returns the new membership. */
  applyConfChange(cc: ConfChange): ConfState {
    const conf = applyToConf({ voters: this.voters, learners: this.learners }, cc);
    this.setConf(conf);
    if (this.role === StateRole.Leader) {
      if (!this.isVoter(this.id)) {
        // Removed: a leader that is not a voter must not decide for the group.
        this.becomeFollower(this.term, None);
      } else {
        if (this.leadTransferee !== None && !this.isVoter(this.leadTransferee)) this.leadTransferee = None;
        // The quorum may be smaller now, and new members need the log.
        if (this.maybeCommit()) this.bcastAppend(true);
        else this.bcastAppend(false);
      }
    }
    return this.confState();
  }

  private setConf(conf: ConfState): void {
    this.voters = conf.voters.slice();
    this.learners = conf.learners.slice();
    const members = new Set([...this.voters, ...this.learners]);
    for (const id of [...this.prs.keys()]) if (!members.has(id)) this.prs.delete(id);
    const next = this.log.lastIndex() + 1;
    for (const id of [...members].sort((a, b) => a - b)) {
      const isLearner = this.learners.includes(id);
      const pr = this.prs.get(id);
      if (pr) {
        pr.isLearner = isLearner;
      } else {
        const fresh = new Progress(next, this.cfg.inflightMsgsMax, this.cfg.inflightBytesMax, isLearner);
        if (id === this.id) {
          fresh.match = this.log.persistedIndex();
          fresh.recentActive = true;
        }
        this.prs.set(id, fresh);
      }
    }
  }

  // ---- reads ---------------------------------------------------------------------------------

  /** ReadIndex: asks for a read point; the answer arrives as a ReadState in a later Ready. */
  readIndex(context: string): RequestResult {
    if (this.role === StateRole.Leader) return this.handleReadIndex(context, this.id);
    if (this.lead === None || this.role !== StateRole.Follower) return this.refuse(Refusal.NotLeader);
    this.send({ kind: MessageKind.ReadIndex, from: this.id, to: this.lead, term: this.term, context });
    return { ok: true };
  }

  private handleReadIndex(context: string, from: NodeId): RequestResult {
    if (this.readOnly.size + this.pendingReads.length >= this.cfg.readIndexPendingMax) return this.refuse(Refusal.Overloaded);
    if (this.log.term(this.log.committed) !== this.term) {
      // Until an entry of our term commits, our commit index may lag entries a previous leader
      // committed (and acknowledged): wait for it.
      this.pendingReads.push({ context, from });
      return { ok: true };
    }
    if (this.voters.length === 1 && this.voters[0] === this.id) {
      this.answerRead(from, context, this.log.committed);
      return { ok: true };
    }
    const key = this.readOnly.add(this.log.committed, context, from, this.id);
    if (key !== undefined) this.bcastHeartbeat();
    return { ok: true };
  }

  private answerRead(from: NodeId, context: string, index: number): void {
    if (from === this.id) this.readStates.push({ index, context });
    else this.send({ kind: MessageKind.ReadIndexResp, from: this.id, to: from, term: this.term, context, index });
  }

  // ---- leadership transfer -------------------------------------------------------------------

  transferLeader(to: NodeId): RequestResult {
    if (this.role !== StateRole.Leader) return this.refuse(Refusal.NotLeader);
    if (to === this.id || !this.isVoter(to)) return this.refuse(Refusal.InvalidTarget);
    if (this.leadTransferee === to) return { ok: true };
    this.leadTransferee = to;
    // The transfer must finish within an election timeout (tickHeartbeat abandons it).
    this.electionElapsed = 0;
    const pr = this.prs.get(to);
    assert(pr !== undefined, 'a voter has progress');
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(to);
    else this.sendAppendLoop(to, true);
    return { ok: true };
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send({ kind: MessageKind.TimeoutNow, from: this.id, to, term: this.term });
  }

  /** The transport could not reach `to`: stop streaming optimistically, probe instead. */
  reportUnreachable(to: NodeId): void {
    const pr = this.prs.get(to);
    if (this.role === StateRole.Leader && pr && pr.state === ProgressState.Replicate) pr.becomeProbe();
  }

  // ---- output --------------------------------------------------------------------------------

  private send(m: Message): void {
    assert(m.to !== this.id, 'a node never sends to itself');
    if (this.msgs.length >= this.cfg.outboxMsgsMax) {
      // Raft survives lost messages; an unbounded outbox would not survive a stalled caller.
      this.msgsDropped++;
      return;
    }
    this.msgs.push(m);
  }
}
