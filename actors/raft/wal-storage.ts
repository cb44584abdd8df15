/**
 * RaftWal: the Raft state of every group hosted by one worker thread, in ONE write-ahead log
 * (runtime/segment-log.ts), so that one round persists the changes of all groups with one write
 * and one fdatasync (multi-Raft group commit, as TiKV's raft-engine does). WalGroupStorage is one
 * group's view of it and implements the core's Storage.
 *
 * ## Memory
 *
 * Everything is answered from memory. Per group: the hard state, the snapshot meta (the
 * compaction point: index, term, membership as of it), the snapshot data (only a snapshot
 * installed from a leader has any; compact() drops it), the memberships remembered with
 * setConfState above the compaction point, and the entries after the compaction point. Writes
 * change memory at once (reads see them at once) and mark the group dirty; they are durable only
 * once RaftWal.persist() has returned.
 *
 * ## Durability contract (the Ready loop of docs/raft.md, for many groups)
 *
 *   for each group with a Ready: applySnapshot?, append(entries), setHardState?   (memory)
 *   wal.persist()        one SegmentLog append = one write + one fdatasync, on this thread
 *     or persistDeferred()  the same write, its fdatasync on libuv's pool: durable once the
 *                          promise resolves; nothing else persists, collects or closes until then
 *   then send every group's messages, apply, advance; compact() what the state store holds;
 *   wal.collect() now and then.
 *
 * Nothing is durable before persist() returns (or persistDeferred()'s promise resolves). If persist() throws, the WAL is broken for good:
 * after a failed fdatasync the kernel may have dropped the dirty pages and a retry can report
 * success for data that is not on disk. Every later write, persist() and collect() throws; the
 * process must restart and recover from what the log holds. close() does not persist.
 *
 * ## Records
 *
 * SegmentLog records are msgpack maps (msgpackr, useRecords: false; every Uint8Array is a msgpack
 * bin). Records come in units: `{ v: 1, t, k, n, p }`, record k of n of one unit (t = 0 a round,
 * t = 1 a checkpoint), p the unit's parts. A unit is one persist()'s round (or checkpoint); it is
 * usually one record, and is split only when it would exceed 16 MiB (one part holds a single
 * entry or snapshot of any size, up to the 128 MiB a record may have). All records of a persist()
 * go in one SegmentLog append, so they are in one segment; replay applies a unit only when all n
 * records are present (a crash can leave a prefix of a multi-record append: it was never
 * acknowledged, and is ignored — also when later records follow it).
 *
 * A round part, the changes of group g since the previous persist, applied in this order:
 *   { g,
 *     s?: [index, term, voters, learners, data]   applySnapshot: replaces everything
 *     k?: [index, term, voters, learners]         compaction point (data becomes empty)
 *     c?: [[index, voters, learners], ...]        the whole list of remembered memberships
 *     f?, e?: first index, [[term, type, data], ...]  entries from f on (replacing those ≥ f)
 *     h?: [term, vote, commit]                    hard state
 *     l: last index }                             the log ends here (cuts what a truncating
 *                                                 append removed, even when the same round's
 *                                                 compaction covered every entry it wrote)
 * Canonicalising a round into this order is exact: a snapshot discards what came before it in
 * the round; compaction only moves the start of the log (it is written with the entries that
 * follow it, whichever order the calls came in); entries are those appended this round that
 * survive it, and l says where the log ends; c is a whole list, not a delta; h is a value.
 * A group whose entries exceed 16 MiB in one round gets several consecutive parts (s/k/c in the
 * first, h and l in the last).
 *
 * A checkpoint part, the whole state of group g except (usually) its entries and snapshot data:
 *   { g, h, m: [index, term, voters, learners], c, l: last index,
 *     d?: 1 (the snapshot has data, in the record that installed it),
 *     s?: data, e?: entries (index + 1 .. l)   — present when the checkpoint rewrites them }
 *
 * ## Checkpoints and the GC rule
 *
 * A group that goes idle keeps its newest hard state and compaction point in an old record. So
 * persist() appends a checkpoint unit (in the same append, after the round) whenever half a
 * segment (segmentBytesMax / 2, at least twice the last checkpoint's size) has been written since
 * the last one. It holds every group that has state. After it, a group's state needs from older
 * records only its entries above its compaction point and a leader's snapshot data. Per group the
 * WAL tracks, for the state as persisted, the record that last wrote each run of its entries
 * (`Pins.spans`, one span per persist that wrote entries, trimmed at every persisted compaction,
 * so never more spans than entries held) and the record holding its snapshot data. Its `need` is
 * the oldest of those records. The rule:
 *
 *   collect() deletes the segments whose records are all < min(last checkpoint,
 *                                                              min over groups of need)
 *
 * (SegmentLog.truncatePrefix: whole segments only, never the one being written). Groups that pin
 * old records without being compacted (an idle follower with unapplied entries, an installed
 * snapshot never compacted) would stop GC for good, so a checkpoint also REWRITES the entries and
 * snapshot data of groups whose need is older than the previous checkpoint, the oldest first,
 * up to min(segmentBytesMax / 2, 8 MiB) per checkpoint — no more than the rounds wrote since the
 * previous one, so rewriting at most doubles the bytes written; their need becomes the checkpoint. A group that holds more than that, uncompacted, pins its records — they
 * are in memory too.
 *
 * ## Replay (RaftWal.open)
 *
 * Records are applied from the first one the log holds, in order, with the semantics of the write
 * methods. When the log still starts at record 1 (nothing deleted), replay is strict: every
 * invariant of the write methods is asserted, and each checkpoint must equal the replayed state.
 * After GC the log starts at a segment boundary before the last checkpoint, and replay is lenient
 * about entries: a group's records may refer to entries in deleted records — entries its later
 * compaction made unneeded — so a write at a gap starts a new run, a checkpoint resets the hard
 * state, meta and memberships and cuts the run to (index, l]. Every entry still needed at the end
 * was last written by a record ≥ the first one held (the GC rule), and nothing after that record
 * can drop it, so the result is exact; replay then checks that each group's entries start right
 * after its compaction point, its snapshot data is present, and that every group seen before the
 * first checkpoint held is in a checkpoint. A torn last record is cut off by SegmentLog. Segments
 * deleted by collect() may come back after a crash (SegmentLog does not sync the directory after
 * an unlink): older segments before the log proper change nothing (the argument above holds for
 * any earlier start), and if record indexes jump, replay starts again after the last jump.
 */
