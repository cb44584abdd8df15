import path from 'node:path';
import { Packr } from 'msgpackr';
import type { Config } from '../../runtime/config.js';
import { FastpacaError } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { metrics } from '../../runtime/metrics.js';
import type { ConfChange } from '../raft/conf-change.js';
import { Xoshiro128 } from '../raft/random.js';
import type { Message, Snapshot } from '../raft/types.js';
import { RaftWal } from '../raft/wal-storage.js';
import { LmdbStore, type ClusterMembership, type GroupData, type LmdbView } from './lmdb-store.js';
import { monotonicClock, prepare, type TokenCounter } from './prepare.js';
import { query, type QueryResult } from './queries.js';
import { GroupReplicas, type GroupStatus, type RoundResult } from './replicas.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import { DirectStateWriter } from './state-writer.js';
import { WriteBuffer, type PendingWrite } from './tables.js';
import type { CommandResult } from './types.js';

/** How far the state store is: per group, the Raft index of its last command there. */
interface Mark {
  /** Counts handovers to the state writer: writes are released by it. */
  seq: number;
  stamps: Map<number, number>;
}

/**
 * Refused because this replica does not lead the group: the caller routes to `leader` (a Raft
 * id; 0 when no leader is known) and retries. Nothing was proposed, so a retry is always safe.
 */
export class NotLeaderError extends FastpacaError {
  constructor(
    readonly group: number,
    readonly leader: number,
  ) {
    super('unavailable', `this node does not lead group ${group}`, { retryAfterS: 1 });
  }
}

export interface ReplicaHostOptions {
  config: Config;
  /** This node's Raft id. */
  raftId: number;
  /** The groups placed on this node; it also hosts every group its Raft log has state for. */
  groups: readonly number[];
  /** The voters a group is founded with (Raft ids), the first time this node starts; none: join. */
  founders: (group: number) => number[];
  /** The nodes that founded the cluster: recorded with the directory's membership. */
  foundedBy: string[];
  counter: TokenCounter;
  log: Logger;
  /** Sends a round's Raft messages (each to `message.to`, a Raft id), once the round is durable. */
  send: (messages: Array<{ group: number; message: Message }>) => void;
  /** Sends a leader's appends before the round's fsync, and flushes them to the sockets at once. */
  sendNow?: (messages: Array<{ group: number; message: Message }>) => void;
}

/**
 * A node's replicas of the context groups: the groups' RawNodes over one RaftWal (one write and
 * one fdatasync per round for all of them), committed commands applied to the state store
 * through a write buffer, and the direct state writer stamping, per group, the Raft index the
 * store holds. A round runs in the event-loop turn after anything happened to a group (a
 * proposal, a message, a tick): persist, send, apply, answer — Raft's order. Once the store
 * holds a group's commands on disk, its log is compacted to them (a leader keeps up to
 * FASTPACA_RAFT_LAG_ENTRIES more for a follower that lags; past that the follower gets a snapshot, which
 * is the store's range of the group).
 */
export class ReplicaHost {
  private readonly buffer = new WriteBuffer();
  private readonly view: LmdbView;
  private replicas!: GroupReplicas;
  private writer!: DirectStateWriter<Mark>;
  private readonly packr = new Packr({ useRecords: false });
  private roundScheduled = false;
  /** The round in flight (its fdatasync off this thread), if any. */
  private inflight: Promise<void> | undefined;
  /** Groups whose durable stamp moved since their log was last compacted. */
  private readonly compactable = new Set<number>();
  private seq = 0;
  private readonly unreleased: Array<{ seq: number; writes: PendingWrite[] }> = [];
  /** Stamps not yet handed to the state writer (a round's, plus installed snapshots'). */
  private stamps = new Map<number, number>();
  private readonly durable = new Map<number, number>();
  /** Marks the store has committed and not yet reported durable, oldest first. */
  private readonly committed: Mark[] = [];
  private failed: Error | undefined;
  private closed = false;
  private preparing = 0;
  private readonly now = monotonicClock();

  private constructor(
    private readonly store: LmdbStore,
    private readonly wal: RaftWal,
    private readonly opts: ReplicaHostOptions,
  ) {
    this.view = store.bufferedView(this.buffer);
  }

  /** The cluster the data directory belongs to, if this node has founded or joined its groups. */
  static async membership(config: Config): Promise<ClusterMembership | undefined> {
    const store = LmdbStore.open(config.dataDir, config.groups);
    try {
      return store.clusterMember();
    } finally {
      await store.close();
    }
  }

