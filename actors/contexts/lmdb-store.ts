import fs from 'node:fs';
import { open, type Database, type RootDatabase } from 'lmdb';
import { assert } from '../../runtime/errors.js';
import { CommandLog } from './command-log.js';
import { groupOf } from '../../runtime/hash.js';
import type { StateView } from './state-view.js';
import { BufferedTable, DirectTable, type Key, type Table, type WriteBuffer } from './tables.js';
import type { ContextState, IdemEntry, Override, StoredMessage, WindowMessage } from './types.js';

/** Bumped when the on-disk layout changes incompatibly. */
const FormatVersion = 2;

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
  readonly ids: Database<number, Key>;
  readonly meta: Database<unknown, string>;
  /** Reads and writes LMDB directly, inside a write transaction: what LogApplier applies through. */
  readonly view: StateView;

  private constructor(readonly dir: string, readonly groups: number) {
    fs.mkdirSync(dir, { recursive: true });
    // overlappingSync (the default on Linux): commits return before the fsync; durability is
    // awaited separately through `flushed`, never assumed from a resolved write.
    // noSubdir explicitly: lmdb-js would otherwise take a directory name with a dot in it
    // (/var/lib/fastpaca.d) for a file name.
    this.root = open({ path: dir, noSubdir: false, maxDbs: 16, overlappingSync: true, mapSize: 2 ** 34 });
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
    this.ids = db<number>('ids');
    this.meta = db<unknown, string>('meta');
    this.view = new LmdbView(this.tables((d) => new DirectTable(d)), groups);
  }

  /** Opens (or creates) the store; refuses data written with another group count or format. */
  static open(dir: string, groups: number): LmdbStore {
    const store = new LmdbStore(dir, groups);
    let found = store.meta.get('layout') as { format: number; groups: number } | undefined;
    if (found?.format === 1 && found.groups === groups) {
      store.upgradeFromFormat1();
      found = { format: FormatVersion, groups };
    }
    if (found && (found.format !== FormatVersion || found.groups !== groups)) {
      store.root.close();
      throw new Error(
        `data in ${dir} was written with format ${found.format} and ${found.groups} groups; this node runs format ${FormatVersion} with FASTPACA_GROUPS=${groups}`,
      );
    }
    if (!found) store.meta.putSync('layout', { format: FormatVersion, groups });
    return store;
  }

  /**
   * Format 1 (the single-threaded release) had one command log, an LMDB environment in `wal/`
   * itself, and one applied index. Its entries become command log 0 (`wal/0/`), the applied
   * index `applied/0`. Each step can be repeated, so a crash half way is finished at the next
   * start. Runs before any command log is opened (the main thread opens the store first).
   */
  private upgradeFromFormat1(): void {
    CommandLog.adoptLegacy(this.dir);
    this.root.transactionSync(() => {
      const applied = this.meta.get('applied') as number | undefined;
      if (applied !== undefined) this.stampApplied(0, applied);
      this.meta.removeSync('applied');
      this.meta.putSync('layout', { format: FormatVersion, groups: this.groups });
    });
  }

  private tables(make: <V>(db: Database<V, Key>) => Table<V>): Tables {
    return { log: make(this.log), overrides: make(this.overrides), summaries: make(this.summaries), idem: make(this.idem), idemOrder: make(this.idemOrder), ids: make(this.ids) };
  }

  /** A view whose writes wait in `buffer` (readable at once) until the store holds them. */
  bufferedView(buffer: WriteBuffer): LmdbView {
    return new LmdbView(this.tables((d) => new BufferedTable(d, buffer)), this.groups);
  }

  /** The index of the last command of command log `log` whose effects this store holds (0 for none). */
  appliedIndex(log: number): number {
    return (this.meta.get(appliedKey(log)) as number | undefined) ?? 0;
  }

  /** Records how far log `log` is applied, in the asynchronous batch of this event turn. */
  putApplied(log: number, index: number): Promise<boolean> {
    return this.meta.put(appliedKey(log), index);
  }

  /** Records, inside the caller's write transaction, how far log `log` is applied. */
  stampApplied(log: number, index: number): void {
    this.meta.putSync(appliedKey(log), index);
  }

  /** The Raft index of group g's last command this store holds (0 for none): a cluster node's stamp. */
  groupApplied(g: number): number {
    return (this.meta.get(groupAppliedKey(g)) as number | undefined) ?? 0;
  }

  /** Records how far each group is applied, in the asynchronous batch of this event turn. */
  putGroupApplied(stamps: ReadonlyMap<number, number>): Promise<boolean> {
    let last: Promise<boolean> = Promise.resolve(true);
    // Every put of one event turn is one transaction: the last one resolves with all of them.
    for (const [g, index] of stamps) last = this.meta.put(groupAppliedKey(g), index);
    return last;
  }

  /** Which cluster this data directory belongs to, if it has been part of one. */
  clusterMember(): ClusterMembership | undefined {
    return this.meta.get('cluster') as ClusterMembership | undefined;
  }

  /** Whether a single node has written here (a command log's stamp). */
  hasSingleNodeData(): boolean {
    for (const { key } of this.meta.getRange({ start: 'applied/', end: 'applied/g' })) if (/^applied\/\d+$/.test(String(key))) return true;
    return false;
  }

  /** Marks the directory as a member's of a cluster, durably. */
  async joinCluster(m: ClusterMembership): Promise<void> {
    await this.meta.put('cluster', m);
    await this.root.flushed;
  }

  /**
   * Group g's state as the store has committed it, and the Raft index it reaches: a snapshot
   * for a replica that fell behind the leader's compacted log. Read in one synchronous pass, so
   * in one LMDB read transaction: the data and its stamp agree.
   */
  readGroup(g: number): { applied: number; data: GroupData } {
    const data: GroupData = { v: 1, tables: {} };
    for (const name of GroupTables) {
      const rows: Array<[Key, unknown]> = [];
      for (const { key, value } of (this[name] as Database<unknown, Key>).getRange({ start: [g], end: [g + 1] })) rows.push([key as Key, value]);
      data.tables[name] = rows;
    }
    return { applied: this.groupApplied(g), data };
  }

  async close(): Promise<void> {
    await this.root.flushed;
    await this.root.close();
  }
}

