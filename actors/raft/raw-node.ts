import { assert } from '../../runtime/errors.js';
import type { ConfChange } from './conf-change.js';
import type { RaftConfigInput } from './config.js';
import { Raft, type ProposeResult, type RequestResult } from './raft.js';
import type { ProgressState } from './progress.js';
import { isHardStateEqual, StateRole, type ConfState, type Entry, type HardState, type Message, type NodeId, type ReadState, type Snapshot, type SoftState } from './types.js';

/**
 * Everything the core wants done, handed out at once. The caller must handle it in this order:
 *
 *   1. persist `snapshot` (if any), then `entries` (replacing any stored entries from
 *      entries[0].index on), then `hardState` (if any) — one write;
 *   2. make that write durable (fsync; with lmdb-js, `await db.flushed`) when `mustSync`;
 *   3. only then send `messages` (a vote or an append ack must never leave before its fsync);
 *   4. install `snapshot` into the state machine, then apply `committedEntries` in order
 *      (calling applyConfChange for conf change entries), and serve `readStates` once applied
 *      reaches their index;
 *   5. call advance().
 *
 * The core may be stepped and ticked between ready() and advance() (while the write is in
 * flight); what that produces goes into the next Ready. Only one Ready is outstanding at a time.
 */
export interface Ready {
  /** Present when the leader or the role changed. */
  readonly softState: SoftState | undefined;
  /** Present when term, vote or commit changed. */
  readonly hardState: HardState | undefined;
  /** Entries to append to storage. */
  readonly entries: readonly Entry[];
  /** A snapshot received from the leader, to persist and install. */
  readonly snapshot: Snapshot | undefined;
  /** Committed entries to apply, after the persisting above (they may include `entries`). */
  readonly committedEntries: readonly Entry[];
  /** To send once the write is durable. */
  readonly messages: readonly Message[];
  /** Read points confirmed since the last Ready. */
  readonly readStates: readonly ReadState[];
  /** Whether the write must be fsynced before sending (new entries, a vote, a new term). */
  readonly mustSync: boolean;
}

export interface ProgressStatus {
  readonly match: number;
  readonly next: number;
  readonly state: ProgressState;
  readonly isLearner: boolean;
  readonly recentActive: boolean;
}

export interface Status {
  readonly id: NodeId;
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
  readonly applied: number;
  readonly lead: NodeId;
  readonly role: StateRole;
  readonly firstIndex: number;
  readonly lastIndex: number;
  readonly conf: ConfState;
  readonly leadTransferee: NodeId;
  /** Leader only: a view of each member. */
  readonly progress: ReadonlyMap<NodeId, ProgressStatus> | undefined;
  /** Messages dropped because Readies were not drained fast enough. */
  readonly msgsDropped: number;
}

/**
 * The core as the caller drives it (etcd's RawNode): tick, step, propose, then ready/advance.
 * Not thread-safe and never asynchronous: the caller owns the loop.
 */
export class RawNode {
  readonly raft: Raft;
  private prevSoft: SoftState;
  private prevHard: HardState;
  /** The Ready handed out and not yet advanced. */
  private outstanding: Ready | undefined = undefined;

  constructor(config: RaftConfigInput) {
    this.raft = new Raft(config);
    this.prevSoft = { lead: this.raft.lead, role: this.raft.role };
    this.prevHard = this.raft.hardState();
  }

  tick(): void {
    this.raft.tick();
  }

  /** Feeds a message from a peer (validated by the transport). */
  step(m: Message): void {
    this.raft.step(m);
  }

  /** Proposes one command; see proposeBatch. */
  propose(data: Uint8Array): ProposeResult {
    return this.raft.propose([data]);
  }

  /** Proposes commands as consecutive entries, all or none: one call per batch keeps the
   * per-proposal work (and the messages) down. */
  proposeBatch(datas: readonly Uint8Array[]): ProposeResult {
    return this.raft.propose(datas);
  }

  proposeConfChange(cc: ConfChange): ProposeResult {
    return this.raft.proposeConfChange(cc);
  }

  /** Call for every committed conf change entry while applying, in log order. */
  applyConfChange(cc: ConfChange): ConfState {
    return this.raft.applyConfChange(cc);
  }

