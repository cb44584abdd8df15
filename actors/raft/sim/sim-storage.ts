import { assert } from '../../../runtime/errors.js';
import { MemoryStorage, type InitialState, type Storage } from '../storage.js';
import type { ConfState, Entry, HardState, Snapshot } from '../types.js';

type Write =
  | { readonly op: 'snapshot'; readonly snapshot: Snapshot }
  | { readonly op: 'append'; readonly entries: readonly Entry[] }
  | { readonly op: 'hard'; readonly hardState: HardState };

/** What the invariant checker wants to see of a node's disk. */
export interface StorageObserver {
  /** Entries about to be written after the entry at entries[0].index − 1, whose term is prevTerm. */
  onAppend(entries: readonly Entry[], prevTerm: number): void;
  /** The hard state that just became durable. */
  onDurable(hs: HardState): void;
}

/**
 * A disk with a page cache: reads see every write at once, but only writes that were synced
 * survive a crash. Two MemoryStorages: `live` takes every write, `durable` only replays the
 * journal of unsynced writes when sync() runs; crash() throws the journal away and goes back to
 * `durable`.
 */
export class SimStorage implements Storage {
  private live: MemoryStorage;
  private durable: MemoryStorage;
  private journal: Write[] = [];

  constructor(
    initial: MemoryStorage,
    private readonly observer: StorageObserver,
  ) {
    this.durable = initial;
    this.live = initial.clone();
  }

  // ---- Storage (reads see the page cache) -----------------------------------------------------

  initialState(): InitialState {
    return this.live.initialState();
  }
  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    return this.live.entries(lo, hi, bytesMax);
  }
  term(index: number): number {
    return this.live.term(index);
  }
  firstIndex(): number {
    return this.live.firstIndex();
  }
  lastIndex(): number {
    return this.live.lastIndex();
  }
  snapshot(): Snapshot {
    return this.live.snapshot();
  }

  // ---- writes ---------------------------------------------------------------------------------

  applySnapshot(s: Snapshot): void {
    this.live.applySnapshot(s);
    this.journal.push({ op: 'snapshot', snapshot: s });
  }

  append(entries: readonly Entry[]): void {
    if (entries.length === 0) return;
    const first = entries[0]!.index;
    // Entries the snapshot covers are skipped by the storage; check what is really written.
    const snapIndex = this.live.firstIndex() - 1;
    const kept = first <= snapIndex ? entries.filter((e) => e.index > snapIndex) : entries;
    if (kept.length > 0) this.observer.onAppend(kept, this.live.term(kept[0]!.index - 1));
    this.live.append(entries);
    this.journal.push({ op: 'append', entries });
  }

  setHardState(hs: HardState): void {
    this.live.setHardState(hs);
    this.journal.push({ op: 'hard', hardState: hs });
  }

  /** fsync: everything written so far survives a crash. */
  sync(): void {
    if (this.journal.length === 0) return;
    let hard: HardState | undefined;
    for (const w of this.journal) {
      switch (w.op) {
        case 'snapshot':
          this.durable.applySnapshot(w.snapshot);
          break;
        case 'append':
          this.durable.append(w.entries);
          break;
        case 'hard':
          this.durable.setHardState(w.hardState);
          hard = w.hardState;
          break;
      }
    }
    this.journal = [];
    if (hard) this.observer.onDurable(hard);
  }

  get unsyncedWrites(): number {
    return this.journal.length;
  }

  /** The process died: the page cache is gone, and with it every write not synced. */
  crash(): void {
    this.journal = [];
    this.live = this.durable.clone();
  }

  /** Snapshot and compaction as the application does them: after syncing, durably at once. */
  snapshotAndCompact(index: number, conf: ConfState, data: Uint8Array, compactTo: number): void {
    this.sync();
    assert(this.journal.length === 0, 'nothing unsynced while snapshotting');
    if (index > this.live.snapshot().meta.index) {
      this.live.createSnapshot(index, conf, data);
      this.durable.createSnapshot(index, conf, data);
    }
    const to = Math.min(compactTo, this.live.snapshot().meta.index);
    this.live.compact(to);
    this.durable.compact(to);
  }

  durableHardState(): HardState {
    return this.durable.hardState();
  }
}
