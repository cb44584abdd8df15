import type { Config } from '../../runtime/config.js';
import { ErrorStatus, FastpacaError, assert, type ErrorCode } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { Logger } from '../../runtime/log.js';
import { metrics, type ThreadMetrics } from '../../runtime/metrics.js';
import { Incarnations } from '../../runtime/incarnations.js';
import { raftIdOf, replicasOf, type PeerSpec } from '../../runtime/placement.js';
import { Transport } from '../../runtime/transport.js';
import { ConfChangeOp, type ConfChange } from '../raft/conf-change.js';
import { MessageKind, type Message } from '../raft/types.js';
import { PoolTokenCounter } from '../tokenizer/pool.js';
import {
  expandHeartbeats,
  normalizeRaftMessage,
  peerMessageKind,
  validRaftMessage,
  type Answer,
  type Forward,
  type HeartbeatRespTuple,
  type Heartbeats,
  type HeartbeatTuple,
  type PeerMessage,
  type RaftEnvelope,
} from './cluster-wire.js';
import type { Groups, Readiness } from './groups.js';
import type { QueryResult } from './queries.js';
import { NotLeaderError, ReplicaHost } from './replica-host.js';
import type { GroupStatus } from './replicas.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult, ContextState } from './types.js';

/** Times a request follows a leader hint (or waits for an election) before it gives up. */
const HopsMax = 64;
/** While no leader is known, a request waits between tries, longer each time up to the cap (an election takes 1–2 s). */
const NoLeaderWaitMs = 25;
const NoLeaderWaitMaxMs = 200;
/** Forwarded requests awaiting an answer, per node, before new ones are refused (503 overloaded). */
const ForwardedMax = 50_000;
/** The coordinator looks at every group this often, with this many groups at a time. */
const CoordinateEveryMs = 1_000;
const CoordinatorConcurrency = 16;
/** The last step of a replacement (every node forgets the old copy: one file write each) gets at most this long. */
const ForgetBudgetMaxMs = 10_000;

