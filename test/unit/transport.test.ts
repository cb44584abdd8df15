/**
 * The TCP transport between nodes, over real sockets on 127.0.0.1 (and through the
 * fault-injecting proxy): ordering, one connection per pair, reconnects, bounded queues, and
 * hostile peers that only ever cost their own connection.
 */
import net from 'node:net';
import { crc32 } from 'node:zlib';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, FrameError, encodeFrame } from '../../runtime/frame.js';
import { createLogger } from '../../runtime/log.js';
import { ProtocolVersion, Transport, type PeerHello, type TransportLimits, type TransportOptions } from '../../runtime/transport.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { freePort } from '../support/server.js';

const quiet = createLogger(process.env.TLOG ? 'debug' : 'error', {}, process.env.TLOG ? undefined : () => {});
const Cluster = 'test-cluster';

interface Node {
  id: string;
  transport: Transport;
  port: number;
  received: Array<{ from: string; message: unknown }>;
  counts: { sent: number; received: number; dropped: number; rejected: number };
}

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Starts nodes `ids` on free ports, all reaching each other directly. */
async function startNodes(ids: string[]): Promise<Map<string, Node>> {
  const ports = new Map<string, number>();
  for (const id of ids) ports.set(id, await freePort());
  return startNodesOn(ports, (_, to) => ports.get(to)!);
}

