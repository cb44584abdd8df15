/**
 * An in-memory, synchronous cluster for the Raft unit tests (like etcd's `network` in
 * raft_test.go): every node persists to a MemoryStorage, messages are delivered until the
 * cluster is quiet, and links can be cut, isolated or filtered.
 */
import { decodeConfChange, type ConfChange } from '../../actors/raft/conf-change.js';
import type { RaftConfigInput } from '../../actors/raft/config.js';
import { Xoshiro128 } from '../../actors/raft/random.js';
import { RawNode } from '../../actors/raft/raw-node.js';
import { MemoryStorage } from '../../actors/raft/storage.js';
import { EntryType, StateRole, type ConfState, type Entry, type Message, type NodeId, type ReadState } from '../../actors/raft/types.js';

export type NodeOpts = Partial<Omit<RaftConfigInput, 'id' | 'storage' | 'random'>>;

export const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
export const dec = (d: Uint8Array): string => new TextDecoder().decode(d);

export class TestNode {
  raw: RawNode;
  readonly applied: Entry[] = [];
  readonly readStates: ReadState[] = [];
  conf: ConfState;
  /** The state machine installed from snapshots (the data of the last one). */
  snapshotData: Uint8Array | undefined;
  /** Commands held by the last snapshot installed (its data is their JSON). */
  snapshotCmds: string[] = [];
  snapshotsInstalled = 0;

  constructor(
    readonly id: NodeId,
    readonly storage: MemoryStorage,
    readonly opts: NodeOpts,
    seed: number,
  ) {
    this.raw = new RawNode({ id, storage, random: new Xoshiro128(seed), electionTicks: 10, heartbeatTicks: 1, ...opts });
    this.conf = storage.initialState().confState;
  }

  get raft() {
    return this.raw.raft;
  }

  /** Persists, applies and advances one Ready; returns its messages. */
  handleReady(): Message[] {
    if (!this.raw.hasReady()) return [];
    const rd = this.raw.ready();
    if (rd.snapshot) {
      this.storage.applySnapshot(rd.snapshot);
      this.snapshotData = rd.snapshot.data;
      this.conf = rd.snapshot.meta.conf;
      // The state machine is replaced by the snapshot's.
      this.snapshotCmds = rd.snapshot.data.byteLength === 0 ? [] : (JSON.parse(dec(rd.snapshot.data)) as string[]);
      this.applied.length = 0;
      this.snapshotsInstalled++;
    }
    this.storage.append(rd.entries);
    if (rd.hardState) this.storage.setHardState(rd.hardState);
    for (const e of rd.committedEntries) {
      if (e.type === EntryType.ConfChange) this.conf = this.raw.applyConfChange(decodeConfChange(e.data));
      this.applied.push(e);
    }
    this.readStates.push(...rd.readStates);
    this.raw.advance();
    return [...rd.messages];
  }

  /** Restarts from its storage, as after a crash (MemoryStorage here loses nothing). */
  restart(): void {
    this.raw = new RawNode({ id: this.id, storage: this.storage, random: new Xoshiro128(this.id * 7919), electionTicks: 10, heartbeatTicks: 1, ...this.opts });
    // The state machine restarts from the stored snapshot; the log after it is applied again.
    const snap = this.storage.snapshot();
    this.snapshotCmds = snap.data.byteLength === 0 ? [] : (JSON.parse(dec(snap.data)) as string[]);
    this.applied.length = 0;
    this.conf = this.storage.initialState().confState;
  }

  /** The commands in the state machine: a snapshot's, then applied normal entries with data. */
  commands(): string[] {
    return [...this.snapshotCmds, ...this.applied.filter((e) => e.type === EntryType.Normal && e.data.byteLength > 0).map((e) => dec(e.data))];
  }

  /** Snapshots the state machine at the applied index and compacts the log, keeping `keep` entries. */
  compact(keep = 0): void {
    const applied = this.raft.log.applied;
    this.storage.createSnapshot(applied, this.conf, enc(JSON.stringify(this.commands())));
    this.storage.compact(applied - keep);
  }
}

export class TestCluster {
  readonly nodes = new Map<NodeId, TestNode>();
  /** Directed links that drop everything: "from-to". */
  private readonly cuts = new Set<string>();
  /** Drops a message when it returns true. */
  filter: ((m: Message) => boolean) | undefined;
  /** Every message delivered, in order (for assertions). */
  readonly delivered: Message[] = [];

  constructor(ids: NodeId[], opts: NodeOpts = {}, extra: { learners?: NodeId[]; seed?: number; storage?: (id: NodeId) => MemoryStorage | undefined } = {}) {
    const conf: ConfState = { voters: ids, learners: extra.learners ?? [] };
    for (const id of [...ids, ...(extra.learners ?? [])]) this.add(id, extra.storage?.(id) ?? MemoryStorage.bootstrap(conf), opts, extra.seed);
  }

  add(id: NodeId, storage: MemoryStorage = new MemoryStorage(), opts: NodeOpts = {}, seed = 1): TestNode {
    const n = new TestNode(id, storage, opts, seed * 1000 + id);
    this.nodes.set(id, n);
    return n;
  }

  node(id: NodeId): TestNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  raw(id: NodeId): RawNode {
    return this.node(id).raw;
  }

  cut(a: NodeId, b: NodeId): void {
    this.cuts.add(`${a}-${b}`);
    this.cuts.add(`${b}-${a}`);
  }