/** Requests for one group's leader: write, read, membership change, leadership transfer, status. */
type GroupOp = 'w' | 'q' | 'c' | 't' | 'g';

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
  nodes: Array<{
    id: string;
    raft_id: number;
    address: string;
    self: boolean;
    connected: boolean;
    /** Which copy of its data directory this node knows it as (its own, for itself). */
    incarnation: string | null;
    /** This node refuses it: it came back with a new data directory (and this incarnation). */
    returned_with?: string;
    /** It refuses this node, saying why. */
    refused_by?: string;
  }>;
  groups: number;
  replicas: number;
  hosted: number;
  leading: number;
  without_leader: number;
  group_status: Array<{ group: number; role: string; leader: string | null; term: number; commit: number; applied: number; first_index: number; last_index: number; replicas: string[]; voters: string[]; learners: string[]; lag?: Record<string, number> }>;
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
 * answers 503 `unavailable` with Retry-After. Retried inside: refusals for not leading and an
 * unreachable target (nothing was proposed for them), and any 503 of a read. Any other failure of
 * a write is the caller's (an idempotency key makes its retry exact).
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
  private readonly coordinator: NodeJS.Timeout;
  private coordinating = false;
  /** The node being replaced, while a replacement runs (one at a time). */
  private replacing: string | undefined;
  private closed = false;
  private readonly raftId: number;

  private constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly host: ReplicaHost,
    private readonly transport: Transport,
    private readonly counter: PoolTokenCounter,
    /** Per group, the nodes it is placed on (FASTPACA_PEERS is fixed for the process's life). */
    private readonly placement: readonly string[][],
    private readonly incarnations: Incarnations,
    /** Peers that refused this node, and why. */
    private readonly refusedBy: Map<string, string>,
    /** Still answers its own questions (which copy of a node a peer knows). */
    private readonly early: EarlyPeers,
  ) {
    this.nodes = config.peers!;
    for (const n of this.nodes) this.byRaftId.set(raftIdOf(n.id), n.id);
    this.raftId = raftIdOf(config.nodeId);
    this.hosted = new Set(host.groups);
    this.ticker = setInterval(() => this.host.tick(), config.tickMs);
    this.sweeper = setInterval(() => this.sweep(), 100);
    this.sweeper.unref();
    this.coordinator = setInterval(() => void this.coordinate(), CoordinateEveryMs);
    this.coordinator.unref();
  }

  get count(): number {
    return this.config.groups;
  }

  static async open(config: Config, log: Logger): Promise<ClusterGroups> {
    const peers = config.peers;
    assert(peers !== undefined && peers.length > 1, 'a cluster has at least two nodes');
    const nodeIds = peers.map((p) => p.id);
    const replicas = Math.min(config.replicas, peers.length);
    const placement = Array.from({ length: config.groups }, (_, g) => replicasOf(g, nodeIds, replicas));
    const placed: number[] = [];
    for (let g = 0; g < config.groups; g++) if (placement[g]!.includes(config.nodeId)) placed.push(g);
    const counter = new PoolTokenCounter(config.tokenizerThreads);
    let self: ClusterGroups | undefined;
    // Known before any peer can ask: a member says so even while it is still opening its storage.
    const membership = await ReplicaHost.membership(config);
    const incarnations = Incarnations.open(config.dataDir);
    const early = new EarlyPeers(membership?.founders, incarnations);
    const admission = new PeerAdmission(config, log, incarnations, early, membership !== undefined);
    const refusedBy = new Map<string, string>();
    const transport: Transport = new Transport({
      clusterId: config.clusterId,
      nodeId: config.nodeId,
      listen: { host: config.host, port: config.clusterPort },
      peers: new Map(peers.filter((p) => p.id !== config.nodeId).map((p) => [p.id, { host: p.host, port: p.port }])),
      onMessage: (from, message) => (self ? self.receive(from, message) : early.receive(from, message, transport)),
      onPeer: (peer, connected) => {
        // Also while opening: a peer that refused this node and now takes it has changed its mind.
        if (connected) refusedBy.delete(peer);
        self?.peerChanged(peer, connected);
      },
      log,
      secret: config.clusterSecret === undefined ? undefined : Buffer.from(config.clusterSecret, 'utf8'),
      incarnation: incarnations.own,
      admit: (peer, hello) => admission.admit(transport, peer, hello.incarnation),
      onRefused: (peer, reason) => refusedBy.set(peer, reason),
      counters: {
        framesSent: (n) => metrics.clusterFrames.inc({ direction: 'sent' }, n),
        framesReceived: (n) => metrics.clusterFrames.inc({ direction: 'received' }, n),
        dropped: (n) => metrics.clusterDropped.inc(n),
        rejected: () => metrics.clusterRejected.inc(),
      },
    });
    let host: ReplicaHost | undefined;
    try {
      await transport.start();
      // The founders are the nodes of the first FASTPACA_PEERS, as the first of them to found
      // recorded it. A node that is one of them founds its groups with exactly their founding
      // membership (at first start, or later, late); any other node joins with empty groups,
      // which the coordinator adds to their groups and their leaders fill with snapshots. Once a
      // directory belongs to a cluster, nothing is founded again.
      const founders = membership?.founders ?? (await early.discover(transport, nodeIds.filter((id) => id !== config.nodeId), log)) ?? nodeIds;
      const founding = membership === undefined && founders.includes(config.nodeId);
      if (membership === undefined) log.info(founding ? 'founding the groups placed on this node' : 'joining an existing cluster', { founders, nodes: nodeIds });
      const foundingPlacement = (g: number) => replicasOf(g, founders, Math.min(config.replicas, founders.length));
      host = await ReplicaHost.open({
        config,
        raftId: raftIdOf(config.nodeId),
        groups: placed,
        founders: (g) => (founding && foundingPlacement(g).includes(config.nodeId) ? foundingPlacement(g).map(raftIdOf) : []),
        foundedBy: founders,
        counter,
        log,
        send: (messages) => self?.sendRaft(messages),
        sendNow: (messages) => {
          self?.sendRaft(messages);
          transport.flushNow();
        },
      });
    } catch (err) {
      await transport.close();
      await host?.close();
      await counter.close();
      throw err;
    }
    admission.joined = true;
    self = new ClusterGroups(config, log, host, transport, counter, placement, incarnations, refusedBy, early);
    log.info('cluster node started', { nodes: nodeIds, hosted: host.groups.length, placed: placed.length, replicas });
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
    const local = this.host.list(req, (g) => this.host.member(g) && (this.host.leads(g) || this.leaderNode(g) === undefined)) as Extract<QueryResult, { q: 'list' }>;
    const byId = new Map<string, ContextState>();
    for (const part of [local, ...(await Promise.all(remote))]) for (const c of part.contexts) if (!byId.has(c.id) || byId.get(c.id)!.version < c.version) byId.set(c.id, c);
    const contexts = [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { q: 'list', contexts: contexts.slice(0, req.limit) };
  }

  readiness(): Readiness {
    const reason = this.host.unavailableReason;
    if (reason !== undefined) return { ready: false, reason };
    for (const [peer, why] of this.refusedBy) return { ready: false, reason: `node ${peer} refuses this node: ${why}` };
    let without = 0;
    let joining = 0;
    for (const g of this.hosted) {
      if (!this.host.member(g)) {
        if (this.placement[g]!.includes(this.config.nodeId)) joining++;
      } else if (this.host.leaderOf(g) === 0) without++;
    }
    if (joining > 0) return { ready: false, reason: `${joining} groups placed on this node have not added it yet` };
    return without === 0 ? { ready: true } : { ready: false, reason: `${without} of the groups this node replicates have no known leader` };
  }

  metrics(): Promise<ThreadMetrics[]> {
    return Promise.resolve([]);
  }

  cluster(): ClusterView {
    const groupStatus: ClusterView['group_status'] = [];
    let leading = 0;
    let without = 0;
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
        replicas: this.placement[g]!,
        voters: st.voters.map((id) => this.byRaftId.get(id) ?? String(id)),
        learners: st.learners.map((id) => this.byRaftId.get(id) ?? String(id)),
      };
      if (st.match !== undefined) entry.lag = Object.fromEntries(Object.entries(st.match).map(([id, m]) => [this.byRaftId.get(Number(id)) ?? id, st.lastIndex - m]));
      groupStatus.push(entry);
    }
    return {
      node: this.config.nodeId,
      cluster: this.config.clusterId,
      nodes: this.nodes.map((n) => {
        const self = n.id === this.config.nodeId;
        const returned = this.incarnations.returned.get(n.id);
        const refusedBy = this.refusedBy.get(n.id);
        return {
          id: n.id,
          raft_id: raftIdOf(n.id),
          address: `${n.host}:${n.port}`,
          self,
          connected: self || this.transport.connected(n.id),
          incarnation: self ? this.incarnations.own : (this.incarnations.known(n.id) ?? null),
          ...(returned === undefined ? {} : { returned_with: returned }),
          ...(refusedBy === undefined ? {} : { refused_by: refusedBy }),
        };
      }),
      groups: this.config.groups,
      replicas: Math.min(this.config.replicas, this.nodes.length),
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
    clearInterval(this.coordinator);
    this.failOutstanding(() => true, 'the node is shutting down');
    await this.host.close();
    await this.transport.close();
    await this.counter.close();
  }

  // ---- routing -----------------------------------------------------------------------------------

  /** The node this one believes leads `group`, if any. */
  private leaderNode(group: number): string | undefined {
    if (this.host.member(group)) return this.byRaftId.get(this.host.leaderOf(group));
    return this.hints.get(group);
  }

  private async route(group: number, t: GroupOp, req: unknown, deadline = performance.now() + this.config.requestTimeoutMs): Promise<unknown> {
    let target = this.leaderNode(group);
    let tried = 0;
    for (let hop = 0; hop < HopsMax; hop++) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      if (target === undefined) {
        if (!this.host.member(group)) {
          // Not a replica here and no hint: ask the replicas in turn, they know their leader.
          const replicas = this.placement[group]!;
          target = replicas[tried++ % replicas.length];
        } else {
          // An election is under way: wait for it (bounded by the deadline and HopsMax).
          await backoff(hop, deadline);
          target = this.leaderNode(group);
          continue;
        }
      }
      try {
        if (target === this.config.nodeId) return await withDeadline(this.runHere(t, group, req), left);
        metrics.forwarded.inc();
        return await this.call(target!, { t, id: 0, g: group, ms: Math.floor(left), req } as Forward, left);
      } catch (err) {
        if (err instanceof UnreachableError) {
          // Nothing was sent: the leader may have died; wait for the next one.
          if (!this.host.member(group)) this.hints.delete(group);
          await backoff(hop, deadline);
          target = this.leaderNode(group);
          if (target === err.peer && !this.transport.connected(err.peer)) target = undefined;
          continue;
        }
        // A read is safe to try again whatever happened to it (a leader stepping down mid-read).
        if (t === 'q' && err instanceof FastpacaError && err.code === 'unavailable' && !(err instanceof NotLeaderError)) {
          await backoff(hop, deadline);
          target = this.leaderNode(group);
          continue;
        }
        if (!(err instanceof NotLeaderError)) throw err;
        const hinted = this.byRaftId.get(err.leader);
        if (!this.host.member(group)) {
          if (hinted === undefined) this.hints.delete(group);
          else this.hints.set(group, hinted);
        }
        target = hinted === target ? undefined : hinted;
        if (target === undefined) await backoff(hop, deadline);
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

  /**
   * Sends a round's Raft messages. The heartbeats (and their answers) of all groups to one peer
   * go as one message of tuples, the rest one by one; all of a turn's leave in one frame. To a
   * peer that is not connected they are dropped, not queued: Raft's heartbeats and probes send
   * again what is still needed once it is back, and stale appends would only cost bandwidth.
   */
  private sendRaft(messages: Array<{ group: number; message: Message }>): void {
    const beats = new Map<string, { h: HeartbeatTuple[]; r: HeartbeatRespTuple[] }>();
    for (const { group, message } of messages) {
      const node = this.byRaftId.get(message.to);
      if (node === undefined || node === this.config.nodeId || !this.transport.connected(node)) continue;
      if (message.kind === MessageKind.Heartbeat || message.kind === MessageKind.HeartbeatResp) {
        let b = beats.get(node);
        if (b === undefined) beats.set(node, (b = { h: [], r: [] }));
        if (message.kind === MessageKind.Heartbeat) b.h.push([group, message.term, message.commit, message.context ?? null]);
        else b.r.push([group, message.term, message.context ?? null]);
        continue;
      }
      this.transport.send(node, { t: 'r', g: group, m: message } satisfies RaftEnvelope);
    }
    for (const [node, b] of beats) this.transport.send(node, { t: 'h', ...(b.h.length > 0 ? { h: b.h } : {}), ...(b.r.length > 0 ? { r: b.r } : {}) } satisfies Heartbeats);
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
      case 'h': {
        const sender = raftIdOf(from);
        for (const { group, message } of expandHeartbeats(msg, sender, this.raftId)) {
          if (!this.hosted.has(group)) {
            metrics.clusterInvalid.inc();
            continue;
          }
          try {
            this.host.step(group, message);
          } catch (err) {
            // One group's trouble (say, a leader that remembers more of this replica than it
            // holds) must not cost the other groups their heartbeats.
            this.log.error('a heartbeat could not be taken', { group, err });
          }
        }
        return;
      }
      case 'a': {
        const o = this.outstanding.get(msg.id);
        if (o === undefined) return this.early.answered(from, msg);
        if (o.peer !== from) return; // late: the caller has moved on
        this.outstanding.delete(msg.id);
        if (msg.err === undefined) return o.resolve(msg.ok);
        return o.reject(fromWire(msg.err));
      }
      default:
        return this.serve(from, msg);
    }
  }

  /** Runs a group's request on this node's replica, which must lead the group (else NotLeaderError). */
  private runHere(t: GroupOp, group: number, req: unknown): Promise<unknown> {
    if (!this.hosted.has(group)) return Promise.reject(new NotLeaderError(group, 0));
    try {
      switch (t) {
        case 'w':
          return this.host.submit(group, req as WriteRequest);
        case 'q':
          return this.host.read(group, req as ReadRequest);
        case 'c': {
          const cc = req as ConfChange;
          if (!isConfChange(cc)) throw new FastpacaError('invalid_request', 'a membership change names an op and a node');
          return this.host.changeMembership(group, cc);
        }
        case 't': {
          const to = (req as { to?: unknown }).to;
          if (typeof to !== 'number') throw new FastpacaError('invalid_request', 'a leadership transfer names a node');
          return Promise.resolve(this.host.transferLeader(group, to));
        }
        case 'g':
          if (!this.host.leads(group)) throw new NotLeaderError(group, this.host.leaderOf(group));
          return Promise.resolve(this.host.status(group));
      }
    } catch (err) {
      return Promise.reject(err);
    }
  }

  // ---- the coordinator -----------------------------------------------------------------------------

  /** The live node with the smallest id, as this node sees it, moves replicas. */
  private isCoordinator(): boolean {
    for (const n of this.nodes) {
      if (n.id === this.config.nodeId) return true;
      if (this.transport.connected(n.id)) return false;
    }
    return false;
  }

  /**
   * One pass of the coordinator: every group is brought one membership change closer to its
   * placement over the nodes of FASTPACA_PEERS. The order keeps every group at its replica count
   * or above: add the new node as a learner, promote it once it has caught up, then remove the
   * node that lost the slot (handing leadership away first if it leads). Idempotent: every
   * decision is made from the leader's current membership, so a new coordinator simply goes on.
   */
  private async coordinate(): Promise<void> {
    if (this.coordinating || this.closed || !this.isCoordinator()) return;
    this.coordinating = true;
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (!this.closed && next < this.config.groups) {
          const g = next++;
          const desired = this.placement[g]!.map(raftIdOf);
          let st: GroupStatus;
          try {
            st = (await this.route(g, 'g', {})) as GroupStatus;
          } catch {
            continue; // no leader now: the next pass
          }
          let step: ReturnType<typeof nextMembershipStep>;
          try {
            step = nextMembershipStep(st, desired);
          } catch (err) {
            this.log.error('could not decide a membership step', { group: g, err });
            continue;
          }
          if (step === undefined) continue;
          const name = (id: number) => this.byRaftId.get(id) ?? String(id);
          this.log.info('moving a replica', { group: g, step: step.t === 'c' ? `${step.req.op} ${name(step.req.node)}` : `transfer leadership to ${name(step.req.to)}` });
          try {
            await this.route(g, step.t, step.req);
          } catch (err) {
            this.log.debug('a membership step failed; the next pass tries again', { group: g, err: (err as Error).message });
          }
        }
      };
      await Promise.all(Array.from({ length: CoordinatorConcurrency }, worker));
    } finally {
      this.coordinating = false;
    }
  }

  // ---- replacing a node that lost its data ----------------------------------------------------

  /**
   * Replaces node `id`, which lost its data directory and came back with a new one (so every
   * peer refuses it, see Incarnations), or whose disk is gone for good. Safe because the node's
   * old copy never votes again:
   *  1. it is removed as a voter from every group (the coordinator may add it back as a learner
   *     at once: learners neither vote nor count towards a commit);
   *  2. every other node is waited for until none of the groups it is a member of, as it has
   *     applied them, still counts the node as a voter;
   *  3. every node forgets the node's incarnation, durably, so its next connection is taken as a
   *     new copy: the coordinator adds it back as a learner, its leaders fill it with snapshots,
   *     and it is promoted once it has caught up.
   * Every other node must be up (a node that was down would still count the old copy's vote).
   * Idempotent: a replacement that failed half way is simply run again.
   */
  async replaceNode(id: string): Promise<{ node: string; removed_from: number; forgotten_by: string[] }> {
    if (!this.nodes.some((n) => n.id === id)) throw new FastpacaError('not_found', `${JSON.stringify(id)} is not a node of this cluster (FASTPACA_PEERS)`);
    if (id === this.config.nodeId) throw new FastpacaError('conflict', 'a node does not replace itself: ask another node');
    // Nodes this node refuses as wiped too (lost at the same time) hold no membership that could
    // still count the old copy's vote: they are left out, and replaced on their own turn.
    const others = this.nodes.filter((n) => n.id !== id && n.id !== this.config.nodeId && !(this.incarnations.returned.has(n.id) && !this.transport.connected(n.id))).map((n) => n.id);
    const down = others.filter((n) => !this.transport.connected(n));
    if (down.length > 0) throw new FastpacaError('unavailable', `every other node must be up to replace one, and ${down.join(', ')} cannot be reached`, { retryAfterS: 5 });
    if (this.replacing !== undefined) throw new FastpacaError('conflict', `node ${this.replacing} is being replaced; one at a time`);
    this.replacing = id;
    // Within the request's deadline, the forget step with a budget of its own (the caller runs
    // it all again if it fails: it is idempotent).
    const forgetMs = Math.min(ForgetBudgetMaxMs, Math.floor(this.config.requestTimeoutMs / 3));
    const deadline = performance.now() + Math.max(1_000, this.config.requestTimeoutMs - forgetMs - 1_000);
    const raftId = raftIdOf(id);
    const views = async (): Promise<ClusterView[]> => {
      const ms = Math.max(1, Math.floor(deadline - performance.now()));
      return [this.cluster(), ...(await Promise.all(others.map((n) => this.call(n, { t: 's', id: 0, ms }, ms) as Promise<ClusterView>)))];
    };
    try {
      // The new copies: those some node refuses (a node may already have taken one, if a
      // replacement was cut short and is run again).
      const first = await views();
      const fresh = [...new Set(first.flatMap((v) => v.nodes.filter((n) => n.id === id && n.returned_with !== undefined).map((n) => n.returned_with!)))];
      // Lost to every node, not only to this one: a copy that is not a new one and that some node
      // still reaches is alive.
      const reaching = first.filter((v) => v.nodes.some((n) => n.id === id && n.connected && !(n.incarnation !== null && fresh.includes(n.incarnation))));
      if (reaching.length > 0) throw new FastpacaError('conflict', `node ${id} is connected to ${reaching.map((v) => v.node).join(', ')} with the copy this cluster knows: it is alive, and is not replaced`);
      this.log.warn('replacing a node: removing it as a voter from every group', { node: id });
      let removed = 0;
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < this.config.groups) {
          const g = next++;
          if (await this.removeVoter(g, raftId, deadline)) removed++;
        }
      };
      await Promise.all(Array.from({ length: CoordinatorConcurrency }, worker));
      for (;;) {
        const counting = (await views()).filter((v) => v.group_status.some((gs) => gs.voters.includes(id) && (gs.voters.includes(v.node) || gs.learners.includes(v.node))));
        if (counting.length === 0) break;
        if (performance.now() > deadline) throw new FastpacaError('unavailable', `nodes ${counting.map((v) => v.node).join(', ')} still count ${id} as a voter; retry`, { retryAfterS: 5 });
        await pause(200);
      }
      // All at once, this node too: a node that has forgotten, asked by the new copy which copy
      // the others know, would otherwise hear the old one from a node that has not forgotten yet.
      const forgot = await Promise.all([
        Promise.resolve().then(() => this.forget(id, fresh)),
        ...others.map((n) => this.call(n, { t: 'x', id: 0, ms: forgetMs, node: id, keep: fresh }, forgetMs) as Promise<boolean>),
      ]);
      const forgottenBy = [this.config.nodeId, ...others].filter((_, i) => forgot[i] === true);
      this.log.warn('replaced a node: it is taken as a new copy when it connects, and added back as a learner', { node: id, removed_from: removed, forgotten_by: forgottenBy });
      return { node: id, removed_from: removed, forgotten_by: forgottenBy };
    } finally {
      this.replacing = undefined;
    }
  }

  /** Removes `raftId` as a voter of group `g` (on its leader); true if this call removed it. */
  private async removeVoter(g: number, raftId: number, deadline: number): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      let st: GroupStatus | undefined;
      try {
        st = (await this.route(g, 'g', {}, deadline)) as GroupStatus;
        if (!st.voters.includes(raftId)) return false;
      } catch {
        // No leader just now: the group elects one.
      }
      if (st !== undefined) {
        if (st.leader === raftId) throw new FastpacaError('conflict', `node ${this.byRaftId.get(raftId)} leads group ${g}: it is alive, and is not replaced`);
        try {
          await this.route(g, 'c', { op: ConfChangeOp.Remove, node: raftId } satisfies ConfChange, deadline);
          return true;
        } catch {
          // Another change of the group may be under way (the coordinator's): try again shortly.
        }
      }
      if (performance.now() > deadline) throw new FastpacaError('unavailable', `group ${g} could not remove the node in time; retry`, { retryAfterS: 5 });
      await backoff(attempt, deadline);
    }
  }

  /**
   * Forgets the copy of `node` this node knows, the last step of its replacement: its next
   * connection is taken as a new copy. Not a copy in `keep` (new copies, which this node may
   * have taken already when a replacement is run again); true if a record was dropped.
   */
  private forget(node: string, keep: readonly string[]): boolean {
    if (!this.nodes.some((n) => n.id === node) || node === this.config.nodeId) throw new FastpacaError('invalid_request', `${JSON.stringify(node)} is not a peer of this node`);
    const known = this.incarnations.known(node);
    if (known !== undefined && keep.includes(known)) return false;
    // Only a copy that is away: forgetting a live one would take whatever it says next as new.
    if (known !== undefined && this.transport.connected(node)) throw new FastpacaError('conflict', `node ${node} is connected with the copy this node knows: it is not forgotten`);
    this.incarnations.forget(node);
    metrics.clusterReturnedPeers.set(this.incarnations.returned.size);
    if (known === undefined) return false;
    this.log.warn("forgot a peer's incarnation: its next connection is taken as a new copy", { peer: node, incarnation: known });
    return true;
  }

  /** Runs a peer's forwarded request here (never forwarding it again) and answers it. */
  private serve(from: string, f: Forward): void {
    let work: Promise<unknown>;
    switch (f.t) {
      case 'w':
      case 'q':
      case 'c':
      case 't':
      case 'g':
        work = this.runHere(f.t, f.g, f.req);
        break;
      case 'f':
        work = Promise.resolve(this.host.foundedBy);
        break;
      case 'l':
        work = Promise.resolve(this.host.list(f.req, (g) => this.host.leads(g)));
        break;
      case 's':
        work = Promise.resolve(this.cluster());
        break;
      case 'x':
        work = new Promise((resolve) => resolve(this.forget(f.node, f.keep ?? [])));
        break;
      case 'i':
        work = Promise.resolve(this.incarnations.known(f.node) ?? null);
        break;
    }
    void work.then(
      (ok) => this.transport.send(from, { t: 'a', id: f.id, ok } satisfies Answer),
      (err: unknown) => this.transport.send(from, { t: 'a', id: f.id, err: toWire(err) } satisfies Answer),
    );
  }
}

