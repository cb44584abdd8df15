import { assert } from '../../runtime/errors.js';
import type { Entry, Snapshot } from './types.js';

/**
 * The part of the log not yet known to be on disk: an incoming snapshot and/or entries after
 * it. Entries leave when the caller reports them persisted (stableTo), never earlier, so
 * everything below `offset` is in storage.
 *
 * "In progress" marks what a Ready has handed out for persisting but not yet acknowledged, so
 * the next Ready does not hand it out again; a truncation moves the mark back over what it
 * replaced, because the replacement has to be written.
 */
export class Unstable {
  /** A snapshot received from the leader and not yet persisted; when set, offset = its index + 1. */
  snapshot: Snapshot | undefined = undefined;
  /** Whether `snapshot` has been handed out for persisting. */
  snapshotInProgress = false;
  /** entries[i].index = offset + i. */
  entries: Entry[] = [];
  /** Index of entries[0] (or where it would be); everything below is in storage. */
  offset: number;
  /** Entries in [offset, offsetInProgress) have been handed out; offset ≤ offsetInProgress ≤ offset + entries.length. */
  offsetInProgress: number;

  constructor(offset: number) {
    this.offset = offset;
    this.offsetInProgress = offset;
  }

  /** The first index if a snapshot is pending (the log restarts after it). */
  maybeFirstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.meta.index + 1 : undefined;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot ? this.snapshot.meta.index : undefined;
  }

  maybeTerm(index: number): number | undefined {
    if (index < this.offset) {
      return this.snapshot && this.snapshot.meta.index === index ? this.snapshot.meta.term : undefined;
    }
    const k = index - this.offset;
    return k < this.entries.length ? this.entries[k]!.term : undefined;
  }

  hasNextEntries(): boolean {
    return this.offsetInProgress < this.offset + this.entries.length;
  }

  /** The entries to hand out in the next Ready (a fresh array). */
  nextEntries(): Entry[] {
    return this.entries.slice(this.offsetInProgress - this.offset);
  }

  hasNextSnapshot(): boolean {
    return this.snapshot !== undefined && !this.snapshotInProgress;
  }

  /** Marks everything currently unstable as handed out. */
  acceptInProgress(): void {
    this.offsetInProgress = this.offset + this.entries.length;
    if (this.snapshot) this.snapshotInProgress = true;
  }

  /**
   * The caller persisted entries up to (index, term). Ignored if that entry has since been
   * replaced (a newer leader truncated it while the write was in flight): the replacement is
   * not on disk yet.
   */
  stableTo(index: number, term: number): void {
    if (index < this.offset) return;
    const t = this.maybeTerm(index);
    if (t !== term) return;
    this.entries = this.entries.slice(index + 1 - this.offset);
    this.offset = index + 1;
    this.offsetInProgress = Math.max(this.offsetInProgress, this.offset);
    assert(this.offsetInProgress <= this.offset + this.entries.length, 'in-progress mark within the entries');
  }

  stableSnapTo(index: number): void {
    if (this.snapshot && this.snapshot.meta.index === index) {
      this.snapshot = undefined;
      this.snapshotInProgress = false;
    }
  }

  restore(s: Snapshot): void {
    this.offset = s.meta.index + 1;
    this.offsetInProgress = this.offset;
    this.entries = [];
    this.snapshot = s;
    this.snapshotInProgress = false;
  }

  /** Appends, replacing every entry from ents[0].index on. */
  truncateAndAppend(ents: readonly Entry[]): void {
    if (ents.length === 0) return;
    const from = ents[0]!.index;
    assert(this.snapshot === undefined || from > this.snapshot.meta.index, 'entries never overwrite a pending snapshot');
    const end = this.offset + this.entries.length;
    if (from === end) {
      for (const e of ents) this.entries.push(e);
    } else if (from <= this.offset) {
      // Replaces everything unstable, and (on disk) everything from `from` on.
      this.offset = from;
      this.entries = ents.slice();
    } else {
      assert(from < end, `append at ${from} leaves no gap after ${end - 1}`);
      const kept = this.entries.slice(0, from - this.offset);
      for (const e of ents) kept.push(e);
      this.entries = kept;
    }
    this.offsetInProgress = Math.min(this.offsetInProgress, from);
    if (this.offsetInProgress < this.offset) this.offsetInProgress = this.offset;
  }
}
