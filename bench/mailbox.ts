/**
 * `fastpaca bench mailbox`: messages between two threads through the shared-memory rings of
 * the actor runtime (msgpack records), next to worker.postMessage of the same objects measured
 * in the same run. One-way: as many as the receiver takes. Round trip: one message out, one
 * answer back, one at a time. Then the runtime's Rpc over the same kind of rings (batched per
 * event-loop turn, correlated): answered calls per second with many in flight, and its RTT.
 */
import { Packr, Unpackr } from 'msgpackr';
import { Worker } from 'node:worker_threads';
import { createMailboxRings } from '../runtime/mailbox.js';
import { createRingBuffer, RingReader, RingWriter } from '../runtime/ring.js';
import { Rpc } from '../runtime/rpc.js';

const RingBytes = 1 << 20;
const OneWayCount = 300_000;
const RoundTripCount = 20_000;
/** Calls the runtime's Rpc keeps in flight when pipelining (as the gateway does under load). */
const RpcInflight = 256;

/** A message shaped like an append on its way to a group: a few fields and a ~250-byte text. */
const message = (n: number) => ({ n, op: 'append', id: `bench-${n % 1000}`, messages: [{ role: 'user', parts: [{ type: 'text', text: 'x'.repeat(250) }], metadata: {} }] });

interface Figures {
  oneway_per_s: number;
  roundtrip_per_s: number;
  roundtrip_us: number;
}

