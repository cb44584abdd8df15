import net from 'node:net';
import { assert } from './errors.js';
import { FrameDecoder, FrameError, encodeFrame } from './frame.js';
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
};

interface Hello {
  t: 'hello';
  cluster: string;
  node: string;
  version: number;
}

/** One frame carries the messages of one event-loop turn to one peer. */
interface Batch {
  t: 'batch';
  m: unknown[];
}

class Peer {
  socket: net.Socket | undefined;
  /** Messages waiting for the socket, and their packed size (an estimate until packed). */
  queue: unknown[] = [];
  queueBytes = 0;
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
 * to a peer in one event-loop turn leave as one frame. Queues are bounded: past the limit new
 * messages are dropped and counted (consensus messages are retried by Raft itself), never
 * buffered without bound. A malformed or hostile frame closes that connection and nothing else.
 */
export class Transport {
  private readonly limits: TransportLimits;
  private readonly peers = new Map<string, Peer>();
  private server: net.Server | undefined;
  /** Accepted sockets still in their handshake. */
  private readonly handshaking = new Set<net.Socket>();
  private closed = false;

  constructor(private readonly opts: TransportOptions) {
    this.limits = { ...DefaultLimits, ...opts.limits };
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
    return (server.address() as net.AddressInfo).port;
  }

  /** Whether a connection to `peer` is up (handshake done). */
  connected(peer: string): boolean {
    return this.peers.get(peer)?.socket !== undefined;
  }

  /**
   * Queues `message` for `to`; it leaves at the end of this event-loop turn with the others for
   * that peer. Returns false when it was dropped (unknown peer, queue full, transport closed).
   */
  send(to: string, message: unknown, sizeHint = 256): boolean {
    const peer = this.peers.get(to);
    if (peer === undefined || this.closed) return false;
    if (peer.queueBytes + sizeHint > this.limits.queueBytesMax) {
      this.opts.counters?.dropped(1);
      return false;
    }
    peer.queue.push(message);
    peer.queueBytes += sizeHint;
    if (!peer.flushScheduled) {
      peer.flushScheduled = true;
      setImmediate(() => this.flush(peer));
    }
    return true;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const peer of this.peers.values()) {
      clearTimeout(peer.reconnectTimer);
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

  private flush(peer: Peer): void {
    peer.flushScheduled = false;
    const socket = peer.socket;
    // No connection yet (or it is full): the queue waits, bounded, for the handshake or `drain`.
    if (socket === undefined || peer.queue.length === 0 || socket.writableLength > this.limits.socketBufferBytesMax) return;
    const batch: Batch = { t: 'batch', m: peer.queue };
    peer.queue = [];
    peer.queueBytes = 0;
    let frame: Buffer;
    try {
      frame = encodeFrame(batch);
    } catch (err) {
      // A message that cannot be packed is a bug of the sender; the others are lost with it.
      this.opts.log.error('could not encode a frame for a peer; its messages are dropped', { peer: peer.id, err });
      this.opts.counters?.dropped(batch.m.length);
      return;
    }
    if (frame.length > this.limits.frameBytesMax) {
      this.opts.log.error('a frame for a peer is over the size limit; its messages are dropped', { peer: peer.id, bytes: frame.length });
      this.opts.counters?.dropped(batch.m.length);
      return;
    }
    socket.write(frame);
    this.opts.counters?.framesSent(1);
  }

  private dial(peer: Peer): void {
    if (this.closed || peer.socket !== undefined) return;
    const socket = net.connect({ host: peer.address.host, port: peer.address.port });
    socket.setNoDelay(true);
    socket.once('connect', () => socket.write(encodeFrame(this.hello())));
    this.handshake(socket, (hello) => {
      if (hello.node !== peer.id) return `dialed ${peer.id} but ${hello.node} answered`;
      return undefined;
    });
    socket.once('close', () => {
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
    if (this.closed) return void socket.destroy();
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
   * Reads the peer's hello, then its batches. `check` says why a hello is refused (undefined
   * accepts it). Any violation closes the socket and is counted; none throws.
   */
  private handshake(socket: net.Socket, check: (hello: Hello) => string | undefined): void {
    const decoder = new FrameDecoder(this.limits.frameBytesMax);
    let peer: Peer | undefined;
    const timer = setTimeout(() => reject('no hello in time'), this.limits.handshakeTimeoutMs);
    const reject = (why: string) => {
      clearTimeout(timer);
      this.opts.counters?.rejected();
      this.opts.log.warn('closing a cluster connection', { reason: why, remote: `${socket.remoteAddress}:${socket.remotePort}`, peer: peer?.id });
      socket.destroy();
    };
    socket.on('error', (err) => this.opts.log.debug('cluster connection error', { err: err.message, peer: peer?.id }));
    socket.on('data', (chunk: Buffer) => {
      let values: unknown[];
      try {
        values = decoder.push(chunk);
      } catch (err) {
        return reject(err instanceof FrameError ? err.message : String(err));
      }
      for (const value of values) {
        if (socket.destroyed) return;
        if (peer === undefined) {
          const hello = value as Partial<Hello> | null;
          if (typeof hello !== 'object' || hello === null || hello.t !== 'hello' || typeof hello.node !== 'string') return reject('the first frame is not a hello');
          if (hello.cluster !== this.opts.clusterId) return reject(`cluster ${String(hello.cluster)} is not ${this.opts.clusterId}`);
          if (hello.version !== ProtocolVersion) return reject(`protocol version ${String(hello.version)} is not ${ProtocolVersion}`);
          const why = check(hello as Hello);
          if (why !== undefined) return reject(why);
          clearTimeout(timer);
          this.handshaking.delete(socket);
          peer = this.peers.get(hello.node)!;
          this.established(peer, socket);
          continue;
        }
        const batch = value as Partial<Batch> | null;
        if (typeof batch !== 'object' || batch === null || batch.t !== 'batch' || !Array.isArray(batch.m)) return reject('a frame is not a batch');
        this.opts.counters?.framesReceived(1);
        for (const message of batch.m) {
          try {
            this.opts.onMessage(peer.id, message);
          } catch (err) {
            // The receiver validates what it gets; an exception here is its bug, not the peer's.
            this.opts.log.error('handling a message from a peer failed', { peer: peer.id, err });
          }
        }
      }
    });
  }

  private established(peer: Peer, socket: net.Socket): void {
    // A new connection replaces an old one (the old may be half-open after a network fault).
    if (peer.socket !== undefined && peer.socket !== socket) peer.socket.destroy();
    peer.socket = socket;
    peer.reconnectDelayMs = this.limits.reconnectDelayFirstMs;
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