async function until(cond: () => boolean, ms = 5_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('Transport', () => {
  it('delivers every message in the order it was sent, both ways, a turn of messages in one frame', async () => {
    const nodes = await startNodes(['a', 'b']);
    const a = nodes.get('a')!;
    const b = nodes.get('b')!;
    await until(() => a.transport.connected('b') && b.transport.connected('a'));
    for (let turn = 0; turn < 20; turn++) {
      for (let i = 0; i < 50; i++) {
        expect(a.transport.send('b', { n: turn * 50 + i, data: 'x'.repeat(i) })).toBe(true);
        expect(b.transport.send('a', [turn, i])).toBe(true);
      }
      await new Promise((r) => setImmediate(r));
    }
    await until(() => b.received.length === 1_000 && a.received.length === 1_000);
    expect(b.received.map((r) => (r.message as { n: number }).n)).toEqual(Array.from({ length: 1_000 }, (_, i) => i));
    expect(b.received.every((r) => r.from === 'a')).toBe(true);
    expect(a.received.map((r) => r.message)).toEqual(Array.from({ length: 1_000 }, (_, k) => [Math.floor(k / 50), k % 50]));
    // 20 turns of 50 messages: about 20 frames, not 1,000.
    expect(a.counts.sent).toBeLessThanOrEqual(25);
  });

  it('keeps one connection per node pair in a cluster of three', async () => {
    const ports = new Map<string, number>();
    for (const id of ['n1', 'n2', 'n3']) ports.set(id, await freePort());
    const byPair = new Map<string, FaultProxy>();
    for (const from of ports.keys()) {
      for (const [to, port] of ports) {
        if (to === from) continue;
        const p = await FaultProxy.start({ host: '127.0.0.1', port });
        byPair.set(`${from}>${to}`, p);
        cleanups.push(() => p.close());
      }
    }
    const mesh = await startNodesOn(ports, (from, to) => byPair.get(`${from}>${to}`)!.port);
    await until(() => [...mesh.values()].every((n) => [...mesh.keys()].filter((p) => p !== n.id).every((p) => n.transport.connected(p))));
    await new Promise((r) => setTimeout(r, 100));
    // Only the smaller id of each pair dials: 3 connections in all, none the other way.
    const used = [...byPair.entries()].filter(([, p]) => p.accepted > 0).map(([k]) => k).sort();
    expect(used).toEqual(['n1>n2', 'n1>n3', 'n2>n3']);
    expect([...byPair.values()].reduce((s, p) => s + p.accepted, 0)).toBe(3);
  });

  it('reconnects after the connection is reset, and what is sent afterwards arrives', async () => {
    const ports = new Map([['a', await freePort()], ['b', await freePort()]]);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port: ports.get('b')! });
    cleanups.push(() => proxy.close());
    const nodes = await startNodesOn(ports, (from, to) => (from === 'a' && to === 'b' ? proxy.port : ports.get(to)!));
    const a = nodes.get('a')!;
    const b = nodes.get('b')!;
    await until(() => a.transport.connected('b'));
    a.transport.send('b', 'before');
    await until(() => b.received.length === 1);
    proxy.reset();
    await until(() => !a.transport.connected('b'));
    await until(() => a.transport.connected('b') && b.transport.connected('a'));
    expect(proxy.accepted).toBeGreaterThanOrEqual(2);
    a.transport.send('b', 'after');
    b.transport.send('a', 'back');
    await until(() => b.received.length === 2 && a.received.length === 1);
    expect(b.received.map((r) => r.message)).toEqual(['before', 'after']);
  });

  it('a silent partition is noticed: both ends close the connection and reconnect once it heals', async () => {
    const ports = new Map([['a', await freePort()], ['b', await freePort()]]);
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port: ports.get('b')! });
    cleanups.push(() => proxy.close());
    const nodes = await startNodesOn(ports, (from, to) => (from === 'a' && to === 'b' ? proxy.port : ports.get(to)!), { pingIntervalMs: 50, idleTimeoutMs: 300 });
    const a = nodes.get('a')!;
    const b = nodes.get('b')!;
    await until(() => a.transport.connected('b') && b.transport.connected('a'));
    proxy.mode = 'drop'; // bytes vanish both ways; no FIN, no RST
    await until(() => !a.transport.connected('b') && !b.transport.connected('a'), 3_000);
    a.transport.send('b', 'queued while cut off');
    proxy.mode = 'pass';
    await until(() => b.received.length === 1, 5_000);
    expect(b.received[0]!.message).toBe('queued while cut off');
  });

  it('a peer that is down has a bounded queue: past it messages are dropped and counted', async () => {
    const ports = new Map([['a', await freePort()], ['b', await freePort()]]);
    // Only a runs; b never comes up. Messages are counted at their packed size (249 bytes here).
    const a = await startOne('a', ports, { queueBytesMax: 10_000 });
    const message = 'x'.repeat(247);
    let accepted = 0;
    for (let i = 0; i < 100; i++) if (a.transport.send('b', message)) accepted++;
    expect(accepted).toBe(Math.floor(10_000 / 249));
    expect(a.counts.dropped).toBe(100 - accepted);
    // One message larger than a frame can hold is refused outright.
    expect(a.transport.send('b', 'y'.repeat(2 * 1024 * 1024))).toBe(false);
    expect(a.transport.send('nobody', 1)).toBe(false);
  });

  it('hostile or confused peers lose their own connection; the node goes on serving its peers', async () => {
    const nodes = await startNodes(['a', 'b']);
    const a = nodes.get('a')!;
    const b = nodes.get('b')!;
    await until(() => a.transport.connected('b'));
    const hello = (over: Record<string, unknown>) => encodeFrame({ t: 'hello', cluster: Cluster, node: 'a', version: ProtocolVersion, nonce: Buffer.alloc(16), auth: false, ...over });
    const badCrc = encodeFrame([1]);
    badCrc.writeUInt8(badCrc.readUInt8(5) ^ 0xff, 5);
    const oversize = Buffer.alloc(8);
    oversize.writeUInt32LE(0xffffffff, 0);
    const attacks: Array<[string, Buffer]> = [
      ['random bytes', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
      ['oversized length', oversize],
      ['bad checksum', badCrc],
      ['another cluster', hello({ cluster: 'other' })],
      ['another protocol version', hello({ version: ProtocolVersion + 1 })],
      ['an unknown node', hello({ node: 'mallory' })],
      ['not a hello first', encodeFrame(['x'])],
      ['a hello with fields of the wrong type', hello({ cluster: { toString: 1 } })],
      ['a hello without a nonce', hello({ nonce: undefined })],
      ['a hello with a short nonce', hello({ nonce: Buffer.alloc(3) })],
      ['a big frame before the hello', encodeFrame('z'.repeat(64 * 1024))],
      ['not msgpack', rawFrame(Buffer.from([0xc1]))],
    ];
    const before = b.counts.rejected;
    for (const [, bytes] of attacks) {
      const closed = await sendRaw(b.port, bytes);
      expect(closed).toBe(true);
    }
    expect(b.counts.rejected - before).toBe(attacks.length);
    expect(b.received).toEqual([]);
    a.transport.send('b', 'still here');
    await until(() => b.received.length === 1);
  });

  it('random bytes at the listener never crash it (fast-check)', async () => {
    const nodes = await startNodes(['a', 'b']);
    const b = nodes.get('b')!;
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), async (bytes) => {
        await sendRaw(b.port, Buffer.from(bytes), 1_000, true);
      }),
      { numRuns: 40 },
    );
    const a = nodes.get('a')!;
    await until(() => a.transport.connected('b'));
    a.transport.send('b', 'ok');
    await until(() => b.received.length === 1);
  });
});

