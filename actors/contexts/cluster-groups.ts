import type { Config } from '../../runtime/config.js';
import { ErrorStatus, FastpacaError, assert, type ErrorCode } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { Logger } from '../../runtime/log.js';
import { metrics, type ThreadMetrics } from '../../runtime/metrics.js';
import { raftIdOf, replicasOf, type PeerSpec } from '../../runtime/placement.js';
import { Transport } from '../../runtime/transport.js';
import type { Message } from '../raft/types.js';
import { PoolTokenCounter } from '../tokenizer/pool.js';
import { normalizeRaftMessage, peerMessageKind, validRaftMessage, type Answer, type Forward, type PeerMessage } from './cluster-wire.js';
import type { Groups, Readiness } from './groups.js';
import type { QueryResult } from './queries.js';
import { NotLeaderError, ReplicaHost } from './replica-host.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult, ContextState } from './types.js';

/** Times a request follows a leader hint (or waits for an election) before it gives up. */
const HopsMax = 64;
/** While no leader is known, a request waits between tries, longer each time up to the cap (an election takes 1–2 s). */
const NoLeaderWaitMs = 25;
const NoLeaderWaitMaxMs = 200;
/** Forwarded requests awaiting an answer, per node, before new ones are refused (503 overloaded). */
const ForwardedMax = 50_000;

interface Outstanding {
  peer: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  deadline: number;
}

/** What GET /v1/cluster answers. */
export interface ClusterView {
  node: string;
  cluster: string;
  nodes: Array<{ id: string; raft_id: number; address: string; self: boolean; connected: boolean }>;
  groups: number;
  replicas: number;
  hosted: number;
  leading: number;
  without_leader: number;
  group_status: Array<{ group: number; role: string; leader: string | null; term: number; commit: number; applied: number; first_index: number; last_index: number; replicas: string[]; lag?: Record<string, number> }>;
}

/**
 * The groups of a cluster node. Every group is a Raft group of min(FASTPACA_REPLICAS, nodes)
 * replicas placed by rendezvous hashing over FASTPACA_PEERS; this node hosts its replicas in one
 * ReplicaHost on this thread, ticks them, and carries their messages over the TCP transport.
 *
 * Any node takes any request: a write or read goes to the group's leader, here when this node
 * leads it, else forwarded over the transport to the node believed to lead it (this replica's
 * leader, or the last hint for a group not hosted here, or a replica of the group). A node that
 * does not lead answers with its own leader hint, and the request follows it, at most HopsMax
 * times and within the request deadline; with no leader anywhere it waits for an election, then
 * answers 503 `unavailable` with Retry-After. Only refusals for not leading are retried: nothing
 * was proposed for them. Any other failure is the caller's (an idempotency key makes its retry
 * exact).
 */
export class ClusterGroups implements Groups {
  private readonly nodes: PeerSpec[];
  private readonly byRaftId = new Map<number, string>();
  private readonly hosted: Set<number>;
  /** The last leader heard of, for groups this node does not host. */
  private readonly hints = new Map<number, string>();
  private readonly outstanding = new Map<number, Outstanding>();
  private nextId = 1;
  private readonly ticker: NodeJS.Timeout;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;
  private readonly raftId: number;
  private readonly replicaCount: number;

