/**
 * The other thread of `fastpaca bench mailbox`: consumes (and, for round trips, answers) messages
 * through the shared-memory rings or through postMessage, as the main thread asks.
 */
import { Packr, Unpackr } from 'msgpackr';
import { parentPort, workerData } from 'node:worker_threads';
import type { MailboxRings } from '../runtime/mailbox.js';
import { RingReader, RingWriter } from '../runtime/ring.js';
import { Rpc } from '../runtime/rpc.js';

const port = parentPort!;
const { toWorker, fromWorker, rpcRings } = workerData as { toWorker: SharedArrayBuffer; fromWorker: SharedArrayBuffer; rpcRings: MailboxRings };
// The runtime's own request/response channel (what the gateway and a group worker use): every
// call is answered with its number.
const rpc = new Rpc<never, never, { n: number }, { n: number; ok: true }>(rpcRings, (m) => ({ n: m.n, ok: true }), () => {}, { timeoutMs: 60_000, inflightMax: 1, outboxMax: 1_000_000 });
rpc.start();
const reader = new RingReader(toWorker);
const writer = new RingWriter(fromWorker);
const unpackr = new Unpackr({ useRecords: false });
const packr = new Packr({ useRecords: false });
const keepAlive = setInterval(() => {}, 1 << 30); // waitAsync alone does not hold the thread

type Task = { mode: 'ring-oneway' | 'ring-roundtrip' | 'post-oneway' | 'post-roundtrip'; count: number } | { mode: 'exit' };

async function ring(count: number, answer: boolean): Promise<void> {
  let seen = 0;
  let checksum = 0;
  while (seen < count) {
    const rec = reader.tryRead();
    if (!rec) {
      await reader.waitForData(1_000);
      continue;
    }
    const msg = unpackr.unpack(rec) as { n: number };
    checksum += msg.n;
    seen++;
    if (answer) while (!writer.tryWrite(packr.pack({ n: msg.n, ok: true }))) {}
  }
  port.postMessage({ done: seen, checksum });
}

port.on('message', (task: Task | { n: number }) => {
  if ('n' in task) return;
  if (task.mode === 'exit') {
    clearInterval(keepAlive);
    rpc.close(new Error('bench over'));
    port.close();
    return;
  }
  if (task.mode === 'ring-oneway' || task.mode === 'ring-roundtrip') {
    void ring(task.count, task.mode === 'ring-roundtrip');
    return;
  }
  let seen = 0;
  let checksum = 0;
  const answer = task.mode === 'post-roundtrip';
  const onMessage = (m: { n: number }) => {
    checksum += m.n;
    if (answer) port.postMessage({ n: m.n, ok: true });
    if (++seen === task.count) {
      port.off('message', onMessage);
      port.postMessage({ done: seen, checksum });
    }
  };
  port.on('message', onMessage);
});