  cutOneWay(from: NodeId, to: NodeId): void {
    this.cuts.add(`${from}-${to}`);
  }

  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) if (other !== id) this.cut(id, other);
  }

  heal(): void {
    this.cuts.clear();
    this.filter = undefined;
  }

  /** Drains every Ready and delivers every message until the cluster is quiet. */
  process(maxRounds = 10_000): void {
    for (let round = 0; round < maxRounds; round++) {
      const msgs: Message[] = [];
      for (const n of this.nodes.values()) msgs.push(...n.handleReady());
      if (msgs.length === 0) return;
      this.deliver(msgs);
    }
    throw new Error('cluster did not quiesce');
  }

  deliver(msgs: Message[]): void {
    for (const m of msgs) {
      if (this.cuts.has(`${m.from}-${m.to}`)) continue;
      if (this.filter?.(m)) continue;
      const to = this.nodes.get(m.to);
      if (!to) continue;
      this.delivered.push(m);
      to.raw.step(m);
    }
  }

  tick(id: NodeId, n = 1): void {
    for (let i = 0; i < n; i++) {
      this.raw(id).tick();
      this.process();
    }
  }

  tickAll(n = 1): void {
    for (let i = 0; i < n; i++) {
      for (const node of this.nodes.values()) node.raw.tick();
      this.process();
    }
  }

  /** Crashes and restarts a node from its storage (which, here, holds everything it wrote). */
  restart(id: NodeId): void {
    this.node(id).restart();
  }

  campaign(id: NodeId): void {
    this.raw(id).campaign();
    this.process();
  }

  /** Elects `id` (with pre-vote too) and settles. */
  elect(id: NodeId): void {
    this.campaign(id);
    if (this.raw(id).raft.role !== StateRole.Leader) throw new Error(`node ${id} did not become leader (${this.raw(id).raft.role})`);
  }

  propose(id: NodeId, cmd: string): ReturnType<RawNode['propose']> {
    const r = this.raw(id).propose(enc(cmd));
    this.process();
    return r;
  }

  proposeConf(id: NodeId, cc: ConfChange): ReturnType<RawNode['proposeConfChange']> {
    const r = this.raw(id).proposeConfChange(cc);
    this.process();
    return r;
  }

  leaders(): NodeId[] {
    return [...this.nodes.values()].filter((n) => n.raft.role === StateRole.Leader).map((n) => n.id);
  }

  /** The single leader of the highest term, if any. */
  leader(): NodeId | undefined {
    let best: TestNode | undefined;
    for (const n of this.nodes.values()) {
      if (n.raft.role === StateRole.Leader && (!best || n.raft.term > best.raft.term)) best = n;
    }
    return best?.id;
  }

  /** (index, term) of every entry in a node's log (storage + unstable), from firstIndex. */
  logOf(id: NodeId): Array<[number, number]> {
    const log = this.raw(id).raft.log;
    const out: Array<[number, number]> = [];
    for (let i = log.firstIndex(); i <= log.lastIndex(); i++) out.push([i, log.term(i)!]);
    return out;
  }
}

/** Entries for building logs directly: terms[k] is the term at index first + k. */
export function entriesOf(terms: number[], first = 2): Entry[] {
  return terms.map((term, k) => ({ term, index: first + k, type: EntryType.Normal, data: enc(`t${term}i${first + k}`) }));
}

/** A founding member's storage holding a log: entries with these terms from index 2, and a
 * hard state of `term` (≥ the last entry's). */
export function storageWithLog(voters: NodeId[], terms: number[], term = Math.max(1, ...terms), commit = 1): MemoryStorage {
  const s = MemoryStorage.bootstrap({ voters, learners: [] });
  s.append(entriesOf(terms));
  s.setHardState({ term, vote: 0, commit });
  return s;
}

/** A single node whose peers are simulated by the test (messages injected and taken by hand). */
export function soloNode(id: NodeId, voters: NodeId[], opts: NodeOpts = {}, storage?: MemoryStorage, seed = 1): TestNode {
  return new TestNode(id, storage ?? MemoryStorage.bootstrap({ voters, learners: [] }), { preVote: false, checkQuorum: false, ...opts }, seed);
}

/** Persists and applies every Ready of a node until it has none; returns the messages. */
export function drain(n: TestNode): Message[] {
  const out: Message[] = [];
  for (let i = 0; i < 100 && n.raw.hasReady(); i++) out.push(...n.handleReady());
  return out;
}

/** The message type(s) with kind K (vote messages share one type for two kinds). */
export type MsgOf<K extends Message['kind']> = Message extends infer M ? (M extends { kind: infer MK } ? (K extends MK ? M & { kind: K } : never) : never) : never;

/** Builds a message, filling the fields the test does not care about. */
export function msg<K extends Message['kind']>(kind: K, fields: Partial<MsgOf<K>> & { from: NodeId; to: NodeId; term: number }): MsgOf<K> {
  const defaults: Record<Message['kind'], object> = {
    app: { index: 0, logTerm: 0, entries: [], commit: 0 },
    app_resp: { index: 0, reject: false, rejectHint: 0, logTerm: 0 },
    vote: { index: 0, logTerm: 0, transfer: false },
    pre_vote: { index: 0, logTerm: 0, transfer: false },
    vote_resp: { reject: false },
    pre_vote_resp: { reject: false },
    heartbeat: { commit: 0, context: undefined },
    heartbeat_resp: { context: undefined },
    snap: { meta: { index: 0, term: 0, conf: { voters: [], learners: [] } }, offset: 0, totalBytes: 0, data: new Uint8Array(0) },
    snap_resp: { snapIndex: 0, offset: 0, reject: false },
    read_index: { context: '' },
    read_index_resp: { context: '', index: 0 },
    timeout_now: {},
  };
  return { kind, ...defaults[kind], ...fields } as unknown as MsgOf<K>;
}

export function kinds(ms: readonly Message[]): string[] {
  return ms.map((m) => `${m.kind}:${m.from}->${m.to}`);
}
