import { assert } from '../../../runtime/errors.js';
import { ConfChangeOp, decodeConfChange, type ConfChange } from '../conf-change.js';
import type { RaftConfigInput } from '../config.js';
import { Xoshiro128, type Random } from '../random.js';
import { RawNode, type Ready } from '../raw-node.js';
import { MemoryStorage } from '../storage.js';
import { EntryType, MessageKind, StateRole, type ConfState, type Message, type NodeId } from '../types.js';
import { SimClient } from './client.js';
import { Invariants } from './invariants.js';
import { SimNetwork } from './network.js';
import { SimStorage } from './sim-storage.js';
import { commandOf, encodeCommand, SimStateMachine } from './state-machine.js';
import { Trace } from './trace.js';

export type SimRaftOptions = Omit<RaftConfigInput, 'id' | 'storage' | 'random'>;

export interface SimClusterConfig {
  seed: number;
  /** The founding voters. */
  voters: NodeId[];
  /** Nodes that run from the start with empty storage and may be added later. */
  spares: NodeId[];
  raft: SimRaftOptions;
  traceLines: number;
  networkQueueMax: number;
  /** Commands carry 0..paddingBytesMax bytes after their id, to vary entry sizes. */
  paddingBytesMax: number;
}

/** One simulated process: its disk survives crashes (what was synced of it), nothing else does. */
export class SimNode {
  raw: RawNode | undefined = undefined;
  sm: SimStateMachine | undefined = undefined;
  /** Membership as of sm.applied. */
  conf: ConfState = { voters: [], learners: [] };
  /** Bumped at every start: attempts and reads belong to one life. */
  incarnation = 0;
  /** Removed from the group and stopped for good. */
  decommissioned = false;
  /** A Ready written to storage and not yet finished (synced, sent, applied, advanced). */
  rd: Ready | undefined = undefined;

  constructor(
    readonly id: NodeId,
    readonly storage: SimStorage,
  ) {}

  get up(): boolean {
    return this.raw !== undefined;
  }
}

export function describeMessage(m: Message): string {
  const head = `${m.kind} ${m.from}→${m.to} t${m.term}`;
  switch (m.kind) {
    case MessageKind.App:
      return `${head} prev=${m.index}/${m.logTerm} n=${m.entries.length} c=${m.commit}`;
    case MessageKind.AppResp:
      return m.reject ? `${head} reject ${m.index} hint=${m.rejectHint}/${m.logTerm}` : `${head} ok ${m.index}`;
    case MessageKind.Vote:
    case MessageKind.PreVote:
      return `${head} last=${m.index}/${m.logTerm}${m.transfer ? ' transfer' : ''}`;
    case MessageKind.VoteResp:
    case MessageKind.PreVoteResp:
      return `${head} ${m.reject ? 'reject' : 'grant'}`;
    case MessageKind.Heartbeat:
      return `${head} c=${m.commit}${m.context ? ` ctx=${m.context}` : ''}`;
    case MessageKind.HeartbeatResp:
      return m.context ? `${head} ctx=${m.context}` : head;
    case MessageKind.Snap:
      return `${head} snap=${m.meta.index}/${m.meta.term} [${m.offset},+${m.data.byteLength})/${m.totalBytes}`;
    case MessageKind.SnapResp:
      return `${head} snap=${m.snapIndex} at=${m.offset}${m.reject ? ' reject' : ''}`;
    case MessageKind.ReadIndex:
      return `${head} ctx=${m.context}`;
    case MessageKind.ReadIndexResp:
      return `${head} ctx=${m.context} i=${m.index}`;
    case MessageKind.TimeoutNow:
      return head;
  }
}

/**
 * N Raft cores, their simulated disks, a simulated network, the clients and the invariant
 * checker, all driven by one seeded random source. Every method is one event.
 */
export class SimCluster {
  readonly nodes = new Map<NodeId, SimNode>();
  readonly net: SimNetwork;
  readonly inv = new Invariants();
  readonly client: SimClient;
  readonly trace: Trace;
  readonly rng: Xoshiro128;
  /** The current step; messages are delayed in steps. */
  now = 0;
  /** Nodes removed by an applied conf change, stopped after the current event. */
  private readonly toDecommission = new Set<NodeId>();
  stats = { crashes: 0, restarts: 0, snapshotsInstalled: 0, compactions: 0, confChangesApplied: 0, transfers: 0, electionsWon: 0 };
  private readonly termsLed = new Set<number>();
  /** Probability of crashing a leader right after its commit index moves: the moment a wrong
   * commit rule would leave a committed entry on too few logs that matter. */
  crashOnCommit = 0;
  /** Whether a crash now would leave a majority of the founding voters up. */
  mayCrash: () => boolean = () => true;
  private readonly leaderCommit = new Map<NodeId, number>();