import { Packr } from 'msgpackr';
import { assert } from '../../runtime/errors.js';
import { SegmentLog } from '../../runtime/segment-log.js';
import { bootstrapSnapshot, emptySnapshot, limitBytes, type InitialState, type Storage } from './storage.js';
import { EmptyData, EntryType, isHardStateEqual, type ConfState, type Entry, type HardState, type Snapshot, type SnapshotMeta } from './types.js';

/** Group numbers are 0 ≤ g < GroupsMax. */
export const GroupsMax = 65_536;
const SegmentBytesMaxDefault = 64 * 1024 * 1024;
/** A unit is split into records of about this size (a single entry or snapshot may exceed it). */
const RecordBytesTarget = 16 * 1024 * 1024;
/** The largest record written; SegmentLog reads anything above 256 MiB as damage. */
const RecordBytesMax = 128 * 1024 * 1024;
/** Entries and snapshot data rewritten by one checkpoint, at most. */
const RewriteBytesMax = 8 * 1024 * 1024;
const FormatVersion = 1;
const UnitRound = 0;
const UnitCheckpoint = 1;
/** SegmentLog's record header. */
const RecordHeaderBytes = 16;
/** Estimated msgpack bytes of a part around its entries and data, and of one entry's framing. */
const PartOverheadBytes = 64;
const EntryFramingBytes = 16;
const ReadBatchRecords = 16;

type EncMeta = [index: number, term: number, voters: number[], learners: number[]];
type EncSnap = [index: number, term: number, voters: number[], learners: number[], data: Uint8Array];
type EncConf = [index: number, voters: number[], learners: number[]];
type EncEntry = [term: number, type: number, data: Uint8Array];
type EncHard = [term: number, vote: number, commit: number];

interface RoundPart {
  g: number;
  s?: EncSnap;
  k?: EncMeta;
  c?: EncConf[];
  f?: number;
  e?: EncEntry[];
  h?: EncHard;
  l?: number;
}

interface CheckpointPart {
  g: number;
  h: EncHard;
  m: EncMeta;
  c: EncConf[];
  l: number;
  d?: 1;
  s?: Uint8Array;
  e?: EncEntry[];
}

interface WalRecord {
  v: number;
  t: number;
  k: number;
  n: number;
  p: Array<RoundPart | CheckpointPart>;
}

/** A part to write, the group it belongs to and its estimated size. */
interface Piece {
  group: WalGroupStorage;
  part: RoundPart | CheckpointPart;
  bytes: number;
}

/** A membership remembered by setConfState: as of `index`. */
interface ConfAt {
  readonly index: number;
  readonly conf: ConfState;
}

/** Thrown by every write, persist() and collect() once a persist has failed. */
export class RaftWalBrokenError extends Error {
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.name = 'RaftWalBrokenError';
  }
}

/**
 * Which records the durable state of one group still needs, for the GC rule: the record that
 * last wrote each run of its entries above the compaction point, and the one holding its snapshot
 * data. Updated only from what was actually written (or replayed), never from memory-only changes.
 */
class Pins {
  /** spans[j]: entries from spans[j].from (to the next span's from − 1, or `last`) were last
   * written by record spans[j].w. Ascending in both. */
  private spans: Array<{ from: number; w: number }> = [];
  /** The record holding the snapshot data, or 0 (no data). */
  private snapW = 0;
  /** The durable last index. */
  private last = 0;

  /** The oldest record the group's state needs, or Infinity. */
  need(): number {
    const e = this.spans[0]?.w ?? Infinity;
    return this.snapW > 0 && this.snapW < e ? this.snapW : e;
  }

  spanCount(): number {
    return this.spans.length;
  }

  snapshot(index: number, dataW: number): void {
    this.spans = [];
    this.snapW = dataW;
    this.last = index;
  }

  compact(index: number): void {
    this.snapW = 0;
    if (this.last <= index) {
      this.last = index;
      this.spans = [];
    } else this.trim(index);
  }

  /** The log ends at `last` (a truncation). */
  truncate(last: number): void {
    let n = this.spans.length;
    while (n > 0 && this.spans[n - 1]!.from > last) n--;
    this.spans.length = n;
    this.last = last;
  }

  entries(from: number, count: number, w: number): void {
    let n = this.spans.length;
    while (n > 0 && this.spans[n - 1]!.from >= from) n--;
    this.spans.length = n;
    this.spans.push({ from, w });
    this.last = from + count - 1;
  }

  /** A checkpoint at record w: entries (index, last], rewritten there or not; data likewise. */
  checkpoint(index: number, last: number, hasData: boolean, rewritten: boolean, w: number): void {
    this.last = last;
    this.trim(index);
    let n = this.spans.length;
    while (n > 0 && this.spans[n - 1]!.from > last) n--;
    this.spans.length = n;
    if (rewritten) {
      this.spans = last > index ? [{ from: index + 1, w }] : [];
      this.snapW = hasData ? w : 0;
    } else if (!hasData) this.snapW = 0;
  }

  /** Forgets spans wholly at or below `index` (the compaction point). */
  trim(index: number): void {
    if (this.last <= index) {
      this.spans = [];
      return;
    }
    let drop = 0;
    while (drop + 1 < this.spans.length && this.spans[drop + 1]!.from <= index + 1) drop++;
    if (drop > 0) this.spans.splice(0, drop);
    const head = this.spans[0];
    if (head !== undefined && head.from <= index) head.from = index + 1;
  }

  setLast(last: number): void {
    this.last = last;
  }
}

/**
 * One group's Raft storage in a RaftWal. Reads are answered from memory. Writes change memory at
 * once and become durable with the next RaftWal.persist(); mirror LmdbStorage's write API, except
 * that compact() is the whole snapshot story: the node's state store is the snapshot.
 */
export class WalGroupStorage implements Storage {
  private hard: HardState = { term: 0, vote: 0, commit: 0 };
  /** The compaction point (or an installed snapshot's meta): the log holds (meta.index, last]. */
  private meta: SnapshotMeta = emptySnapshot().meta;
  /** An installed snapshot's data until compact() drops it; else empty. */
  private data: Uint8Array = EmptyData;
  /** Memberships remembered by setConfState, ascending, index ≥ meta.index. */
  private confs: ConfAt[] = [];
  /** ents[k].index = meta.index + 1 + k. */
  private ents: Entry[] = [];

