import { Packr } from 'msgpackr';
import { FastpacaError, assert } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { decodeConfChange, type ConfChange } from '../raft/conf-change.js';
import type { Random } from '../raft/random.js';
import { RawNode } from '../raft/raw-node.js';
import type { InitialState, Storage } from '../raft/storage.js';
import { EntryType, MessageKind, StateRole, type ConfState, type Entry, type Message, type Snapshot } from '../raft/types.js';
import type { RaftWal, WalGroupStorage } from '../raft/wal-storage.js';
import { applySafely, type MachineOptions } from './state-machine.js';
import type { StateView } from './state-view.js';
import type { Command, CommandResult } from './types.js';

export interface ReplicasOptions {
  /** This node's Raft id in every group it replicates (positive). */
  raftId: number;
  /** The groups this thread replicates. */
  groups: readonly number[];
  /** Their Raft state: one log for all of them (one fdatasync per round). */
  wal: RaftWal;
  /** The state machine's storage: commands are applied through it. */
  view: StateView;
  machine: MachineOptions;
  /** The Raft index up to which `view` already holds group g's commands (0: none). */
  appliedOf: (group: number) => number;
  /**
   * The voters a group that has no Raft state yet is founded with; none: the group is left
   * empty, for a leader to bring up to date with a snapshot once it adds this node.
   */
  founders: (group: number) => number[];
  /** A membership change of `group` was applied here (this node may have left it). */
  confApplied?: (group: number, conf: ConfState) => void;
  /** The election timer's randomness, one source per group. */
  random: (group: number) => Random;
  log: Logger;
  /** Proposals waiting for the next round before new ones are refused with 503 `overloaded`. */
  queuedMax: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  /**
   * Group g's state as the state store has committed it, and the Raft index it reaches: the
   * data of a snapshot for a follower that fell behind the compacted log. Without it (tests of
   * single groups) a group never compacted is never behind.
   */
  snapshotOf?: (group: number) => { index: number; data: Uint8Array };
  /** Replaces group g's state in `view` with a leader's snapshot (installed, or replayed after a restart). */
  install?: (group: number, snapshot: Snapshot) => void;
  /**
   * Takes a leader's appends, heartbeats and snapshot chunks before the round's fsync, to send
   * them at once: a leader may write its log in parallel with replicating it (Raft thesis
   * §10.2.1), because it counts itself towards a commit only once its own write is durable.
   * Without it they leave with the round's other messages, after the fsync.
   */
  sendEarly?: (messages: Array<{ group: number; message: Message }>) => void;
}

/**
 * Leading, not since this Ready, and in the term an earlier round made durable (`durableTerm`,
 * the term in storage before this Ready is written): a single voter can lose and win again in a
 * newer term while a round's fsync is in flight, and must not send in that term before it is on
 * disk.
 */
function sendsEarly(node: RawNode, rd: ReturnType<RawNode['ready']>, durableTerm: number): boolean {
  return node.raft.role === StateRole.Leader && rd.softState === undefined && (rd.hardState === undefined || rd.hardState.term === durableTerm);
}

/** What a leader may send before its own log write is durable. */
const EarlyKinds: ReadonlySet<string> = new Set([MessageKind.App, MessageKind.Heartbeat, MessageKind.Snap]);

/** What GET /v1/cluster shows of a group. */
export interface GroupStatus {
  group: number;
  role: StateRole;
  /** Raft id of the leader this replica knows of (0: none). */
  leader: number;
  term: number;
  commit: number;
  applied: number;
  firstIndex: number;
  lastIndex: number;
  voters: readonly number[];
  learners: readonly number[];
  /** Leader only: per replica, the index it is known to hold. */
  match?: Record<number, number>;
}

/** What a round hands back to its caller. */
export interface RoundResult {
  /** Messages for other nodes, to send now that the round's writes are durable. */
  messages: Array<{ group: number; message: Message }>;
  /** Per group, the Raft index its applied commands now reach (for the state store's stamp). */
  applied: Map<number, number>;
}

interface Proposal {
  cmd: Command;
  resolve: (r: CommandResult) => void;
  reject: (err: Error) => void;
}