describe('Transport: peer authentication and admission', () => {
  const secret = Buffer.from('a cluster secret of some length');

  /** Nodes a and b (a dials), each with its own options; what each was told when refused. */
  async function pair(optsA: Partial<TransportOptions>, optsB: Partial<TransportOptions>) {
    const ports = new Map([['a', await freePort()], ['b', await freePort()]]);
    const refusals: Record<string, string[]> = { a: [], b: [] };
    const a = await startOne('a', ports, {}, { onRefused: (_, why) => refusals.a!.push(why), ...optsA });
    const b = await startOne('b', ports, {}, { onRefused: (_, why) => refusals.b!.push(why), ...optsB });
    return { a, b, refusals };
  }

  it('nodes with the same secret prove it to each other and talk', async () => {
    const { a, b } = await pair({ secret }, { secret });
    await until(() => a.transport.connected('b') && b.transport.connected('a'));
    a.transport.send('b', 'hi');
    b.transport.send('a', 'hello');
    await until(() => b.received.length === 1 && a.received.length === 1);
    expect(a.counts.rejected + b.counts.rejected).toBe(0);
  });

  it('a different secret, or none on one side, never connects, and the node without one is told why', async () => {
    const cases: Array<[Partial<TransportOptions>, Partial<TransportOptions>]> = [
      [{ secret }, { secret: Buffer.from('another secret, also long enough') }],
      [{ secret }, {}],
      [{}, { secret }],
    ];
    for (const [optsA, optsB] of cases) {
      const { a, b, refusals } = await pair(optsA, optsB);
      await until(() => a.counts.rejected + b.counts.rejected >= 2);
      expect(a.transport.connected('b') || b.transport.connected('a')).toBe(false);
      a.transport.send('b', 'x');
      await new Promise((r) => setTimeout(r, 50));
      expect(b.received).toEqual([]);
      if (optsA.secret === undefined || optsB.secret === undefined) expect([...refusals.a!, ...refusals.b!].join(' ')).toContain('FASTPACA_CLUSTER_SECRET');
      await Promise.all([a.transport.close(), b.transport.close()]);
    }
  });

  it('a peer that knows the protocol but not the secret gets nothing through', async () => {
    const admitted: PeerHello[] = [];
    const { b } = await pair({ secret }, { secret, admit: (_, hello) => void admitted.push(hello) });
    await until(() => b.transport.connected('a'));
    // A stranger's word about a node's incarnation never reaches admission: only a proven peer's does.
    const hello = encodeFrame({ t: 'hello', cluster: Cluster, node: 'a', version: ProtocolVersion, nonce: Buffer.alloc(16, 7), auth: true, incarnation: 'forged' });
    const forged = encodeFrame({ t: 'auth', proof: Buffer.alloc(32, 1) });
    const before = b.counts.rejected;
    // A wrong proof; no proof, messages straight away; a proof that is not bytes.
    for (const after of [forged, encodeFrame([['r', 1]]), encodeFrame({ t: 'auth', proof: 'x' })]) {
      expect(await sendRaw(b.port, Buffer.concat([hello, after]))).toBe(true);
    }
    expect(b.counts.rejected - before).toBe(3);
    // Any proof a peer without the secret can make up, of any shape, is refused (fast-check).
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ maxLength: 64 }), fc.jsonValue()), async (made) => {
        const attempt = encodeFrame({ t: 'auth', proof: made instanceof Uint8Array ? Buffer.from(made) : made });
        expect(await sendRaw(b.port, Buffer.concat([hello, attempt]))).toBe(true);
      }),
      { numRuns: 30 },
    );
    expect(b.received).toEqual([]);
    expect(b.transport.connected('a')).toBe(true);
    expect(admitted.map((h) => h.incarnation)).not.toContain('forged');
  });

  it('admission sees the peer and its incarnation; a refused peer is told the reason, and nothing it sends is taken', async () => {
    const seen: PeerHello[] = [];
    const { a, b, refusals } = await pair(
      { incarnation: 'a-2' },
      {
        incarnation: 'b-1',
        admit: async (peer, hello) => {
          seen.push(hello);
          await new Promise((r) => setTimeout(r, 20));
          return hello.incarnation === 'a-1' ? undefined : `${peer} came back with a new data directory`;
        },
      },
    );
    await until(() => refusals.a!.length > 0);
    expect(refusals.a![0]).toBe('a came back with a new data directory');
    expect(seen[0]).toEqual({ node: 'a', incarnation: 'a-2' });
    a.transport.send('b', 'x');
    await new Promise((r) => setTimeout(r, 50));
    expect(b.received).toEqual([]);
    expect(a.transport.connected('b') || b.transport.connected('a')).toBe(false);
  });

  it('the accepting side is told too when the dialing side refuses it', async () => {
    const { a, b, refusals } = await pair({ admit: (peer) => `${peer} is not welcome` }, {});
    await until(() => refusals.b!.length > 0);
    expect(refusals.b![0]).toBe('b is not welcome');
    b.transport.send('a', 'x');
    await new Promise((r) => setTimeout(r, 50));
    expect(a.received).toEqual([]);
  });

  it('a dialing side refused after its proof backs off between redials, as after any failed connection', async () => {
    // With a secret the dialing side opens before the accepting side admits it: being refused
    // then must not count as a good connection that resets the delay (10 ms here, up to 100).
    const { a, b } = await pair({ secret }, { secret, admit: (peer) => `${peer} is not welcome` });
    await new Promise((r) => setTimeout(r, 1_000));
    expect(b.counts.rejected).toBeGreaterThan(3);
    expect(b.counts.rejected).toBeLessThan(25);
    expect(a.received).toEqual([]);
  });

  it('frames that arrive while a peer is being admitted wait, in order', async () => {
    const { a, b } = await pair({ admit: () => new Promise((r) => setTimeout(() => r(undefined), 100)) }, {});
    await until(() => b.transport.connected('a'));
    // b is open; a still decides on b: what b sends meanwhile is delivered once a admits it.
    for (let i = 0; i < 20; i++) b.transport.send('a', i);
    await until(() => a.received.length === 20);
    expect(a.received.map((r) => r.message)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });
});

