import path from 'node:path';
import { expect } from 'vitest';
import { LmdbStore } from '../../actors/contexts/lmdb-store.js';
import { RaftWal } from '../../actors/raft/wal-storage.js';
import { raftIdOf } from '../../runtime/placement.js';
import { call, freePort, startServer, tempDir, type TestServer } from './server.js';

export interface ClusterNode {
  id: string;
  dataDir: string;
  clusterPort: number;
  server: TestServer | undefined;
}

/**
 * Real node processes forming one cluster on 127.0.0.1: every node's cluster port is chosen up
 * front (FASTPACA_PEERS lists them all), each keeps its data directory across restarts.
 * `route` maps a node's cluster port to the port its peers dial (a fault proxy's), when given.
 */
export class TestCluster {
  /** The nodes FASTPACA_PEERS lists now (indexes into `nodes`). */
  members: number[];
  private readonly dialed = new Map<string, number>();

  private constructor(
    readonly nodes: ClusterNode[],
    private readonly env: Record<string, string>,
    private readonly root: string,
    private readonly dial: ((from: number, to: number, port: number) => Promise<number>) | undefined,
  ) {
    this.members = nodes.map((_, i) => i);
  }

  /** Node i's FASTPACA_PEERS: every member, at the port node i dials it on. */
  private async peers(i: number): Promise<string> {
    const entries: string[] = [];
    for (const j of [...new Set([...this.members, i])].sort((a, b) => a - b)) {
      const node = this.nodes[j]!;
      let port = node.clusterPort;
      if (i !== j && this.dial) {
        const key = `${i}>${j}`;
        if (!this.dialed.has(key)) this.dialed.set(key, await this.dial(i, j, node.clusterPort));
        port = this.dialed.get(key)!;
      }
      entries.push(`${node.id}=127.0.0.1:${port}`);
    }
    return entries.join(',');
  }

  /** A new node, listed from now on (the others see it once restarted); not started. */
  async addNode(): Promise<number> {
    const i = this.nodes.length;
    this.nodes.push({ id: `n${i}`, dataDir: path.join(this.root, `n${i}`), clusterPort: await freePort(), server: undefined });
    this.members.push(i);
    return i;
  }

  /** Node i is no longer listed (the others forget it once restarted). */
  removeNode(i: number): void {
    this.members = this.members.filter((m) => m !== i);
  }