interface Waiter {
  term: number;
  resolve: (r: CommandResult) => void;
  reject: (err: Error) => void;
  /** Waits for a membership change rather than a command. */
  conf?: true;
}

interface ReadWaiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

/** Ready passes per round: a single voter needs two (persist, then apply what that committed). */
const PassesMax = 8;

/** A pass's Readies; `early`: whether its leader may send before the fsync (decided at ready()). */
type Readies = Array<{ g: number; node: RawNode; rd: ReturnType<RawNode['ready']>; early: boolean }>;

/**
 * The Raft groups of one thread, each a RawNode over the thread's RaftWal, applying committed
 * commands to the context state machine and answering their proposers. A round is the Ready
 * contract for all groups at once: persist every group's Ready with one write and one fdatasync
 * (on this thread with round(), on libuv's pool with roundDeferred()), then hand out the
 * messages, then apply the committed
 * entries in order, then advance. A proposal is answered when its entry is applied with the
 * term it was proposed in; if another term's entry takes its index, or its group's leader steps
 * down first, it is answered 503 `unavailable` (it may still be applied later, once: the 503
 * contract, exact with an idempotency key).
 *
 * Also here: linearizable reads (ReadIndex), membership changes, snapshots (built from the state
 * store through `snapshotOf`, installed through `install`). ReplicaHost drives it on a cluster
 * node: it carries the messages, ticks, and compacts (docs/replication.md).
 */
export class GroupReplicas {
  private readonly nodes = new Map<number, RawNode>();
  private readonly packr = new Packr({ useRecords: false });
  /** Proposals for the next round, per group, in arrival order. */
  private queued = new Map<number, Proposal[]>();
  private queuedCount = 0;
  /** Proposals in the log, waiting to be applied: per group, by index. */
  private readonly waiting = new Map<number, Map<number, Waiter>>();
  /** Set when the log could not be written: nothing is proposed or persisted any more. */
  private failed: Error | undefined;
  /**
   * Groups that may have a Ready: those proposed to, campaigned, or handed a Ready in the last
   * pass (advance can make another). A round looks only at these, not at every group.
   */
  private active = new Set<number>();
  /** A conf change was applied this round: its membership must be persisted before the round ends. */
  private confChanged = false;
  /** Linearizable reads waiting for the next round, per group. */
  private queuedReads = new Map<number, ReadWaiter[]>();
  /** Read points asked of the core, by context, until their ReadState arrives. */
  private readonly readsAsked = new Map<string, { group: number; waiters: ReadWaiter[] }>();
  /** Read points confirmed but not applied here yet, per group, oldest first. */
  private readonly readsParked = new Map<number, Array<{ index: number; waiters: ReadWaiter[] }>>();
  private readContext = 0;

  constructor(private readonly opts: ReplicasOptions) {
    let founded = false;
    for (const g of opts.groups) {
      const storage = opts.wal.group(g);
      const founders = storage.hasState() ? [] : opts.founders(g);
      if (founders.length > 0) {
        storage.bootstrap({ voters: founders, learners: [] });
        founded = true;
      }
    }
    if (founded) opts.wal.persist();
    for (const g of opts.groups) {
      const storage = opts.wal.group(g);
      const snap = storage.snapshot();
      const snapshots = opts.snapshotOf === undefined ? undefined : new StoreSnapshots(storage, () => opts.snapshotOf!(g));
      if (snap.meta.index > opts.appliedOf(g) && snap.data.byteLength > 0) {
        // A leader's snapshot the state store did not hold durably before the stop: install it again.
        assert(opts.install !== undefined, `group ${g} has a snapshot to install and nothing to install it with`);
        opts.install(g, snap);
      }
      const applied = Math.max(opts.appliedOf(g), snap.meta.index);
      const hs = storage.hardState();
      if (applied > hs.commit) {
        // The state store is ahead of the persisted commit index (a commit-only change is not
        // fsynced). Nothing is applied before it is committed and in the local log, so it was.
        assert(applied <= storage.lastIndex(), `group ${g}: the state store holds index ${applied}, beyond its Raft log (${storage.lastIndex()}): the data directory is inconsistent`);
        storage.setHardState({ ...hs, commit: applied });
      }
      this.nodes.set(
        g,
        new RawNode({
          id: opts.raftId,
          storage: snapshots ?? storage,
          random: opts.random(g),
          applied,
          ...(opts.electionTicks === undefined ? {} : { electionTicks: opts.electionTicks }),
          ...(opts.heartbeatTicks === undefined ? {} : { heartbeatTicks: opts.heartbeatTicks }),
        }),
      );
      // The core reads the snapshot's index when it starts: the log's own, not a copy of the store.
      if (snapshots) snapshots.live = true;
      this.waiting.set(g, new Map());
      // A restarted group has committed entries to apply before anything else happens to it.
      this.active.add(g);
    }
  }

