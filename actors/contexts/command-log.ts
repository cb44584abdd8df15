import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';
import { Packr } from 'msgpackr';
import { assert } from '../../runtime/errors.js';
import { SegmentLog } from '../../runtime/segment-log.js';
import type { Command } from './types.js';

/**
 * The command log: every accepted command, in order, at consecutive indexes, on disk before any
 * caller is answered. It is a SegmentLog (runtime/segment-log.ts) written and fdatasynced by the
 * thread that hosts the groups, so the acknowledgement path has no hand-off to another thread.
 * The state store applies the commands after they are durable here and syncs on its own
 * schedule; the log forgets entries once the state store holds their effects durably. Raft's
 * log will take this place.
 */
/** Entries copied per append when a format-1 log is adopted. */
const LegacyBatch = 1_000;

export class CommandLog {
  private readonly segments: SegmentLog;
  /** Plain msgpack maps: self-describing, so a log outlives any change of the code's types. */
  private readonly packr = new Packr({ useRecords: false });
  /** Entries up to here are forgotten (the state store holds them durably); reads skip them. */
  private forgottenUpTo = 0;

  private constructor(
    dir: string,
    /** Which log of the node this is: each worker thread writes its own (FASTPACA_WORKERS). */
    readonly id: number,
  ) {
    this.segments = SegmentLog.open(dir);
  }

  /** Opens (or creates) log `id` of the node whose data is in dataDir: `<dataDir>/wal/<id>`. */
  static open(dataDir: string, id = 0): CommandLog {
    assert(Number.isSafeInteger(id) && id >= 0, 'command log ids are whole numbers');
    return new CommandLog(path.join(dataDir, 'wal', String(id)), id);
  }

  /** The ids of the logs found in dataDir, ascending (a node started with more workers before
   * leaves logs that no worker writes now; they still have to be applied). */
  static ids(dataDir: string): number[] {
    let names: string[];
    try {
      names = fs.readdirSync(path.join(dataDir, 'wal'));
    } catch {
      return [];
    }
    return names.filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => a - b);
  }

  /**
   * A data directory of format 1 kept its one command log as an LMDB environment in `wal/`
   * itself: its entries become log 0, at the same indexes, and then it is removed. Repeatable:
   * a log 0 left by an interrupted run is written again from the start.
   */
  static adoptLegacy(dataDir: string): void {
    const legacyDir = path.join(dataDir, 'wal');
    if (!fs.existsSync(path.join(legacyDir, 'data.mdb'))) return;
    fs.rmSync(path.join(legacyDir, '0'), { recursive: true, force: true });
    const legacy = open<Command, number>({ path: legacyDir, noSubdir: false, readOnly: true });
    const log = CommandLog.open(dataDir, 0);
    try {
      let batch: Command[] = [];
      for (const { key, value } of legacy.getRange({})) {
        if (log.nextIndex < key && batch.length === 0) log.skipTo(key);
        assert(key === log.nextIndex + batch.length, 'the legacy command log holds consecutive indexes');
        batch.push(value);
        if (batch.length >= LegacyBatch) {
          log.appendOrThrow(batch);
          batch = [];
        }
      }
      if (batch.length > 0) log.appendOrThrow(batch);
    } finally {
      void log.close();
      void legacy.close();
    }
    // wal/0's own entry in wal/ reaches the disk before the only other copy is removed.
    const dirFd = fs.openSync(legacyDir, 'r');
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
    fs.rmSync(path.join(legacyDir, 'data.mdb'));
    fs.rmSync(path.join(legacyDir, 'lock.mdb'), { force: true });
  }

  /** The oldest index the log still holds, or undefined when it is empty. */
  firstIndex(): number | undefined {
    const first = this.segments.firstIndex;
    if (first === undefined) return undefined;
    const held = Math.max(first, this.forgottenUpTo + 1);
    return held < this.segments.nextIndex ? held : undefined;
  }

  /** The index the next command will get. */
  get nextIndex(): number {
    return this.segments.nextIndex;
  }

  /** Never hand out an index at or below one the state store has applied. */
  skipTo(index: number): void {
    if (index <= this.nextIndex) return;
    this.segments.skipTo(index);
  }

  /**
   * Appends commands at consecutive indexes. They are on disk when this returns (`durable` is
   * already settled: it rejects when the write failed, and then they are not acknowledged).
   */
  append(cmds: Command[]): { first: number; durable: Promise<void> } {
    assert(cmds.length > 0, 'an append carries commands');
    const first = this.nextIndex;
    try {
      this.appendOrThrow(cmds);
      return { first, durable: Promise.resolve() };
    } catch (err) {
      // The segment log refuses every later append too (see SegmentLog.append).
      return { first, durable: Promise.reject(err) };
    }
  }

  /** Why the log cannot be written any more (until the node restarts), if it cannot. */
  get failure(): Error | undefined {
    return this.segments.failure;
  }

  /** Appends and syncs, or throws. pack() reuses its buffer: each record is copied out. */
  private appendOrThrow(cmds: Command[]): void {
    this.segments.append(cmds.map((c) => Uint8Array.prototype.slice.call(this.packr.pack(c))));
  }

  /** Entries with index >= from (and <= upTo), ascending, at most `limit`. */
  read(from: number, limit: number, upTo?: number): Array<{ index: number; cmd: Command }> {
    return this.segments
      .read(Math.max(from, this.forgottenUpTo + 1), limit, upTo)
      .map(({ index, payload }) => ({ index, cmd: this.packr.unpack(payload) as Command }));
  }

  /** Forgets entries with index <= upTo (their files go once a whole segment is forgotten). */
  truncate(upTo: number): void {
    this.forgottenUpTo = Math.max(this.forgottenUpTo, upTo);
    this.segments.truncatePrefix(upTo);
  }

  close(): Promise<void> {
    this.segments.close();
    return Promise.resolve();
  }
}