/** The tables whose keys start with the group (a group's range); `ids` is rebuilt from `log`. */
export const GroupTables = ['log', 'overrides', 'summaries', 'idem', 'idemOrder'] as const;
export type GroupTable = (typeof GroupTables)[number];

/** The cluster a node's directory belongs to, and the nodes that founded it. */
export interface ClusterMembership {
  clusterId: string;
  nodeId: string;
  founders: string[];
}

/** One group's state, as a snapshot carries it. */
export interface GroupData {
  v: 1;
  tables: Partial<Record<GroupTable, Array<[Key, unknown]>>>;
}

const appliedKey = (log: number) => `applied/${log}`;
const groupAppliedKey = (g: number) => `applied/g/${g}`;

interface Tables {
  log: Table<StoredMessage | ContextState>;
  overrides: Table<Override>;
  summaries: Table<WindowMessage[]>;
  idem: Table<IdemEntry>;
  idemOrder: Table<string>;
  ids: Table<number>;
}

/** The StateView over the store's tables, direct or buffered. */
export class LmdbView implements StateView {
  constructor(
    private readonly t: Tables,
    private readonly groups: number,
  ) {}

  private g(id: string): number {
    return groupOf(id, this.groups);
  }

  getContext(id: string): ContextState | undefined {
    const ctx = this.t.log.get([this.g(id), id, RecordSeq]) as ContextState | undefined;
    // Callers may change the record they get (apply does, then puts it): hand out a copy of
    // the parts apply changes in place, so a buffered record is never changed behind its back.
    return ctx && { ...ctx, window: { ...ctx.window } };
  }
  putContext(ctx: ContextState, created = false): void {
    const g = this.g(ctx.id);
    if (created) this.t.ids.put([ctx.id], g);
    this.t.log.put([g, ctx.id, RecordSeq], { ...ctx, window: { ...ctx.window } });
  }
  getSummary(id: string): WindowMessage[] {
    return [...(this.t.summaries.get([this.g(id), id]) ?? [])];
  }
  putSummary(id: string, messages: WindowMessage[]): void {
    if (messages.length === 0) this.t.summaries.remove([this.g(id), id]);
    else this.t.summaries.put([this.g(id), id], [...messages]);
  }
  getMessage(id: string, seq: number): StoredMessage | undefined {
    assert(Number.isSafeInteger(seq), 'message seqs are integers');
    return this.t.log.get([this.g(id), id, seq]) as StoredMessage | undefined;
  }
  putMessage(id: string, message: StoredMessage): void {
    assert(Number.isSafeInteger(message.seq) && message.seq >= 1, 'message seqs are positive integers');
    this.t.log.put([this.g(id), id, message.seq], message);
  }
  messages(id: string, fromSeq: number, toSeq: number, limit: number): StoredMessage[] {
    if (toSeq < fromSeq || limit <= 0) return [];
    // The end is exclusive and finite, so the record at RecordSeq is never in the range.
    return this.t.log.range([this.g(id), id], fromSeq, toSeq + 1, limit).map((e) => e.value as StoredMessage);
  }
  getOverride(id: string, seq: number): Override | undefined {
    return this.t.overrides.get([this.g(id), id, seq]);
  }
  putOverride(id: string, seq: number, override: Override): void {
    this.t.overrides.put([this.g(id), id, seq], override);
  }
  deleteOverride(id: string, seq: number): void {
    this.t.overrides.remove([this.g(id), id, seq]);
  }
  overrides(id: string, fromSeq: number, toSeq: number): Map<number, Override> {
    const out = new Map<number, Override>();
    if (toSeq < fromSeq) return out;
    for (const { last, value } of this.t.overrides.range([this.g(id), id], fromSeq, toSeq + 1, Number.MAX_SAFE_INTEGER)) out.set(last as number, value);
    return out;
  }
  getIdem(id: string, key: string): IdemEntry | undefined {
    return this.t.idem.get([this.g(id), id, key]);
  }
  putIdem(id: string, key: string, entry: IdemEntry): void {
    this.t.idem.put([this.g(id), id, key], entry);
  }
  deleteIdem(id: string, key: string): void {
    this.t.idem.remove([this.g(id), id, key]);
  }
  getIdemKeyAt(id: string, n: number): string | undefined {
    return this.t.idemOrder.get([this.g(id), id, n]);
  }
  putIdemKeyAt(id: string, n: number, key: string): void {
    this.t.idemOrder.put([this.g(id), id, n], key);
  }
  deleteIdemKeyAt(id: string, n: number): void {
    this.t.idemOrder.remove([this.g(id), id, n]);
  }
  /**
   * Replaces group g's whole state with a snapshot's: every key of the group goes (and its ids
   * from the listing), then the snapshot's keys are written. Through the tables, so a buffered
   * view orders it after the writes it already holds.
   */
  replaceGroup(g: number, data: GroupData): void {
    assert(data.v === 1, `snapshot format ${String(data.v)} is known`);
    for (const name of GroupTables) {
      const table = this.t[name] as Table<unknown>;
      for (const key of table.keysFrom([g], [g + 1])) {
        if (name === 'log' && key[2] === RecordSeq) this.t.ids.remove([key[1] as string]);
        table.remove(key);
      }
    }
    for (const name of GroupTables) {
      const table = this.t[name] as Table<unknown>;
      for (const [key, value] of data.tables[name] ?? []) {
        assert(Array.isArray(key) && key[0] === g, `snapshot keys of group ${g} are in its range`);
        table.put(key, value);
        if (name === 'log' && key[2] === RecordSeq) this.t.ids.put([key[1] as string], g);
      }
    }
  }

  listContexts(prefix: string, after: string, limit: number, owns?: (group: number) => boolean): ContextState[] {
    const out: ContextState[] = [];
    let from = after >= prefix ? after : prefix;
    // Pages of the id index; ids of other groups are skipped, so a page may yield few records.
    for (;;) {
      const page = this.t.ids.range([], from, undefined, limit + 1);
      for (const { last, value: g } of page) {
        const id = last as string;
        if (id <= after || (owns !== undefined && !owns(g))) continue;
        if (!id.startsWith(prefix)) return out;
        const ctx = this.getContext(id);
        if (ctx) out.push(ctx);
        if (out.length >= limit) return out;
      }
      if (page.length < limit + 1) return out;
      const next = page[page.length - 1]!.last as string;
      assert(next > from, 'listing pages move forward');
      from = next;
    }
  }
}