function isConfChange(cc: unknown): cc is ConfChange {
  const c = cc as Partial<ConfChange> | null;
  return typeof c === 'object' && c !== null && Object.values(ConfChangeOp).includes(c.op as ConfChangeOp) && typeof c.node === 'number' && Number.isSafeInteger(c.node) && c.node >= 1;
}

/**
 * The next membership change that brings a group (as its leader reports it) towards `desired`
 * (Raft ids), or undefined when it is there or must wait (a learner still catching up).
 */
export function nextMembershipStep(st: GroupStatus, desired: readonly number[]): { t: 'c'; req: ConfChange } | { t: 't'; req: { to: number } } | undefined {
  const match = st.match ?? {};
  const missing = desired.find((d) => !st.voters.includes(d) && !st.learners.includes(d));
  if (missing !== undefined) return { t: 'c', req: { op: ConfChangeOp.AddLearner, node: missing } };
  const stray = st.learners.find((l) => !desired.includes(l));
  if (stray !== undefined) return { t: 'c', req: { op: ConfChangeOp.Remove, node: stray } };
  const learner = st.learners.find((l) => desired.includes(l));
  if (learner !== undefined) return (match[learner] ?? 0) >= st.commit ? { t: 'c', req: { op: ConfChangeOp.AddVoter, node: learner } } : undefined;
  const extra = st.voters.find((v) => !desired.includes(v));
  if (extra === undefined) return undefined;
  if (extra !== st.leader) return { t: 'c', req: { op: ConfChangeOp.Remove, node: extra } };
  // The leader itself leaves: hand leadership to a desired voter that holds the whole log first.
  const to = desired.find((d) => st.voters.includes(d) && (match[d] ?? 0) >= st.lastIndex);
  return to === undefined ? undefined : { t: 't', req: { to } };
}

