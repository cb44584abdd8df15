import fs from 'node:fs';
import path from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { assert } from '../../runtime/errors.js';
import type { Command } from './types.js';

/** Entries forgotten per truncation pass, so one pass never holds the log's writer for long. */
const TruncateBatchMax = 20_000;

/**
 * The command log: every accepted command, in order, at consecutive indexes, fsynced before
 * any caller is answered. Appends land at the end of one B-tree, so an fsync writes a few
 * sequential pages however many conversations the commands touch. The state store applies the
 * commands after they are durable here and syncs on its own schedule; entries are forgotten
 * once the state store holds their effects durably. Raft's log will take this place.
 */
export class CommandLog {
  private readonly root: RootDatabase<Command, number>;
  private next: number;

  private constructor(
    dir: string,
    /** Which log of the node this is: each worker thread writes its own (FASTPACA_WORKERS). */
    readonly id: number,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    this.root = open<Command, number>({ path: dir, noSubdir: false, overlappingSync: true, mapSize: 2 ** 33 });
    let last = 0;
    for (const key of this.root.getKeys({ reverse: true, limit: 1 })) last = key;
    this.next = last + 1;
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

  /** The oldest index the log still holds, or undefined when it is empty. */
  firstIndex(): number | undefined {
    for (const key of this.root.getKeys({ limit: 1 })) return key;
    return undefined;
  }

  /** The index the next command will get. */
  get nextIndex(): number {
    return this.next;
  }

  /** Never hand out an index at or below one the state store has applied. */
  skipTo(index: number): void {
    this.next = Math.max(this.next, index);
  }

  /** Appends commands at consecutive indexes; `durable` resolves once they are fsynced. */
  append(cmds: Command[]): { first: number; durable: Promise<void> } {
    assert(cmds.length > 0, 'an append carries commands');
    const first = this.next;
    let committed: Promise<boolean> | undefined;
    for (const cmd of cmds) committed = this.root.put(this.next++, cmd);
    return { first, durable: committed!.then(async () => void (await this.root.flushed)) };
  }

  /** Sees what other threads have committed since this thread last read. */
  refresh(): void {
    this.root.resetReadTxn();
  }

  /** Entries with index >= from, ascending, at most `limit`. */
  read(from: number, limit: number): Array<{ index: number; cmd: Command }> {
    const out: Array<{ index: number; cmd: Command }> = [];
    for (const { key, value } of this.root.getRange({ start: from, limit })) out.push({ index: key, cmd: value });
    return out;
  }

  /** Forgets entries with index <= upTo, at most TruncateBatchMax per call; true when done. */
  async truncate(upTo: number): Promise<boolean> {
    let last: Promise<boolean> | undefined;
    let count = 0;
    for (const key of this.root.getKeys({ end: upTo + 1, limit: TruncateBatchMax })) {
      last = this.root.remove(key);
      count++;
    }
    if (last) await last;
    return count < TruncateBatchMax;
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }
}
