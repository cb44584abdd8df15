import { ConfigError } from './config.js';
import { fnv1a32 } from './hash.js';

/** A node of the cluster as FASTPACA_PEERS names it. */
export interface PeerSpec {
  id: string;
  host: string;
  port: number;
}

const NodeIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/**
 * Parses FASTPACA_PEERS: a comma list of `id=host:port`, every node of the cluster including
 * this one (so every node reads the same list). Throws ConfigError with a sentence naming the
 * bad item: a node that starts with a wrong peer list must not start at all.
 */
export function parsePeers(raw: string, self: string): PeerSpec[] {
  const peers: PeerSpec[] = [];
  const seen = new Set<string>();
  for (const item of raw.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
    const m = /^([^=]+)=(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(item);
    if (!m) throw new ConfigError(`FASTPACA_PEERS: ${JSON.stringify(item)} is not id=host:port`);
    const id = m[1]!;
    const host = m[2]!.replace(/^\[|\]$/g, '');
    const port = Number(m[3]);
    if (!NodeIdPattern.test(id)) throw new ConfigError(`FASTPACA_PEERS: node id ${JSON.stringify(id)} must be 1-63 letters, digits, '.', '_' or '-'`);
    if (port < 1 || port > 65535) throw new ConfigError(`FASTPACA_PEERS: port ${port} of ${id} is not a TCP port`);
    if (seen.has(id)) throw new ConfigError(`FASTPACA_PEERS: node ${id} is listed twice`);
    seen.add(id);
    peers.push({ id, host, port });
  }
  if (peers.length === 0) throw new ConfigError('FASTPACA_PEERS lists no node');
  if (!seen.has(self)) throw new ConfigError(`FASTPACA_PEERS does not list this node (${self}); every node lists all nodes, itself included`);
  const byRaftId = new Map<number, string>();
  for (const { id } of peers) {
    const other = byRaftId.get(raftIdOf(id));
    if (other !== undefined) throw new ConfigError(`FASTPACA_PEERS: nodes ${other} and ${id} have the same Raft id; rename one`);
    byRaftId.set(raftIdOf(id), id);
  }
  return peers.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** murmur3's 32-bit finalizer: FNV-1a of similar strings ("n1/5", "n2/5") differs in few bits. */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The nodes that replicate `group`: the `replicas` nodes with the highest rendezvous score
 * hash(node, group), best first (capped by the node count). Every node computes the same answer
 * from the same node list, and when a node joins or leaves only the groups it wins or held
 * move — about replicas/nodes of them — never a reshuffle of the rest.
 */
export function replicasOf(group: number, nodes: readonly string[], replicas: number): string[] {
  const scored = nodes.map((node) => ({ node, score: mix32(fnv1a32(`${node}\u0000${group}`)) }));
  scored.sort((a, b) => b.score - a.score || (a.node < b.node ? -1 : 1));
  return scored.slice(0, Math.min(replicas, nodes.length)).map((s) => s.node);
}

/**
 * A node's id in every Raft group: a positive 31-bit number derived from its node id, so every
 * node computes the same one without coordination and it never changes when nodes join or leave
 * (an index into the peer list would). parsePeers refuses a list in which two collide.
 */
export function raftIdOf(nodeId: string): number {
  return mix32(fnv1a32(`raft\u0000${nodeId}`)) % 0x7fffffff + 1;
}