  private constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly host: ReplicaHost,
    private readonly transport: Transport,
    private readonly counter: PoolTokenCounter,
    hosted: number[],
  ) {
    this.nodes = config.peers!;
    for (const n of this.nodes) this.byRaftId.set(raftIdOf(n.id), n.id);
    this.raftId = raftIdOf(config.nodeId);
    this.replicaCount = Math.min(config.replicas, this.nodes.length);
    this.hosted = new Set(hosted);
    this.ticker = setInterval(() => this.host.tick(), config.tickMs);
    this.sweeper = setInterval(() => this.sweep(), 100);
    this.sweeper.unref();
  }

  get count(): number {
    return this.config.groups;
  }

  static async open(config: Config, log: Logger): Promise<ClusterGroups> {
    const peers = config.peers;
    assert(peers !== undefined && peers.length > 1, 'a cluster has at least two nodes');
    const nodeIds = peers.map((p) => p.id);
    const replicas = Math.min(config.replicas, peers.length);
    const placement = (g: number) => replicasOf(g, nodeIds, replicas);
    const hosted: number[] = [];
    for (let g = 0; g < config.groups; g++) if (placement(g).includes(config.nodeId)) hosted.push(g);
    const counter = new PoolTokenCounter(config.tokenizerThreads);
    let self: ClusterGroups | undefined;
    const pending: Array<[string, unknown]> = [];
    const transport = new Transport({
      clusterId: config.clusterId,
      nodeId: config.nodeId,
      listen: { host: config.host, port: config.clusterPort },
      peers: new Map(peers.filter((p) => p.id !== config.nodeId).map((p) => [p.id, { host: p.host, port: p.port }])),
      onMessage: (from, message) => (self ? self.receive(from, message) : pending.length < 100_000 && pending.push([from, message])),
      onPeer: (peer, connected) => self?.peerChanged(peer, connected),
      log,
      counters: {
        framesSent: (n) => metrics.clusterFrames.inc({ direction: 'sent' }, n),
        framesReceived: (n) => metrics.clusterFrames.inc({ direction: 'received' }, n),
        dropped: (n) => metrics.clusterDropped.inc(n),
        rejected: () => metrics.clusterRejected.inc(),
      },
    });
    let host: ReplicaHost | undefined;
    try {
      host = await ReplicaHost.open({
        config,
        raftId: raftIdOf(config.nodeId),
        groups: hosted,
        founders: (g) => placement(g).map(raftIdOf),
        counter,
        log,
        send: (to, group, message) => self?.sendRaft(to, group, message),
        sendNow: (messages) => {
          for (const { group, message } of messages) self?.sendRaft(message.to, group, message);
          transport.flushNow();
        },
      });
      await transport.start();
    } catch (err) {
      await transport.close();
      await host?.close();
      await counter.close();
      throw err;
    }
    self = new ClusterGroups(config, log, host, transport, counter, hosted);
    for (const [from, message] of pending) self.receive(from, message);
    log.info('cluster node started', { nodes: nodeIds, hosted: hosted.length, replicas });
    return self;
  }

  // ---- the gateway's seam ----------------------------------------------------------------------

  write(group: number, req: WriteRequest): Promise<CommandResult> {
    assert(group === groupOf(req.id, this.count), 'write addressed to the group that owns the id');
    return this.route(group, 'w', req) as Promise<CommandResult>;
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    assert(group === groupOf(req.id, this.count), 'read addressed to the group that owns the id');
    return this.route(group, 'q', req) as Promise<QueryResult>;
  }

  /**
   * Each node lists the contexts of the groups it leads; this node adds the groups it hosts whose
   * leader is unknown (a possibly stale view rather than a hole). Merged in id order.
   */
  async list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    const ms = this.config.requestTimeoutMs;
    const remote = this.nodes
      .filter((n) => n.id !== this.config.nodeId && this.transport.connected(n.id))
      .map((n) => (this.call(n.id, { t: 'l', id: 0, ms, req }, ms) as Promise<Extract<QueryResult, { q: 'list' }>>).catch(() => ({ q: 'list' as const, contexts: [] })));
    const local = this.host.list(req, (g) => this.host.leads(g) || this.leaderNode(g) === undefined) as Extract<QueryResult, { q: 'list' }>;
    const byId = new Map<string, ContextState>();
    for (const part of [local, ...(await Promise.all(remote))]) for (const c of part.contexts) if (!byId.has(c.id) || byId.get(c.id)!.version < c.version) byId.set(c.id, c);
    const contexts = [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { q: 'list', contexts: contexts.slice(0, req.limit) };
  }

  readiness(): Readiness {
    const reason = this.host.unavailableReason;
    if (reason !== undefined) return { ready: false, reason };
    let without = 0;
    for (const g of this.hosted) if (this.host.leaderOf(g) === 0) without++;
    return without === 0 ? { ready: true } : { ready: false, reason: `${without} of the ${this.hosted.size} groups this node replicates have no known leader` };
  }

  metrics(): Promise<ThreadMetrics[]> {
    return Promise.resolve([]);
  }

  cluster(): ClusterView {
    const groupStatus: ClusterView['group_status'] = [];
    let leading = 0;
    let without = 0;
    const nodeIds = this.nodes.map((n) => n.id);
    for (const g of [...this.hosted].sort((a, b) => a - b)) {
      const st = this.host.status(g)!;
      if (st.role === 'leader') leading++;
      if (st.leader === 0) without++;
      const entry: ClusterView['group_status'][number] = {
        group: g,
        role: st.role,
        leader: this.byRaftId.get(st.leader) ?? null,
        term: st.term,
        commit: st.commit,
        applied: st.applied,
        first_index: st.firstIndex,
        last_index: st.lastIndex,
        replicas: replicasOf(g, nodeIds, this.replicaCount),
      };
      if (st.match !== undefined) entry.lag = Object.fromEntries(Object.entries(st.match).map(([id, m]) => [this.byRaftId.get(Number(id)) ?? id, st.lastIndex - m]));
      groupStatus.push(entry);
    }
    return {
      node: this.config.nodeId,
      cluster: this.config.clusterId,
      nodes: this.nodes.map((n) => ({ id: n.id, raft_id: raftIdOf(n.id), address: `${n.host}:${n.port}`, self: n.id === this.config.nodeId, connected: n.id === this.config.nodeId || this.transport.connected(n.id) })),
      groups: this.config.groups,
      replicas: this.replicaCount,
      hosted: this.hosted.size,
      leading,
      without_leader: without,
      group_status: groupStatus,
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.ticker);
    clearInterval(this.sweeper);
    this.failOutstanding(() => true, 'the node is shutting down');
    await this.host.close();
    await this.transport.close();
    await this.counter.close();
  }

  // ---- routing -----------------------------------------------------------------------------------

  /** The node this one believes leads `group`, if any. */
  private leaderNode(group: number): string | undefined {
    if (this.hosted.has(group)) return this.byRaftId.get(this.host.leaderOf(group));
    return this.hints.get(group);
  }

  private async route(group: number, t: 'w' | 'q', req: WriteRequest | ReadRequest): Promise<unknown> {
    const deadline = performance.now() + this.config.requestTimeoutMs;
    let target = this.leaderNode(group);
    let tried = 0;
    for (let hop = 0; hop < HopsMax; hop++) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      if (target === undefined) {
        if (!this.hosted.has(group)) {
          // Not a replica here and no hint: ask the replicas in turn, they know their leader.
          const replicas = replicasOf(group, this.nodes.map((n) => n.id), this.replicaCount);
          target = replicas[tried++ % replicas.length];
        } else {
          // An election is under way: wait for it (bounded by the deadline and HopsMax).
          await pause(Math.min(NoLeaderWaitMs * (hop + 1), NoLeaderWaitMaxMs, left));
          target = this.leaderNode(group);
          continue;
        }
      }
      try {
        if (target === this.config.nodeId) return await (t === 'w' ? this.host.submit(group, req as WriteRequest) : this.host.read(group, req as ReadRequest));
        metrics.forwarded.inc();
        return await this.call(target!, { t, id: 0, g: group, ms: Math.floor(left), req } as Forward, left);
      } catch (err) {
        if (err instanceof UnreachableError) {
          // Nothing was sent: the leader may have died; wait for the next one.
          if (!this.hosted.has(group)) this.hints.delete(group);
          await pause(Math.min(NoLeaderWaitMs * (hop + 1), NoLeaderWaitMaxMs, Math.max(0, deadline - performance.now())));
          target = this.leaderNode(group);
          if (target === err.peer && !this.transport.connected(err.peer)) target = undefined;
          continue;
        }
        if (!(err instanceof NotLeaderError)) throw err;
        const hinted = this.byRaftId.get(err.leader);
        if (!this.hosted.has(group)) {
          if (hinted === undefined) this.hints.delete(group);
          else this.hints.set(group, hinted);
        }
        target = hinted === target ? undefined : hinted;
        if (target === undefined) await pause(Math.min(NoLeaderWaitMs * (hop + 1), NoLeaderWaitMaxMs, Math.max(0, deadline - performance.now())));
      }
    }
    throw new FastpacaError('unavailable', `group ${group} has no leader this node can reach; retry`, { retryAfterS: 1 });
  }

  /** Sends `body` to `peer` and resolves with its answer; 503 `unavailable` at the deadline. */
  private call(peer: string, body: Forward, timeoutMs: number): Promise<unknown> {
    if (this.closed) return Promise.reject(new FastpacaError('unavailable', 'the node is shutting down', { retryAfterS: 1 }));
    if (this.outstanding.size >= ForwardedMax) return Promise.reject(new FastpacaError('overloaded', 'too many requests are waiting for other nodes; retry shortly', { retryAfterS: 1 }));
    if (!this.transport.connected(peer)) return Promise.reject(new UnreachableError(peer));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.outstanding.set(id, { peer, resolve, reject, deadline: performance.now() + timeoutMs });
      if (!this.transport.send(peer, { ...body, id })) {
        this.outstanding.delete(id);
        reject(new FastpacaError('overloaded', `the queue to node ${peer} is full; retry shortly`, { retryAfterS: 1 }));
      }
    });
  }

  private sweep(): void {
    const now = performance.now();
    this.failOutstanding((o) => o.deadline <= now, 'another node did not answer in time; retry');
  }

  private failOutstanding(which: (o: Outstanding) => boolean, why: string): void {
    for (const [id, o] of this.outstanding) {
      if (!which(o)) continue;
      this.outstanding.delete(id);
      o.reject(new FastpacaError('unavailable', why, { retryAfterS: 1 }));
    }
  }

  private peerChanged(peer: string, connected: boolean): void {
    this.log.info(connected ? 'peer connected' : 'peer disconnected', { peer });
    if (connected) return;
    // Raft sends again what matters once the peer is back; a forwarded request must not be
    // run there later, after its caller was told it failed.
    this.transport.discard(peer);
    // Whatever was sent to a peer whose connection dropped may or may not have been done there.
    this.failOutstanding((o) => o.peer === peer, `the connection to node ${peer} was lost; retry`);
  }

  // ---- from peers --------------------------------------------------------------------------------

  private sendRaft(to: number, group: number, message: Message): void {
    const node = this.byRaftId.get(to);
    // To a peer that is not connected: dropped, not queued (Raft's heartbeats and probes send
    // again what is still needed once it is back; stale appends would only cost bandwidth).
    if (node === undefined || node === this.config.nodeId || !this.transport.connected(node)) return;
    this.transport.send(node, { t: 'r', g: group, m: message });
  }

  private receive(from: string, value: unknown): void {
    const kind = peerMessageKind(value);
    if (kind === undefined) return void metrics.clusterInvalid.inc();
    const msg = value as PeerMessage;
    switch (msg.t) {
      case 'r': {
        if (!this.hosted.has(msg.g) || !validRaftMessage(msg.m, raftIdOf(from), this.raftId)) return void metrics.clusterInvalid.inc();
        this.host.step(msg.g, normalizeRaftMessage(msg.m));
        return;
      }
      case 'a': {
        const o = this.outstanding.get(msg.id);
        if (o === undefined || o.peer !== from) return; // late: the caller has moved on
        this.outstanding.delete(msg.id);
        if (msg.err === undefined) return o.resolve(msg.ok);
        return o.reject(fromWire(msg.err));
      }
      default:
        return this.serve(from, msg);
    }
  }

  /** Runs a peer's forwarded request here (never forwarding it again) and answers it. */
  private serve(from: string, f: Forward): void {
    let work: Promise<unknown>;
    switch (f.t) {
      case 'w':
        work = this.hosted.has(f.g) ? this.host.submit(f.g, f.req) : Promise.reject(new NotLeaderError(f.g, 0));
        break;
      case 'q':
        work = this.hosted.has(f.g) ? this.host.read(f.g, f.req) : Promise.reject(new NotLeaderError(f.g, 0));
        break;
      case 'l':
        work = Promise.resolve(this.host.list(f.req, (g) => this.host.leads(g)));
        break;
      case 's':
        work = Promise.resolve(this.cluster());
        break;
    }
    void work.then(
      (ok) => this.transport.send(from, { t: 'a', id: f.id, ok } satisfies Answer),
      (err: unknown) => this.transport.send(from, { t: 'a', id: f.id, err: toWire(err) } satisfies Answer),
    );
  }
}