  /** The nodes that founded the cluster. */
  get foundedBy(): string[] {
    return this.opts.foundedBy;
  }

  static async open(opts: ReplicaHostOptions): Promise<ReplicaHost> {
    const { config } = opts;
    const store = LmdbStore.open(config.dataDir, config.groups);
    let wal: RaftWal | undefined;
    let host: ReplicaHost | undefined;
    try {
      const member = store.clusterMember();
      if (member === undefined) {
        if (store.hasSingleNodeData()) throw new FastpacaError('unavailable', `${config.dataDir} holds a single node's data; a cluster node starts from an empty directory`);
      } else if (member.clusterId !== config.clusterId || member.nodeId !== config.nodeId) {
        throw new FastpacaError('unavailable', `${config.dataDir} belongs to node ${member.nodeId} of cluster ${member.clusterId}, not ${config.nodeId} of ${config.clusterId}`);
      }
      wal = RaftWal.open(path.join(config.dataDir, 'raft', '0'));
      const withState = wal.groups().filter((g) => wal!.group(g).hasState());
      // A node whose store holds replicated state but whose Raft log is gone could vote twice
      // in a term it already voted in: it must be replaced, not started (docs/operations.md).
      if (member !== undefined && withState.length === 0 && opts.groups.some((g) => store.groupApplied(g) > 0)) {
        throw new FastpacaError('unavailable', `the Raft log is missing from ${config.dataDir}; this node cannot rejoin with it (give it a new node id and an empty directory)`);
      }
      host = new ReplicaHost(store, wal, { ...opts, groups: [...new Set([...opts.groups, ...withState])].sort((a, b) => a - b) });
      host.start();
      // Only once the founded groups are on disk: a crash before this founds them again, alike.
      if (member === undefined) await store.joinCluster({ clusterId: config.clusterId, nodeId: config.nodeId, founders: opts.foundedBy });
      return host;
    } catch (err) {
      if (host !== undefined) await host.close().catch(() => undefined);
      else {
        wal?.close();
        await store.close();
      }
      throw err;
    }
  }

  private start(): void {
    const { config } = this.opts;
    this.writer = new DirectStateWriter<Mark>(
      this.store,
      {
        put: (mark) => this.store.putGroupApplied(mark.stamps),
        merge: (a, b) => {
          for (const [g, i] of b.stamps) a.stamps.set(g, Math.max(a.stamps.get(g) ?? 0, i));
          return { seq: b.seq, stamps: a.stamps };
        },
      },
      {
        persisted: (mark) => this.persisted(mark),
        durable: (mark) => this.onDurable(mark),
        failed: (err) => this.fail(err),
      },
      config.stateCommitMs,
    );
    this.replicas = new GroupReplicas({
      raftId: this.opts.raftId,
      groups: this.opts.groups,
      wal: this.wal,
      view: this.view,
      machine: { defaultTokenizer: config.tokenizer },
      appliedOf: (g) => this.store.groupApplied(g),
      founders: this.opts.founders,
      random: (g) => new Xoshiro128((this.opts.raftId * 65_537 + g) >>> 0 || 1),
      log: this.opts.log,
      queuedMax: config.pendingMax,
      electionTicks: config.electionTicks,
      heartbeatTicks: config.heartbeatTicks,
      snapshotOf: (g) => {
        const { applied, data } = this.store.readGroup(g);
        metrics.snapshotsBuilt.inc();
        return { index: applied, data: this.packr.pack(data) };
      },
      install: (g, snapshot) => this.install(g, snapshot),
      confApplied: (g, conf) => {
        // A node that left a group keeps its copy, hidden from reads and listings: if it is added
        // again, the leader goes on from where this replica's log ends, so that copy must be
        // exactly what the log says it is.
        if (!conf.voters.includes(this.opts.raftId) && !conf.learners.includes(this.opts.raftId)) this.opts.log.info('left a group', { group: g });
      },
      ...(this.opts.sendNow ? { sendEarly: this.opts.sendNow } : {}),
    });
    for (const g of this.opts.groups) this.durable.set(g, this.store.groupApplied(g));
    this.scheduleRound();
  }

  /** Why this host cannot take writes, if it cannot. */
  get unavailableReason(): string | undefined {
    if (this.failed || this.replicas.failure) return 'the storage cannot be written; restart the node';
    if (this.closed) return 'shutting down';
    return undefined;
  }