  /** A group whose only voter is this node elects itself at once instead of after a timeout. */
  campaignAlone(): void {
    for (const node of this.nodes.values()) {
      const { voters } = node.status().conf;
      if (voters.length === 1 && voters[0] === this.opts.raftId && node.raft.role !== StateRole.Leader) node.campaign();
    }
    for (const g of this.nodes.keys()) this.active.add(g);
  }

  /** One tick of every group's clock (elections, heartbeats). */
  tick(): void {
    for (const [g, node] of this.nodes) {
      node.tick();
      this.active.add(g);
    }
  }

  /** A message from a peer for `group` (validated by the transport); unknown groups are ignored. */
  step(group: number, message: Message): void {
    const node = this.nodes.get(group);
    if (node === undefined) return;
    node.step(message);
    this.active.add(group);
  }

  /**
   * The state store holds each group's commands durably up to `applied` (its stamp is on disk):
   * those entries leave the Raft log's memory, and log segments no group needs any more are
   * deleted. Without this the log and its memory only grow. (With peers, a lagging follower's
   * entries are kept up to a bound, then it gets a snapshot: the cluster's part.)
   */
  compactTo(applied: ReadonlyMap<number, number>): void {
    if (this.failed) return;
    for (const [g, index] of applied) {
      const storage = this.opts.wal.group(g);
      // At the compaction point itself, compact() drops an installed snapshot's data.
      if (!this.nodes.has(g) || index < storage.snapshot().meta.index) continue;
      assert(index <= storage.hardState().commit, `group ${g}: only committed entries are compacted (${index} > ${storage.hardState().commit})`);
      storage.compact(index);
    }
    this.opts.wal.collect();
  }

  /** Whether this node leads `group` now (never once the set has failed: it cannot commit). */
  leads(group: number): boolean {
    return this.failed === undefined && this.nodes.get(group)?.raft.role === StateRole.Leader;
  }

  /** The Raft id of the leader of `group` this replica knows of, 0 for none (or not replicated here). */
  leaderOf(group: number): number {
    if (this.failed) return 0;
    return this.nodes.get(group)?.raft.lead ?? 0;
  }

  /**
   * Resolves once this replica, the group's leader, has applied everything committed when the
   * read was asked, confirmed by a quorum (ReadIndex): a read served then is linearizable, even
   * if a newer leader was elected elsewhere meanwhile. Reads of one round share one confirmation.
   */
  readIndex(group: number): Promise<void> {
    const refused = this.refusal(group);
    if (refused) return Promise.reject(refused);
    this.active.add(group);
    return new Promise((resolve, reject) => this.enqueue(this.queuedReads, group, { resolve, reject }));
  }

  /** Why a proposal or read for `group` is refused before it is queued, if it is. */
  private refusal(group: number): FastpacaError | undefined {
    if (this.failed) return unavailable('the Raft log cannot be written; the node must restart');
    if (!this.nodes.has(group)) return unavailable(`group ${group} is not replicated here`);
    if (this.queuedCount >= this.opts.queuedMax) return new FastpacaError('overloaded', 'too many requests are waiting; retry shortly', { retryAfterS: 1 });
    return undefined;
  }

  private enqueue<T>(queues: Map<number, T[]>, group: number, item: T): void {
    let list = queues.get(group);
    if (list === undefined) queues.set(group, (list = []));
    list.push(item);
    this.queuedCount++;
  }

  /** Whether this node is a voter or learner of `group` (as of its last applied membership). */
  member(group: number): boolean {
    const conf = this.nodes.get(group)?.status().conf;
    return conf !== undefined && (conf.voters.includes(this.opts.raftId) || conf.learners.includes(this.opts.raftId));
  }