  // What changed since the last persist (see RoundPart for how it is written).
  private pSnap: Snapshot | undefined;
  private pCompact = false;
  private pConfs = false;
  private pHard = false;
  /** The lowest entry index appended since the last persist, or Infinity. */
  private dirtyFrom = Infinity;

  /** @internal */
  readonly pins = new Pins();

  /** @internal Use RaftWal.group(g). */
  constructor(
    private readonly wal: RaftWal,
    /** The group number. */
    readonly group: number,
  ) {}

  // ---- reads (Storage) ------------------------------------------------------------------------

  initialState(): InitialState {
    return { hardState: this.hard, confState: this.conf() };
  }

  hardState(): HardState {
    return this.hard;
  }

  firstIndex(): number {
    return this.meta.index + 1;
  }

  lastIndex(): number {
    return this.meta.index + this.ents.length;
  }

  term(index: number): number {
    const off = this.meta.index;
    assert(index >= off && index <= this.lastIndex(), `term(${index}) within [${off}, ${this.lastIndex()}] (group ${this.group})`);
    return index === off ? this.meta.term : this.ents[index - off - 1]!.term;
  }

  entries(lo: number, hi: number, bytesMax: number): Entry[] {
    const off = this.meta.index;
    assert(lo > off && lo <= hi && hi <= this.lastIndex() + 1, `entries [${lo}, ${hi}) within [${off + 1}, ${this.lastIndex() + 1}) (group ${this.group})`);
    if (lo === hi) return [];
    return limitBytes(this.ents.slice(lo - off - 1, hi - off - 1), bytesMax);
  }

  snapshot(): Snapshot {
    return { meta: this.meta, data: this.data };
  }

  /** Whether the group has any state (a group that never ran has none). */
  hasState(): boolean {
    const h = this.hard;
    return this.meta.index > 0 || this.ents.length > 0 || h.term > 0 || h.vote !== 0 || h.commit > 0 || this.confs.length > 0;
  }

  // ---- writes (memory now, durable after RaftWal.persist()) -----------------------------------

  /** Founds the group with this membership if it has no state yet (see bootstrapSnapshot). */
  bootstrap(conf: ConfState): void {
    if (this.hasState()) return;
    this.applySnapshot(bootstrapSnapshot(conf));
    this.setHardState({ term: 1, vote: 0, commit: 1 });
  }

  setHardState(hs: HardState): void {
    this.wal.checkUsable();
    assert(whole(hs.term) && whole(hs.vote) && whole(hs.commit), 'hard state fields are whole numbers');
    assert(hs.term >= this.hard.term, `hard state term never decreases (${hs.term} < ${this.hard.term})`);
    assert(hs.term > this.hard.term || this.hard.vote === 0 || hs.vote === this.hard.vote, 'a vote never changes within a term');
    assert(hs.commit >= this.hard.commit, `commit never decreases (${hs.commit} < ${this.hard.commit})`);
    this.hard = { term: hs.term, vote: hs.vote, commit: hs.commit };
    this.pHard = true;
    this.wal.markDirty(this);
  }

  /** Appends entries, replacing any stored from entries[0].index on; entries the compaction
   * point already covers are skipped. */
  append(entries: readonly Entry[]): void {
    this.wal.checkUsable();
    const off = this.meta.index;
    let from = 0;
    while (from < entries.length && entries[from]!.index <= off) from++;
    if (from === entries.length) return;
    const first = entries[from]!.index;
    const last = this.lastIndex();
    assert(first <= last + 1, `append at ${first} leaves no gap after ${last} (group ${this.group})`);
    // Check everything before changing anything.
    let prevTerm = this.term(first - 1);
    for (let i = from; i < entries.length; i++) {
      const e = entries[i]!;
      assert(e.index === first + (i - from), `appended entries are consecutive (group ${this.group})`);
      assert(whole(e.term) && e.term >= 1 && e.term >= prevTerm, `terms never decrease along the log (entry ${e.index}: ${e.term} after ${prevTerm})`);
      assert(e.type === EntryType.Normal || e.type === EntryType.ConfChange, `entry ${e.index} has a known type`);
      assert(e.data instanceof Uint8Array, `entry ${e.index} carries bytes`);
      prevTerm = e.term;
    }
    // A committed entry is never replaced or removed: the new entries reach the top of the
    // committed stored prefix and agree with it there (log matching: then everywhere below).
    const top = Math.min(this.hard.commit, last);
    if (first <= top) {
      const newLast = first + (entries.length - from) - 1;
      assert(newLast >= top && entries[from + top - first]!.term === this.term(top), `append at ${first} would replace committed entry ${top} (group ${this.group})`);
    }
    this.ents.length = first - off - 1;
    for (let i = from; i < entries.length; i++) this.ents.push(entries[i]!);
    if (first < this.dirtyFrom) this.dirtyFrom = first;
    this.wal.markDirty(this);
  }

  /** Replaces everything with a snapshot from the leader: the log is emptied. */
  applySnapshot(s: Snapshot): void {
    this.wal.checkUsable();
    const m = s.meta;
    assert(whole(m.index) && whole(m.term), 'snapshot index and term are whole numbers');
    assert(m.index > this.meta.index, `snapshot ${m.index} is newer than ${this.meta.index}`);
    assert(s.data instanceof Uint8Array, 'snapshot data is bytes');
    this.meta = { index: m.index, term: m.term, conf: copyConf(m.conf) };
    this.data = s.data;
    this.ents = [];
    this.confs = [];
    this.pSnap = { meta: this.meta, data: s.data };
    this.pCompact = false;
    this.pConfs = false;
    this.dirtyFrom = Infinity;
    this.wal.markDirty(this);
  }