  /** Asks for a linearizable read point; it arrives as a ReadState with this context. */
  readIndex(context: string): RequestResult {
    return this.raft.readIndex(context);
  }

  /** Leader only: hands leadership to `to` (a voter) once it has the whole log. */
  transferLeader(to: NodeId): RequestResult {
    return this.raft.transferLeader(to);
  }

  /** Campaigns now, as if the election timeout had passed. */
  campaign(): void {
    this.raft.hup(false);
  }

  reportUnreachable(id: NodeId): void {
    this.raft.reportUnreachable(id);
  }

  hasReady(): boolean {
    if (this.outstanding) return false;
    const r = this.raft;
    const u = r.log.unstable;
    if (r.lead !== this.prevSoft.lead || r.role !== this.prevSoft.role) return true;
    if (!isHardStateEqual(r.hardState(), this.prevHard)) return true;
    if (u.hasNextEntries() || u.hasNextSnapshot()) return true;
    if (r.msgs.length > 0 || r.readStates.length > 0) return true;
    return r.log.hasNextCommittedEntries();
  }

  /** Hands out what to persist, send and apply (see Ready). Call advance() when done. */
  ready(): Ready {
    assert(this.outstanding === undefined, 'one Ready at a time: advance() the previous one first');
    const r = this.raft;
    const log = r.log;
    const u = log.unstable;
    const entries = u.hasNextEntries() ? u.nextEntries() : [];
    const snapshot = u.hasNextSnapshot() ? u.snapshot : undefined;
    const committedEntries = log.nextCommittedEntries(r.cfg.committedBytesPerReadyMax);
    const hard = r.hardState();
    const hardChanged = !isHardStateEqual(hard, this.prevHard);
    const soft: SoftState = { lead: r.lead, role: r.role };
    const softChanged = soft.lead !== this.prevSoft.lead || soft.role !== this.prevSoft.role;
    const mustSync = entries.length > 0 || snapshot !== undefined || hard.term !== this.prevHard.term || hard.vote !== this.prevHard.vote;
    const rd: Ready = {
      softState: softChanged ? soft : undefined,
      hardState: hardChanged ? hard : undefined,
      entries,
      snapshot,
      committedEntries,
      messages: r.takeMessages(),
      readStates: r.takeReadStates(),
      mustSync,
    };
    u.acceptInProgress();
    if (committedEntries.length > 0) log.acceptApplying(committedEntries[committedEntries.length - 1]!.index);
    if (hardChanged) this.prevHard = hard;
    if (softChanged) this.prevSoft = soft;
    this.outstanding = rd;
    return rd;
  }

  /** The outstanding Ready has been persisted, sent and applied. */
  advance(): void {
    const rd = this.outstanding;
    assert(rd !== undefined, 'advance() follows ready()');
    const log = this.raft.log;
    if (rd.snapshot) {
      log.unstable.stableSnapTo(rd.snapshot.meta.index);
      // The state machine now holds the snapshot.
      if (rd.snapshot.meta.index > log.applied) log.appliedTo(rd.snapshot.meta.index);
    }
    if (rd.entries.length > 0) {
      const last = rd.entries[rd.entries.length - 1]!;
      log.unstable.stableTo(last.index, last.term);
    }
    if (rd.committedEntries.length > 0) log.appliedTo(rd.committedEntries[rd.committedEntries.length - 1]!.index);
    this.outstanding = undefined;
    this.raft.onPersisted();
  }

  /** Whether a Ready is out (between ready() and advance()). */
  get readyOutstanding(): boolean {
    return this.outstanding !== undefined;
  }

  status(): Status {
    const r = this.raft;
    let progress: Map<NodeId, ProgressStatus> | undefined;
    if (r.role === StateRole.Leader) {
      progress = new Map();
      for (const [id, pr] of r.prs) progress.set(id, { match: pr.match, next: pr.next, state: pr.state, isLearner: pr.isLearner, recentActive: pr.recentActive });
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      commit: r.log.committed,
      applied: r.log.applied,
      lead: r.lead,
      role: r.role,
      firstIndex: r.log.firstIndex(),
      lastIndex: r.log.lastIndex(),
      conf: r.confState(),
      leadTransferee: r.leadTransferee,
      progress,
      msgsDropped: r.msgsDropped,
    };
  }
}
