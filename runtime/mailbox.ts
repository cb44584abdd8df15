import { Packr } from 'msgpackr';
import { assert } from './errors.js';
import { RingReader, RingWriter, createRingBuffer } from './ring.js';

/** The shared memory between two threads: one ring per direction. */
export interface MailboxRings {
  /** Written by this end, read by the other. */
  send: SharedArrayBuffer;
  /** Written by the other end, read by this one. */
  receive: SharedArrayBuffer;
}

/** A pair of rings for two threads; hand `a` to one end and `b` to the other. */
export function createMailboxRings(capacity: number): { a: MailboxRings; b: MailboxRings } {
  const ab = createRingBuffer(capacity);
  const ba = createRingBuffer(capacity);
  return { a: { send: ab, receive: ba }, b: { send: ba, receive: ab } };
}

export interface MailboxCounters {
  /** Records refused because the outgoing ring was full. */
  full(): void;
}

/** Records handled per drain before the thread gives its event loop a turn. */
const DrainMax = 256;
/** Messages queued for the next flush before the caller must flush (a bug if ever reached). */
const QueuedMax = 1_000_000;

/**
 * One end of the mailbox between two threads. Messages queued during an event-loop turn go
 * out together at its end (setImmediate) as one msgpack record in a single-producer/single-
 * consumer ring (runtime/ring.ts): one pack, one copy and at most one wake-up per turn rather
 * than per message. The receiving end parks on Atomics.waitAsync and is woken only when it is
 * parked, so a busy receiver costs the sender nothing. A batch larger than a ring can ever hold
 * is split; a single message that large goes by postMessage instead (callers correlate
 * messages, they never rely on the order between two of them).
 */
export class Mailbox<Out, In> {
  private readonly writer: RingWriter;
  private readonly reader: RingReader;
  private readonly packr = new Packr({ useRecords: false });
  private running = false;
  private queued: Out[] = [];
  private flushScheduled = false;
  /** Messages sent (through the ring or by postMessage) and received. */
  sent = 0;
  oversized = 0;
  received = 0;

  constructor(
    rings: MailboxRings,
    private readonly deliver: (message: In) => void,
    /** Carries a record too large for the ring (the receiving end calls receiveOversize). */
    private readonly postOversize: (record: Uint8Array) => void,
    /** Messages that found the ring full at the flush (backpressure: the caller decides). */
    private readonly refused: (messages: Out[]) => void,
    private readonly counters?: MailboxCounters,
  ) {
    this.writer = new RingWriter(rings.send);
    this.reader = new RingReader(rings.receive);
  }

  /** Queues a message for the end of this event-loop turn. */
  send(message: Out): void {
    assert(this.queued.length < QueuedMax, 'messages queued in one turn stay bounded');
    this.queued.push(message);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => this.flush());
  }

  /** Writes what is queued now. */
  flush(): void {
    this.flushScheduled = false;
    const batch = this.queued;
    if (batch.length === 0) return;
    this.queued = [];
    this.write(batch);
  }

  private write(batch: Out[]): void {
    const record = this.packr.pack(batch);
    if (record.byteLength > this.writer.recordMax) {
      if (batch.length > 1) {
        const half = batch.length >> 1;
        this.write(batch.slice(0, half));
        this.write(batch.slice(half));
        return;
      }
      // The packed bytes live in the packer's reusable buffer (and Buffer#slice would not copy):
      // post a copy with an ArrayBuffer of its own, which the port can transfer.
      const copy = new Uint8Array(record.byteLength);
      copy.set(record);
      this.postOversize(copy);
      this.oversized++;
      this.sent++;
      return;
    }
    if (!this.writer.tryWrite(record)) {
      this.counters?.full();
      this.refused(batch);
      return;
    }
    this.sent += batch.length;
  }

  /** A record the other end sent by postMessage. */
  receiveOversize(record: Uint8Array): void {
    this.unpackAndDeliver(record);
  }

  /** Bytes waiting in the incoming ring. */
  depthBytes(): number {
    return this.reader.used();
  }

  /** Bytes waiting in the outgoing ring. */
  outgoingBytes(): number {
    return this.writer.used();
  }

  /** Starts delivering incoming messages. The caller keeps its thread's event loop alive. */
  start(): void {
    if (this.running) return;
    this.running = true;
    void this.loop();
  }

  /** Stops delivering (at once, even while parked) and drops what is queued. */
  stop(): void {
    this.running = false;
    this.queued = [];
    this.reader.wake();
  }

  private unpackAndDeliver(record: Uint8Array): void {
    const batch = this.packr.unpack(record) as In[];
    this.received += batch.length;
    for (const message of batch) this.deliver(message);
  }

  private async loop(): Promise<void> {
    while (this.running) {
      let n = 0;
      for (let record = this.reader.tryRead(); record !== undefined; record = this.reader.tryRead()) {
        this.unpackAndDeliver(record);
        if (++n >= DrainMax || !this.running) break;
      }
      if (!this.running) return;
      // A full drain yields through setImmediate, so I/O (sockets, timers) is never starved.
      if (n >= DrainMax) await new Promise<void>((resolve) => setImmediate(resolve));
      else await this.reader.waitForData();
    }
  }
}