describe('FrameDecoder', () => {
  it('reassembles frames from any chunking (fast-check)', () => {
    fc.assert(
      fc.property(fc.array(fc.jsonValue(), { minLength: 1, maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1, maxLength: 30 }), (values, cuts) => {
        const clean = values.filter((v) => !JSON.stringify(v).includes('"__proto__"')).map((v) => JSON.parse(JSON.stringify(v)) as unknown);
        const stream = Buffer.concat(clean.map((v) => encodeFrame(v)));
        const decoder = new FrameDecoder(1 << 20);
        const out: unknown[] = [];
        let at = 0;
        for (let i = 0; at < stream.length; i++) {
          const n = cuts[i % cuts.length]!;
          out.push(...decoder.push(stream.subarray(at, at + n)));
          at += n;
        }
        expect(out).toEqual(clean);
        expect(decoder.pendingBytes).toBe(0);
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a frame over the limit before reading it', () => {
    const decoder = new FrameDecoder(100);
    expect(() => decoder.push(encodeFrame('y'.repeat(200)).subarray(0, 8))).toThrow(FrameError);
  });
});

/** A frame with a correct header around any body. */
function rawFrame(body: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32LE(body.length, 0);
  head.writeUInt32LE(crc32(body), 4);
  return Buffer.concat([head, body]);
}

/**
 * Opens a raw connection, writes `bytes` (and ends it, with `end`), and says whether the
 * connection closed within `ms`.
 */
function sendRaw(port: number, bytes: Buffer, ms = 2_000, end = false): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, ms);
    socket.on('error', () => {});
    socket.resume(); // read (and drop) what the node answers: its hello would otherwise hold back the close
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.on('connect', () => (end ? socket.end(bytes) : socket.write(bytes)));
  });
}

/** Starts node `id` listening on ports[id] and reaching each other node at ports[peer]. */
async function startOne(id: string, ports: Map<string, number>, limits: Partial<TransportLimits> = {}, extra: Partial<TransportOptions> = {}): Promise<Node> {
  const counts = { sent: 0, received: 0, dropped: 0, rejected: 0 };
  const received: Node['received'] = [];
  const peers = new Map([...ports].filter(([p]) => p !== id).map(([p, port]) => [p, { host: '127.0.0.1', port }] as const));
  const transport = new Transport({
    clusterId: Cluster,
    nodeId: id,
    listen: { host: '127.0.0.1', port: ports.get(id)! },
    peers,
    onMessage: (from, message) => received.push({ from, message }),
    log: quiet,
    limits: { reconnectDelayFirstMs: 10, reconnectDelayMaxMs: 100, frameBytesMax: 1024 * 1024, ...limits },
    counters: { framesSent: (n) => (counts.sent += n), framesReceived: (n) => (counts.received += n), dropped: (n) => (counts.dropped += n), rejected: () => counts.rejected++ },
    ...extra,
  });
  await transport.start();
  cleanups.push(() => transport.close());
  return { id, transport, port: ports.get(id)!, received, counts };
}

/** Starts a node per entry of `ports`, each reaching a peer at `route(self, peer)` (a proxy, say). */
async function startNodesOn(ports: Map<string, number>, route: (from: string, to: string) => number, limits: Partial<TransportLimits> = {}): Promise<Map<string, Node>> {
  const nodes = new Map<string, Node>();
  for (const id of ports.keys()) {
    const seen = new Map([...ports].map(([p, port]) => [p, p === id ? port : route(id, p)] as const));
    nodes.set(id, await startOne(id, seen, limits));
  }
  return nodes;
}