/**
 * Decides on each peer at its handshake (the transport's admit hook, after the peer proved the
 * cluster secret): a copy of a node that some node knows otherwise is refused (it came back with
 * a wiped directory, see Incarnations), and a never-met peer's copy is recorded only once the
 * nodes that may know better have been asked. Each refusal is logged once per peer and reason,
 * not at every redial.
 */
class PeerAdmission {
  private readonly logged = new Map<string, string>();

  constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly incarnations: Incarnations,
    private readonly early: EarlyPeers,
    /** Whether this directory belongs to the cluster (until then nodes meet as they found it). */
    public joined: boolean,
  ) {}

  async admit(transport: Transport, peer: string, incarnation: string | undefined): Promise<string | undefined> {
    const inc = this.incarnations;
    const self = this.config.nodeId;
    if (incarnation !== undefined && inc.known(peer) === undefined) {
      // Never met: a node that did meet it may know another copy (this node joined, or was
      // itself replaced, after that copy was last here). Ask the others first; once this node is
      // a member, a majority of the nodes it has met must answer before a stranger is taken as
      // new (those it has met, so that a new node meeting its peers one by one needs only those
      // it already reaches; not a node refused as wiped: its old word is gone with its directory).
      const others = this.config.peers!.filter((p) => p.id !== self && p.id !== peer).map((p) => p.id);
      const asked = others.filter((o) => transport.connected(o));
      const said = await Promise.all(asked.map((o) => this.early.knownBy(transport, o, peer)));
      const at = said.findIndex((i) => typeof i === 'string' && i !== incarnation);
      if (at >= 0) return this.refused(peer, inc.refuse(self, peer, incarnation, said[at]!, asked[at]!), 'error');
      const met = others.filter((o) => inc.known(o) !== undefined && !inc.returned.has(o));
      const answered = asked.filter((o, k) => said[k] !== undefined && met.includes(o)).length;
      if (this.joined && met.length > 0 && answered < Math.floor(met.length / 2) + 1) {
        // For now only: nothing is recorded, and the peer dials again.
        return this.refused(peer, `${self} has not met ${peer}, and has not yet heard from enough of the nodes it has met which copy of ${peer} they know; it asks again at the next connection`, 'warn');
      }
    }
    const refusal = inc.admit(self, peer, incarnation);
    metrics.clusterReturnedPeers.set(inc.returned.size);
    if (refusal === undefined) {
      this.logged.delete(peer);
      return undefined;
    }
    return this.refused(peer, refusal, 'error');
  }

  private refused(peer: string, reason: string, level: 'warn' | 'error'): string {
    metrics.clusterReturnedPeers.set(this.incarnations.returned.size);
    if (this.logged.get(peer) !== reason) this.log[level]('refusing a peer', { peer, reason });
    this.logged.set(peer, reason);
    return reason;
  }
}

