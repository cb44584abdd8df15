import fs from 'node:fs';
import { open, type Database, type RootDatabase } from 'lmdb';
import { assert } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { StateView } from './state-view.js';
import type { ContextState, IdemEntry, Override, StoredMessage, WindowMessage } from './types.js';

/** Bumped when the on-disk layout changes incompatibly. */
const FormatVersion = 1;

type Key = (string | number)[];

/** The seq under which a context's record is kept, after every message seq. */
const RecordSeq = Infinity;

/**
 * One LMDB environment per node. Every key starts with the group number, so one group's data
 * is one contiguous range in each database (a snapshot is a read over that range):
 *   log [g, id, seq] → message, and [g, id, +∞] → the context record
 *   overrides [g, id, seq] · summaries [g, id] · idem [g, id, key] · idem_order [g, id, n]
 *   ids [id] → g (listing in id order)
 * The record sorts right after its newest message, so an append (one message, one record
 * update) usually dirties a single leaf page: random pages are what an fsync pays for here.
 */
export class LmdbStore {
  readonly root: RootDatabase;
  /** Messages at [g, id, seq] and each context record at [g, id, RecordSeq]. */
  readonly log: Database<StoredMessage | ContextState, Key>;
  readonly overrides: Database<Override, Key>;
  readonly summaries: Database<WindowMessage[], Key>;
  readonly idem: Database<IdemEntry, Key>;
  readonly idemOrder: Database<string, Key>;
  readonly ids: Database<number, string>;
  readonly meta: Database<unknown, string>;
  readonly view: StateView;

  private constructor(readonly dir: string, readonly groups: number) {
    fs.mkdirSync(dir, { recursive: true });
    // overlappingSync (the default on Linux): commits return before the fsync; durability is
    // awaited separately through `flushed`, never assumed from a resolved write.
    this.root = open({ path: dir, maxDbs: 16, overlappingSync: true, mapSize: 2 ** 34 });
    const db = <V, K extends Key | string = Key>(name: string, shared = false) =>
      this.root.openDB<V, K>(shared ? { name, sharedStructuresKey: Symbol.for('structures') } : { name });
    // Records and messages share their property names through a stored structure table
    // (msgpackr caps it, so client-shaped metadata cannot grow it without bound): values are
    // about a fifth smaller and decode three times faster than with inline definitions.
    this.log = db('log', true);
    this.overrides = db('overrides');
    this.summaries = db('summaries');
    this.idem = db('idem');
    this.idemOrder = db('idem_order');
    this.ids = db<number, string>('ids');
    this.meta = db<unknown, string>('meta');
    this.view = new LmdbView(this);
  }

  /** Opens (or creates) the store; refuses data written with another group count or format. */
  static open(dir: string, groups: number): LmdbStore {
    const store = new LmdbStore(dir, groups);
    const found = store.meta.get('layout') as { format: number; groups: number } | undefined;
    if (found && (found.format !== FormatVersion || found.groups !== groups)) {
      store.root.close();
      throw new Error(
        `data in ${dir} was written with format ${found.format} and ${found.groups} groups; this node runs format ${FormatVersion} with FASTPACA_GROUPS=${groups}`,
      );
    }
    if (!found) store.meta.putSync('layout', { format: FormatVersion, groups });
    return store;
  }

  /** Runs `fn` in one write transaction and resolves once it is committed and on disk. */
  async writeDurably<T>(fn: () => T): Promise<T> {
    const result = await this.root.transaction(fn);
    await this.root.flushed;
    return result;
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }

  group(id: string): number {
    return groupOf(id, this.groups);
  }
}

class LmdbView implements StateView {
  constructor(private readonly s: LmdbStore) {}

  private g(id: string): number {
    return this.s.group(id);
  }

  getContext(id: string): ContextState | undefined {
    return this.s.log.get([this.g(id), id, RecordSeq]) as ContextState | undefined;
  }
  putContext(ctx: ContextState, created = false): void {
    const g = this.g(ctx.id);
    if (created) this.s.ids.putSync(ctx.id, g);
    this.s.log.putSync([g, ctx.id, RecordSeq], ctx);
  }
  getSummary(id: string): WindowMessage[] {
    return this.s.summaries.get([this.g(id), id]) ?? [];
  }
  putSummary(id: string, messages: WindowMessage[]): void {
    if (messages.length === 0) this.s.summaries.removeSync([this.g(id), id]);
    else this.s.summaries.putSync([this.g(id), id], messages);
  }
  getMessage(id: string, seq: number): StoredMessage | undefined {
    assert(Number.isSafeInteger(seq), 'message seqs are integers');
    return this.s.log.get([this.g(id), id, seq]) as StoredMessage | undefined;
  }
  putMessage(id: string, message: StoredMessage): void {
    assert(Number.isSafeInteger(message.seq) && message.seq >= 1, 'message seqs are positive integers');
    this.s.log.putSync([this.g(id), id, message.seq], message);
  }
  messages(id: string, fromSeq: number, toSeq: number, limit: number): StoredMessage[] {
    if (toSeq < fromSeq || limit <= 0) return [];
    const g = this.g(id);
    const out: StoredMessage[] = [];
    // end is exclusive and toSeq finite, so the record at RecordSeq is never in the range.
    for (const { value } of this.s.log.getRange({ start: [g, id, fromSeq], end: [g, id, toSeq + 1], limit })) out.push(value as StoredMessage);
    return out;
  }
  getOverride(id: string, seq: number): Override | undefined {
    return this.s.overrides.get([this.g(id), id, seq]);
  }
  putOverride(id: string, seq: number, override: Override): void {
    this.s.overrides.putSync([this.g(id), id, seq], override);
  }
  deleteOverride(id: string, seq: number): void {
    this.s.overrides.removeSync([this.g(id), id, seq]);
  }
  overrides(id: string, fromSeq: number, toSeq: number): Map<number, Override> {
    const out = new Map<number, Override>();
    if (toSeq < fromSeq) return out;
    const g = this.g(id);
    for (const { key, value } of this.s.overrides.getRange({ start: [g, id, fromSeq], end: [g, id, toSeq + 1] })) {
      out.set(key[2] as number, value);
    }
    return out;
  }
  getIdem(id: string, key: string): IdemEntry | undefined {
    return this.s.idem.get([this.g(id), id, key]);
  }
  putIdem(id: string, key: string, entry: IdemEntry): void {
    this.s.idem.putSync([this.g(id), id, key], entry);
  }
  deleteIdem(id: string, key: string): void {
    this.s.idem.removeSync([this.g(id), id, key]);
  }
  getIdemKeyAt(id: string, n: number): string | undefined {
    return this.s.idemOrder.get([this.g(id), id, n]);
  }
  putIdemKeyAt(id: string, n: number, key: string): void {
    this.s.idemOrder.putSync([this.g(id), id, n], key);
  }
  deleteIdemKeyAt(id: string, n: number): void {
    this.s.idemOrder.removeSync([this.g(id), id, n]);
  }
  listContexts(prefix: string, after: string, limit: number): ContextState[] {
    const out: ContextState[] = [];
    const start = after >= prefix ? after : prefix;
    for (const { key, value: g } of this.s.ids.getRange({ start })) {
      if (key === after) continue;
      if (!key.startsWith(prefix)) break;
      const ctx = this.s.log.get([g, key, RecordSeq]) as ContextState | undefined;
      if (ctx) out.push(ctx);
      if (out.length >= limit) break;
    }
    return out;
  }
}