  /**
   * The caller's state machine holds everything up to `index` durably (so it is committed): the
   * entries up to it are dropped, and the snapshot becomes (index, term(index), membership as of
   * index) with empty data — the node builds a snapshot's data itself when it sends one. At the
   * current compaction point it only drops an installed snapshot's data; below it, nothing.
   */
  compact(index: number): void {
    this.wal.checkUsable();
    assert(whole(index), 'a compaction index is a whole number');
    if (index < this.meta.index) return;
    if (index === this.meta.index) {
      if (this.data.byteLength === 0) return;
      this.data = EmptyData;
      this.pCompact = true;
      this.wal.markDirty(this);
      return;
    }
    assert(index <= this.lastIndex(), `compaction to ${index} stays within the log (last ${this.lastIndex()}, group ${this.group})`);
    assert(index <= this.hard.commit, `compaction to ${index} stays within the committed log (commit ${this.hard.commit}, group ${this.group})`);
    const term = this.term(index);
    let conf = this.meta.conf;
    let folded = 0;
    for (const c of this.confs) {
      if (c.index > index) break;
      conf = c.conf;
      folded++;
    }
    if (folded > 0) {
      this.confs = this.confs.slice(folded);
      this.pConfs = true;
    }
    this.ents = this.ents.slice(index - this.meta.index);
    this.meta = { index, term, conf };
    this.data = EmptyData;
    this.pCompact = true;
    this.wal.markDirty(this);
  }

  /** Remembers membership as of an applied conf change at index (for a caller whose applied
   * state survives restarts). */
  setConfState(conf: ConfState, index: number): void {
    this.wal.checkUsable();
    const lastAt = this.confs[this.confs.length - 1];
    assert(whole(index) && index >= (lastAt?.index ?? this.meta.index), 'membership is remembered in log order');
    const c: ConfAt = { index, conf: copyConf(conf) };
    if (lastAt?.index === index) this.confs[this.confs.length - 1] = c;
    else this.confs.push(c);
    this.pConfs = true;
    this.wal.markDirty(this);
  }

  /** The index of the newest membership this log remembers (a conf change's, or the compaction point's). */
  confIndex(): number {
    return this.confs[this.confs.length - 1]?.index ?? this.meta.index;
  }

  /** Membership as of `index` (at or after the compaction point): what a snapshot there carries. */
  confAt(index: number): ConfState {
    assert(index >= this.meta.index, `membership is known from the compaction point (${this.meta.index}) on, not at ${index}`);
    let conf = this.meta.conf;
    for (const c of this.confs) {
      if (c.index > index) break;
      conf = c.conf;
    }
    return conf;
  }

  // ---- for RaftWal ----------------------------------------------------------------------------

  private conf(): ConfState {
    return this.confs[this.confs.length - 1]?.conf ?? this.meta.conf;
  }

  /** @internal The parts of the next round for this group (called for dirty groups only). */
  encodeRound(out: Piece[]): void {
    const last = this.lastIndex();
    assert(this.hard.commit <= last, `commit ${this.hard.commit} ≤ last index ${last} when persisted (group ${this.group})`);
    let part: RoundPart = { g: this.group };
    let bytes = PartOverheadBytes;
    if (this.pSnap !== undefined) {
      const m = this.pSnap.meta;
      // A compaction later in the round drops the data anyway.
      const data = this.pCompact ? EmptyData : this.pSnap.data;
      part.s = [m.index, m.term, [...m.conf.voters], [...m.conf.learners], data];
      bytes += data.byteLength + confBytes(m.conf);
    }
    if (this.pCompact) {
      part.k = encMeta(this.meta);
      bytes += confBytes(this.meta.conf);
    }
    if (this.pConfs) {
      part.c = this.confs.map(encConf);
      for (const c of this.confs) bytes += confBytes(c.conf);
    }
    const from = Math.max(this.dirtyFrom, this.meta.index + 1);
    if (from <= last) {
      const off = this.meta.index + 1;
      let chunk: EncEntry[] = [];
      let chunkFrom = from;
      for (let i = from; i <= last; i++) {
        const e = this.ents[i - off]!;
        const b = e.data.byteLength + EntryFramingBytes;
        if (chunk.length > 0 && bytes + b > RecordBytesTarget) {
          part.f = chunkFrom;
          part.e = chunk;
          out.push({ group: this, part, bytes });
          part = { g: this.group };
          bytes = PartOverheadBytes;
          chunk = [];
          chunkFrom = i;
        }
        chunk.push([e.term, e.type, e.data]);
        bytes += b;
      }
      part.f = chunkFrom;
      part.e = chunk;
    }
    if (this.pHard) part.h = [this.hard.term, this.hard.vote, this.hard.commit];
    part.l = last;
    out.push({ group: this, part, bytes });
  }

  /** @internal This group's part of a checkpoint; `rewrite`: with its entries and data. */
  encodeCheckpoint(rewrite: boolean): Piece {
    const part: CheckpointPart = { g: this.group, h: [this.hard.term, this.hard.vote, this.hard.commit], m: encMeta(this.meta), c: this.confs.map(encConf), l: this.lastIndex() };
    let bytes = PartOverheadBytes + confBytes(this.meta.conf);
    for (const c of this.confs) bytes += confBytes(c.conf);
    if (this.data.byteLength > 0) {
      if (rewrite) part.s = this.data;
      else part.d = 1;
    }
    if (rewrite && this.ents.length > 0) part.e = this.ents.map((e) => [e.term, e.type, e.data]);
    if (rewrite) bytes += this.heldBytes();
    return { group: this, part, bytes };
  }

  /** @internal Bytes of entries and snapshot data a checkpoint would rewrite. */
  heldBytes(): number {
    let n = this.data.byteLength;
    for (const e of this.ents) n += e.data.byteLength + EntryFramingBytes;
    return n;
  }

  /** @internal `part` of a round is durable in record w. */
  noteRound(part: RoundPart, w: number): void {
    if (part.s !== undefined) this.pins.snapshot(part.s[0], part.s[4].byteLength > 0 ? w : 0);
    if (part.k !== undefined) this.pins.compact(part.k[0]);
    if (part.e !== undefined && part.f !== undefined) this.pins.entries(part.f, part.e.length, w);
    if (part.l !== undefined) this.pins.truncate(part.l);
  }

  /** @internal `part` of a checkpoint is durable in record w. */
  noteCheckpoint(part: CheckpointPart, w: number): void {
    this.pins.checkpoint(part.m[0], part.l, part.d === 1 || part.s !== undefined, part.e !== undefined || part.s !== undefined, w);
  }

  /** @internal Everything changed so far is durable. */
  clearPending(): void {
    this.pSnap = undefined;
    this.pCompact = false;
    this.pConfs = false;
    this.pHard = false;
    this.dirtyFrom = Infinity;
  }

  /** @internal The state replay arrived at. */
  load(r: ReplayGroup): void {
    this.hard = r.hard;
    this.meta = r.meta;
    this.data = r.data;
    this.confs = r.confs;
    this.ents = r.run;
  }
}