export async function runMailboxBench(json: boolean): Promise<number> {
  const toWorker = createRingBuffer(RingBytes);
  const fromWorker = createRingBuffer(RingBytes);
  const { a: rpcRings, b: workerRpcRings } = createMailboxRings(RingBytes);
  const worker = new Worker(new URL('./mailbox-worker.js', import.meta.url), { workerData: { toWorker, fromWorker, rpcRings: workerRpcRings } });
  const rpc = new Rpc<ReturnType<typeof message>, { n: number }, never, never>(rpcRings, () => undefined as never, () => {}, { timeoutMs: 60_000, inflightMax: RpcInflight, outboxMax: 1 });
  rpc.start();
  const writer = new RingWriter(toWorker);
  const reader = new RingReader(fromWorker);
  const packr = new Packr({ useRecords: false });
  const unpackr = new Unpackr({ useRecords: false });
  const keepAlive = setInterval(() => {}, 1 << 30);
  const done = () =>
    new Promise<{ done: number; checksum: number }>((resolve) => {
      const on = (m: { done?: number; checksum: number }) => {
        if (m.done === undefined) return;
        worker.off('message', on);
        resolve(m as { done: number; checksum: number });
      };
      worker.on('message', on);
    });
  const expectSum = (count: number) => (count * (count - 1)) / 2;

  try {
    // Ring, one-way.
    let finished = done();
    worker.postMessage({ mode: 'ring-oneway', count: OneWayCount });
    let t = performance.now();
    for (let n = 0; n < OneWayCount; n++) {
      const rec = packr.pack(message(n));
      while (!writer.tryWrite(rec)) await Promise.resolve();
    }
    let r = await finished;
    const ringOneWay = OneWayCount / ((performance.now() - t) / 1000);
    if (r.checksum !== expectSum(OneWayCount)) throw new Error('ring one-way lost or repeated messages');

    // Ring, round trip.
    finished = done();
    worker.postMessage({ mode: 'ring-roundtrip', count: RoundTripCount });
    t = performance.now();
    for (let n = 0; n < RoundTripCount; n++) {
      while (!writer.tryWrite(packr.pack(message(n)))) await Promise.resolve();
      let answer: Uint8Array | undefined;
      while (!(answer = reader.tryRead())) await reader.waitForData(1_000);
      if ((unpackr.unpack(answer) as { n: number }).n !== n) throw new Error('ring round trip out of order');
    }
    const ringRoundTrip = RoundTripCount / ((performance.now() - t) / 1000);
    await finished;

    // postMessage, one-way.
    finished = done();
    worker.postMessage({ mode: 'post-oneway', count: OneWayCount });
    t = performance.now();
    for (let n = 0; n < OneWayCount; n++) worker.postMessage(message(n));
    r = await finished;
    const postOneWay = OneWayCount / ((performance.now() - t) / 1000);
    if (r.checksum !== expectSum(OneWayCount)) throw new Error('postMessage one-way lost or repeated messages');

    // postMessage, round trip.
    finished = done();
    worker.postMessage({ mode: 'post-roundtrip', count: RoundTripCount });
    t = performance.now();
    for (let n = 0; n < RoundTripCount; n++) {
      const answered = new Promise<void>((resolve) => {
        const on = (m: { n?: number; ok?: boolean }) => {
          if (m.ok && m.n === n) {
            worker.off('message', on);
            resolve();
          }
        };
        worker.on('message', on);
      });
      worker.postMessage(message(n));
      await answered;
    }
    const postRoundTrip = RoundTripCount / ((performance.now() - t) / 1000);
    await finished;

    // The runtime's Rpc: calls pipelined (RpcInflight at a time), then one at a time.
    t = performance.now();
    let next = 0;
    let sum = 0;
    const lane = async () => {
      while (next < OneWayCount) {
        const answer = await rpc.call(message(next++));
        sum += answer.n;
      }
    };
    await Promise.all(Array.from({ length: RpcInflight }, lane));
    const rpcPipelined = OneWayCount / ((performance.now() - t) / 1000);
    if (sum !== expectSum(OneWayCount)) throw new Error('rpc lost or repeated answers');
    t = performance.now();
    for (let n = 0; n < RoundTripCount; n++) if ((await rpc.call(message(n))).n !== n) throw new Error('rpc answered the wrong call');
    const rpcRoundTrip = RoundTripCount / ((performance.now() - t) / 1000);

    const ring: Figures = { oneway_per_s: Math.round(ringOneWay), roundtrip_per_s: Math.round(ringRoundTrip), roundtrip_us: Math.round(1e6 / ringRoundTrip) };
    const post: Figures = { oneway_per_s: Math.round(postOneWay), roundtrip_per_s: Math.round(postRoundTrip), roundtrip_us: Math.round(1e6 / postRoundTrip) };
    const fmt = (name: string, f: Figures) => `${name.padEnd(30)}${String(f.oneway_per_s).padStart(12)}${String(f.roundtrip_per_s).padStart(14)}${String(f.roundtrip_us).padStart(12)}`;
    process.stdout.write(`${''.padEnd(30)}${'one-way/s'.padStart(12)}${'round trips/s'.padStart(14)}${'RTT µs'.padStart(12)}\n`);
    const calls: Figures = { oneway_per_s: Math.round(rpcPipelined), roundtrip_per_s: Math.round(rpcRoundTrip), roundtrip_us: Math.round(1e6 / rpcRoundTrip) };
    process.stdout.write(`${fmt('ring (msgpack)', ring)}\n${fmt('worker.postMessage', post)}\n`);
    process.stdout.write(`${fmt(`runtime Rpc (${RpcInflight} in flight)`, calls)}  (one-way column: answered calls/s)\n`);
    process.stdout.write(`ratio ring/postMessage: one-way ${(ring.oneway_per_s / post.oneway_per_s).toFixed(2)}, round trip ${(ring.roundtrip_per_s / post.roundtrip_per_s).toFixed(2)}\n`);
    if (json) {
      process.stdout.write(
        `${JSON.stringify({
          scenario: 'mailbox',
          ops_per_s: ring.oneway_per_s,
          baseline_per_s: post.oneway_per_s,
          ratio: Math.round((ring.oneway_per_s / post.oneway_per_s) * 1000) / 1000,
          roundtrip_per_s: ring.roundtrip_per_s,
          roundtrip_baseline_per_s: post.roundtrip_per_s,
          rpc_calls_per_s: calls.oneway_per_s,
          rpc_roundtrip_us: calls.roundtrip_us,
          errors: 0,
        })}\n`,
      );
    }
    return 0;
  } finally {
    clearInterval(keepAlive);
    rpc.close(new Error('bench over'));
    worker.postMessage({ mode: 'exit' });
    await worker.terminate();
  }
}