/**
 * Peers' messages while this node is still opening its storage. The question "do you belong to a
 * cluster?" is answered at once (with the founders, when this directory is a member's); the
 * answers to this node's own questions are taken; everything else is dropped: Raft sends again,
 * and a forwarded request's caller times out and retries.
 */
class EarlyPeers {
  private readonly waiting = new Map<number, { peer: string; asked: number; answer: (ok: unknown) => void }>();
  /** Far from ClusterGroups' call ids, so a late answer to a question never matches a call. */
  private nextId = 2 ** 40;

  constructor(
    private readonly founders: string[] | undefined,
    private readonly incarnations: Incarnations,
  ) {}

  receive(from: string, message: unknown, transport: Transport): void {
    const kind = peerMessageKind(message);
    if (kind === 'f') return void transport.send(from, { t: 'a', id: (message as Forward).id, ok: this.founders ?? null } satisfies Answer);
    if (kind === 'i') return void transport.send(from, { t: 'a', id: (message as Forward).id, ok: this.incarnations.known((message as Extract<Forward, { t: 'i' }>).node) ?? null } satisfies Answer);
    if (kind !== 'a') return void metrics.clusterDropped.inc();
    this.answered(from, message as Answer);
  }

  /** An answer to one of this class's questions (ClusterGroups hands on the answers it did not ask for). */
  answered(from: string, a: Answer): void {
    const w = this.waiting.get(a.id);
    if (w === undefined || w.peer !== from) return;
    this.waiting.delete(a.id);
    w.answer(a.ok);
  }