  /**
   * Proposes a membership change of `group` on its leader; resolves once it is applied here.
   * One change at a time per group; a learner is promoted only once it has caught up.
   */
  changeMembership(group: number, cc: ConfChange): Promise<void> {
    const node = this.nodes.get(group);
    if (this.failed) return Promise.reject(unavailable('the Raft log cannot be written; the node must restart'));
    if (node === undefined || node.raft.role !== StateRole.Leader) return Promise.reject(unavailable(`this node does not lead group ${group}`));
    const r = node.proposeConfChange(cc);
    if (!r.ok) return Promise.reject(new FastpacaError('conflict', `group ${group} refused the membership change (${r.reason})`, { extra: { reason: r.reason } }));
    this.active.add(group);
    return new Promise((resolve, reject) => {
      this.waiting.get(group)!.set(r.index, { term: r.term, resolve: () => resolve(), reject, conf: true });
    });
  }

  /** Asks the leader of `group` to hand leadership to `to` (a caught-up voter). */
  transferLeader(group: number, to: number): boolean {
    const node = this.nodes.get(group);
    if (node === undefined || node.raft.role !== StateRole.Leader) return false;
    const r = node.transferLeader(to);
    this.active.add(group);
    return r.ok;
  }

  /** On a group's leader: the lowest index any replica is known to hold; otherwise undefined. */
  lowestMatch(group: number): number | undefined {
    const node = this.nodes.get(group);
    if (node === undefined || node.raft.role !== StateRole.Leader) return undefined;
    let lowest = Infinity;
    for (const pr of node.raft.prs.values()) lowest = Math.min(lowest, pr.match);
    return lowest;
  }

  /** The groups replicated here, ascending. */
  get groups(): number[] {
    return [...this.nodes.keys()].sort((a, b) => a - b);
  }

  status(group: number): GroupStatus | undefined {
    const node = this.nodes.get(group);
    if (node === undefined) return undefined;
    const st = node.status();
    const out: GroupStatus = {
      group,
      role: st.role,
      leader: st.lead,
      term: st.term,
      commit: st.commit,
      applied: st.applied,
      firstIndex: st.firstIndex,
      lastIndex: st.lastIndex,
      voters: st.conf.voters,
      learners: st.conf.learners,
    };
    if (st.progress !== undefined) out.match = Object.fromEntries([...st.progress].map(([id, p]) => [id, p.match]));
    return out;
  }

  /** Queues `cmd` for `group`'s next round; resolves once it is applied. */
  propose(group: number, cmd: Command): Promise<CommandResult> {
    const refused = this.refusal(group);
    if (refused) return Promise.reject(refused);
    return new Promise((resolve, reject) => this.enqueue(this.queued, group, { cmd, resolve, reject }));
  }

  /**
   * Proposes what is queued, then runs the Ready contract for every group that has one, with
   * the round's fdatasync on this thread. A throw (a bug, or storage refusing) fails the whole
   * set: Readies handed out and not advanced would otherwise wedge their groups.
   */
  round(): RoundResult {
    const result: RoundResult = { messages: [], applied: new Map() };
    if (this.failed) return result;
    try {
      this.runRound(result, false);
    } catch (err) {
      this.fail(err);
      throw err;
    }
    return result;
  }

  /**
   * As round(), but a pass that must be made durable writes it, hands out what may leave before
   * the fsync, and resolves after its fdatasync (on libuv's pool) and what follows it: the thread
   * goes on stepping, ticking and queueing meanwhile, and that work makes the next round. The
   * caller runs one at a time; `hasWork()` says whether another is due. Rejects (and fails the
   * set) as round() throws.
   */
  async roundDeferred(): Promise<RoundResult> {
    const result: RoundResult = { messages: [], applied: new Map() };
    if (this.failed) return result;
    try {
      await this.runRound(result, true);
    } catch (err) {
      this.fail(err);
      throw err;
    }
    return result;
  }

  /** Whether a round has something to do: queued work, or a group with a Ready. */
  hasWork(): boolean {
    if (this.failed) return false;
    if (this.queued.size > 0 || this.queuedReads.size > 0) return true;
    for (const g of this.active) if (this.nodes.get(g)!.hasReady()) return true;
    return false;
  }