/** A group's state while the log is replayed (see "Replay" at the top). */
class ReplayGroup {
  hard: HardState = { term: 0, vote: 0, commit: 0 };
  meta: SnapshotMeta = emptySnapshot().meta;
  data: Uint8Array = EmptyData;
  /** A checkpoint says the snapshot has data, and no replayed record held it. */
  dataMissing = false;
  confs: ConfAt[] = [];
  /** Consecutive entries; in strict replay always (meta.index, last]. */
  run: Entry[] = [];
  /** Appears in a checkpoint. */
  anchored = false;
  /** Where its newest record says its log ends; replay must arrive there (else records are missing). */
  expectedLast: number | undefined;

  constructor(
    readonly g: number,
    readonly pins: Pins,
    /** The record of its first part. */
    readonly firstW: number,
  ) {}

  hasState(): boolean {
    return this.meta.index > 0 || this.run.length > 0 || this.hard.term > 0 || this.hard.vote !== 0 || this.hard.commit > 0 || this.confs.length > 0;
  }

  last(): number {
    const top = this.run[this.run.length - 1];
    return top !== undefined ? top.index : this.meta.index;
  }

  private termAt(index: number): number | undefined {
    if (index === this.meta.index) return this.meta.term;
    const lo = this.run[0]?.index;
    return lo !== undefined && index >= lo && index <= this.last() ? this.run[index - lo]!.term : undefined;
  }

  /** Drops run entries at or below index. */
  private dropThrough(index: number): void {
    const lo = this.run[0]?.index;
    if (lo === undefined || lo > index) return;
    this.run = this.last() <= index ? [] : this.run.slice(index + 1 - lo);
  }

  round(p: DecodedRound, w: number, strict: boolean): void {
    const g = this.g;
    if (p.s !== undefined) {
      const m = p.s.meta;
      if (strict) assert(m.index > this.meta.index, `replay: group ${g}'s snapshot ${m.index} is newer than ${this.meta.index}`);
      this.meta = m;
      this.data = p.s.data;
      this.dataMissing = false;
      this.run = [];
      this.confs = [];
      this.pins.snapshot(m.index, p.s.data.byteLength > 0 ? w : 0);
    }
    if (p.k !== undefined) {
      // No check of k's term against the replayed log: an append later in the same round may
      // have replaced the entry at k.index. Memberships it folded come in c.
      const k = p.k;
      if (strict) assert(k.index >= this.meta.index, `replay: group ${g} compacts forward (${k.index} < ${this.meta.index})`);
      this.dropThrough(k.index);
      this.meta = k;
      this.data = EmptyData;
      this.dataMissing = false;
      this.pins.compact(k.index);
    }
    if (p.c !== undefined) this.confs = p.c;
    if (p.e !== undefined && p.e.length > 0) {
      let ents = p.e;
      const f = ents[0]!.index;
      if (strict) assert(f > this.meta.index && f <= this.last() + 1, `replay: group ${g}'s entries from ${f} follow its log (${this.meta.index}, ${this.last()}]`);
      let skip = 0;
      while (skip < ents.length && ents[skip]!.index <= this.meta.index) skip++;
      if (skip > 0) ents = ents.slice(skip);
      if (ents.length > 0) {
        const from = ents[0]!.index;
        const lo = this.run[0]?.index ?? this.meta.index + 1;
        if (from >= lo && from <= this.last() + 1) {
          this.run.length = from - lo;
          for (const e of ents) this.run.push(e);
        } else this.run = ents; // lenient only: its predecessors are gone with deleted segments
      }
      this.pins.entries(f, p.e.length, w);
    }
    if (p.h !== undefined) {
      const h = p.h;
      if (strict) assert(h.term >= this.hard.term && h.commit >= this.hard.commit, `replay: group ${g}'s term and commit never decrease`);
      this.hard = h;
    }
    if (p.l !== undefined) {
      const l = p.l;
      const lo = this.run[0]?.index;
      if (lo !== undefined && this.last() > l) this.run.length = Math.max(0, l - lo + 1);
      if (strict) {
        assert(this.last() === l, `replay: group ${g}'s log ends at ${l} (replayed: ${this.last()})`);
        const t = this.termAt(l);
        assert(t !== undefined && t >= this.meta.term, `replay: group ${g}'s last term is known and ≥ the compaction point's`);
      }
      this.pins.truncate(l);
      this.expectedLast = l;
    }
  }

  checkpoint(p: DecodedCheckpoint, w: number, strict: boolean): void {
    const g = this.g;
    const m = p.m;
    const hasData = p.d || p.s !== undefined;
    if (strict) {
      assert(isHardStateEqual(this.hard, p.h), `replay: group ${g}'s checkpoint hard state equals the replayed one`);
      assert(this.meta.index === m.index && this.meta.term === m.term && confEqual(this.meta.conf, m.conf), `replay: group ${g}'s checkpoint compaction point equals the replayed one`);
      assert(this.last() === p.l && (this.run.length === 0 || this.run[0]!.index === m.index + 1), `replay: group ${g}'s checkpoint log (${m.index}, ${p.l}] equals the replayed one`);
      assert(this.confs.length === p.c.length && this.confs.every((c, i) => c.index === p.c[i]!.index && confEqual(c.conf, p.c[i]!.conf)), `replay: group ${g}'s checkpoint memberships equal the replayed ones`);
      assert(hasData === this.data.byteLength > 0, `replay: group ${g}'s checkpoint agrees on snapshot data`);
    }
    if (this.meta.index !== m.index) this.data = EmptyData;
    this.hard = p.h;
    this.meta = m;
    this.confs = p.c;
    this.dropThrough(m.index);
    const lo = this.run[0]?.index;
    if (lo !== undefined && this.last() > p.l) this.run.length = Math.max(0, p.l - lo + 1);
    if (p.e !== undefined) this.run = p.e;
    if (p.s !== undefined) {
      this.data = p.s;
      this.dataMissing = false;
    } else if (p.d) this.dataMissing = this.data.byteLength === 0;
    else {
      this.data = EmptyData;
      this.dataMissing = false;
    }
    this.pins.checkpoint(m.index, p.l, hasData, p.e !== undefined || p.s !== undefined, w);
    this.anchored = true;
    this.expectedLast = p.l;
  }

