import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileDurably } from './durable-file.js';

/** The file in the data directory that holds this node's incarnation and its peers'. */
export const IncarnationsFile = 'cluster.json';
/** Peers remembered at most (a cluster has at most 64 nodes; FASTPACA_PEERS caps it too). */
const PeersMax = 1_024;

interface Stored {
  v: 1;
  incarnation: string;
  peers: Record<string, string>;
}

/**
 * Which copy of its data directory a node is (its incarnation: random, made with the
 * directory), and which copy of each peer's this node has talked to.
 *
 * A node that lost its directory and comes back under the same id has forgotten its votes and
 * the entries it acknowledged; if it took part again as the same voter it could vote twice in a
 * term, or let a leader without a committed entry be elected (a Raft safety violation). Its new
 * directory has a new incarnation, so every peer that talked to the old one refuses it until an
 * operator has the cluster replace it (ClusterGroups.replaceNode): removed from every group, then
 * forgotten here, then added back as a new learner that snapshots fill.
 *
 * A peer's incarnation is recorded on disk (renamed into place, fsynced) before this node takes
 * anything from it, so a crash cannot make it forget whom it talked to.
 */
export class Incarnations {
  /** Peers refused for coming back with a new incarnation: peer → the incarnation it has now. */
  readonly returned = new Map<string, string>();

  private constructor(
    private readonly file: string,
    private readonly stored: Stored,
  ) {}

  /** Reads the directory's incarnations, making this node's the first time (durably). */
  static open(dataDir: string): Incarnations {
    fs.mkdirSync(dataDir, { recursive: true });
    const file = path.join(dataDir, IncarnationsFile);
    let stored: Stored;
    if (fs.existsSync(file)) stored = parse(fs.readFileSync(file, 'utf8'), file);
    else {
      stored = { v: 1, incarnation: randomBytes(8).toString('hex'), peers: {} };
      writeFileDurably(file, JSON.stringify(stored));
    }
    return new Incarnations(file, stored);
  }

  /** This node's incarnation: said in its hello. */
  get own(): string {
    return this.stored.incarnation;
  }

  /** The incarnation of `peer` this node has talked to, if any. */
  known(peer: string): string | undefined {
    return Object.hasOwn(this.stored.peers, peer) ? this.stored.peers[peer] : undefined;
  }

  /**
   * Whether `self` takes `peer`, which says it is `incarnation`: undefined admits it (recording
   * it first if it is new), a sentence refuses it.
   */
  admit(self: string, peer: string, incarnation: string | undefined): string | undefined {
    if (incarnation === undefined) return `${peer} did not say which copy of its data directory it is`;
    const known = this.known(peer);
    if (known === incarnation) {
      this.returned.delete(peer);
      return undefined;
    }
    if (known === undefined) {
      if (Object.keys(this.stored.peers).length >= PeersMax) return `${self} already remembers ${PeersMax} peers`;
      this.save({ ...this.stored.peers, [peer]: incarnation });
      this.returned.delete(peer);
      return undefined;
    }
    this.returned.set(peer, incarnation);
    return this.returnedReason(self, peer, incarnation, `${self} knew ${known}`);
  }

  private returnedReason(self: string, peer: string, incarnation: string, knew: string): string {
    return (
      `${peer} came back with a new data directory (incarnation ${incarnation}; ${knew}): it lost its Raft state, ` +
      `so it must not vote or acknowledge under the same id again (${self} refuses it). Replace it from a healthy node: POST /v1/cluster/nodes/${peer}/replace`
    );
  }

  /**
   * Refuses `peer`, met here for the first time as `incarnation`, because node `by` knows it as
   * `knownThere`: it is the copy `by` knew, come back with a new directory.
   */
  refuse(self: string, peer: string, incarnation: string, knownThere: string, by: string): string {
    this.returned.set(peer, incarnation);
    return this.returnedReason(self, peer, incarnation, `${by} knew ${knownThere}`);
  }

  /** Forgets `peer`'s incarnation (durably): the next one it comes with is taken as new. */
  forget(peer: string): void {
    this.returned.delete(peer);
    if (this.known(peer) === undefined) return;
    const peers = { ...this.stored.peers };
    delete peers[peer];
    this.save(peers);
  }

  private save(peers: Record<string, string>): void {
    const next: Stored = { ...this.stored, peers };
    writeFileDurably(this.file, JSON.stringify(next));
    this.stored.peers = peers;
  }
}

function parse(text: string, file: string): Stored {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(`${file} is not JSON: the data directory is damaged`);
  }
  const s = value as Partial<Stored> | null;
  const ok =
    typeof s === 'object' &&
    s !== null &&
    s.v === 1 &&
    typeof s.incarnation === 'string' &&
    s.incarnation.length > 0 &&
    typeof s.peers === 'object' &&
    s.peers !== null &&
    Object.values(s.peers).every((i) => typeof i === 'string');
  if (!ok) throw new Error(`${file} does not hold a node's incarnations: the data directory is damaged`);
  return { v: 1, incarnation: s.incarnation!, peers: { ...s.peers! } };
}