  constructor(readonly cfg: SimClusterConfig) {
    this.rng = new Xoshiro128(cfg.seed);
    this.net = new SimNetwork(this.rng.fork(), cfg.networkQueueMax);
    this.trace = new Trace(cfg.traceLines);
    this.client = new SimClient(this.inv);
    const founding: ConfState = { voters: cfg.voters, learners: [] };
    for (const id of [...cfg.voters, ...cfg.spares]) {
      const initial = cfg.voters.includes(id) ? MemoryStorage.bootstrap(founding) : new MemoryStorage();
      const storage = new SimStorage(initial, {
        onAppend: (entries, prevTerm) => this.inv.onAppend(id, entries, prevTerm),
        onDurable: (hs) => this.inv.onDurable(id, hs),
      });
      const n = new SimNode(id, storage);
      this.nodes.set(id, n);
      this.start(n);
    }
  }

  log(line: string): void {
    this.trace.add(`${this.now} ${line}`);
  }

  node(id: NodeId): SimNode {
    const n = this.nodes.get(id);
    assert(n !== undefined, `node ${id} exists`);
    return n;
  }

  upNodes(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.up);
  }

  private start(n: SimNode): void {
    n.incarnation++;
    const random: Random = new Xoshiro128(this.cfg.seed * 7_919 + n.id * 104_729 + n.incarnation);
    n.raw = new RawNode({ ...this.cfg.raft, id: n.id, storage: n.storage, random });
    const snap = n.storage.snapshot();
    n.sm = SimStateMachine.decode(snap.data, snap.meta.index);
    this.inv.onSnapshot(n.id, snap, n.sm);
    n.conf = n.storage.initialState().confState;
    n.rd = undefined;
  }

  // ---- events ---------------------------------------------------------------------------------

  tick(n: SimNode): void {
    assert(n.raw !== undefined, 'ticks go to live nodes');
    n.raw.tick();
    this.log(`tick ${n.id}`);
  }

  /** Delivers the next message, if any is deliverable. */
  deliver(): boolean {
    const next = this.net.take(this.now);
    if (!next) return false;
    const to = this.nodes.get(next.m.to);
    if (next.lost || !to?.raw) {
      this.log(`lose ${describeMessage(next.m)}`);
      return true;
    }
    to.raw.step(next.m);
    this.log(`deliver ${describeMessage(next.m)}`);
    return true;
  }

  /**
   * One step of a node's Ready loop: write a new Ready to disk (and maybe finish it at once),
   * or finish the one written earlier. Between the two, the node keeps being stepped and ticked
   * and may crash, losing the write.
   */
  ready(n: SimNode, finishNow: boolean): boolean {
    if (!n.raw) return false;
    if (n.rd) {
      this.finish(n);
      return true;
    }
    if (!n.raw.hasReady()) return false;
    const rd = n.raw.ready();
    if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
    n.storage.append(rd.entries);
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    n.rd = rd;
    const e = rd.entries;
    this.log(`write ${n.id}${rd.snapshot ? ` snap=${rd.snapshot.meta.index}` : ''}${e.length ? ` ents=[${e[0]!.index},${e[e.length - 1]!.index}]` : ''}${rd.hardState ? ` hs=${rd.hardState.term}/${rd.hardState.vote}/${rd.hardState.commit}` : ''}`);
    if (finishNow) this.finish(n);
    return true;
  }

  private finish(n: SimNode): void {
    const rd = n.rd;
    const raw = n.raw;
    const sm = n.sm;
    assert(rd !== undefined && raw !== undefined && sm !== undefined, 'finishing a written Ready of a live node');
    // A commit-only hard state needs no fsync; sometimes skip it, as a real node would.
    const synced = rd.mustSync || this.rng.float() < 0.5;
    if (synced) n.storage.sync();
    for (const m of rd.messages) this.net.send(m, this.now);
    let state = sm;
    if (rd.snapshot) {
      state = n.sm = SimStateMachine.decode(rd.snapshot.data, rd.snapshot.meta.index);
      this.inv.onSnapshot(n.id, rd.snapshot, state);
      this.client.onSnapshot(n.id, n.incarnation, state);
      n.conf = rd.snapshot.meta.conf;
      this.stats.snapshotsInstalled++;
    }
    for (const e of rd.committedEntries) {
      this.inv.onApply(n.id, e);
      state.apply(e.index, commandOf(e));
      if (e.type === EntryType.ConfChange) {
        const cc = decodeConfChange(e.data);
        n.conf = raw.applyConfChange(cc);
        this.stats.confChangesApplied++;
        if (cc.op === ConfChangeOp.Remove) this.toDecommission.add(cc.node);
      }
      this.client.onApply(n.id, n.incarnation, e);
    }
    for (const rs of rd.readStates) this.client.onReadState(n.id, n.incarnation, rs.context, rs.index);
    raw.advance();
    n.rd = undefined;
    const ce = rd.committedEntries;
    this.log(`finish ${n.id}${synced ? ' sync' : ''} msgs=${rd.messages.length}${ce.length ? ` apply=[${ce[0]!.index},${ce[ce.length - 1]!.index}]` : ''}${rd.readStates.length ? ` reads=${rd.readStates.length}` : ''}`);
  }

  crash(n: SimNode): void {
    if (!n.raw) return;
    n.raw = undefined;
    n.sm = undefined;
    n.rd = undefined;
    n.storage.crash();
    this.client.onCrash(n.id);
    this.stats.crashes++;
    this.log(`crash ${n.id}`);
  }

  restart(n: SimNode): void {
    if (n.raw || n.decommissioned) return;
    this.start(n);
    this.stats.restarts++;
    const hs = n.storage.initialState().hardState;
    this.log(`restart ${n.id} hs=${hs.term}/${hs.vote}/${hs.commit} snap=${n.storage.snapshot().meta.index} last=${n.storage.lastIndex()}`);
  }

  /** The leader of the highest term among live nodes. */
  leader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const n of this.nodes.values()) {
      const r = n.raw?.raft;
      if (r && r.role === StateRole.Leader && (!best || r.term > best.raw!.raft.term)) best = n;
    }
    return best;
  }

  /** A client sends commands (new ones, or ones to retry) to a node. */
  propose(n: SimNode, count: number, retries: boolean): boolean {
    if (!n.raw) return false;
    const ids: number[] = [];
    for (let i = 0; i < count; i++) {
      const retry = retries ? this.client.takeRetry() : undefined;
      ids.push(retry ?? this.client.newCommand());
    }
    const datas = ids.map((id) => encodeCommand(id, this.rng.int(this.cfg.paddingBytesMax + 1)));
    const res = n.raw.proposeBatch(datas);
    if (res.ok) {
      this.client.accepted(ids, n.id, n.incarnation, res.index, res.term, this.now);
      this.log(`propose ${n.id} [${ids.join(',')}] at ${res.index}/${res.term}`);
      return true;
    }
    this.client.refused(ids);
    this.log(`propose ${n.id} refused ${res.reason}`);
    return false;
  }

  read(n: SimNode): void {
    if (!n.raw) return;
    const ctx = this.client.newRead();
    const res = n.raw.readIndex(ctx);
    if (res.ok) this.client.readIssued(ctx, n.id, n.incarnation, this.now);
    this.log(`read ${n.id} ${ctx} ${res.ok ? 'issued' : res.reason}`);
  }

  transfer(n: SimNode, to: NodeId): void {
    if (!n.raw) return;
    const res = n.raw.transferLeader(to);
    if (res.ok) this.stats.transfers++;
    this.log(`transfer ${n.id}→${to} ${res.ok ? 'started' : res.reason}`);
  }

  confChange(n: SimNode, cc: ConfChange): void {
    if (!n.raw) return;
    const res = n.raw.proposeConfChange(cc);
    this.log(`conf ${n.id} ${cc.op} ${cc.node} ${res.ok ? `at ${res.index}` : res.reason}`);
  }

  /** The application snapshots its state machine and compacts the log, keeping `keep` entries. */
  compact(n: SimNode, keep: number): void {
    if (!n.raw || !n.sm || n.rd) return;
    const index = n.sm.applied;
    if (index <= n.storage.snapshot().meta.index) return;
    n.storage.snapshotAndCompact(index, n.conf, n.sm.encode(), index - keep);
    this.stats.compactions++;
    this.log(`compact ${n.id} snap=${index} first=${n.storage.firstIndex()}`);
  }

  // ---- after every event ----------------------------------------------------------------------

  /** Stops nodes removed from the group, then checks every invariant on every live node. */
  afterEvent(): void {
    for (const id of this.toDecommission) {
      const n = this.nodes.get(id);
      if (n && !n.decommissioned) {
        this.crash(n);
        n.decommissioned = true;
        this.log(`decommission ${id}`);
      }
    }
    this.toDecommission.clear();
    if (this.crashOnCommit > 0) {
      for (const n of this.nodes.values()) {
        const r = n.raw?.raft;
        if (!r || r.role !== StateRole.Leader) continue;
        const before = this.leaderCommit.get(n.id) ?? 0;
        this.leaderCommit.set(n.id, r.log.committed);
        if (r.log.committed > before && this.rng.float() < this.crashOnCommit && this.mayCrash()) {
          this.log(`crash on commit ${r.log.committed}`);
          this.crash(n);
        }
      }
    }
    for (const n of this.nodes.values()) {
      if (!n.raw) continue;
      this.inv.checkNode(n.id, n.incarnation, n.raw);
      const r = n.raw.raft;
      if (r.role === StateRole.Leader && !this.termsLed.has(r.term)) {
        this.termsLed.add(r.term);
        this.stats.electionsWon++;
        this.log(`leader ${n.id} term ${r.term} last=${r.log.lastIndex()} commit=${r.log.committed}`);
      }
    }
  }
}
