import { assert } from '../../runtime/errors.js';
import { EmptyConfState, EmptyData, entryBytes, type ConfState, type Entry, type HardState, type Snapshot } from './types.js';

/** What a node restarts from. */
export interface InitialState {
  readonly hardState: HardState;
  /** Membership as of the caller's applied index (at least the snapshot's). */
  readonly confState: ConfState;
}

/**
 * What the core reads its durable state through. Reads are synchronous: the core is a pure state
 * machine and never waits. Writes are the caller's (see RawNode's Ready contract): each
 * implementation has its own write methods, and the core never calls them.
 *
 * Ranges: the log holds [firstIndex, lastIndex]; the entry just before it, at firstIndex − 1,
 * is the snapshot's last entry, whose term is still known. The core only asks within these
 * bounds; implementations assert it.
 */
export interface Storage {
  initialState(): InitialState;
  /** Entries [lo, hi), stopping before bytesMax is exceeded but always returning at least one
   * when lo < hi. firstIndex ≤ lo ≤ hi ≤ lastIndex + 1. */
  entries(lo: number, hi: number, bytesMax: number): Entry[];
  /** The term of the entry at index, for firstIndex − 1 ≤ index ≤ lastIndex. */
  term(index: number): number;
  /** The snapshot's index + 1. */
  firstIndex(): number;
  /** The index of the last entry, or the snapshot's index when the log after it is empty. */
  lastIndex(): number;
  /** The newest snapshot. */
  snapshot(): Snapshot;
}

/** The snapshot of a group that has never run: index 0, no members. A node that joins an
 * existing group starts from it and is brought up to date by a snapshot from the leader. */
export function emptySnapshot(): Snapshot {
  return { meta: { index: 0, term: 0, conf: EmptyConfState }, data: EmptyData };
}

/**
 * The snapshot every founding member of a group starts from: index 1, term 1, the founding
 * membership. Starting the log after index 1 means a node that joins later can never take
 * entries from index 1 on (it would miss the founding membership): it always needs a snapshot,
 * which carries the membership.
 */
export function bootstrapSnapshot(conf: ConfState, data: Uint8Array = EmptyData): Snapshot {
  assert(conf.voters.length > 0, 'a group is founded with at least one voter');
  return { meta: { index: 1, term: 1, conf: normalizeConf(conf) }, data };
}

export function normalizeConf(conf: ConfState): ConfState {
  const voters = [...new Set(conf.voters)].sort((a, b) => a - b);
  const learners = [...new Set(conf.learners)].filter((id) => !voters.includes(id)).sort((a, b) => a - b);
  for (const id of [...voters, ...learners]) assert(Number.isSafeInteger(id) && id >= 1, `node ids are positive whole numbers, got ${id}`);
  return { voters, learners };
}

/** Takes entries from the front of `ents` until bytesMax would be exceeded; at least one. */
export function limitBytes(ents: Entry[], bytesMax: number): Entry[] {
  if (ents.length <= 1) return ents;
  let bytes = entryBytes(ents[0]!);
  let n = 1;
  for (; n < ents.length; n++) {
    bytes += entryBytes(ents[n]!);
    if (bytes > bytesMax) break;
  }
  return n === ents.length ? ents : ents.slice(0, n);
}

/**
 * The log in memory: for tests, the simulator and the benchmark. ents[0] is a placeholder for
 * the snapshot's last entry (its index and term), so index i lives at ents[i − ents[0].index].
 */
export class MemoryStorage implements Storage {
  private hard: HardState;
  /** ents[0] stands for the snapshot's last entry; ents[k].index = ents[0].index + k. */
  private ents: Entry[];
  private snap: Snapshot;
  /** Membership as of confIndex: the newest applied conf change, or the snapshot's. */
  private conf: ConfState;
  /** The index conf is as of; ≥ the snapshot's index. */
  private confIndex: number;

  constructor(snapshot: Snapshot = emptySnapshot(), hardState?: HardState) {
    this.snap = snapshot;
    this.ents = [placeholder(snapshot)];
    this.hard = hardState ?? { term: snapshot.meta.term, vote: 0, commit: snapshot.meta.index };
    this.conf = snapshot.meta.conf;
    this.confIndex = snapshot.meta.index;
  }

  /** Storage for a founding member of a group with this membership. */
  static bootstrap(conf: ConfState): MemoryStorage {
    return new MemoryStorage(bootstrapSnapshot(conf));
  }

  initialState(): InitialState {
    return { hardState: this.hard, confState: this.conf };
  }