/** Refused before anything was sent: `peer` is not connected. */
class UnreachableError extends FastpacaError {
  constructor(readonly peer: string) {
    super('unavailable', `node ${peer} is not reachable from this node; retry`, { retryAfterS: 1 });
  }
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

function toWire(err: unknown): NonNullable<Answer['err']> {
  if (err instanceof NotLeaderError) return { code: 'unavailable', message: err.message, retryAfterS: 1, leader: err.leader };
  if (err instanceof FastpacaError) return { code: err.code, message: err.message, ...(err.extra ? { extra: err.extra } : {}), ...(err.retryAfterS !== undefined ? { retryAfterS: err.retryAfterS } : {}) };
  return { code: 'internal', message: `another node failed: ${err instanceof Error ? err.message : String(err)}` };
}

function fromWire(e: NonNullable<Answer['err']>): FastpacaError {
  if (typeof e.leader === 'number') return new NotLeaderError(-1, e.leader);
  const code: ErrorCode = typeof e.code === 'string' && e.code in ErrorStatus ? (e.code as ErrorCode) : 'internal';
  const opts: { extra?: Record<string, unknown>; retryAfterS?: number } = {};
  if (e.extra !== undefined && typeof e.extra === 'object') opts.extra = e.extra;
  if (typeof e.retryAfterS === 'number') opts.retryAfterS = e.retryAfterS;
  return new FastpacaError(code, String(e.message ?? 'error'), opts);
}