  private runRound(result: RoundResult, defer: boolean): Promise<void> | undefined {
    this.proposeQueued();
    for (let pass = 0; pass < PassesMax; pass++) {
      const readies: Readies = [];
      for (const g of this.active) {
        const node = this.nodes.get(g)!;
        if (!node.hasReady()) continue;
        const rd = node.ready();
        readies.push({ g, node, rd, early: sendsEarly(node, rd, this.opts.wal.group(g).hardState().term) });
      }
      this.active = new Set(readies.map((r) => r.g));
      if (readies.length === 0) break;
      let sync = false;
      for (const { g, rd } of readies) {
        const storage = this.opts.wal.group(g);
        if (rd.snapshot !== undefined) {
          assert(this.opts.install !== undefined, `group ${g}: a leader's snapshot arrived and there is nothing to install it with`);
          // Kept in the log (data included) until the state store holds it durably.
          storage.applySnapshot(rd.snapshot);
        }
        storage.append(rd.entries);
        if (rd.hardState) storage.setHardState(rd.hardState);
        sync ||= rd.mustSync;
      }
      if (sync && defer) {
        // Written now, durable later: the early messages leave once the write is issued. Even if
        // sending throws, the round settles only with its fdatasync.
        const durable = this.opts.wal.persistDeferred();
        let sendFailed: { err: unknown } | undefined;
        try {
          this.sendEarly(readies);
        } catch (err) {
          if (durable === undefined) throw err;
          sendFailed = { err };
        }
        if (durable !== undefined) {
          return durable.then(() => {
            if (sendFailed) throw sendFailed.err;
            if (this.failed) return;
            this.afterPersist(readies, true, result);
            this.persistConfChanges();
          });
        }
      } else if (sync) {
        this.sendEarly(readies);
        if (!this.persist()) return undefined;
      }
      this.afterPersist(readies, sync, result);
    }
    this.persistConfChanges();
    return undefined;
  }

  /**
   * Sends what a leader may send before its own fsync (Raft thesis §10.2.1): appends,
   * heartbeats and snapshots, from a leader that was already leading in an earlier round (whose
   * fsync made its term and vote durable; a leader elected now waits for this round's).
   */
  private sendEarly(readies: Readies): void {
    const early = this.opts.sendEarly;
    if (early === undefined) return;
    const out: Array<{ group: number; message: Message }> = [];
    for (const { g, rd, early: may } of readies) {
      if (!may) continue;
      for (const message of rd.messages) if (EarlyKinds.has(message.kind)) out.push({ group: g, message });
    }
    if (out.length > 0) early(out);
  }

  /** The rest of the Ready contract once the pass is durable: messages, reads, snapshots, apply, advance. */
  private afterPersist(readies: Readies, sync: boolean, result: RoundResult): void {
    const early = this.opts.sendEarly;
    for (const { g, rd, early: may } of readies) {
      const sent = early !== undefined && sync && may;
      for (const message of rd.messages) if (!(sent && EarlyKinds.has(message.kind))) result.messages.push({ group: g, message });
    }
    for (const { g, node, rd } of readies) {
      for (const rs of rd.readStates) {
        const asked = this.readsAsked.get(rs.context);
        if (asked === undefined) continue;
        this.readsAsked.delete(rs.context);
        let parked = this.readsParked.get(g);
        if (parked === undefined) this.readsParked.set(g, (parked = []));
        parked.push({ index: rs.index, waiters: asked.waiters });
      }
      if (rd.snapshot !== undefined) {
        // Everything this replica held of the group is replaced; a proposal waiting here is not
        // going to be answered by its entry (this replica does not lead).
        this.failWaiters(g, 'the group lost its leader; retry');
        this.opts.install!(g, rd.snapshot);
        result.applied.set(g, rd.snapshot.meta.index);
      }
      for (const e of rd.committedEntries) this.applyEntry(g, node, e);
      if (rd.committedEntries.length > 0) result.applied.set(g, rd.committedEntries[rd.committedEntries.length - 1]!.index);
      // A leader that stepped down will not commit what it was asked: say so now.
      if (rd.softState !== undefined && rd.softState.role !== StateRole.Leader) this.failWaiters(g, 'the group lost its leader; retry');
      node.advance();
      this.releaseReads(g, node.raft.log.applied);
    }
  }

