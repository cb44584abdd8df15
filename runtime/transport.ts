import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import net from 'node:net';
import { assert } from './errors.js';
import { BatchOverheadBytes, FrameDecoder, FrameError, encodeBatchFrame, encodeFrame, packMessage } from './frame.js';
import type { Logger } from './log.js';

/** Bumped when what nodes say to each other changes incompatibly (2: nonces, proofs, incarnations). */
export const ProtocolVersion = 2;

/** Bytes of each side's handshake nonce. */
const NonceBytes = 16;
/** A refusal's reason is cut to this many characters (it comes from a peer not yet trusted). */
const ReasonCharsMax = 300;

export interface PeerAddress {
  host: string;
  port: number;
}

export interface TransportOptions {
  /** Nodes of another cluster are refused at the handshake. */
  clusterId: string;
  nodeId: string;
  /** Where this node accepts connections from its peers. */
  listen: PeerAddress;
  /** Every other node of the cluster. */
  peers: ReadonlyMap<string, PeerAddress>;
  /** A message from a peer, in the order that peer sent it. */
  onMessage: (from: string, message: unknown) => void;
  /** A peer's connection came up or went down. */
  onPeer?: (peer: string, connected: boolean) => void;
  log: Logger;
  limits?: Partial<TransportLimits>;
  counters?: TransportCounters;
  /**
   * The cluster's shared secret (FASTPACA_CLUSTER_SECRET): each side of a connection proves it
   * knows it with an HMAC over both sides' fresh nonces before anything else is taken. Every
   * node of a cluster has the same one, or none.
   */
  secret?: Buffer | undefined;
  /** Said in this node's hello: which copy of its data directory is talking (see `admit`). */
  incarnation?: string;
  /**
   * Decides on a peer whose hello checked out (and, with a secret, proved it): undefined admits
   * it; a sentence refuses it, and is sent to it before the connection closes. Messages from
   * the peer wait until it is decided.
   */
  admit?: (peer: string, hello: PeerHello) => Promise<string | undefined> | string | undefined;
  /** A peer refused this node, saying why (its word: the peer may not have proved itself). */
  onRefused?: (peer: string, reason: string) => void;
}

/** What a peer says of itself at the handshake. */
export interface PeerHello {
  node: string;
  incarnation: string | undefined;
}

export interface TransportLimits {
  /** A frame larger than this closes the connection. */
  frameBytesMax: number;
  /** Messages queued for one peer (not yet written to its socket), in packed bytes, before new ones are dropped. */
  queueBytesMax: number;
  /** Bytes written to a socket but not yet taken by the kernel before the queue waits for `drain`. */
  socketBufferBytesMax: number;
  /** Reconnect delays double from the first to the last. */
  reconnectDelayFirstMs: number;
  reconnectDelayMaxMs: number;
  /** A connection that has not said hello by then is closed. */
  handshakeTimeoutMs: number;
  /** Handshake frames (hello, proof) are at most this large (an unknown peer gets no big buffer). */
  helloBytesMax: number;
  /** Connections still in their handshake at once; more are closed at once. */
  handshakingMax: number;
  /** A connection that has sent nothing for this long sends an empty frame (a ping). */
  pingIntervalMs: number;
  /** A connection that has received nothing for this long is closed and dialed again (a silent
   * partition otherwise keeps a dead socket "connected" for minutes of TCP retransmission). */
  idleTimeoutMs: number;
}

export interface TransportCounters {
  framesSent(n: number): void;
  framesReceived(n: number): void;
  /** Messages dropped because a peer's queue was full (Raft sends them again). */
  dropped(n: number): void;
  /** Connections closed for a protocol violation (bad frame, bad handshake). */
  rejected(): void;
}

const DefaultLimits: TransportLimits = {
  frameBytesMax: 64 * 1024 * 1024,
  queueBytesMax: 64 * 1024 * 1024,
  socketBufferBytesMax: 8 * 1024 * 1024,
  reconnectDelayFirstMs: 50,
  reconnectDelayMaxMs: 2_000,
  handshakeTimeoutMs: 5_000,
  helloBytesMax: 4 * 1024,
  handshakingMax: 64,
  pingIntervalMs: 1_000,
  idleTimeoutMs: 5_000,
};