  /** Checks the state replay arrived at (see "Replay" at the top). */
  finish(strict: boolean, firstCheckpointW: number): void {
    const g = this.g;
    if (!strict) assert(this.anchored || this.firstW > firstCheckpointW, `replay: group ${g} has records before the first checkpoint the log holds but is in no checkpoint`);
    const lo = this.run[0]?.index;
    assert(lo === undefined || lo === this.meta.index + 1, `replay: group ${g}'s entries ${this.meta.index + 1}..${(lo ?? 0) - 1} are missing from the log`);
    assert(!this.dataMissing, `replay: group ${g}'s snapshot data at ${this.meta.index} is missing from the log`);
    assert(this.expectedLast === undefined || this.last() === this.expectedLast, `replay: group ${g}'s log ends at ${this.expectedLast} but its entries after ${this.last()} are missing from the log`);
    this.pins.setLast(this.last());
    this.pins.trim(this.meta.index);
  }
}

interface DecodedRound {
  g: number;
  s?: Snapshot;
  k?: SnapshotMeta;
  c?: ConfAt[];
  e?: Entry[];
  h?: HardState;
  l?: number;
}

interface DecodedCheckpoint {
  g: number;
  h: HardState;
  m: SnapshotMeta;
  c: ConfAt[];
  l: number;
  d: boolean;
  s?: Uint8Array;
  e?: Entry[];
}

/**
 * The Raft state of many groups in one SegmentLog (see the top of this file). One instance per
 * worker thread; not thread-safe.
 */
export class RaftWal {
  private readonly log: SegmentLog;
  private readonly segmentBytesMax: number;
  private readonly packr = new Packr({ useRecords: false });
  private readonly byGroup = new Map<number, WalGroupStorage>();
  private readonly dirty = new Set<WalGroupStorage>();
  private broken: RaftWalBrokenError | undefined;
  private closed = false;
  /** The first record of the newest checkpoint, or 0. */
  private lastCheckpoint = 0;
  /** Its bytes. */
  private checkpointBytes = 0;
  /** Bytes appended since it. */
  private sinceCheckpoint = 0;

  private constructor(dir: string, segmentBytesMax: number) {
    assert(whole(segmentBytesMax) && segmentBytesMax > 0, 'segmentBytesMax is a positive whole number');
    this.segmentBytesMax = segmentBytesMax;
    this.log = SegmentLog.open(dir, { segmentBytesMax });
  }

  /** Opens (or creates) the WAL in `dir` and replays it into memory. */
  static open(dir: string, opts: { segmentBytesMax?: number } = {}): RaftWal {
    const wal = new RaftWal(dir, opts.segmentBytesMax ?? SegmentBytesMaxDefault);
    try {
      wal.replay();
    } catch (err) {
      wal.log.close();
      throw err;
    }
    return wal;
  }

  /** The storage of group g, created empty on first use (emptySnapshot(), empty hard state). */
  group(g: number): WalGroupStorage {
    assert(Number.isSafeInteger(g) && g >= 0 && g < GroupsMax, `group numbers are whole numbers below ${GroupsMax}, got ${g}`);
    let s = this.byGroup.get(g);
    if (s === undefined) {
      s = new WalGroupStorage(this, g);
      this.byGroup.set(g, s);
    }
    return s;
  }

  /** Groups that have any state, ascending (for start-up). */
  groups(): number[] {
    const out: number[] = [];
    for (const [g, s] of this.byGroup) if (s.hasState()) out.push(g);
    return out.sort((a, b) => a - b);
  }

  /**
   * Writes every change made since the last persist, of all groups, as one SegmentLog append (one
   * write, one fdatasync; a checkpoint joins it when one is due). Synchronous: durable on return.
   * Returns the number of groups written; 0 means nothing to do and no I/O. A throw breaks the WAL.
   */
  persist(): number {
    return this.writeDirty((payloads) => this.log.append(payloads));
  }

  /**
   * As persist(), but the fdatasync runs off this thread: the round is written when this returns
   * and durable once the promise resolves (undefined: nothing to write). A rejection breaks the
   * WAL as a failed persist() does. Until it settles, nothing else may persist, collect or close.
   */
  persistDeferred(): Promise<void> | undefined {
    let durable: Promise<void> | undefined;
    const groups = this.writeDirty((payloads) => {
      const r = this.log.appendDeferred(payloads);
      durable = r.durable.catch((err: unknown) => {
        throw this.breakBy(err);
      });
      return r.first;
    });
    if (groups === 0) return undefined;
    return durable!;
  }

  /** Resolves once no deferred persist is in flight (however it ended): then close() may run. */
  idle(): Promise<void> {
    return this.log.idle();
  }

  private breakBy(err: unknown): RaftWalBrokenError {
    this.broken ??= new RaftWalBrokenError(`raft WAL: persist failed (${String(err)}); what it wrote may or may not be on disk, and after a failed fdatasync a retry cannot be trusted: the WAL refuses further writes, restart to recover from the log`, err);
    return this.broken;
  }

