import fs from 'node:fs';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { syncDir } from './durable-file.js';
import { assert } from './errors.js';

/**
 * An append-only log of opaque records at consecutive indexes, in segment files, made durable
 * by one write and one fdatasync per append: on the calling thread (append), or with the
 * fdatasync on libuv's pool (appendDeferred).
 *
 * Why by hand and why synchronous: on this stack every hand-off between threads costs a
 * scheduler wake-up, and on a 2-core machine under load a wake-up can take a whole time slice
 * (measured: an fdatasync through libuv's pool, 0.35 ms idle, p99 5–7 ms beside two busy
 * threads). The command log is the acknowledgement path, so it is written by the thread that
 * answers, with no hand-off: an lmdb-js log (its own write thread, then `flushed`) took 2.9 ms a
 * round under load, this takes ~1.3 ms (docs/benchmarks.md). What a round blocks is that thread
 * only; requests that arrive meanwhile join the next round. A cluster node, whose rounds wait on
 * other nodes' fsyncs as well as its own, uses appendDeferred: there the thread has the peers'
 * messages to read and step while its disk works, and that measured better (docs/replication.md).
 *
 * Layout: `<dir>/<first index, 20 digits>.seg`. A record is a 16-byte header — payload length
 * (u32), CRC-32 of index and payload (u32), index (f64) — then the payload; indexes follow each
 * other without a gap from the segment's name. A segment is closed once it passes
 * `segmentBytesMax`; the next one is named after its first index. Only the last segment may end
 * in a torn record (a crash during a write that was never acknowledged): opening cuts it off.
 * A bad record anywhere else is damage, and reading it refuses the directory.
 *
 * One writer per directory: the owner opens it; nobody else reads it while the owner writes.
 */
export class SegmentLog {
  /** First index of each segment, ascending; the last one is being written. */
  private readonly segments: number[] = [];
  private fd: number | undefined;
  /** Bytes of whole records in the segment being written (where the next record goes). */
  private size = 0;
  /** The index the next record gets (> every index in the log). */
  private next = 1;
  /** Where sequential reads left off, so following the log does not rescan segments. */
  private cursor: { index: number; segment: number; offset: number } | undefined;
  /** Set by a failed write or fdatasync: what reached the disk is unknown, so nothing more is written. */
  private broken: Error | undefined;
  private closed = false;
  /** While a deferred append's fdatasync is in flight: settles (never rejects) when it returns. */
  private syncing: Promise<void> | undefined;

  private constructor(
    private readonly dir: string,
    private readonly segmentBytesMax: number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    for (const name of fs.readdirSync(dir)) {
      const m = /^(\d{20})\.seg$/.exec(name);
      if (m) this.segments.push(Number(m[1]));
    }
    this.segments.sort((a, b) => a - b);
    const last = this.segments[this.segments.length - 1];
    if (last === undefined) return;
    const { records, end } = readRecords(this.file(last), 0, last, 0, Infinity, true);
    this.next = last + records.length;
    this.size = end;
    this.fd = fs.openSync(this.file(last), 'r+');
    if (fs.fstatSync(this.fd).size > end) {
      // A torn record after the last acknowledged one: cut it off, durably.
      fs.ftruncateSync(this.fd, end);
      fs.fsyncSync(this.fd);
    }
  }

  /** Opens (or creates) the log in `dir`. */
  static open(dir: string, opts: { segmentBytesMax?: number } = {}): SegmentLog {
    return new SegmentLog(dir, opts.segmentBytesMax ?? SegmentBytesMaxDefault);
  }

  /** The index the next record gets. */
  get nextIndex(): number {
    return this.next;
  }

  /** The oldest index the log holds, or undefined when it holds none. */
  get firstIndex(): number | undefined {
    for (const first of this.segments) {
      if (first < this.next && fs.statSync(this.file(first)).size > 0) return first;
    }
    return undefined;
  }

  /** Why the log refuses appends, if it does. */
  get failure(): Error | undefined {
    return this.broken;
  }

  /**
   * Lets the next record have index `index` (> every index held). Only an empty log can skip:
   * a gap inside the log would lose the commands in it.
   */
  skipTo(index: number): void {
    if (index <= this.next) return;
    assert(this.syncing === undefined, 'no skip while a deferred append is being synced');
    assert(this.firstIndex === undefined, 'only an empty log skips ahead');
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    for (const first of this.segments.splice(0)) fs.rmSync(this.file(first), { force: true });
    syncDir(this.dir);
    this.next = index;
    this.cursor = undefined;
  }

