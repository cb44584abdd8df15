import { assert } from '../../runtime/errors.js';
import { Unstable } from './log-unstable.js';
import type { Storage } from './storage.js';
import type { Entry, Snapshot } from './types.js';
import { entryBytes } from './types.js';

/**
 * The Raft log as the core sees it: what storage holds, then what is not yet persisted
 * (Unstable). Also tracks how far the log is committed and applied.
 *
 *   snapshot | storage entries … | unstable entries …
 *            ^ firstIndex                            ^ lastIndex
 *   applied ≤ applying ≤ committed ≤ lastIndex
 */
export class RaftLog {
  readonly unstable: Unstable;
  /** Highest index known committed; firstIndex − 1 ≤ committed ≤ lastIndex; never decreases. */
  committed: number;
  /** Highest index handed out to the caller to apply; applied ≤ applying ≤ committed. */
  applying: number;
  /** Highest index the caller has applied. */
  applied: number;

  constructor(readonly storage: Storage, committed: number, applied: number) {
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstable = new Unstable(last + 1);
    assert(committed >= first - 1 && committed <= last, `persisted commit ${committed} lies within the persisted log [${first - 1}, ${last}]`);
    assert(applied >= first - 1 && applied <= committed, `applied ${applied} lies within [snapshot ${first - 1}, commit ${committed}]`);
    this.committed = committed;
    this.applied = applied;
    this.applying = applied;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  lastTerm(): number {
    const t = this.term(this.lastIndex());
    assert(t !== undefined, 'the last entry has a term');
    return t;
  }

  /** The term at index, or undefined if index is compacted away or beyond the log. */
  term(index: number): number | undefined {
    const dummy = this.firstIndex() - 1;
    if (index < dummy || index > this.lastIndex()) return undefined;
    const t = this.unstable.maybeTerm(index);
    if (t !== undefined) return t;
    // Not unstable: in storage, unless the storage was compacted past it meanwhile.
    const storageDummy = this.storage.firstIndex() - 1;
    if (index < storageDummy || index > this.storage.lastIndex()) return undefined;
    return this.storage.term(index);
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Whether a log ending at (lastIndex, lastTerm) is at least as up to date as ours (§5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * The first entry of ents that is new or conflicts (same index, other term) with our log, or
   * 0 when all of them are already here. ents are consecutive.
   */
  findConflict(ents: readonly Entry[]): number {
    for (const e of ents) {
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * The largest index ≤ index whose term is ≤ term, with that term (0 if unknown: compacted).
   * Entries in (result, index] all have terms above `term`, so a leader whose entry at `index`
   * has `term` cannot match any of them: probing can skip them all at once.
   */
  findConflictByTerm(index: number, term: number): [number, number] {
    let i = Math.min(index, this.lastIndex());
    for (;;) {
      const t = this.term(i);
      if (t === undefined) return [i, 0];
      if (t <= term) return [i, t];
      i--;
    }
  }

  /**
   * The leader's append after (prevIndex, prevTerm): appends what is new, truncating a
   * conflicting suffix, and commits up to min(commit, last new index). Returns the last new
   * index, or undefined if our log does not match at prevIndex.
   */
  maybeAppend(prevIndex: number, prevTerm: number, commit: number, ents: readonly Entry[]): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNew = prevIndex + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      assert(ci > this.committed, `entry ${ci} conflicts with the committed log (committed ${this.committed})`);
      this.append(ents.slice(ci - (prevIndex + 1)));
    }
    // Only what we now know matches the leader's log may be committed: commit ≤ lastNew.
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** Appends at ents[0].index, replacing anything from there on; returns the last index. */
  append(ents: readonly Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    const after = ents[0]!.index - 1;
    assert(after >= this.committed, `append after ${after} never truncates committed entries (committed ${this.committed})`);
    assert(after <= this.lastIndex(), `append after ${after} leaves no gap (last ${this.lastIndex()})`);
    this.unstable.truncateAndAppend(ents);
    return this.lastIndex();
  }

  /**
   * Entries [lo, hi), at most bytesMax of them but at least one; undefined if lo has been
   * compacted away (the caller then needs the snapshot).
   */
  slice(lo: number, hi: number, bytesMax: number): Entry[] | undefined {
    if (lo < this.firstIndex()) return undefined;
    assert(lo <= hi && hi <= this.lastIndex() + 1, `slice [${lo}, ${hi}) within the log (last ${this.lastIndex()})`);
    if (lo === hi) return [];
    const u = this.unstable;
    let out: Entry[] = [];
    if (lo < u.offset) {
      // The storage part; a storage compacted under us is "compacted" too.
      if (lo < this.storage.firstIndex()) return undefined;
      const storageHi = Math.min(hi, u.offset);
      out = this.storage.entries(lo, storageHi, bytesMax);
      if (out.length < storageHi - lo) return out; // bytesMax reached
    }
    if (hi > u.offset) {
      const from = Math.max(lo, u.offset);
      let bytes = 0;
      for (const e of out) bytes += entryBytes(e);
      for (let i = from; i < hi; i++) {
        const e = u.entries[i - u.offset]!;
        const size = entryBytes(e);
        if (out.length > 0 && bytes + size > bytesMax) break;
        bytes += size;
        out.push(e);
      }
    }
    return out;
  }

  commitTo(index: number): void {
    if (index <= this.committed) return;
    assert(index <= this.lastIndex(), `commit ${index} within the log (last ${this.lastIndex()})`);
    this.committed = index;
  }

  /** The caller will apply entries up to index (they were handed out in a Ready). */
  acceptApplying(index: number): void {
    assert(index >= this.applying && index <= this.committed, `applying ${index} within [${this.applying}, ${this.committed}]`);
    this.applying = index;
  }

  appliedTo(index: number): void {
    assert(index >= this.applied && index <= this.committed, `applied ${index} within [${this.applied}, ${this.committed}]`);
    this.applied = index;
    if (this.applying < index) this.applying = index;
  }

  hasNextCommittedEntries(): boolean {
    const lo = Math.max(this.applying + 1, this.firstIndex());
    return lo <= this.committed;
  }

  /** Committed entries not yet handed out for applying, at most bytesMax (at least one). */
  nextCommittedEntries(bytesMax: number): Entry[] {
    const lo = Math.max(this.applying + 1, this.firstIndex());
    if (lo > this.committed) return [];
    const ents = this.slice(lo, this.committed + 1, bytesMax);
    assert(ents !== undefined, 'unapplied committed entries are never compacted');
    return ents;
  }

  /** The snapshot to send a follower: a pending one, or storage's. */
  snapshot(): Snapshot {
    return this.unstable.snapshot ?? this.storage.snapshot();
  }

  /** Replaces the log with a snapshot (index > committed); the caller persists it via Ready. */
  restore(s: Snapshot): void {
    assert(s.meta.index > this.committed, `restored snapshot ${s.meta.index} is beyond commit ${this.committed}`);
    this.committed = s.meta.index;
    this.unstable.restore(s);
  }

  /**
   * The highest index known to be on disk and part of this log: what a leader may count itself
   * as holding. Everything below unstable.offset is in storage; nothing is while a snapshot is
   * pending.
   */
  persistedIndex(): number {
    return this.unstable.snapshot ? 0 : this.unstable.offset - 1;
  }

  toString(): string {
    return `committed=${this.committed} applied=${this.applied} applying=${this.applying} unstable.offset=${this.unstable.offset} len(unstable)=${this.unstable.entries.length}`;
  }
}