  /** Encodes every group's changes since the last persist and hands them to `append`. */
  private writeDirty(append: (payloads: Uint8Array[]) => number): number {
    this.checkUsable();
    if (this.dirty.size === 0) return 0;
    const dirty = [...this.dirty];
    const round: Piece[] = [];
    for (const s of dirty) s.encodeRound(round);
    let roundBytes = 0;
    for (const p of round) roundBytes += p.bytes;
    const units: Array<{ t: number; pieces: Piece[] }> = [{ t: UnitRound, pieces: round }];
    if (this.sinceCheckpoint + roundBytes >= Math.max(this.segmentBytesMax / 2, 2 * this.checkpointBytes)) {
      units.push({ t: UnitCheckpoint, pieces: this.encodeCheckpoint() });
    }
    // Units into records of about RecordBytesTarget.
    const records: Array<{ t: number; first: boolean; pieces: Piece[] }> = [];
    const encoded: WalRecord[] = [];
    for (const u of units) {
      const start = records.length;
      let cur: Piece[] = [];
      let curBytes = 0;
      for (const p of u.pieces) {
        if (cur.length > 0 && curBytes + p.bytes > RecordBytesTarget) {
          records.push({ t: u.t, first: records.length === start, pieces: cur });
          cur = [];
          curBytes = 0;
        }
        cur.push(p);
        curBytes += p.bytes;
      }
      records.push({ t: u.t, first: records.length === start, pieces: cur });
      const n = records.length - start;
      for (let k = 0; k < n; k++) encoded.push({ v: FormatVersion, t: u.t, k, n, p: records[start + k]!.pieces.map((p) => p.part) });
    }
    // pack() returns a view of a buffer it reuses: with more than one record, each is copied out
    // before the next is packed (SegmentLog.append copies the lone one at once).
    const payloads = encoded.map((rec) => (encoded.length === 1 ? this.packr.pack(rec) : Buffer.from(this.packr.pack(rec))));
    for (const p of payloads) assert(p.byteLength <= RecordBytesMax, `a raft WAL record stays within ${RecordBytesMax} bytes (got ${p.byteLength})`);
    let first: number;
    try {
      first = append(payloads);
    } catch (err) {
      throw this.breakBy(err);
    }
    let w = first;
    let bytes = 0;
    for (let i = 0; i < records.length; i++, w++) {
      const r = records[i]!;
      const recBytes = payloads[i]!.byteLength + RecordHeaderBytes;
      if (r.t === UnitRound) {
        for (const p of r.pieces) p.group.noteRound(p.part as RoundPart, w);
        bytes += recBytes;
      } else {
        if (r.first) {
          this.lastCheckpoint = w;
          this.checkpointBytes = 0;
        }
        for (const p of r.pieces) p.group.noteCheckpoint(p.part as CheckpointPart, w);
        this.checkpointBytes += recBytes;
      }
    }
    this.sinceCheckpoint = units.length > 1 ? 0 : this.sinceCheckpoint + bytes;
    for (const s of dirty) s.clearPending();
    this.dirty.clear();
    return dirty.length;
  }

  /**
   * Deletes the log segments no group needs (the GC rule at the top): cheap, no fsync; call after
   * compactions. What it can delete depends on the checkpoints persist() writes.
   */
  collect(): void {
    this.checkUsable();
    if (this.lastCheckpoint === 0) return;
    let upTo = this.lastCheckpoint - 1;
    for (const s of this.byGroup.values()) upTo = Math.min(upTo, s.pins.need() - 1);
    if (upTo >= 1) this.log.truncatePrefix(upTo);
  }

  /** For tests and metrics: the records held, the last checkpoint, the oldest record pinned. */
  stats(): { firstRecord: number | undefined; nextRecord: number; lastCheckpoint: number; oldestNeeded: number; spans: number } {
    let oldest = Infinity;
    let spans = 0;
    for (const s of this.byGroup.values()) {
      oldest = Math.min(oldest, s.pins.need());
      spans += s.pins.spanCount();
    }
    return { firstRecord: this.log.firstIndex, nextRecord: this.log.nextIndex, lastCheckpoint: this.lastCheckpoint, oldestNeeded: oldest, spans };
  }

  /** Closes the log. Changes not persisted are lost, as in a crash. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.log.close();
  }

  /** @internal */
  markDirty(s: WalGroupStorage): void {
    this.dirty.add(s);
  }

  /** @internal Throws once a persist has failed, or after close(). */
  checkUsable(): void {
    if (this.broken !== undefined) throw new RaftWalBrokenError(`raft WAL is broken: an earlier persist failed (${String(this.broken.cause)}); restart to recover from the log`, this.broken);
    assert(!this.closed, 'the raft WAL is open');
  }

  private encodeCheckpoint(): Piece[] {
    const prev = this.lastCheckpoint;
    const rewrite = new Set<WalGroupStorage>();
    if (prev > 0) {
      // Groups that pin records older than the previous checkpoint, the oldest first.
      const pinning = [...this.byGroup.values()].filter((s) => s.pins.need() < prev).sort((a, b) => a.pins.need() - b.pins.need());
      let budget = Math.min(RewriteBytesMax, Math.floor(this.segmentBytesMax / 2));
      for (const s of pinning) {
        const b = s.heldBytes();
        if (b > budget) continue;
        rewrite.add(s);
        budget -= b;
      }
    }
    const out: Piece[] = [];
    for (const s of this.byGroup.values()) if (s.hasState()) out.push(s.encodeCheckpoint(rewrite.has(s)));
    return out;
  }

  private replay(): void {
    let first = this.log.firstIndex;
    while (first !== undefined) {
      // The whole history is there until GC deletes the first segment.
      const gap = this.replayFrom(first, first === 1);
      if (gap === undefined) return;
      // Record indexes jump: segments collect() deleted came back after a crash (an unlink is
      // not durable until the directory is synced), but not all of them. The log proper starts
      // after the gap, where the segments collect() kept begin: replay again from there.
      this.byGroup.clear();
      this.lastCheckpoint = 0;
      this.checkpointBytes = 0;
      this.sinceCheckpoint = 0;
      first = gap;
    }
  }

  /** Replays records from `first` on; returns the index after a gap if it finds one. */
  private replayFrom(first: number, strict: boolean): number | undefined {
    const groups = new Map<number, ReplayGroup>();
    const get = (g: number, w: number): ReplayGroup => {
      let r = groups.get(g);
      if (r === undefined) {
        assert(g < GroupsMax, `replay: group number ${g} below ${GroupsMax}`);
        r = new ReplayGroup(g, this.group(g).pins, w);
        groups.set(g, r);
      }
      return r;
    };
    let unit: { t: number; n: number; w: number; recs: Array<{ rec: WalRecord; w: number }>; bytes: number } | undefined;
    let firstCheckpoint = Infinity;
    let from = first;
    for (;;) {
      const batch = this.log.read(from, ReadBatchRecords);
      if (batch.length === 0) break;
      for (const { index, payload } of batch) {
        assert(index >= from, `replay: record indexes ascend (${index} after ${from - 1})`);
        if (index > from) return index;
        from = index + 1;
        const rec = decodeRecord(this.packr.unpack(payload), index);
        const bytes = payload.byteLength + RecordHeaderBytes;
        if (rec.k === 0) {
          // A unit left incomplete by a crash (never acknowledged) is dropped.
          unit = { t: rec.t, n: rec.n, w: index, recs: [], bytes: 0 };
        } else {
          assert(unit !== undefined && unit.t === rec.t && unit.n === rec.n && unit.recs.length === rec.k, `replay: record ${index} continues the unit before it`);
        }
        unit.recs.push({ rec, w: index });
        unit.bytes += bytes;
        if (unit.recs.length < unit.n) continue;
        if (unit.t === UnitRound) {
          for (const { rec: r, w } of unit.recs) for (const p of r.p) get(p.g, w).round(decodeRound(p as RoundPart), w, strict);
          this.sinceCheckpoint += unit.bytes;
        } else {
          const seen = new Set<number>();
          for (const { rec: r, w } of unit.recs) {
            for (const p of r.p) {
              get(p.g, w).checkpoint(decodeCheckpoint(p as CheckpointPart), w, strict);
              seen.add(p.g);
            }
          }
          if (strict) for (const [g, r] of groups) assert(seen.has(g) || !r.hasState(), `replay: checkpoint at ${unit.w} holds group ${g}`);
          if (firstCheckpoint === Infinity) firstCheckpoint = unit.w;
          this.lastCheckpoint = unit.w;
          this.checkpointBytes = unit.bytes;
          this.sinceCheckpoint = 0;
        }
        unit = undefined;
      }
    }
    for (const [g, r] of groups) {
      if (!r.hasState()) continue;
      r.finish(strict, firstCheckpoint);
      this.group(g).load(r);
    }
    return undefined;
  }
}

