import fs from 'node:fs';
import { open, type Database, type RootDatabase } from 'lmdb';
import { assert } from '../../runtime/errors.js';
import { bootstrapSnapshot, emptySnapshot, type InitialState, type Storage } from './storage.js';
import { EntryType, entryBytes, type ConfState, type Entry, type HardState, type Snapshot, type SnapshotMeta } from './types.js';

type LogKey = [number, number];
type StateKey = [number, string];

interface StoredSnapshot {
  index: number;
  term: number;
  voters: number[];
  learners: number[];
  data: Uint8Array;
}

interface StoredConf {
  index: number;
  voters: number[];
  learners: number[];
}

/** Bytes before an entry's data in its stored value: term (float64), type (uint8). */
const EntryHeaderBytes = 9;

function encodeEntry(e: Entry): Uint8Array {
  const out = new Uint8Array(EntryHeaderBytes + e.data.byteLength);
  const view = new DataView(out.buffer);
  view.setFloat64(0, e.term);
  view.setUint8(8, e.type);
  out.set(e.data, EntryHeaderBytes);
  return out;
}

function decodeEntry(index: number, raw: Uint8Array): Entry {
  assert(raw.byteLength >= EntryHeaderBytes, `stored entry ${index} has a header`);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const type = view.getUint8(8);
  assert(type === EntryType.Normal || type === EntryType.ConfChange, `stored entry ${index} has a known type`);
  // A copy: lmdb-js may hand out views of memory it reuses.
  return { term: view.getFloat64(0), index, type, data: raw.slice(EntryHeaderBytes) };
}

/**
 * One group's Raft state in the node's LMDB environment (DESIGN.md, Storage): the log at
 * `[g, index]` in `raft_log`, and in `raft_state` the hard state at `[g, 'hard']`, the
 * membership at `[g, 'conf']` and the snapshot at `[g, 'snap']`. Many groups share one
 * environment (and one write transaction and fsync per round, if they write in the same turn).
 *
 * Writes are lmdb-js asynchronous puts: every write issued in one event-loop turn commits in one
 * transaction, so a Ready's snapshot, entries and hard state land together or not at all.
 * Durability is `sync()`, which waits for the commit and then for `flushed`: a resolved commit
 * is visible but not yet on disk (overlappingSync). Messages of a Ready go out only after
 * sync() resolves.
 *
 * The indexes and the hard state are cached in memory and reflect writes at once; entry reads
 * go to LMDB and see a write once it has committed. The Ready contract guarantees the core never
 * asks storage for entries it has not yet been told are persisted (they are in its unstable log
 * until advance(), which follows sync()).
 */
export class LmdbStorage implements Storage {
  private readonly log: Database<Uint8Array, LogKey>;
  private readonly state: Database<unknown, StateKey>;
  private hard: HardState;
  private snapMeta: SnapshotMeta;
  /** A snapshot written and not yet known committed, served from memory until it is. */
  private snapPending: Snapshot | undefined;
  private conf: StoredConf;
  /** Snapshot index + 1; the log holds [first, last]. */
  private first: number;
  private last: number;
  /** The most recent write, for sync(). */
  private lastWrite: Promise<boolean> | undefined;

  private constructor(
    readonly root: RootDatabase,
    /** The group whose state this is; keys start with it. */
    readonly group: number,
  ) {
    assert(Number.isSafeInteger(group) && group >= 0, 'group numbers are whole numbers');
    this.log = root.openDB<Uint8Array, LogKey>({ name: 'raft_log', encoding: 'binary' });
    this.state = root.openDB<unknown, StateKey>({ name: 'raft_state' });
    const snap = this.state.get([group, 'snap']) as StoredSnapshot | undefined;
    this.snapMeta = snap ? { index: snap.index, term: snap.term, conf: { voters: snap.voters, learners: snap.learners } } : emptySnapshot().meta;
    this.snapPending = undefined;
    this.hard = (this.state.get([group, 'hard']) as HardState | undefined) ?? { term: this.snapMeta.term, vote: 0, commit: this.snapMeta.index };
    this.conf = (this.state.get([group, 'conf']) as StoredConf | undefined) ?? { index: this.snapMeta.index, voters: [...this.snapMeta.conf.voters], learners: [...this.snapMeta.conf.learners] };
    this.first = this.snapMeta.index + 1;
    let last = this.snapMeta.index;
    for (const key of this.log.getKeys({ start: [group, Number.MAX_SAFE_INTEGER], end: [group, this.snapMeta.index], reverse: true, limit: 1 })) last = key[1];
    this.last = last;
    // Entries at or below the snapshot may outlive a crash between the snapshot and the
    // compaction; they are ignored (first is the snapshot's index + 1).
  }

