import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ClusterStateCommitMs, ConfigError, loadConfig } from '../../runtime/config.js';
import { parsePeers, raftIdOf, replicasOf } from '../../runtime/placement.js';

const nodes = (n: number) => Array.from({ length: n }, (_, i) => `fastpaca-${i}`);

describe('replica placement (rendezvous hashing)', () => {
  it('gives each group min(replicas, nodes) distinct nodes, the same answer in any list order', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 1, max: 5 }), (n, group, replicas) => {
        const list = nodes(n);
        const chosen = replicasOf(group, list, replicas);
        expect(chosen.length).toBe(Math.min(n, replicas));
        expect(new Set(chosen).size).toBe(chosen.length);
        expect(replicasOf(group, [...list].reverse(), replicas)).toEqual(chosen);
      }),
    );
  });

  it('spreads 256 groups × 3 replicas evenly over 3, 5 and 9 nodes', () => {
    for (const n of [3, 5, 9]) {
      const load = new Map<string, number>();
      for (let g = 0; g < 256; g++) for (const node of replicasOf(g, nodes(n), 3)) load.set(node, (load.get(node) ?? 0) + 1);
      const even = (256 * 3) / n;
      for (const count of load.values()) expect(Math.abs(count - even) / even).toBeLessThan(0.3);
      // Leaders (first choice) are spread too.
      const first = new Map<string, number>();
      for (let g = 0; g < 256; g++) first.set(replicasOf(g, nodes(n), 3)[0]!, (first.get(replicasOf(g, nodes(n), 3)[0]!) ?? 0) + 1);
      expect(first.size).toBe(n);
    }
  });

  it('a node that joins takes replicas only for itself: no other placement changes', () => {
    const before = nodes(4);
    const after = [...before, 'fastpaca-4'];
    let moved = 0;
    for (let g = 0; g < 256; g++) {
      const a = replicasOf(g, before, 3);
      const b = replicasOf(g, after, 3);
      const gained = b.filter((x) => !a.includes(x));
      const lost = a.filter((x) => !b.includes(x));
      // Either nothing moved, or the new node took exactly one slot from one old node.
      expect(gained.length).toBe(lost.length);
      if (gained.length > 0) {
        expect(gained).toEqual(['fastpaca-4']);
        moved++;
      }
    }
    // About replicas/nodes = 3/5 of the groups gain the new node.
    expect(moved / 256).toBeGreaterThan(0.45);
    expect(moved / 256).toBeLessThan(0.75);
  });
});

describe('FASTPACA_PEERS', () => {
  it('parses id=host:port lists, sorted by id, IPv6 in brackets', () => {
    expect(parsePeers(' b=10.0.0.2:4100, a=node-a.svc:4100,c=[::1]:4101 ', 'a')).toEqual([
      { id: 'a', host: 'node-a.svc', port: 4100 },
      { id: 'b', host: '10.0.0.2', port: 4100 },
      { id: 'c', host: '::1', port: 4101 },
    ]);
  });

  it('refuses malformed lists with a sentence naming the problem', () => {
    const bad: Array<[string, RegExp]> = [
      ['', /lists no node/],
      ['a=host', /is not id=host:port/],
      ['a=host:0', /is not a TCP port/],
      ['a=host:70000', /is not a TCP port/],
      ['a=h:1,a=h:2', /listed twice/],
      ['b=h:1', /does not list this node/],
      ['a b=h:1', /node id/],
    ];
    for (const [raw, why] of bad) {
      expect(() => parsePeers(raw, 'a'), raw).toThrow(ConfigError);
      expect(() => parsePeers(raw, 'a'), raw).toThrow(why);
    }
  });
});

describe('cluster configuration', () => {
  it('a StatefulSet pod derives FASTPACA_PEERS from its name, the cluster size and the headless service', () => {
    const c = loadConfig({ FASTPACA_NODE_ID: 'fastpaca-1', FASTPACA_CLUSTER_SIZE: '3', FASTPACA_PEER_DOMAIN: 'fastpaca-headless.ns.svc.cluster.local', FASTPACA_CLUSTER_PORT: '4100' });
    expect(c.peers).toEqual([0, 1, 2].map((i) => ({ id: `fastpaca-${i}`, host: `fastpaca-${i}.fastpaca-headless.ns.svc.cluster.local`, port: 4100 })));
    expect(c.clusterPort).toBe(4100);
    expect(() => loadConfig({ FASTPACA_NODE_ID: 'laptop', FASTPACA_CLUSTER_SIZE: '3', FASTPACA_PEER_DOMAIN: 'x' })).toThrow(/pod name/);
    expect(() => loadConfig({ FASTPACA_NODE_ID: 'fastpaca-0', FASTPACA_CLUSTER_SIZE: '3' })).toThrow(/FASTPACA_PEER_DOMAIN/);
  });

  it('a peer list of one node is a single node; a node listens on its own FASTPACA_PEERS port', () => {
    expect(loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_PEERS: 'a=h:4200' }).peers).toBeUndefined();
    const c = loadConfig({ FASTPACA_NODE_ID: 'b', FASTPACA_PEERS: 'a=h:4200,b=h:4201' });
    expect(c.peers?.map((p) => p.id)).toEqual(['a', 'b']);
    expect(c.clusterPort).toBe(4201);
  });

  it('a cluster node commits its state store less often unless told (it acknowledges from its Raft log)', () => {
    expect(loadConfig({ FASTPACA_NODE_ID: 'a' }).stateCommitMs).toBe(0);
    expect(loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_PEERS: 'a=h:4200,b=h:4201' }).stateCommitMs).toBe(ClusterStateCommitMs);
    expect(loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_PEERS: 'a=h:4200,b=h:4201', FASTPACA_STATE_COMMIT_MS: '0' }).stateCommitMs).toBe(0);
  });

  it('a cluster secret is optional, and refused when it is short enough to guess', () => {
    expect(loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_PEERS: 'a=h:4200,b=h:4201' }).clusterSecret).toBeUndefined();
    expect(loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_CLUSTER_SECRET: 'x'.repeat(16) }).clusterSecret).toBe('x'.repeat(16));
    expect(() => loadConfig({ FASTPACA_NODE_ID: 'a', FASTPACA_CLUSTER_SECRET: 'hunter2' })).toThrow(ConfigError);
  });

  it('Raft ids are positive, stable and distinct over 5,000 node names', () => {
    expect(raftIdOf('fastpaca-0')).toBe(raftIdOf('fastpaca-0'));
    const seen = new Map<number, string>();
    for (let i = 0; i < 5_000; i++) {
      const id = raftIdOf(`node-${i}`);
      expect(Number.isSafeInteger(id) && id >= 1 && id <= 0x7fffffff).toBe(true);
      expect(seen.get(id), `node-${i}`).toBeUndefined();
      seen.set(id, `node-${i}`);
    }
  });
});
