import { Packr } from 'msgpackr';
import { crc32 } from 'node:zlib';

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
  const body = packr.pack(value);
  const frame = Buffer.allocUnsafe(FrameHeaderBytes + body.length);
  frame.writeUInt32LE(body.length, 0);
  frame.writeUInt32LE(crc32(body), 4);
  body.copy(frame, FrameHeaderBytes);
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

  constructor(private readonly frameBytesMax: number) {}

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
      if (length > this.frameBytesMax) throw new FrameError(`a frame of ${length} bytes is over the limit of ${this.frameBytesMax}`);
      if (this.bufferedBytes < FrameHeaderBytes + length) return out;
      const frame = this.take(FrameHeaderBytes + length);
      const body = frame.subarray(FrameHeaderBytes);
      if (crc32(body) !== frame.readUInt32LE(4)) throw new FrameError('a frame failed its checksum');
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
