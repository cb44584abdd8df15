import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SegmentLog } from '../../runtime/segment-log.js';
import { tempDir } from '../support/server.js';

const bytes = (i: number, size = 1 + (i % 300)) => Buffer.alloc(size, i % 251);
const segmentsOf = (dir: string) => fs.readdirSync(dir).filter((n) => n.endsWith('.seg')).sort();
const indexes = (records: Array<{ index: number }>) => records.map((r) => r.index);

describe('SegmentLog', () => {
  it('appends at consecutive indexes across segments and reads them back, also after reopening', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir, { segmentBytesMax: 4096 });
    expect(log.nextIndex).toBe(1);
    expect(log.firstIndex).toBeUndefined();
    for (let i = 1; i <= 200; i += 4) expect(log.append([bytes(i), bytes(i + 1), bytes(i + 2), bytes(i + 3)])).toBe(i);
    expect(segmentsOf(dir).length).toBeGreaterThan(5);
    const all = log.read(1, 1000);
    expect(indexes(all)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    all.forEach((r) => expect(r.payload).toEqual(bytes(r.index)));
    // Reads from the middle, in pages (the cursor path) and at random (the scan path).
    const paged: number[] = [];
    for (let from = 37; from <= 200; ) {
      const page = log.read(from, 13);
      paged.push(...indexes(page));
      from = page[page.length - 1]!.index + 1;
    }
    expect(paged).toEqual(Array.from({ length: 164 }, (_, i) => i + 37));
    expect(indexes(log.read(150, 3))).toEqual([150, 151, 152]);
    log.close();

    const again = SegmentLog.open(dir, { segmentBytesMax: 4096 });
    expect(again.nextIndex).toBe(201);
    expect(again.firstIndex).toBe(1);
    expect(again.append([bytes(201)])).toBe(201);
    expect(indexes(again.read(199, 10))).toEqual([199, 200, 201]);
    again.close();
  });

  it('cuts off a torn record at the end of the last segment and continues after the last whole one', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir);
    log.append([bytes(1), bytes(2), bytes(3)]);
    log.close();
    const file = path.join(dir, segmentsOf(dir)[0]!);
    const whole = fs.statSync(file).size;
    // A crash during the write of record 4: its header and part of its payload reached the file.
    const torn = Buffer.alloc(16 + 100, 7);
    torn.writeUInt32LE(500, 0);
    fs.appendFileSync(file, torn);
    const reopened = SegmentLog.open(dir);
    expect(reopened.nextIndex).toBe(4);
    expect(fs.statSync(file).size).toBe(whole);
    expect(reopened.append([bytes(4)])).toBe(4);
    expect(reopened.read(1, 10).map((r) => r.payload)).toEqual([bytes(1), bytes(2), bytes(3), bytes(4)]);
    reopened.close();
  });

  it('refuses to read past a damaged record in a closed segment', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir, { segmentBytesMax: 1024 });
    for (let i = 1; i <= 40; i++) log.append([bytes(i, 100)]);
    log.close();
    const first = path.join(dir, segmentsOf(dir)[0]!);
    const buf = fs.readFileSync(first);
    const at = 16 + 116 + 20; // a payload byte of the second record
    buf.writeUInt8(buf.readUInt8(at) ^ 0xff, at);
    fs.writeFileSync(first, buf);
    const reopened = SegmentLog.open(dir, { segmentBytesMax: 1024 });
    expect(() => reopened.read(1, 100)).toThrow(/damaged log segment/);
    reopened.close();
  });

  it('forgets whole segments only, never the one being written', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir, { segmentBytesMax: 1024 });
    for (let i = 1; i <= 60; i++) log.append([bytes(i, 100)]);
    const before = segmentsOf(dir).length;
    log.truncatePrefix(25);
    const after = segmentsOf(dir);
    expect(after.length).toBeLessThan(before);
    const first = log.firstIndex!;
    expect(first).toBeLessThanOrEqual(26);
    expect(indexes(log.read(first, 100))).toEqual(Array.from({ length: 61 - first }, (_, i) => i + first));
    log.truncatePrefix(1_000);
    expect(segmentsOf(dir).length).toBe(1);
    expect(log.append([bytes(61)])).toBe(61);
    log.close();
  });

  it('an empty log may skip ahead; a non-empty one may not', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir);
    log.skipTo(500);
    expect(log.nextIndex).toBe(500);
    expect(log.append([bytes(1)])).toBe(500);
    log.close();
    const reopened = SegmentLog.open(dir);
    expect(reopened.nextIndex).toBe(501);
    expect(reopened.firstIndex).toBe(500);
    expect(() => reopened.skipTo(900)).toThrow(/only an empty log/);
    reopened.close();
  });

  it('a failed write refuses every later append until the log is opened again', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir);
    log.append([bytes(1)]);
    // Make the next write fail the way a full or broken disk would: its file descriptor is gone.
    const fd = (log as unknown as { fd: number }).fd;
    fs.closeSync(fd);
    expect(() => log.append([bytes(2)])).toThrow();
    expect(log.failure).toBeDefined();
    expect(() => log.append([bytes(3)])).toThrow();
    const reopened = SegmentLog.open(dir);
    expect(reopened.nextIndex).toBe(2);
    expect(reopened.append([bytes(2)])).toBe(2);
    reopened.close();
  });

  it('a deferred append is written at once and durable when its promise resolves; one is in flight at a time', async () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir, { segmentBytesMax: 4096 });
    for (let i = 1; i <= 60; i += 3) {
      const { first, durable } = log.appendDeferred([bytes(i), bytes(i + 1), bytes(i + 2)]);
      expect(first).toBe(i);
      // Until it settles, nothing else appends or closes.
      expect(() => log.append([bytes(0)])).toThrow(/one deferred append at a time/);
      expect(() => log.close()).toThrow(/settled/);
      await durable;
    }
    expect(log.append([bytes(61)])).toBe(61);
    log.close();
    const again = SegmentLog.open(dir, { segmentBytesMax: 4096 });
    expect(indexes(again.read(1, 100))).toEqual(Array.from({ length: 61 }, (_, i) => i + 1));
    again.read(1, 100).forEach((r) => expect(r.payload).toEqual(bytes(r.index)));
    again.close();
  });

  it('reads stop at upTo, and following in pages reuses the position', () => {
    const dir = tempDir();
    const log = SegmentLog.open(dir, { segmentBytesMax: 2048 });
    for (let i = 1; i <= 100; i++) log.append([bytes(i, 150)]);
    expect(indexes(log.read(10, 1000, 14))).toEqual([10, 11, 12, 13, 14]);
    expect(indexes(log.read(15, 3, 100))).toEqual([15, 16, 17]);
    expect(indexes(log.read(18, 1000, 17))).toEqual([]);
    expect(indexes(log.read(95, 1000))).toEqual([95, 96, 97, 98, 99, 100]);
    log.close();
  });

  it('after a crash at any byte, reopening keeps exactly the records written in full before it (fast-check)', () => {
    fc.assert(
      fc.property(fc.array(fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 12 }), fc.double({ min: 0, max: 1, noNaN: true }), (appends, cut) => {
        const dir = tempDir();
        const log = SegmentLog.open(dir, { segmentBytesMax: 8192 });
        const payloads: Buffer[] = [];
        for (const sizes of appends) {
          const batch = sizes.map((s, k) => bytes(payloads.length + k + 1, s));
          log.append(batch);
          payloads.push(...batch);
        }
        log.close();
        // Cut the last segment at a random byte, as a crash in the middle of its last write would.
        const last = path.join(dir, segmentsOf(dir).at(-1)!);
        const size = fs.statSync(last).size;
        fs.truncateSync(last, Math.floor(size * cut));
        const reopened = SegmentLog.open(dir, { segmentBytesMax: 8192 });
        const kept = reopened.read(1, 10_000);
        expect(indexes(kept)).toEqual(Array.from({ length: kept.length }, (_, i) => i + 1));
        kept.forEach((r) => expect(r.payload).toEqual(payloads[r.index - 1]));
        expect(reopened.nextIndex).toBe(kept.length + 1);
        // Every record of the closed segments survives the cut of the last one.
        const lastFirst = Number(path.basename(last, '.seg'));
        expect(kept.length).toBeGreaterThanOrEqual(lastFirst - 1);
        expect(reopened.append([bytes(0, 10)])).toBe(kept.length + 1);
        reopened.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }),
      { numRuns: 60 },
    );
  });
});