  get groups(): number[] {
    return this.replicas.groups;
  }

  leaderOf(group: number): number {
    return this.replicas.leaderOf(group);
  }

  leads(group: number): boolean {
    return this.replicas.leads(group);
  }

  status(group: number): GroupStatus | undefined {
    return this.replicas.status(group);
  }

  /** Whether this node is a member (voter or learner) of `group`. */
  member(group: number): boolean {
    return this.replicas.member(group);
  }

  /** On the group's leader: applies one membership change (see GroupReplicas.changeMembership). */
  changeMembership(group: number, cc: ConfChange): Promise<void> {
    if (!this.replicas.leads(group)) return Promise.reject(new NotLeaderError(group, this.replicas.leaderOf(group)));
    const done = this.replicas.changeMembership(group, cc);
    this.scheduleRound();
    return done;
  }

  /** On the group's leader: hands leadership to `to`; false when it cannot now. */
  transferLeader(group: number, to: number): boolean {
    if (!this.replicas.leads(group)) throw new NotLeaderError(group, this.replicas.leaderOf(group));
    const ok = this.replicas.transferLeader(group, to);
    this.scheduleRound();
    return ok;
  }

  /** Applies a write on the group's leader; resolves once it is committed and applied. */
  submit(group: number, req: WriteRequest): Promise<CommandResult> {
    if (this.failed || this.closed) return Promise.reject(new FastpacaError('unavailable', this.failed ? 'the node cannot write to its storage' : 'the node is shutting down', { retryAfterS: 1 }));
    if (!this.replicas.leads(group)) return Promise.reject(new NotLeaderError(group, this.replicas.leaderOf(group)));
    if (this.preparing >= this.opts.config.pendingMax || this.buffer.size >= this.opts.config.bufferedWritesMax) {
      metrics.commandsRejected.inc();
      return Promise.reject(new FastpacaError('overloaded', 'too many writes are waiting; retry shortly', { retryAfterS: 1 }));
    }
    const cmd = prepare(req, {
      // Read each time: another leader may have changed it since this node last led the group.
      tokenizerOf: (id) => this.view.getContext(id)?.tokenizer,
      counter: this.opts.counter,
      defaultTokenizer: this.opts.config.tokenizer,
      now: this.now,
    });
    if (!(cmd instanceof Promise)) return this.propose(group, cmd);
    this.preparing++;
    return cmd.finally(() => this.preparing--).then((c) => this.propose(group, c));
  }

  private propose(group: number, cmd: Parameters<GroupReplicas['propose']>[1]): Promise<CommandResult> {
    const started = performance.now();
    const answer = this.replicas.propose(group, cmd);
    this.scheduleRound();
    return answer.then((r) => {
      metrics.commitSeconds.observe((performance.now() - started) / 1000);
      return r;
    });
  }

  /**
   * Answers a read on the group's leader, linearizably: once a quorum has confirmed that this
   * node still leads and it has applied everything committed before the read (ReadIndex), from
   * its applied state. It sees every acknowledged write, and only committed ones.
   */
  async read(group: number, req: ReadRequest): Promise<QueryResult> {
    if (!this.replicas.leads(group)) throw new NotLeaderError(group, this.replicas.leaderOf(group));
    const confirmed = this.replicas.readIndex(group);
    this.scheduleRound();
    await confirmed;
    return query(this.view, req);
  }

  /** Lists the contexts of the groups `include` accepts, from this replica's state. */
  list(req: Extract<ReadRequest, { q: 'list' }>, include: (group: number) => boolean): QueryResult {
    return query(this.view, req, include);
  }

  step(group: number, message: Message): void {
    if (this.failed || this.closed) return;
    this.replicas.step(group, message);
    this.scheduleRound();
  }

  tick(): void {
    if (this.failed || this.closed) return;
    this.replicas.tick();
    this.scheduleRound();
  }

  /** Stops taking writes; resolves once everything applied is in the state store, on disk. */
  async close(): Promise<void> {
    this.closed = true;
    while (!this.failed && this.preparing > 0) await new Promise((r) => setTimeout(r, 20));
    // The round being synced finishes first (its proposers are answered), then no more rounds:
    // what still waits for one is answered now (503: it may or may not commit).
    await this.inflight;
    this.replicas.fail(new Error('the node is shutting down'), true);
    await this.wal.idle();
    await this.writer.close();
    this.wal.close();
    await this.store.close();
  }