  /**
   * Appends `payloads` at consecutive indexes and returns the first. When it returns, the
   * records are on disk (written and fdatasynced). A throw means they are not acknowledged:
   * they may or may not be there after a restart, and the log refuses every later append.
   */
  append(payloads: readonly Uint8Array[]): number {
    const first = this.write(payloads);
    try {
      fs.fdatasyncSync(this.fd!);
    } catch (err) {
      throw this.fail(err);
    }
    return first;
  }

  /**
   * As append, but the fdatasync runs on libuv's pool, so that the thread can go on while the
   * disk works: returns the first index once the records are written; `durable` resolves once
   * they are on disk, and rejects (breaking the log, as append does) if they may not be. Until it
   * settles nothing else may append, truncate or close: the caller keeps one in flight.
   */
  appendDeferred(payloads: readonly Uint8Array[]): { first: number; durable: Promise<void> } {
    const first = this.write(payloads);
    const fd = this.fd!;
    let settle!: () => void;
    this.syncing = new Promise<void>((resolve) => (settle = resolve));
    const durable = new Promise<void>((resolve, reject) => {
      fs.fdatasync(fd, (err) => {
        this.syncing = undefined;
        settle();
        if (err) reject(this.fail(err));
        else resolve();
      });
    });
    return { first, durable };
  }

  /** Resolves once no deferred append is being synced (however it ended): then close() may run. */
  idle(): Promise<void> {
    return this.syncing ?? Promise.resolve();
  }

  /** Writes the records (not yet durable) and returns the first index. */
  private write(payloads: readonly Uint8Array[]): number {
    assert(!this.closed, 'a closed log is not appended to');
    assert(this.syncing === undefined, 'one deferred append at a time: the previous one is still being synced');
    if (this.broken) throw this.broken;
    assert(payloads.length > 0, 'an append carries records');
    try {
      if (this.fd === undefined || this.size >= this.segmentBytesMax) this.roll();
      let bytes = 0;
      for (const p of payloads) bytes += HeaderBytes + p.byteLength;
      const buf = Buffer.allocUnsafe(bytes);
      const first = this.next;
      let at = 0;
      for (let i = 0; i < payloads.length; i++) {
        const p = payloads[i]!;
        assert(p.byteLength <= RecordBytesMax, 'a record stays under the size a reader accepts');
        buf.writeDoubleLE(first + i, at + 8);
        buf.set(p, at + HeaderBytes);
        buf.writeUInt32LE(p.byteLength, at);
        buf.writeUInt32LE(crc32(buf.subarray(at + 8, at + HeaderBytes + p.byteLength)), at + 4);
        at += HeaderBytes + p.byteLength;
      }
      const fd = this.fd!;
      let written = 0;
      while (written < bytes) written += fs.writeSync(fd, buf, written, bytes - written, this.size + written);
      this.size += bytes;
      this.next += payloads.length;
      return first;
    } catch (err) {
      throw this.fail(err);
    }
  }

  /**
   * After a failed write or fdatasync the kernel may have dropped the pages: appending more
   * could acknowledge records behind a hole. Only a restart, which rereads the files, is safe.
   */
  private fail(err: unknown): Error {
    this.broken ??= err instanceof Error ? err : new Error(String(err));
    return this.broken;
  }

  /**
   * Records with index >= from (and <= upTo), ascending, at most `limit`. A damaged record in a
   * closed segment throws; the segment being written ends at its last whole record.
   */
  read(from: number, limit: number, upTo = Infinity): Array<{ index: number; payload: Buffer }> {
    const out: Array<{ index: number; payload: Buffer }> = [];
    const max = Math.min(limit, upTo - from + 1);
    if (max <= 0 || this.segments.length === 0 || from >= this.next) return out;
    const resume = this.cursor !== undefined && this.cursor.index === from && this.segments.includes(this.cursor.segment);
    let si = this.segments.indexOf(resume ? this.cursor!.segment : this.segmentOf(from));
    let offset = resume ? this.cursor!.offset : 0;
    let expected = resume ? from : this.segments[si]!;
    for (; si < this.segments.length && out.length < max; si++) {
      const first = this.segments[si]!;
      const tail = si === this.segments.length - 1;
      if (offset === 0) expected = first;
      const { records, end, bad } = readRecords(this.file(first), offset, expected, from, max - out.length);
      if (bad && !tail) throw damaged(this.file(first), end);
      out.push(...records);
      if (records.length > 0) this.cursor = { index: records[records.length - 1]!.index + 1, segment: first, offset: end };
      offset = 0;
    }
    return out;
  }