  /** Membership entries applied this round are remembered durably before the round ends. */
  private persistConfChanges(): void {
    if (!this.confChanged) return;
    this.confChanged = false;
    // Throws on failure: the round's stamps must not let the store pass a membership the log lost.
    if (!this.persist()) throw this.failed;
  }

  /** One write and one fdatasync for every group; a storage failure fails the set (no throw). */
  private persist(): boolean {
    try {
      this.opts.wal.persist();
      return true;
    } catch (err) {
      this.fail(err);
      return false;
    }
  }

  /** Answers the reads whose confirmed point this replica has now applied. */
  private releaseReads(g: number, applied: number): void {
    const parked = this.readsParked.get(g);
    if (parked === undefined) return;
    while (parked.length > 0 && parked[0]!.index <= applied) for (const w of parked.shift()!.waiters) w.resolve();
    if (parked.length === 0) this.readsParked.delete(g);
  }

  private askReads(): void {
    const queued = this.queuedReads;
    this.queuedReads = new Map();
    for (const [g, waiters] of queued) {
      this.queuedCount -= waiters.length;
      const node = this.nodes.get(g)!;
      if (node.raft.role !== StateRole.Leader) {
        const err = unavailable(`this node does not lead group ${g} now; retry`);
        for (const w of waiters) w.reject(err);
        continue;
      }
      const context = `${g}:${++this.readContext}`;
      const r = node.readIndex(context);
      if (!r.ok) {
        const err = r.reason === 'overloaded' ? new FastpacaError('overloaded', 'too many reads are waiting for this group; retry shortly', { retryAfterS: 1 }) : unavailable(`group ${g} cannot serve a read now (${r.reason}); retry`);
        for (const w of waiters) w.reject(err);
        continue;
      }
      this.readsAsked.set(context, { group: g, waiters });
      this.active.add(g);
    }
  }

  private proposeQueued(): void {
    this.askReads();
    const queued = this.queued;
    this.queued = new Map();
    for (const list of queued.values()) this.queuedCount -= list.length;
    for (const [g, list] of queued) {
      const node = this.nodes.get(g)!;
      this.active.add(g);
      if (node.raft.role !== StateRole.Leader) {
        const err = unavailable(`this node does not lead group ${g} now; retry`);
        for (const p of list) p.reject(err);
        continue;
      }
      const r = node.proposeBatch(list.map((p) => Uint8Array.prototype.slice.call(this.packr.pack(p.cmd))));
      if (!r.ok) {
        const err = r.reason === 'overloaded' ? new FastpacaError('overloaded', 'too many writes are waiting for this group; retry shortly', { retryAfterS: 1 }) : unavailable(`group ${g} refused the write (${r.reason}); retry`);
        for (const p of list) p.reject(err);
        continue;
      }
      const waiting = this.waiting.get(g)!;
      list.forEach((p, i) => waiting.set(r.index + i, { term: r.term, resolve: p.resolve, reject: p.reject }));
    }
  }