  hardState(): HardState {
    return this.hard;
  }

  firstIndex(): number {
    return this.ents[0]!.index + 1;
  }

  lastIndex(): number {
    return this.ents[0]!.index + this.ents.length - 1;
  }

  term(index: number): number {
    const offset = this.ents[0]!.index;
    assert(index >= offset && index <= this.lastIndex(), `term(${index}) within [${offset}, ${this.lastIndex()}]`);
    return this.ents[index - offset]!.term;
  }

  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    const offset = this.ents[0]!.index;
    assert(lo > offset && lo <= hi && hi <= this.lastIndex() + 1, `entries [${lo}, ${hi}) within [${offset + 1}, ${this.lastIndex() + 1})`);
    if (lo === hi) return [];
    return limitBytes(this.ents.slice(lo - offset, hi - offset), bytesMax);
  }

  snapshot(): Snapshot {
    return this.snap;
  }

  // Writes: what the caller does with a Ready, in this order: applySnapshot, append, setHardState.

  setHardState(hs: HardState): void {
    assert(hs.term >= this.hard.term, `hard state term never decreases (${hs.term} < ${this.hard.term})`);
    assert(hs.term > this.hard.term || this.hard.vote === 0 || hs.vote === this.hard.vote, 'a vote never changes within a term');
    this.hard = hs;
  }

  /** Appends entries, replacing any existing entries from entries[0].index on. */
  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const offset = this.ents[0]!.index;
    let from = 0;
    // Entries the snapshot already covers are committed and identical; skip them (a compaction
    // may have overtaken a Ready in flight).
    while (from < entries.length && entries[from]!.index <= offset) from++;
    if (from === entries.length) return;
    const first = entries[from]!.index;
    assert(first <= this.lastIndex() + 1, `append at ${first} leaves no gap after ${this.lastIndex()}`);
    this.ents.length = first - offset;
    for (let i = from; i < entries.length; i++) {
      const e = entries[i]!;
      assert(e.index === offset + this.ents.length, 'appended entries are consecutive');
      this.ents.push(e);
    }
  }

  /** Replaces the whole log with a snapshot received from the leader. */
  applySnapshot(snapshot: Snapshot): void {
    assert(snapshot.meta.index > this.snap.meta.index, `snapshot ${snapshot.meta.index} is newer than ${this.snap.meta.index}`);
    this.snap = snapshot;
    this.ents = [placeholder(snapshot)];
    this.conf = snapshot.meta.conf;
    this.confIndex = snapshot.meta.index;
  }

  /** Records a snapshot of the state machine at `index`, which the caller has applied (so it is
   * committed, even if the stored hard state's commit lags). */
  createSnapshot(index: number, conf: ConfState, data: Uint8Array): Snapshot {
    assert(index > this.snap.meta.index, `snapshot at ${index} is newer than ${this.snap.meta.index}`);
    assert(index <= this.lastIndex(), `snapshot at ${index} within the log (last ${this.lastIndex()})`);
    this.snap = { meta: { index, term: this.term(index), conf }, data };
    if (index >= this.confIndex) {
      this.conf = conf;
      this.confIndex = index;
    }
    return this.snap;
  }

  /** Forgets the entries up to index; the snapshot must cover them. */
  compact(index: number): void {
    const offset = this.ents[0]!.index;
    if (index <= offset) return;
    assert(index <= this.snap.meta.index, `compaction to ${index} stays within the snapshot at ${this.snap.meta.index}`);
    assert(index <= this.lastIndex(), 'compaction stays within the log');
    this.ents = this.ents.slice(index - offset);
    this.ents[0] = { term: this.ents[0]!.term, index, type: 0, data: EmptyData };
  }

  /** Remembers membership as of an applied conf change at index, for a caller whose applied
   * state survives restarts (it restarts with RaftConfig.applied ≥ index). */
  setConfState(conf: ConfState, index: number): void {
    assert(index >= this.confIndex, 'membership is remembered in log order');
    this.conf = conf;
    this.confIndex = index;
  }

  /** An independent copy (entries are immutable and shared). */
  clone(): MemoryStorage {
    const c = new MemoryStorage(this.snap, this.hard);
    c.ents = this.ents.slice();
    c.conf = this.conf;
    c.confIndex = this.confIndex;
    return c;
  }
}

function placeholder(s: Snapshot): Entry {
  return { term: s.meta.term, index: s.meta.index, type: 0, data: EmptyData };
}