// ---- encoding ---------------------------------------------------------------------------------

function whole(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

function copyConf(c: ConfState): ConfState {
  return { voters: [...c.voters], learners: [...c.learners] };
}

function confEqual(a: ConfState, b: ConfState): boolean {
  return a.voters.length === b.voters.length && a.learners.length === b.learners.length && a.voters.every((v, i) => v === b.voters[i]) && a.learners.every((v, i) => v === b.learners[i]);
}

function confBytes(c: ConfState): number {
  return 16 + 9 * (c.voters.length + c.learners.length);
}

function encMeta(m: SnapshotMeta): EncMeta {
  return [m.index, m.term, [...m.conf.voters], [...m.conf.learners]];
}

function encConf(c: ConfAt): EncConf {
  return [c.index, [...c.conf.voters], [...c.conf.learners]];
}

// Decoding checks shapes: a record passed its CRC, so a bad shape is a bug or a foreign format.

function num(x: unknown, what: string): number {
  assert(typeof x === 'number' && whole(x), `replay: ${what} is a whole number`);
  return x;
}

function list(x: unknown, what: string): unknown[] {
  assert(Array.isArray(x), `replay: ${what} is a list`);
  return x;
}

/** A copy in a Uint8Array of its own (a view would keep the whole record alive). */
function bytes(x: unknown, what: string): Uint8Array {
  assert(x instanceof Uint8Array, `replay: ${what} is bytes`);
  if (x.byteLength === 0) return EmptyData;
  const out = new Uint8Array(x.byteLength);
  out.set(x);
  return out;
}

function decodeIds(x: unknown, what: string): number[] {
  return list(x, what).map((v) => num(v, what));
}

function decodeMeta(x: unknown, what: string): SnapshotMeta {
  const a = list(x, what);
  return { index: num(a[0], `${what} index`), term: num(a[1], `${what} term`), conf: { voters: decodeIds(a[2], `${what} voters`), learners: decodeIds(a[3], `${what} learners`) } };
}

function decodeConfs(x: unknown): ConfAt[] {
  return list(x, 'memberships').map((c) => {
    const a = list(c, 'membership');
    return { index: num(a[0], 'membership index'), conf: { voters: decodeIds(a[1], 'voters'), learners: decodeIds(a[2], 'learners') } };
  });
}

function decodeHard(x: unknown): HardState {
  const a = list(x, 'hard state');
  return { term: num(a[0], 'term'), vote: num(a[1], 'vote'), commit: num(a[2], 'commit') };
}

function decodeEntries(from: number, x: unknown): Entry[] {
  return list(x, 'entries').map((v, k) => {
    const a = list(v, 'entry');
    const type = num(a[1], 'entry type');
    assert(type === EntryType.Normal || type === EntryType.ConfChange, 'replay: entry type is known');
    return { term: num(a[0], 'entry term'), index: from + k, type, data: bytes(a[2], 'entry data') };
  });
}

function decodeRecord(x: unknown, index: number): WalRecord {
  assert(typeof x === 'object' && x !== null, `replay: record ${index} is a map`);
  const r = x as Partial<WalRecord>;
  assert(r.v === FormatVersion, `replay: record ${index} has format version ${FormatVersion} (got ${String(r.v)})`);
  assert(r.t === UnitRound || r.t === UnitCheckpoint, `replay: record ${index} is a round or a checkpoint`);
  const n = num(r.n, 'unit size');
  const k = num(r.k, 'unit position');
  assert(k < n, `replay: record ${index} is within its unit`);
  const p = list(r.p, 'parts');
  for (const part of p) assert(typeof part === 'object' && part !== null && num((part as { g: unknown }).g, 'group') < GroupsMax, `replay: record ${index} holds group parts`);
  return { v: r.v, t: r.t, k, n, p: p as WalRecord['p'] };
}

function decodeRound(p: RoundPart): DecodedRound {
  const out: DecodedRound = { g: p.g };
  if (p.s !== undefined) out.s = { meta: decodeMeta(p.s.slice(0, 4), 'snapshot'), data: bytes(p.s[4], 'snapshot data') };
  if (p.k !== undefined) out.k = decodeMeta(p.k, 'compaction point');
  if (p.c !== undefined) out.c = decodeConfs(p.c);
  if (p.e !== undefined) out.e = decodeEntries(num(p.f, 'first entry index'), p.e);
  if (p.h !== undefined) out.h = decodeHard(p.h);
  if (p.l !== undefined) out.l = num(p.l, 'last index');
  return out;
}

function decodeCheckpoint(p: CheckpointPart): DecodedCheckpoint {
  const m = decodeMeta(p.m, 'checkpoint meta');
  const l = num(p.l, 'checkpoint last index');
  assert(l >= m.index, `replay: checkpoint of group ${p.g} has last index ${l} ≥ ${m.index}`);
  const out: DecodedCheckpoint = { g: p.g, h: decodeHard(p.h), m, c: decodeConfs(p.c), l, d: p.d === 1 };
  if (p.s !== undefined) out.s = bytes(p.s, 'checkpoint snapshot data');
  if (p.e !== undefined) {
    out.e = decodeEntries(m.index + 1, p.e);
    assert(out.e.length === l - m.index, `replay: checkpoint of group ${p.g} rewrites entries ${m.index + 1}..${l}`);
  }
  return out;
}