  /**
   * `dial(from, to, port)` gives the port node `from` dials to reach `to`, whose cluster port is
   * `port` (a fault proxy's, between them), when given.
   */
  static async start(n: number, opts: { env?: Record<string, string>; dial?: (from: number, to: number, port: number) => Promise<number>; later?: number[] } = {}): Promise<TestCluster> {
    const root = tempDir('fastpaca-cluster-');
    const nodes: ClusterNode[] = [];
    for (let i = 0; i < n; i++) nodes.push({ id: `n${i}`, dataDir: path.join(root, `n${i}`), clusterPort: await freePort(), server: undefined });
    const cluster = new TestCluster(nodes, { FASTPACA_TICK_MS: '50', ...opts.env }, root, opts.dial);
    // Nodes in `later` are listed but not started: the others can found without them.
    const started = await Promise.allSettled(nodes.map((_, i) => (opts.later?.includes(i) ? undefined : cluster.startNode(i))));
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) {
      // The caller never gets the cluster to close: stop the nodes that did start.
      await cluster.close();
      throw failed.reason;
    }
    return cluster;
  }

  /** Starts node i (again), with its data directory; resolves once it is ready (or only live). */
  async startNode(i: number, env: Record<string, string> = {}, waitFor: 'ready' | 'live' = 'ready'): Promise<TestServer> {
    const node = this.nodes[i]!;
    node.server = await startServer({
      dataDir: node.dataDir,
      waitFor,
      env: { ...this.env, FASTPACA_NODE_ID: node.id, FASTPACA_PEERS: await this.peers(i), FASTPACA_CLUSTER_PORT: String(node.clusterPort), ...env },
    });
    return node.server;
  }

  url(i: number): string {
    const s = this.nodes[i]!.server;
    if (!s) throw new Error(`node ${i} is not running`);
    return s.url;
  }

  async kill(i: number): Promise<void> {
    await this.nodes[i]!.server?.kill();
    this.nodes[i]!.server = undefined;
  }

  async stop(i: number): Promise<void> {
    await this.nodes[i]!.server?.stop();
    this.nodes[i]!.server = undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.nodes.map((_, i) => this.stop(i)));
  }

  /** Waits until GET /health/ready of node i answers 200. */
  async ready(i: number, timeoutMs = 60_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      try {
        const r = await fetch(`${this.url(i)}/health/ready`);
        if (r.status === 200) return;
        last = await r.text();
      } catch (err) {
        last = String(err);
      }
      if (Date.now() > until) throw new Error(`node ${i} not ready in time: ${last}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** GET /v1/cluster of node i. */
  async view(i: number): Promise<ClusterViewBody> {
    return (await call<ClusterViewBody>(this.url(i), 'GET', '/v1/cluster')).body;
  }

  /** The index of the node that leads `group` as node `via` sees it (undefined: none known). */
  async leaderOf(group: number, via: number): Promise<number | undefined> {
    const st = (await this.view(via)).group_status.find((s) => s.group === group);
    const idx = this.nodes.findIndex((n) => n.id === st?.leader);
    return idx < 0 ? undefined : idx;
  }

  /**
   * Waits until every running node that replicates a group has applied the same index for it
   * as its leader has committed: the replicas have caught up.
   */
  async converged(timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const views = await Promise.all(this.nodes.map((n, i) => (n.server ? this.view(i) : undefined)));
      const lagging: string[] = [];
      const byGroup = new Map<number, Array<{ node: string; applied: number; commit: number; leader: string | null }>>();
      for (const [i, v] of views.entries()) {
        // A node that is still joining answers 503 (no group_status): it has not caught up.
        if (this.nodes[i]!.server && !Array.isArray(v?.group_status)) lagging.push(`${this.nodes[i]!.id} is still joining`);
        for (const s of v?.group_status ?? []) {
          // A node that left a group (or has not joined it yet) does not follow it.
          if (!s.voters.includes(v!.node) && !s.learners.includes(v!.node)) continue;
          byGroup.set(s.group, [...(byGroup.get(s.group) ?? []), { node: v!.node, applied: s.applied, commit: s.commit, leader: s.leader }]);
        }
      }
      for (const [g, replicas] of byGroup) {
        const leader = replicas.find((r) => r.node === r.leader);
        if (!leader) lagging.push(`group ${g}: no leader`);
        else for (const r of replicas) if (r.applied !== leader.commit) lagging.push(`group ${g}: ${r.node} applied ${r.applied}, leader committed ${leader.commit}`);
      }
      if (lagging.length === 0) return;
      last = lagging.slice(0, 5).join('; ');
      if (Date.now() > until) throw new Error(`replicas did not converge: ${last}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export interface ClusterViewBody {
  node: string;
  nodes: Array<{ id: string; connected: boolean; self: boolean; incarnation: string | null; returned_with?: string; refused_by?: string }>;
  hosted: number;
  leading: number;
  without_leader: number;
  group_status: Array<{ group: number; role: string; leader: string | null; term: number; commit: number; applied: number; first_index: number; last_index: number; replicas: string[]; voters: string[]; learners: string[] }>;
}

/**
 * Opens the store and Raft log of every (stopped) node of `c` and checks that each group's
 * state, with the Raft index it reaches, is the same on every node that is a member of the
 * group. Returns how many groups had more than one member.
 */
export async function assertReplicasIdentical(c: TestCluster, groups = 256): Promise<number> {
  const states: Array<Map<number, string>> = [];
  for (const node of c.members.map((i) => c.nodes[i]!)) {
    const store = LmdbStore.open(node.dataDir, groups);
    const wal = RaftWal.open(path.join(node.dataDir, 'raft', '0'));
    const self = raftIdOf(node.id);
    const held = new Map<number, string>();
    for (let g = 0; g < groups; g++) {
      const conf = wal.group(g).initialState().confState;
      if (!conf.voters.includes(self) && !conf.learners.includes(self)) continue;
      const { applied, data } = store.readGroup(g);
      held.set(g, JSON.stringify({ applied, data }));
    }
    states.push(held);
    wal.close();
    await store.close();
  }
  let compared = 0;
  for (let g = 0; g < groups; g++) {
    const copies = states.map((m) => m.get(g)).filter((s) => s !== undefined);
    for (const copy of copies) expect(copy, `group ${g}: every replica holds the same state`).toBe(copies[0]);
    if (copies.length > 1) compared++;
  }
  return compared;
}