  private scheduleRound(): void {
    // A round in flight is followed by the next one if anything is left for it (hasWork).
    if (this.inflight !== undefined || this.roundScheduled) return;
    this.roundScheduled = true;
    setImmediate(() => {
      this.roundScheduled = false;
      this.round();
    });
  }

  /**
   * One round at a time: its fdatasync runs off this thread, and what arrives meanwhile (steps,
   * proposals, reads, ticks) makes the next round, which starts as soon as this one ends.
   */
  private round(): void {
    if (this.failed || this.closed || this.inflight !== undefined) return;
    const started = performance.now();
    this.inflight = this.replicas
      .roundDeferred()
      .then(
        (result) => this.finishRound(result, started),
        (err: unknown) => this.fail(err),
      )
      .finally(() => {
        this.inflight = undefined;
        this.compactPending();
        if (this.replicas.hasWork()) this.scheduleRound();
      })
      .catch((err: unknown) => this.fail(err));
  }

  private finishRound(result: RoundResult, started: number): void {
    metrics.raftRoundSeconds.observe((performance.now() - started) / 1000);
    if (this.failed) return;
    if (result.messages.length > 0) this.opts.send(result.messages);
    for (const [g, index] of result.applied) this.stamps.set(g, Math.max(this.stamps.get(g) ?? 0, index));
    if (this.stamps.size > 0) {
      const writes = this.buffer.take();
      const mark: Mark = { seq: ++this.seq, stamps: this.stamps };
      this.stamps = new Map();
      if (writes.length > 0) this.unreleased.push({ seq: mark.seq, writes });
      this.writer.upTo(mark, writes);
      metrics.writeRounds.inc();
    }
    metrics.bufferedWrites.set(this.buffer.size);
  }

  private install(group: number, snapshot: Snapshot): void {
    // A group's founding snapshot has no data: the group was empty then.
    const data: GroupData = snapshot.data.byteLength === 0 ? { v: 1, tables: {} } : (this.packr.unpack(snapshot.data) as GroupData);
    this.view.replaceGroup(group, data);
    metrics.snapshotsInstalled.inc();
    this.stamps.set(group, Math.max(this.stamps.get(group) ?? 0, snapshot.meta.index));
    this.opts.log.info('installed a snapshot of a group from its leader', { group, index: snapshot.meta.index, bytes: snapshot.data.byteLength });
  }

  private persisted(mark: Mark): void {
    if (this.failed) return;
    this.store.root.resetReadTxn(); // see what lmdb-js's write thread committed before letting go
    while (this.unreleased.length > 0 && this.unreleased[0]!.seq <= mark.seq) this.buffer.release(this.unreleased.shift()!.writes);
    this.committed.push(mark);
    metrics.bufferedWrites.set(this.buffer.size);
  }

  /**
   * The store holds `mark` on disk, and every mark committed before it (one fsync covers them
   * all): the groups' logs may forget what they cover.
   */
  private onDurable(mark: Mark): void {
    if (this.failed) return;
    const stamps = new Map<number, number>();
    while (this.committed.length > 0 && this.committed[0]!.seq <= mark.seq) {
      for (const [g, index] of this.committed.shift()!.stamps) stamps.set(g, Math.max(stamps.get(g) ?? 0, index));
    }
    for (const [g, index] of stamps) {
      this.durable.set(g, Math.max(this.durable.get(g) ?? 0, index));
      this.compactable.add(g);
    }
    // Between rounds only: the log is not compacted while a round's write is being synced.
    if (this.inflight === undefined) this.compactPending();
  }

  private compactPending(): void {
    if (this.failed || this.compactable.size === 0) return;
    const targets = new Map<number, number>();
    for (const g of this.compactable) {
      let target = this.durable.get(g)!;
      // A leader keeps, within a bound, what a lagging follower still needs from the log.
      const lowest = this.replicas.lowestMatch(g);
      if (lowest !== undefined && target - lowest <= this.opts.config.lagEntriesMax) target = Math.min(target, lowest);
      targets.set(g, target);
    }
    this.compactable.clear();
    try {
      this.replicas.compactTo(targets);
    } catch (err) {
      this.fail(err);
    }
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = err instanceof Error ? err : new Error(String(err));
    this.opts.log.error('storage write failed; refusing writes until restart', { err });
    metrics.internalErrors.inc();
    // Nothing more is applied here: every waiting proposal and read is answered 503.
    this.replicas.fail(this.failed);
  }
}
