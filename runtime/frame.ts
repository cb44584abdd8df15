import { Packr } from 'msgpackr';
import { crc32 } from 'node:zlib';
import { assert } from './errors.js';

/**
 * Frames between nodes: `[length u32][crc32 of body u32][body]`, the body one msgpack value.
 * Plain maps (no msgpackr records): both ends may run different versions during a rolling
 * upgrade, and record structures would have to be identical on both.
 */
export const FrameHeaderBytes = 8;

export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

const packr = new Packr({ useRecords: false });

/** One frame holding `value`, in a buffer of its own. */
export function encodeFrame(value: unknown): Buffer {
  return encodeBatchFrame([packMessage(value)], false);
}

/** `value` as msgpack, in a buffer of its own (the packer reuses its own between calls). */
export function packMessage(value: unknown): Buffer {
  return Buffer.from(packr.pack(value));
}

/** Bytes a batch frame adds around its packed messages (frame header, array header). */
export const BatchOverheadBytes = FrameHeaderBytes + 5;

/**
 * One frame from messages packed by `packMessage`: as an array of them (`asArray`), or the one
 * message itself. The array header is written here, so the messages are not packed again.
 */
export function encodeBatchFrame(packed: readonly Buffer[], asArray = true): Buffer {
  assert(asArray || packed.length === 1, 'a frame without an array holds one message');
  let bodyBytes = asArray ? 5 : 0;
  for (const p of packed) bodyBytes += p.length;
  const frame = Buffer.allocUnsafe(FrameHeaderBytes + bodyBytes);
  let at = FrameHeaderBytes;
  if (asArray) {
    frame.writeUInt8(0xdd, at); // msgpack array 32
    frame.writeUInt32BE(packed.length, at + 1);
    at += 5;
  }
  for (const p of packed) {
    p.copy(frame, at);
    at += p.length;
  }
  frame.writeUInt32LE(bodyBytes, 0);
  frame.writeUInt32LE(crc32(frame.subarray(FrameHeaderBytes)), 4);
  return frame;
}

/**
 * Splits a byte stream into frame bodies. Bytes arrive in any chunking; `push` returns the
 * values of the frames completed so far, and throws FrameError at the first frame that is too
 * large, fails its checksum or is not msgpack — the connection is then closed, never repaired.
 */
export class FrameDecoder {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;

  private decoded = 0;

  constructor(
    private readonly frameBytesMax: number,
    /** The limit of the handshake's frames (an unknown peer gets no big buffer). */
    private readonly handshakeBytesMax = frameBytesMax,
    /** How many frames the handshake is. */
    private readonly handshakeFrames = 1,
  ) {}

  /** Bytes received but not yet part of a whole frame. */
  get pendingBytes(): number {
    return this.bufferedBytes;
  }

  push(chunk: Buffer): unknown[] {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    const out: unknown[] = [];
    for (;;) {
      if (this.bufferedBytes < FrameHeaderBytes) return out;
      const head = this.peek(FrameHeaderBytes);
      const length = head.readUInt32LE(0);
      const limit = this.decoded < this.handshakeFrames ? this.handshakeBytesMax : this.frameBytesMax;
      if (length > limit) throw new FrameError(`a frame of ${length} bytes is over the limit of ${limit}`);
      if (this.bufferedBytes < FrameHeaderBytes + length) return out;
      const frame = this.take(FrameHeaderBytes + length);
      const body = frame.subarray(FrameHeaderBytes);
      if (crc32(body) !== frame.readUInt32LE(4)) throw new FrameError('a frame failed its checksum');
      this.decoded++;
      try {
        out.push(packr.unpack(body));
      } catch (err) {
        throw new FrameError(`a frame is not msgpack: ${(err as Error).message}`);
      }
    }
  }

  private peek(n: number): Buffer {
    if (this.buffered[0]!.length < n) this.buffered = [Buffer.concat(this.buffered)];
    return this.buffered[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.buffered[0]!.length < n) this.buffered = [Buffer.concat(this.buffered)];
    const first = this.buffered[0]!;
    const taken = first.subarray(0, n);
    if (first.length === n) this.buffered.shift();
    else this.buffered[0] = first.subarray(n);
    this.bufferedBytes -= n;
    return taken;
  }
}