interface Hello {
  t: 'hello';
  cluster: string;
  node: string;
  version: number;
  nonce: Uint8Array;
  /** Whether this node proves a cluster secret (and expects the peer to). */
  auth: boolean;
  incarnation?: string;
  /** The accepting side's proof, answering the dialer's nonce. */
  proof?: Uint8Array;
}

/** The dialing side's proof, after the accepting side's hello. */
interface Auth {
  t: 'auth';
  proof: Uint8Array;
}

/** Sent instead of going on with a handshake: why this node will not talk to the peer. */
interface Refused {
  t: 'refused';
  reason: string;
}

class Peer {
  socket: net.Socket | undefined;
  /** A dial in progress (closed with the transport). */
  dialing: net.Socket | undefined;
  /** Messages waiting for the socket, packed, and their bytes. */
  queue: Buffer[] = [];
  queueBytes = 0;
  lastSentAt = 0;
  lastReceivedAt = 0;
  reconnectDelayMs: number;
  reconnectTimer: NodeJS.Timeout | undefined;
  flushScheduled = false;
  /** Why the peer last refused this node (logged once per reason, not at every redial). */
  lastRefusal: string | undefined;
  constructor(
    readonly id: string,
    readonly address: PeerAddress,
    limits: TransportLimits,
  ) {
    this.reconnectDelayMs = limits.reconnectDelayFirstMs;
  }
}

/**
 * The TCP transport between the nodes of a cluster: one connection per node pair (the node
 * with the smaller id dials, the other accepts), a handshake that checks cluster id, node id
 * and protocol version, then length-prefixed msgpack frames with a checksum. The messages sent
 * to a peer in one event-loop turn leave as one frame (or a few, each under the frame limit):
 * after the hello a frame's body is a msgpack array of messages (an empty one is a ping), built
 * from messages packed when they were queued, so they are not packed twice.
 * Queues are bounded by their packed bytes: past the limit new messages are dropped and counted
 * (consensus messages are retried by Raft itself), never buffered without bound. A malformed or
 * hostile frame closes that connection and nothing else; so does a connection that stays silent
 * past the idle timeout (each side pings when it has sent nothing for a while).
 */