  private applyEntry(g: number, node: RawNode, e: Entry): void {
    let waiter = this.waiting.get(g)!.get(e.index);
    if (waiter !== undefined) this.waiting.get(g)!.delete(e.index);
    if (e.type === EntryType.ConfChange) {
      // The membership is the Raft log's to keep (the state store's applied index may pass this
      // entry, and then it is not applied again after a restart); persisted before the round ends.
      // After a restart behind the store's stamp, the entries up to the newest remembered
      // membership come again: the core started with that membership, so they are not re-applied.
      const storage = this.opts.wal.group(g);
      if (e.index > storage.confIndex()) {
        const conf = node.applyConfChange(decodeConfChange(e.data));
        storage.setConfState(conf, e.index);
        this.confChanged = true;
        this.opts.confApplied?.(g, conf);
      }
      if (waiter?.conf && waiter.term === e.term) waiter.resolve(null as unknown as CommandResult);
      // A command waiting at this index was replaced by another term's entry.
      else waiter?.reject(unavailable('the write was replaced by a new leader; retry'));
      return;
    }
    if (e.data.byteLength === 0 || waiter?.conf) {
      // A new leader's empty entry, or a command where a membership change was proposed: the
      // proposal waiting at this index was replaced.
      waiter?.reject(unavailable('the write was replaced by a new leader; retry'));
      if (e.data.byteLength === 0) return;
      waiter = undefined;
    }
    let cmd: Command;
    try {
      cmd = this.packr.unpack(e.data) as Command;
    } catch (err) {
      // Every replica holds the same bytes and skips them alike; the leader encoded them, so this is a bug.
      this.opts.log.error('a committed entry does not decode; skipped', { err, group: g, index: e.index });
      waiter?.reject(new FastpacaError('internal', 'the write could not be decoded'));
      return;
    }
    const result = applySafely(this.opts.view, cmd, this.opts.machine, (err) => this.opts.log.error('apply failed', { err, kind: cmd.t, id: cmd.id, group: g, index: e.index }));
    if (waiter === undefined) return;
    if (waiter.term !== e.term) return waiter.reject(unavailable('the write was replaced by a new leader; retry'));
    if (result instanceof Error) waiter.reject(result);
    else waiter.resolve(result);
  }

  private failWaiters(g: number, why: string): void {
    const waiting = this.waiting.get(g)!;
    const err = unavailable(why);
    for (const w of waiting.values()) w.reject(err);
    waiting.clear();
    // Reads asked of a leader that stepped down may never be confirmed.
    for (const [context, asked] of this.readsAsked) {
      if (asked.group !== g) continue;
      this.readsAsked.delete(context);
      for (const w of asked.waiters) w.reject(err);
    }
    for (const p of this.readsParked.get(g) ?? []) for (const w of p.waiters) w.reject(err);
    this.readsParked.delete(g);
  }

  /** Why this set cannot go on (its log could not be written), if it cannot. */
  get failure(): Error | undefined {
    return this.failed;
  }

  /**
   * Stops the set for good (a storage failure, or `shutdown`): every waiting proposal and read
   * is answered 503 now, and nothing more is proposed, persisted or applied.
   */
  fail(err: unknown, shutdown = false): void {
    if (this.failed) return;
    this.failed = err instanceof Error ? err : new Error(String(err));
    if (!shutdown) this.opts.log.error('the Raft log cannot be written; refusing writes until restart', { err });
    for (const g of this.nodes.keys()) this.failWaiters(g, shutdown ? 'the node is shutting down; retry' : 'the node cannot write to its storage');
  }
}

/**
 * A group's storage as its RawNode sees it, except that the snapshot a leader sends is built from
 * the state store at the index it has committed (at or after the compaction point, which never
 * passes what the store holds durably): the log itself keeps no state machine data.
 */
class StoreSnapshots implements Storage {
  /** Off while the core starts (it reads the snapshot's index then); on once it may send snapshots. */
  live = false;
  constructor(
    private readonly inner: WalGroupStorage,
    private readonly read: () => { index: number; data: Uint8Array },
  ) {}
  initialState(): InitialState {
    return this.inner.initialState();
  }
  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    return this.inner.entries(lo, hi, bytesMax);
  }
  term(index: number): number {
    return this.inner.term(index);
  }
  firstIndex(): number {
    return this.inner.firstIndex();
  }
  lastIndex(): number {
    return this.inner.lastIndex();
  }
  snapshot(): Snapshot {
    const own = this.inner.snapshot();
    if (!this.live) return own;
    const { index, data } = this.read();
    // Behind the compaction point: this replica installed a leader's snapshot that its store
    // has not committed yet; the log still holds that snapshot's data.
    if (index < own.meta.index || index > this.inner.lastIndex()) {
      assert(own.data.byteLength > 0 || own.meta.index <= 1, `group ${this.inner.group}: a snapshot at ${own.meta.index} has its data`);
      return own;
    }
    return { meta: { index, term: this.inner.term(index), conf: this.inner.confAt(index) }, data };
  }
}

function unavailable(message: string): FastpacaError {
  return new FastpacaError('unavailable', message, { retryAfterS: 1 });
}
