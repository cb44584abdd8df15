import fc from 'fast-check';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { createRingBuffer, RecordTooLargeError, RingReader, RingWriter } from '../../runtime/ring.js';

const bytes = (n: number, fill: number) => new Uint8Array(n).fill(fill & 0xff);

describe('SPSC ring', () => {
  it('validates its capacity', () => {
    expect(() => createRingBuffer(100)).toThrow(RangeError);
    expect(() => createRingBuffer(32)).toThrow(RangeError);
    expect(() => new RingReader(new SharedArrayBuffer(100))).toThrow(RangeError);
  });

  it('is empty, then first in first out', () => {
    const buf = createRingBuffer(256);
    const w = new RingWriter(buf);
    const r = new RingReader(buf);
    expect(r.tryRead()).toBeUndefined();
    expect(w.tryWrite(bytes(3, 1))).toBe(true);
    expect(w.tryWrite(bytes(0, 0))).toBe(true); // empty records are records too
    expect(w.tryWrite(bytes(5, 2))).toBe(true);
    expect(r.tryRead()).toEqual(bytes(3, 1));
    expect(r.tryRead()).toEqual(bytes(0, 0));
    expect(r.tryRead()).toEqual(bytes(5, 2));
    expect(r.tryRead()).toBeUndefined();
    expect(r.used()).toBe(0);
  });

  it('refuses a record when full (backpressure) and takes it once there is room', () => {
    const buf = createRingBuffer(64);
    const w = new RingWriter(buf);
    const r = new RingReader(buf);
    let n = 0;
    while (w.tryWrite(bytes(12, n))) n++;
    expect(n).toBe(4); // 4 × (4 + 12) = 64
    expect(w.fullCount).toBe(1);
    expect(r.tryRead()).toEqual(bytes(12, 0));
    expect(w.tryWrite(bytes(12, 99))).toBe(true);
    for (let i = 1; i < 4; i++) expect(r.tryRead()).toEqual(bytes(12, i));
    expect(r.tryRead()).toEqual(bytes(12, 99));
  });

  it('a record larger than the ring can ever hold is refused with an error; larger than the free space, with false', () => {
    const buf = createRingBuffer(64);
    const w = new RingWriter(buf);
    expect(w.recordMax).toBe(28);
    expect(() => w.tryWrite(bytes(29, 0))).toThrow(RecordTooLargeError);
    expect(w.tryWrite(bytes(20, 0))).toBe(true);
    expect(w.tryWrite(bytes(28, 0))).toBe(true);
    expect(w.tryWrite(bytes(28, 0))).toBe(false);
  });

  it('wraps around the end many times, with records of every alignment', () => {
    const buf = createRingBuffer(128);
    const w = new RingWriter(buf);
    const r = new RingReader(buf);
    for (let i = 0; i < 10_000; i++) {
      const rec = bytes(i % 29, i);
      expect(w.tryWrite(rec)).toBe(true);
      expect(r.tryRead()).toEqual(rec);
    }
  });

  it('property: any interleaving of writes and reads matches a FIFO queue, none lost, duplicated or reordered', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(64, 128, 256),
        fc.array(fc.oneof(fc.nat({ max: 40 }).map((n) => ({ write: n })), fc.constant({ read: true as const })), { maxLength: 300 }),
        (capacity, ops) => {
          const buf = createRingBuffer(capacity);
          const w = new RingWriter(buf);
          const r = new RingReader(buf);
          const model: Uint8Array[] = [];
          let k = 0;
          for (const op of ops) {
            if ('read' in op) {
              const got = r.tryRead();
              expect(got).toEqual(model.shift());
              continue;
            }
            const rec = bytes(op.write, k++);
            if (op.write > w.recordMax) {
              expect(() => w.tryWrite(rec)).toThrow(RecordTooLargeError);
              continue;
            }
            if (w.tryWrite(rec)) model.push(rec);
            else expect(model.length).toBeGreaterThan(0); // only a non-empty ring is ever full
          }
          while (model.length > 0) expect(r.tryRead()).toEqual(model.shift());
          expect(r.tryRead()).toBeUndefined();
        },
      ),
      { numRuns: 300 },
    );
  });

  it('two real threads pass two million records with none lost, duplicated or reordered', async () => {
    const N = 2_000_000;
    const buf = createRingBuffer(1 << 16);
    const ringModule = pathToFileURL(path.resolve('dist/runtime/ring.js')).href;
    // The producer pauses now and then, so the consumer drains the ring and parks many times.
    const producer = new Worker(
      `const { workerData } = require('node:worker_threads');
       import(workerData.ringModule).then(({ RingWriter }) => {
         const w = new RingWriter(workerData.buf);
         const rec = new Uint8Array(8); const view = new DataView(rec.buffer);
         const pause = new Int32Array(new SharedArrayBuffer(4));
         for (let i = 0; i < workerData.N; i++) {
           view.setUint32(0, i, true); view.setUint32(4, (i * 2654435761) >>> 0, true);
           while (!w.tryWrite(rec.subarray(0, 4 + (i % 5)))) {}
           if (i % 200000 === 0) Atomics.wait(pause, 0, 0, 2);
         }
       });`,
      { eval: true, workerData: { buf, N, ringModule } },
    );
    const r = new RingReader(buf);
    let expected = 0;
    let parks = 0;
    const keepAlive = setInterval(() => {}, 1000); // waitAsync alone does not hold the loop
    try {
      while (expected < N) {
        const rec = r.tryRead();
        if (!rec) {
          parks++;
          await r.waitForData(5_000);
          continue;
        }
        const view = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
        const i = view.getUint32(0, true);
        if (i !== expected) throw new Error(`record ${expected} expected, got ${i}`);
        if (rec.byteLength !== 4 + (i % 5)) throw new Error(`record ${i} has ${rec.byteLength} bytes`);
        if (rec.byteLength >= 8 && view.getUint32(4, true) !== ((i * 2654435761) >>> 0)) throw new Error(`record ${i} corrupted`);
        expected++;
      }
    } finally {
      clearInterval(keepAlive);
      await producer.terminate();
    }
    expect(expected).toBe(N);
    expect(r.tryRead()).toBeUndefined();
    expect(parks).toBeGreaterThan(0);
  }, 120_000);
});