  /**
   * The incarnation of `node` that `peer` knows (null: none), or undefined if it did not answer
   * within a second: a node admitting a peer it has never met asks the others first.
   */
  knownBy(transport: Transport, peer: string, node: string): Promise<string | null | undefined> {
    return new Promise((resolve) => {
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve(undefined);
      }, 1_000);
      this.waiting.set(id, {
        peer,
        asked: Date.now(),
        answer: (ok) => {
          clearTimeout(timer);
          resolve(typeof ok === 'string' ? ok : ok === null ? null : undefined);
        },
      });
      if (!transport.send(peer, { t: 'i', id, ms: 1_000, node })) {
        clearTimeout(timer);
        this.waiting.delete(id);
        resolve(undefined);
      }
    });
  }

  /**
   * Asks the peers whether they belong to a cluster until one answers with its founders (this
   * node then founds with them, or joins), or a majority of all nodes, this one included, has
   * answered no (undefined: the cluster is founded now, with this node's list). Waits as long as
   * it takes: founding without a majority's word could found a second cluster over the first.
   */
  async discover(transport: Transport, peers: string[], log: Logger): Promise<string[] | undefined> {
    const said = new Map<string, string[] | null>();
    const majority = Math.floor((peers.length + 1) / 2) + 1;
    let warned = Date.now();
    for (;;) {
      const now = Date.now();
      for (const [id, w] of this.waiting) if (now - w.asked > 1_000) this.waiting.delete(id);
      const asking = new Set([...this.waiting.values()].map((w) => w.peer));
      for (const peer of peers) {
        if (said.has(peer) || asking.has(peer) || !transport.connected(peer)) continue;
        const id = this.nextId++;
        this.waiting.set(id, { peer, asked: now, answer: (ok) => said.set(peer, Array.isArray(ok) && ok.length > 0 && ok.every((x) => typeof x === 'string') ? (ok as string[]) : null) });
        transport.send(peer, { t: 'f', id, ms: 1_000 });
      }
      await pause(100);
      const founded = [...said.values()].find((f) => f !== null);
      if (founded) return founded;
      if (said.size + 1 >= majority) return undefined;
      if (Date.now() - warned > 10_000) {
        warned = Date.now();
        log.warn('waiting for a majority of the cluster before founding or joining it', { answered: [...said.keys()], needed: majority - 1 });
      }
    }
  }
}

/** Refused before anything was sent: `peer` is not connected. */
class UnreachableError extends FastpacaError {
  constructor(readonly peer: string) {
    super('unavailable', `node ${peer} is not reachable from this node; retry`, { retryAfterS: 1 });
  }
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The wait before the next try of a request's hop-th: longer each time, capped, never past its deadline. */
const backoff = (hop: number, deadline: number) => pause(Math.min(NoLeaderWaitMs * (hop + 1), NoLeaderWaitMaxMs, Math.max(0, deadline - performance.now())));

/** `work`, or 503 `unavailable` once `ms` have passed (the work itself may still complete). */
function withDeadline<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FastpacaError('unavailable', 'the group did not answer in time; retry', { retryAfterS: 1 })), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

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