export class Transport {
  private readonly limits: TransportLimits;
  private readonly peers = new Map<string, Peer>();
  private server: net.Server | undefined;
  /** Accepted sockets still in their handshake. */
  private readonly handshaking = new Set<net.Socket>();
  private keepalive: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: TransportOptions) {
    this.limits = { ...DefaultLimits, ...opts.limits };
    assert(this.limits.pingIntervalMs < this.limits.idleTimeoutMs, 'a connection pings more often than its idle timeout');
    assert(this.limits.frameBytesMax >= BatchOverheadBytes + 1024, 'frames hold at least a small message');
    assert(!opts.peers.has(opts.nodeId), 'the peers of a node do not include itself');
    for (const [id, address] of opts.peers) this.peers.set(id, new Peer(id, address, this.limits));
  }

  /** Starts listening and dialing; resolves with the port it listens on. */
  async start(): Promise<number> {
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.opts.listen.host, port: this.opts.listen.port, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.opts.log.error('cluster listener failed', { err }));
    for (const peer of this.peers.values()) if (this.dials(peer)) this.dial(peer);
    this.keepalive = setInterval(() => this.checkConnections(), Math.max(10, Math.floor(this.limits.pingIntervalMs / 2)));
    this.keepalive.unref();
    return (server.address() as net.AddressInfo).port;
  }

  /** Whether a connection to `peer` is up (handshake done). */
  connected(peer: string): boolean {
    return this.peers.get(peer)?.socket !== undefined;
  }

  /**
   * Queues `message` for `to`; it leaves at the end of this event-loop turn with the others for
   * that peer. Returns false when it was dropped (unknown peer, queue full, too large to pack
   * or to frame, transport closed).
   */
  send(to: string, message: unknown): boolean {
    const peer = this.peers.get(to);
    if (peer === undefined || this.closed) return false;
    let packed: Buffer;
    try {
      packed = packMessage(message);
    } catch (err) {
      // A message that cannot be packed is a bug of the sender.
      this.opts.log.error('could not encode a message for a peer; dropped', { peer: to, err });
      this.opts.counters?.dropped(1);
      return false;
    }
    if (packed.length + BatchOverheadBytes > this.limits.frameBytesMax || peer.queueBytes + packed.length > this.limits.queueBytesMax) {
      this.opts.counters?.dropped(1);
      return false;
    }
    peer.queue.push(packed);
    peer.queueBytes += packed.length;
    if (!peer.flushScheduled) {
      peer.flushScheduled = true;
      setImmediate(() => this.flush(peer));
    }
    return true;
  }

  /** Writes what is queued for every peer to its socket now, instead of at the end of the turn. */
  flushNow(): void {
    for (const peer of this.peers.values()) if (peer.queue.length > 0) this.flush(peer);
  }

  /** Forgets what is queued for `peer` (a caller whose messages go stale once the peer is gone). */
  discard(peer: string): void {
    const p = this.peers.get(peer);
    if (p === undefined) return;
    p.queue = [];
    p.queueBytes = 0;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.keepalive);
    for (const peer of this.peers.values()) {
      clearTimeout(peer.reconnectTimer);
      peer.dialing?.destroy();
      peer.dialing = undefined;
      peer.socket?.destroy();
      peer.socket = undefined;
      peer.queue = [];
      peer.queueBytes = 0;
    }
    for (const s of this.handshaking) s.destroy();
    this.handshaking.clear();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private dials(peer: Peer): boolean {
    return this.opts.nodeId < peer.id;
  }

  /** Writes what is queued for `peer`, in frames under the limit, while its socket takes them. */
  private flush(peer: Peer): void {
    peer.flushScheduled = false;
    const socket = peer.socket;
    // No connection yet (or it is full): the queue waits, bounded, for the handshake or `drain`.
    while (socket !== undefined && peer.queue.length > 0 && socket.writableLength <= this.limits.socketBufferBytesMax) {
      let bytes = BatchOverheadBytes;
      let n = 0;
      while (n < peer.queue.length && bytes + peer.queue[n]!.length <= this.limits.frameBytesMax) bytes += peer.queue[n++]!.length;
      const batch = peer.queue.splice(0, n);
      for (const p of batch) peer.queueBytes -= p.length;
      this.write(peer, socket, encodeBatchFrame(batch));
    }
  }

  private write(peer: Peer, socket: net.Socket, frame: Buffer): void {
    socket.write(frame);
    peer.lastSentAt = performance.now();
    this.opts.counters?.framesSent(1);
  }

  /** Pings connections that have been quiet, closes those that have been silent too long. */
  private checkConnections(): void {
    const now = performance.now();
    for (const peer of this.peers.values()) {
      const socket = peer.socket;
      if (socket === undefined) continue;
      if (now - peer.lastReceivedAt > this.limits.idleTimeoutMs) {
        this.opts.log.warn('closing a silent cluster connection', { peer: peer.id, silent_ms: Math.round(now - peer.lastReceivedAt) });
        socket.destroy();
        continue;
      }
      if (now - peer.lastSentAt >= this.limits.pingIntervalMs && peer.queue.length === 0) this.write(peer, socket, encodeBatchFrame([]));
    }
  }

  private dial(peer: Peer): void {
    if (this.closed || peer.socket !== undefined || peer.dialing !== undefined) return;
    const socket = net.connect({ host: peer.address.host, port: peer.address.port });
    peer.dialing = socket;
    socket.setNoDelay(true);
    const nonce = randomBytes(NonceBytes);
    socket.once('connect', () => socket.write(encodeFrame(this.hello(nonce))));
    this.handshake(socket, nonce, peer);
    socket.once('close', () => {
      if (peer.dialing === socket) peer.dialing = undefined;
      if (peer.socket === socket || peer.socket === undefined) this.scheduleRedial(peer);
    });
  }

  private scheduleRedial(peer: Peer): void {
    if (this.closed || peer.reconnectTimer !== undefined) return;
    const delay = peer.reconnectDelayMs;
    peer.reconnectDelayMs = Math.min(this.limits.reconnectDelayMaxMs, peer.reconnectDelayMs * 2);
    peer.reconnectTimer = setTimeout(() => {
      peer.reconnectTimer = undefined;
      this.dial(peer);
    }, delay * (0.5 + Math.random() / 2));
  }

  private accept(socket: net.Socket): void {
    if (this.closed || this.handshaking.size >= this.limits.handshakingMax) {
      this.opts.counters?.rejected();
      return void socket.destroy();
    }
    socket.setNoDelay(true);
    this.handshaking.add(socket);
    socket.once('close', () => this.handshaking.delete(socket));
    this.handshake(socket, randomBytes(NonceBytes), undefined);
  }

  /**
   * The handshake, then the peer's frames of messages. The dialing side sends its hello; the
   * accepting side answers with its own (and, with a secret, its proof over both nonces); the
   * dialing side checks it and sends its proof. Each side admits the other (`admit`) only once
   * the other has proved the secret (when there is one), and before it takes anything from it;
   * frames wait meanwhile. Any violation closes the socket and is counted; none throws.
   */
  private handshake(socket: net.Socket, nonce: Buffer, dialed: Peer | undefined): void {
    const secret = this.opts.secret;
    // Frames before the connection is open are small: an unproven peer gets no big buffer.
    const decoder = new FrameDecoder(this.limits.frameBytesMax, this.limits.helloBytesMax, dialed === undefined && secret ? 2 : 1);
    let stage: 'hello' | 'admitting' | 'auth' | 'open' | 'closed' = 'hello';
    let claimed: Peer | undefined = dialed;
    let theirNonce: Uint8Array | undefined;
    let theirHello: Hello | undefined;
    let peer: Peer | undefined;
    const backlog: unknown[] = [];
    const timer = setTimeout(() => reject('no handshake in time'), this.limits.handshakeTimeoutMs);
    socket.once('close', () => clearTimeout(timer));
    /** Closes the connection; `quiet` for a refusal logged elsewhere (a refused peer redials every few seconds). */
    const reject = (why: string, quiet = false, farewell?: Buffer) => {
      clearTimeout(timer);
      if (stage === 'closed' || socket.destroyed) return;
      stage = 'closed';
      this.opts.counters?.rejected();
      this.opts.log[quiet ? 'debug' : 'warn']('closing a cluster connection', { reason: why, remote: `${socket.remoteAddress}:${socket.remotePort}`, peer: (peer ?? claimed)?.id });
      if (farewell === undefined) return void socket.destroy();
      // Ended, not destroyed: the farewell must reach the peer before the close does.
      socket.end(farewell);
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    /** Tells the peer why before closing: a node refused at the handshake can say so in its log. */
    const refuse = (why: string, quiet = false) => reject(why, quiet, encodeFrame({ t: 'refused', reason: why.slice(0, ReasonCharsMax) } satisfies Refused));
    /** The peer will not talk to this node (it answers a hello, or this node's hello, so). */
    const refused = (p: Peer, value: Refused) => {
      const reason = value.reason.slice(0, ReasonCharsMax);
      if (p.lastRefusal !== reason) this.opts.log.error('a peer refused this node', { peer: p.id, reason });
      p.lastRefusal = reason;
      this.opts.onRefused?.(p.id, reason);
      reject(`refused by ${p.id}: ${reason}`, true);
    };
    const admit = (hello: Hello, then: () => void) => {
      stage = 'admitting';
      socket.pause();
      Promise.resolve()
        .then(() => this.opts.admit?.(hello.node, { node: hello.node, incarnation: hello.incarnation }))
        .then((refusal) => {
          if (stage === 'closed' || socket.destroyed || this.closed) return;
          // The admit hook's owner logs its refusals (once, not at every redial).
          if (refusal !== undefined) return refuse(refusal, true);
          then();
          socket.resume();
          pump();
        })
        // The admit hook failing, or a bug in what follows it, costs this connection only.
        .catch((err: unknown) => reject(`could not admit the peer: ${String((err as Error)?.message ?? err)}`));
    };
    const open = (p: Peer) => {
      clearTimeout(timer);
      this.handshaking.delete(socket);
      stage = 'open';
      peer = p;
      this.established(p, socket);
    };
    const onHello = (value: unknown) => {
      if (dialed !== undefined && isRefused(value)) return refused(dialed, value);
      const problem = helloProblem(value, this.opts.clusterId);
      if (problem !== undefined) return reject(problem);
      const hello = value as Hello;
      if (dialed !== undefined) {
        if (hello.node !== dialed.id) return reject(`dialed ${dialed.id} but ${hello.node} answered`);
      } else {
        claimed = this.peers.get(hello.node);
        if (claimed === undefined) return reject(`${hello.node} is not a peer of this node`);
        if (this.dials(claimed)) return reject(`${hello.node} dialed, but this node dials it`);
      }
      if (hello.auth !== (secret !== undefined)) {
        return refuse(secret ? `${hello.node} has no cluster secret, and ${this.opts.nodeId} requires one: set the same FASTPACA_CLUSTER_SECRET on every node` : `${hello.node} requires a cluster secret, and ${this.opts.nodeId} has none: set the same FASTPACA_CLUSTER_SECRET on every node`);
      }
      theirNonce = Buffer.from(hello.nonce); // a copy: the decoded value may be a view of the read buffer
      theirHello = hello;
      const peerNode = claimed!;
      const own = this.opts.incarnation ?? '';
      if (dialed !== undefined) {
        // The accepting side proves itself first, answering this side's nonce.
        if (secret && !proofHolds(hello.proof, proof(secret, 'accept', this.opts.clusterId, peerNode.id, this.opts.nodeId, nonce, theirNonce, hello.incarnation ?? ''))) {
          return reject(`${peerNode.id} did not prove the cluster secret: FASTPACA_CLUSTER_SECRET differs between the nodes`);
        }
        return admit(hello, () => {
          if (secret) socket.write(encodeFrame({ t: 'auth', proof: proof(secret, 'dial', this.opts.clusterId, this.opts.nodeId, peerNode.id, nonce, theirNonce!, own) } satisfies Auth));
          open(peerNode);
        });
      }
      const answer = () => {
        const mine = this.hello(nonce);
        if (secret) mine.proof = proof(secret, 'accept', this.opts.clusterId, this.opts.nodeId, peerNode.id, theirNonce!, nonce, own);
        socket.write(encodeFrame(mine));
      };
      // With a secret, the dialing side is admitted only once it has proved it (onAuth): a
      // stranger must not get its word about a node's incarnation recorded.
      if (secret) {
        answer();
        stage = 'auth';
        return;
      }
      admit(hello, () => {
        answer();
        open(peerNode);
      });
    };
    const onAuth = (value: unknown) => {
      const p = claimed!;
      if (isRefused(value)) return refused(p, value);
      const auth = value as Partial<Auth> | null;
      if (typeof auth !== 'object' || auth === null || auth.t !== 'auth') return reject(`${p.id} sent no proof of the cluster secret`);
      if (!proofHolds(auth.proof, proof(secret!, 'dial', this.opts.clusterId, p.id, this.opts.nodeId, theirNonce!, nonce, theirHello!.incarnation ?? ''))) {
        return reject(`${p.id} did not prove the cluster secret: FASTPACA_CLUSTER_SECRET differs between the nodes`);
      }
      admit(theirHello!, () => open(p));
    };
    const deliver = (p: Peer, value: unknown) => {
      if (!Array.isArray(value)) return isRefused(value) ? refused(p, value) : reject('a frame after the handshake is not a list of messages');
      p.lastReceivedAt = performance.now();
      // A connection that carries frames is a good one: the next redial starts from the first delay.
      // (Not at the handshake: a side that opens before the other admits it may still be refused.)
      p.lastRefusal = undefined;
      p.reconnectDelayMs = this.limits.reconnectDelayFirstMs;
      this.opts.counters?.framesReceived(1);
      for (const message of value) {
        try {
          this.opts.onMessage(p.id, message);
        } catch (err) {
          // The receiver validates what it gets; an exception here is its bug, not the peer's.
          this.opts.log.error('handling a message from a peer failed', { peer: p.id, err });
        }
      }
    };
    const pump = () => {
      while (backlog.length > 0 && stage !== 'admitting' && stage !== 'closed') {
        if (socket.destroyed || this.closed) return;
        const value = backlog.shift();
        if (stage === 'open') deliver(peer!, value);
        else if (stage === 'hello') onHello(value);
        else onAuth(value);
      }
    };
    socket.on('error', (err) => this.opts.log.debug('cluster connection error', { err: err.message, peer: (peer ?? claimed)?.id }));
    socket.on('data', (chunk: Buffer) => {
      if (stage === 'closed') return;
      try {
        // Bounded: the socket is paused while a peer is being admitted, so at most one chunk's frames wait.
        for (const value of decoder.push(chunk)) backlog.push(value);
      } catch (err) {
        return reject(err instanceof FrameError ? err.message : `unreadable input: ${String((err as Error)?.message ?? 'unknown')}`);
      }
      pump();
    });
  }

  private established(peer: Peer, socket: net.Socket): void {
    if (this.closed) return void socket.destroy();
    // A new connection replaces an old one (the old may be half-open after a network fault).
    if (peer.socket !== undefined && peer.socket !== socket) peer.socket.destroy();
    if (peer.dialing === socket) peer.dialing = undefined;
    peer.socket = socket;
    peer.lastReceivedAt = performance.now();
    peer.lastSentAt = performance.now();
    socket.on('drain', () => this.flush(peer));
    socket.once('close', () => {
      if (peer.socket !== socket) return;
      peer.socket = undefined;
      this.opts.onPeer?.(peer.id, false);
    });
    this.opts.onPeer?.(peer.id, true);
    this.flush(peer);
  }

  private hello(nonce: Buffer): Hello {
    return {
      t: 'hello',
      cluster: this.opts.clusterId,
      node: this.opts.nodeId,
      version: ProtocolVersion,
      nonce,
      auth: this.opts.secret !== undefined,
      ...(this.opts.incarnation === undefined ? {} : { incarnation: this.opts.incarnation }),
    };
  }
}