  /**
   * Forgets records with index <= upTo, a whole segment at a time (the one being written is
   * kept); records of a partly forgotten segment stay readable.
   */
  truncatePrefix(upTo: number): void {
    assert(this.syncing === undefined, 'no truncation while a deferred append is being synced');
    let removed = false;
    while (this.segments.length > 1 && this.segments[1]! - 1 <= upTo) {
      const first = this.segments.shift()!;
      fs.rmSync(this.file(first), { force: true });
      if (this.cursor?.segment === first) this.cursor = undefined;
      removed = true;
    }
    if (removed) syncDir(this.dir);
  }

  close(): void {
    assert(this.syncing === undefined, 'a log is closed once its deferred append has settled');
    this.closed = true;
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private file(first: number): string {
    return path.join(this.dir, `${String(first).padStart(20, '0')}.seg`);
  }

  private segmentOf(index: number): number {
    let found = this.segments[0]!;
    for (const first of this.segments) {
      if (first > index) break;
      found = first;
    }
    return found;
  }

  /** Starts a new segment at the next index; its name reaches the disk before any record. */
  private roll(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
    const first = this.next;
    this.fd = fs.openSync(this.file(first), 'wx');
    this.segments.push(first);
    this.size = 0;
    syncDir(this.dir);
  }
}

const HeaderBytes = 16;
/** Segments close past this size, so forgetting a prefix deletes whole files. */
const SegmentBytesMaxDefault = 64 * 1024 * 1024;
/** Bytes read from a segment at once. */
const ReadChunkBytes = 1024 * 1024;
/** A record larger than this is damage, not data (nothing the node writes is that large). */
const RecordBytesMax = 256 * 1024 * 1024;

function damaged(file: string, at: number): Error {
  return new Error(`damaged log segment ${file} at byte ${at}: the data directory is corrupt`);
}

/**
 * Reads records of one segment file from byte `offset`, where the record with index `expected`
 * starts: those with index >= from, at most `limit`. Stops at the end of the file or at the
 * first record that is torn, fails its checksum or does not have the next index (`bad`), and
 * returns the byte after the last good record it read.
 */
function readRecords(
  file: string,
  offset: number,
  expected: number,
  from: number,
  limit: number,
  headersOnly = false,
): { records: Array<{ index: number; payload: Buffer }>; end: number; bad: boolean } {
  const records: Array<{ index: number; payload: Buffer }> = [];
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    let chunk = Buffer.alloc(0);
    let chunkStart = offset;
    let at = offset;
    let index = expected;
    const view = (start: number, length: number): Buffer | undefined => {
      if (start + length > size) return undefined;
      if (start < chunkStart || start + length > chunkStart + chunk.length) {
        chunk = Buffer.allocUnsafe(Math.min(size - start, Math.max(length, ReadChunkBytes)));
        const n = fs.readSync(fd, chunk, 0, chunk.length, start);
        chunk = chunk.subarray(0, n);
        chunkStart = start;
        if (n < length) return undefined;
      }
      return chunk.subarray(start - chunkStart, start - chunkStart + length);
    };
    while (records.length < limit) {
      const header = view(at, HeaderBytes);
      if (header === undefined) return { records, end: at, bad: at < size };
      const length = header.readUInt32LE(0);
      if (length > RecordBytesMax || header.readDoubleLE(8) !== index) return { records, end: at, bad: true };
      const body = view(at, HeaderBytes + length);
      if (body === undefined || crc32(body.subarray(8)) !== header.readUInt32LE(4)) return { records, end: at, bad: true };
      at += HeaderBytes + length;
      if (index >= from) records.push({ index, payload: headersOnly ? EmptyPayload : Buffer.from(body.subarray(HeaderBytes)) });
      index++;
    }
    return { records, end: at, bad: false };
  } finally {
    fs.closeSync(fd);
  }
}

const EmptyPayload = Buffer.alloc(0);
