import net from 'node:net';
import { assert } from './errors.js';
import { BatchOverheadBytes, FrameDecoder, FrameError, encodeBatchFrame, encodeFrame, packMessage } from './frame.js';
import type { Logger } from './log.js';

/** Bumped when what nodes say to each other changes incompatibly. */
export const ProtocolVersion = 1;

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
  /** Frames before the hello are at most this large (an unknown peer gets no big buffer). */
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
    socket.once('connect', () => socket.write(encodeFrame(this.hello())));
    this.handshake(socket, (hello) => (hello.node !== peer.id ? `dialed ${peer.id} but ${hello.node} answered` : undefined));
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
    this.handshake(socket, (hello) => {
      const peer = this.peers.get(hello.node);
      if (peer === undefined) return `${hello.node} is not a peer of this node`;
      if (this.dials(peer)) return `${hello.node} dialed, but this node dials it`;
      socket.write(encodeFrame(this.hello()));
      return undefined;
    });
  }

  /**
   * Reads the peer's hello, then its frames of messages. `check` says why a hello is refused
   * (undefined accepts it). Any violation closes the socket and is counted; none throws.
   */
  private handshake(socket: net.Socket, check: (hello: Hello) => string | undefined): void {
    const decoder = new FrameDecoder(this.limits.frameBytesMax, this.limits.helloBytesMax);
    let peer: Peer | undefined;
    const timer = setTimeout(() => reject('no hello in time'), this.limits.handshakeTimeoutMs);
    socket.once('close', () => clearTimeout(timer));
    const reject = (why: string) => {
      clearTimeout(timer);
      if (socket.destroyed) return;
      this.opts.counters?.rejected();
      this.opts.log.warn('closing a cluster connection', { reason: why, remote: `${socket.remoteAddress}:${socket.remotePort}`, peer: peer?.id });
      socket.destroy();
    };
    socket.on('error', (err) => this.opts.log.debug('cluster connection error', { err: err.message, peer: peer?.id }));
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const value of decoder.push(chunk)) {
          if (socket.destroyed || this.closed) return;
          if (peer === undefined) {
            const why = helloProblem(value, this.opts.clusterId) ?? check(value as Hello);
            if (why !== undefined) return reject(why);
            clearTimeout(timer);
            this.handshaking.delete(socket);
            peer = this.peers.get((value as Hello).node)!;
            this.established(peer, socket);
            continue;
          }
          if (!Array.isArray(value)) return reject('a frame after the hello is not a list of messages');
          peer.lastReceivedAt = performance.now();
          this.opts.counters?.framesReceived(1);
          for (const message of value) {
            try {
              this.opts.onMessage(peer.id, message);
            } catch (err) {
              // The receiver validates what it gets; an exception here is its bug, not the peer's.
              this.opts.log.error('handling a message from a peer failed', { peer: peer.id, err });
            }
          }
        }
      } catch (err) {
        reject(err instanceof FrameError ? err.message : `unreadable input: ${String((err as Error)?.message ?? 'unknown')}`);
      }
    });
  }

  private established(peer: Peer, socket: net.Socket): void {
    if (this.closed) return void socket.destroy();
    // A new connection replaces an old one (the old may be half-open after a network fault).
    if (peer.socket !== undefined && peer.socket !== socket) peer.socket.destroy();
    if (peer.dialing === socket) peer.dialing = undefined;
    peer.socket = socket;
    peer.reconnectDelayMs = this.limits.reconnectDelayFirstMs;
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

  private hello(): Hello {
    return { t: 'hello', cluster: this.opts.clusterId, node: this.opts.nodeId, version: ProtocolVersion };
  }
}

/** Why `value` is not an acceptable hello for this cluster, without trusting any of its fields. */
function helloProblem(value: unknown, clusterId: string): string | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'the first frame is not a hello';
  const hello = value as Record<string, unknown>;
  if (hello.t !== 'hello' || typeof hello.node !== 'string' || typeof hello.cluster !== 'string' || typeof hello.version !== 'number') return 'the first frame is not a hello';
  if (hello.cluster !== clusterId) return `cluster ${JSON.stringify(hello.cluster.slice(0, 100))} is not ${clusterId}`;
  if (hello.version !== ProtocolVersion) return `protocol version ${hello.version} is not ${ProtocolVersion}`;
  return undefined;
}