/** Why `value` is not an acceptable hello for this cluster, without trusting any of its fields. */
function helloProblem(value: unknown, clusterId: string): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'the first frame is not a hello';
  const hello = value as Record<string, unknown>;
  if (hello.t !== 'hello' || typeof hello.node !== 'string' || typeof hello.cluster !== 'string' || typeof hello.version !== 'number') return 'the first frame is not a hello';
  if (hello.cluster !== clusterId) return `cluster ${JSON.stringify(hello.cluster.slice(0, 100))} is not ${clusterId}`;
  if (hello.version !== ProtocolVersion) return `protocol version ${hello.version} is not ${ProtocolVersion}`;
  if (!(hello.nonce instanceof Uint8Array) || hello.nonce.length !== NonceBytes || typeof hello.auth !== 'boolean') return 'the hello has no nonce';
  if (hello.incarnation !== undefined && (typeof hello.incarnation !== 'string' || hello.incarnation.length > 64)) return 'the hello has a malformed incarnation';
  if (hello.proof !== undefined && !(hello.proof instanceof Uint8Array)) return 'the hello has a malformed proof';
  return undefined;
}

function isRefused(value: unknown): value is Refused {
  return typeof value === 'object' && value !== null && (value as Partial<Refused>).t === 'refused' && typeof (value as Partial<Refused>).reason === 'string';
}

/**
 * `prover`'s proof to `verifier` that it holds the cluster secret, bound to this connection by
 * both nonces (dialing side's first), to its direction by `label`, and to the incarnation the
 * prover's hello said, so that it can be neither replayed on another connection nor reflected
 * back, and the incarnation not swapped.
 */
function proof(secret: Buffer, label: 'accept' | 'dial', cluster: string, prover: string, verifier: string, dialerNonce: Uint8Array, acceptorNonce: Uint8Array, proverIncarnation: string): Buffer {
  return createHmac('sha256', secret)
    .update(packMessage(['fastpaca-cluster-proof', ProtocolVersion, label, cluster, prover, verifier, dialerNonce, acceptorNonce, proverIncarnation]))
    .digest();
}

function proofHolds(given: unknown, expected: Buffer): boolean {
  return given instanceof Uint8Array && given.length === expected.length && timingSafeEqual(given, expected);
}