  /** Opens group `group`'s state in an environment the caller owns (and closes). */
  static open(root: RootDatabase, group: number): LmdbStorage {
    return new LmdbStorage(root, group);
  }

  /** An environment for the node's Raft state, as the rest of the node opens its own. */
  static openEnv(dir: string): RootDatabase {
    fs.mkdirSync(dir, { recursive: true });
    return open({ path: dir, noSubdir: false, maxDbs: 8, overlappingSync: true, mapSize: 2 ** 34 });
  }

  /** Founds the group with this membership if it has no state yet (see bootstrapSnapshot). */
  bootstrap(conf: ConfState): void {
    if (this.snapMeta.index > 0 || this.last > 0) return;
    this.applySnapshot(bootstrapSnapshot(conf));
    this.setHardState({ term: 1, vote: 0, commit: 1 });
  }

  initialState(): InitialState {
    return { hardState: this.hard, confState: { voters: this.conf.voters, learners: this.conf.learners } };
  }

  firstIndex(): number {
    return this.first;
  }

  lastIndex(): number {
    return this.last;
  }

  term(index: number): number {
    assert(index >= this.first - 1 && index <= this.last, `term(${index}) within [${this.first - 1}, ${this.last}]`);
    if (index === this.first - 1) return this.snapMeta.term;
    const raw = this.log.get([this.group, index]);
    assert(raw !== undefined, `entry ${index} of group ${this.group} is stored (or its write has not committed yet)`);
    return new DataView(raw.buffer, raw.byteOffset, raw.byteLength).getFloat64(0);
  }

  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    assert(lo >= this.first && lo <= hi && hi <= this.last + 1, `entries [${lo}, ${hi}) within [${this.first}, ${this.last + 1})`);
    const out: Entry[] = [];
    let bytes = 0;
    let expect = lo;
    for (const { key, value } of this.log.getRange({ start: [this.group, lo], end: [this.group, hi] })) {
      assert(key[1] === expect, `group ${this.group}'s log is contiguous (found ${key[1]}, expected ${expect})`);
      const e = decodeEntry(key[1], value);
      bytes += entryBytes(e);
      if (out.length > 0 && bytes > bytesMax) break;
      out.push(e);
      expect++;
    }
    assert(out.length > 0 || lo === hi, `entries [${lo}, ${hi}) of group ${this.group} are stored`);
    return out;
  }

  snapshot(): Snapshot {
    if (this.snapPending) return this.snapPending;
    const s = this.state.get([this.group, 'snap']) as StoredSnapshot | undefined;
    if (!s) return emptySnapshot();
    assert(s.index === this.snapMeta.index, 'the stored snapshot is the one cached');
    return { meta: this.snapMeta, data: s.data };
  }

  hardState(): HardState {
    return this.hard;
  }

  // ---- writes (issue a Ready's in one turn: applySnapshot, append, setHardState; then sync) ---

  setHardState(hs: HardState): void {
    assert(hs.term >= this.hard.term, `hard state term never decreases (${hs.term} < ${this.hard.term})`);
    assert(hs.term > this.hard.term || this.hard.vote === 0 || hs.vote === this.hard.vote, 'a vote never changes within a term');
    this.hard = hs;
    this.lastWrite = this.state.put([this.group, 'hard'], { term: hs.term, vote: hs.vote, commit: hs.commit });
  }

  /** Appends entries, replacing any stored from entries[0].index on. */
  append(entries: readonly Entry[]): void {
    let from = 0;
    while (from < entries.length && entries[from]!.index < this.first) from++;
    if (from === entries.length) return;
    const firstNew = entries[from]!.index;
    assert(firstNew <= this.last + 1, `append at ${firstNew} leaves no gap after ${this.last}`);
    let expect = firstNew;
    for (let i = from; i < entries.length; i++) {
      const e = entries[i]!;
      assert(e.index === expect++, 'appended entries are consecutive');
      this.lastWrite = this.log.put([this.group, e.index], encodeEntry(e));
    }
    const newLast = entries[entries.length - 1]!.index;
    // A shorter replacement leaves stale entries behind it: remove them.
    for (let i = newLast + 1; i <= this.last; i++) this.lastWrite = this.log.remove([this.group, i]);
    this.last = newLast;
  }

  /** Replaces the whole log with a snapshot from the leader. */
  applySnapshot(s: Snapshot): void {
    assert(s.meta.index > this.snapMeta.index, `snapshot ${s.meta.index} is newer than ${this.snapMeta.index}`);
    this.writeSnapshot(s);
    for (let i = this.first; i <= this.last; i++) this.lastWrite = this.log.remove([this.group, i]);
    this.first = s.meta.index + 1;
    this.last = s.meta.index;
    this.conf = { index: s.meta.index, voters: [...s.meta.conf.voters], learners: [...s.meta.conf.learners] };
    this.lastWrite = this.state.put([this.group, 'conf'], this.conf);
  }

  /** Records a snapshot of the state machine at index (≤ applied, so ≤ commit). The log then
   * starts after it (a follower further behind is sent the snapshot); compact() frees space. */
  createSnapshot(index: number, conf: ConfState, data: Uint8Array): Snapshot {
    assert(index > this.snapMeta.index && index <= this.last, `snapshot at ${index} within (${this.snapMeta.index}, ${this.last}]`);
    const s: Snapshot = { meta: { index, term: this.term(index), conf }, data };
    this.writeSnapshot(s);
    // The log now starts after the snapshot; compact() reclaims the entries' space.
    this.first = index + 1;
    if (index >= this.conf.index) {
      this.conf = { index, voters: [...conf.voters], learners: [...conf.learners] };
      this.lastWrite = this.state.put([this.group, 'conf'], this.conf);
    }
    return s;
  }

  private writeSnapshot(s: Snapshot): void {
    const stored: StoredSnapshot = { index: s.meta.index, term: s.meta.term, voters: [...s.meta.conf.voters], learners: [...s.meta.conf.learners], data: s.data };
    this.snapMeta = s.meta;
    this.snapPending = s;
    const write = this.state.put([this.group, 'snap'], stored);
    this.lastWrite = write;
    void write.then(() => {
      if (this.snapPending === s) this.snapPending = undefined;
    });
  }

  /** Deletes stored entries up to index (≤ the snapshot's index). They are already out of the
   * log (it starts after the snapshot), so this only reclaims space; at most `limit` per call,
   * so one call never holds the write transaction for long. Returns how many it deleted. */
  compact(index: number, limit = 10_000): number {
    assert(index <= this.snapMeta.index, `compaction to ${index} stays within the snapshot at ${this.snapMeta.index}`);
    let n = 0;
    for (const key of this.log.getKeys({ start: [this.group, 0], end: [this.group, index + 1], limit })) {
      this.lastWrite = this.log.remove(key);
      n++;
    }
    return n;
  }

  setConfState(conf: ConfState, index: number): void {
    assert(index >= this.conf.index, 'membership is remembered in log order');
    this.conf = { index, voters: [...conf.voters], learners: [...conf.learners] };
    this.lastWrite = this.state.put([this.group, 'conf'], this.conf);
  }

  /** Resolves once every write issued so far is committed and on disk. */
  async sync(): Promise<void> {
    const w = this.lastWrite;
    if (w !== undefined) await w;
    await this.root.flushed;
  }
}
