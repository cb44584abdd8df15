/**
 * A single-producer / single-consumer ring of byte records in a SharedArrayBuffer: the mailbox
 * between two threads. One thread only writes, the other only reads; neither ever blocks the
 * other. A full ring refuses the record (backpressure for the caller to surface), never grows.
 *
 * Layout: an Int32 header, then `capacity` bytes of data (a power of two).
 *   header[Written] — bytes ever written (a 32-bit counter, wrapping), published last by the producer
 *   header[Read]    — bytes ever read (likewise), published by the consumer
 *   header[Signal]  — bumped (and notified) by the producer when the consumer is parked on it
 *   header[Sleeping] — 1 while the consumer is parked or about to park
 * The consumer announces Sleeping, then looks for data once more, then parks; the producer
 * publishes, then looks for a sleeper. With sequentially consistent Atomics one of them always
 * sees the other, so no wake-up is lost, and a consumer that is busy is never woken.
 * A record is a 4-byte length and its bytes, padded to a multiple of 4. A record that does not fit
 * before the end of the data wraps to offset 0; the gap is marked with the length WrapMarker.
 * Counters are compared modulo 2^32, which holds while capacity <= 2^30.
 */

const Written = 0;
const Read = 1;
const Signal = 2;
const Sleeping = 3;
const HeaderInts = 4;
const HeaderBytes = HeaderInts * 4;
const LengthBytes = 4;
const WrapMarker = -1;
export const RingCapacityMax = 2 ** 30;

const align4 = (n: number) => (n + 3) & ~3;

export class RecordTooLargeError extends RangeError {
  constructor(size: number, max: number) {
    super(`a record of ${size} bytes can never fit this ring (at most ${max} bytes)`);
    this.name = 'RecordTooLargeError';
  }
}

/** Allocates the shared memory for a ring of `capacity` bytes (a power of two, >= 64). */
export function createRingBuffer(capacity: number): SharedArrayBuffer {
  if (!Number.isInteger(capacity) || capacity < 64 || capacity > RingCapacityMax || (capacity & (capacity - 1)) !== 0) {
    throw new RangeError(`ring capacity must be a power of two from 64 to ${RingCapacityMax}, got ${capacity}`);
  }
  return new SharedArrayBuffer(HeaderBytes + capacity);
}

class RingView {
  protected readonly header: Int32Array;
  protected readonly data: Uint8Array;
  protected readonly lengths: DataView;
  protected readonly capacity: number;
  protected readonly mask: number;
  /** The largest record this ring can ever hold. */
  readonly recordMax: number;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.capacity = buffer.byteLength - HeaderBytes;
    if (this.capacity < 64 || (this.capacity & (this.capacity - 1)) !== 0) throw new RangeError('not a ring buffer (use createRingBuffer)');
    this.header = new Int32Array(buffer, 0, HeaderInts);
    this.data = new Uint8Array(buffer, HeaderBytes, this.capacity);
    this.lengths = new DataView(buffer, HeaderBytes, this.capacity);
    this.mask = this.capacity - 1;
    // Worst case: the record wraps after a gap just short of its own size; half the ring always fits.
    this.recordMax = this.capacity / 2 - LengthBytes;
  }

  /** Bytes held (records, their lengths and padding), as last published. */
  used(): number {
    return (Atomics.load(this.header, Written) - Atomics.load(this.header, Read)) >>> 0;
  }
}

export class RingWriter extends RingView {
  /** Records refused because the ring was full. */
  fullCount = 0;

  /**
   * Appends one record; false when it does not fit now (the ring is full: backpressure).
   * Throws RecordTooLargeError for a record that could never fit.
   */
  tryWrite(record: Uint8Array): boolean {
    const size = record.byteLength;
    if (size > this.recordMax) throw new RecordTooLargeError(size, this.recordMax);
    const written = Atomics.load(this.header, Written);
    const read = Atomics.load(this.header, Read);
    const used = (written - read) >>> 0;
    const at = written & this.mask;
    const need = LengthBytes + align4(size);
    const untilEnd = this.capacity - at;
    const gap = untilEnd < need ? untilEnd : 0;
    if (used + gap + need > this.capacity) {
      this.fullCount++;
      return false;
    }
    let start = at;
    if (gap > 0) {
      this.lengths.setInt32(at, WrapMarker, true);
      start = 0;
    }
    this.lengths.setInt32(start, size, true);
    this.data.set(record, start + LengthBytes);
    // Publishing the counter makes the bytes above visible to the reader (Atomics are
    // sequentially consistent), so it comes last.
    Atomics.store(this.header, Written, (written + gap + need) | 0);
    if (Atomics.load(this.header, Sleeping) === 1) {
      Atomics.add(this.header, Signal, 1);
      Atomics.notify(this.header, Signal);
    }
    return true;
  }
}

export class RingReader extends RingView {
  /**
   * Takes the oldest record, copied out of shared memory (decoding straight from shared memory
   * is several times slower than from a private copy); undefined when the ring is empty.
   */
  tryRead(): Uint8Array | undefined {
    const read = Atomics.load(this.header, Read);
    const written = Atomics.load(this.header, Written);
    if (read === written) return undefined;
    let at = read & this.mask;
    let consumed = 0;
    let size = this.lengths.getInt32(at, true);
    if (size === WrapMarker) {
      consumed = this.capacity - at;
      at = 0;
      size = this.lengths.getInt32(0, true);
    }
    if (size < 0 || size > this.recordMax) throw new Error(`ring corrupted: record length ${size} at ${at}`);
    const record = this.data.slice(at + LengthBytes, at + LengthBytes + size);
    Atomics.store(this.header, Read, (read + consumed + LengthBytes + align4(size)) | 0);
    return record;
  }

  /** Wakes a waitForData parked on this ring (from any thread), as a write would. */
  wake(): void {
    Atomics.add(this.header, Signal, 1);
    Atomics.notify(this.header, Signal);
  }

  /**
   * Resolves when the ring may hold a record: at once if it does, else when the writer signals.
   * `Atomics.waitAsync` does not keep a thread alive by itself; the caller holds the event loop.
   */
  async waitForData(timeoutMs?: number): Promise<void> {
    const signal = Atomics.load(this.header, Signal);
    Atomics.store(this.header, Sleeping, 1);
    try {
      if (this.used() > 0) return;
      const waited = Atomics.waitAsync(this.header, Signal, signal, timeoutMs);
      if (waited.async) await waited.value;
    } finally {
      Atomics.store(this.header, Sleeping, 0);
    }
  }
}
