import type { Database } from 'lmdb';
import { assert } from '../../runtime/errors.js';

export type KeyPart = string | number;
export type Key = KeyPart[];

/**
 * A key/value table as the state view uses it. Range reads always fix every key part but the
 * last (`prefix`) and bound the last one: [from, to), `to` undefined meaning no upper bound.
 */
export interface Table<V> {
  get(key: Key): V | undefined;
  put(key: Key, value: V): void;
  remove(key: Key): void;
  range(prefix: Key, from: KeyPart, to: KeyPart | undefined, limit: number): Array<{ last: KeyPart; value: V }>;
  /** Every key in [start, end) that holds a value (a whole group's range; snapshots only). */
  keysFrom(start: Key, end: Key): Key[];
}

function lmdbKeys(db: Database<unknown, Key>, start: Key, end: Key): Key[] {
  const out: Key[] = [];
  for (const key of db.getKeys({ start, end })) out.push(Array.isArray(key) ? (key as Key) : [key as KeyPart]);
  return out;
}

function lmdbRange<V>(db: Database<V, Key>, prefix: Key, from: KeyPart, to: KeyPart | undefined, limit: number): Array<{ last: KeyPart; value: V }> {
  const out: Array<{ last: KeyPart; value: V }> = [];
  if (limit <= 0) return out;
  // An open end is only meaningful for a table whose keys are one part (the id index).
  assert(to !== undefined || prefix.length === 0, 'open-ended ranges only over one-part keys');
  const range = to === undefined ? db.getRange({ start: [from], limit }) : db.getRange({ start: [...prefix, from], end: [...prefix, to], limit });
  for (const { key, value } of range) {
    // ordered-binary reads a one-part key back as the bare part, not as an array.
    const parts: Key = Array.isArray(key) ? key : [key as KeyPart];
    out.push({ last: parts[prefix.length]!, value });
  }
  return out;
}

/** Reads and writes LMDB directly, inside a write transaction (the state writer's view). */
export class DirectTable<V> implements Table<V> {
  constructor(private readonly db: Database<V, Key>) {}
  get(key: Key): V | undefined {
    return this.db.get(key);
  }
  put(key: Key, value: V): void {
    this.db.putSync(key, value);
  }
  remove(key: Key): void {
    this.db.removeSync(key);
  }
  range(prefix: Key, from: KeyPart, to: KeyPart | undefined, limit: number): Array<{ last: KeyPart; value: V }> {
    return lmdbRange(this.db, prefix, from, to, limit);
  }
  keysFrom(start: Key, end: Key): Key[] {
    return lmdbKeys(this.db as Database<unknown, Key>, start, end);
  }
}

interface Slot<V> {
  key: Key;
  /** undefined: removed. */
  value: V | undefined;
  gen: number;
}

/** A write kept in memory until the state store holds it (the store applies the same command). */
export interface PendingWrite {
  table: BufferedTable<unknown>;
  slot: Slot<unknown>;
  gen: number;
}

/**
 * Collects the writes of applied commands. They stay readable from memory (over what LMDB has
 * committed) until the state store, which applies the same commands, holds them; then they are
 * released. `size` bounds it.
 */
export class WriteBuffer {
  private pending: PendingWrite[] = [];
  private gen = 0;
  /** Slots held in memory across all tables. */
  size = 0;

  nextGen(): number {
    return ++this.gen;
  }

  record(w: PendingWrite): void {
    this.pending.push(w);
  }

  /** Hands over the writes recorded so far, to be released together later. */
  take(): PendingWrite[] {
    const taken = this.pending;
    this.pending = [];
    return taken;
  }

  /** The state store holds these: drop each from memory unless written again since. */
  release(writes: PendingWrite[]): void {
    for (const w of writes) if (w.slot.gen === w.gen) w.table.drop(w.slot);
  }
}

const encodePart = (p: KeyPart) => (typeof p === 'number' ? `n${p}` : `s${p}`);
const encodePrefix = (prefix: Key) => prefix.map(encodePart).join('\u0001');
const compareParts = (a: KeyPart, b: KeyPart) => (typeof a === 'number' && typeof b === 'number' ? a - b : a < b ? -1 : a > b ? 1 : 0);
/** Keys compared part by part, a shorter prefix first (as the ranges here use them: [g] to [g + 1]). */
function compareKeys(a: Key, b: Key): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const c = compareParts(a[i]!, b[i]!);
    if (c !== 0) return c;
  }
  return a.length - b.length;
}

/** A table whose writes go to a WriteBuffer first; reads see the buffer over LMDB. */
export class BufferedTable<V> implements Table<V> {
  private readonly byPrefix = new Map<string, Map<KeyPart, Slot<V>>>();

  constructor(
    readonly db: Database<V, Key>,
    private readonly buffer: WriteBuffer,
  ) {}

  private slot(key: Key): Slot<V> | undefined {
    return this.byPrefix.get(encodePrefix(key.slice(0, -1)))?.get(key[key.length - 1]!);
  }

  get(key: Key): V | undefined {
    const s = this.slot(key);
    return s ? s.value : this.db.get(key);
  }

  put(key: Key, value: V): void {
    this.set(key, value);
  }

  remove(key: Key): void {
    this.set(key, undefined);
  }

  private set(key: Key, value: V | undefined): void {
    assert(key.length >= 1, 'buffered keys have at least one part');
    const prefix = encodePrefix(key.slice(0, -1));
    let slots = this.byPrefix.get(prefix);
    if (!slots) this.byPrefix.set(prefix, (slots = new Map()));
    const last = key[key.length - 1]!;
    let s = slots.get(last);
    if (!s) {
      slots.set(last, (s = { key, value, gen: 0 }));
      this.buffer.size++;
    }
    s.value = value;
    s.gen = this.buffer.nextGen();
    this.buffer.record({ table: this as BufferedTable<unknown>, slot: s as Slot<unknown>, gen: s.gen });
  }

  drop(slot: Slot<V>): void {
    const prefix = encodePrefix(slot.key.slice(0, -1));
    const slots = this.byPrefix.get(prefix);
    const last = slot.key[slot.key.length - 1]!;
    if (slots?.get(last) !== slot) return; // dropped before and written anew: not ours to drop
    slots.delete(last);
    this.buffer.size--;
    if (slots.size === 0) this.byPrefix.delete(prefix);
  }

  keysFrom(start: Key, end: Key): Key[] {
    // Rare (a snapshot's install): every buffered slot is looked at.
    const live = new Map<string, Key>();
    for (const key of lmdbKeys(this.db as Database<unknown, Key>, start, end)) live.set(encodePrefix(key), key);
    for (const slots of this.byPrefix.values()) {
      for (const s of slots.values()) {
        if (compareKeys(s.key, start) < 0 || compareKeys(s.key, end) >= 0) continue;
        if (s.value === undefined) live.delete(encodePrefix(s.key));
        else live.set(encodePrefix(s.key), s.key);
      }
    }
    return [...live.values()];
  }

  range(prefix: Key, from: KeyPart, to: KeyPart | undefined, limit: number): Array<{ last: KeyPart; value: V }> {
    const slots = this.byPrefix.get(encodePrefix(prefix));
    if (!slots) return lmdbRange(this.db, prefix, from, to, limit);
    const inRange = [...slots.entries()].filter(([last]) => compareParts(last, from) >= 0 && (to === undefined || compareParts(last, to) < 0));
    const removed = inRange.filter(([, s]) => s.value === undefined).length;
    // Every buffered removal can hide one committed entry: read that many more from LMDB.
    const merged = new Map<KeyPart, V>();
    for (const { last, value } of lmdbRange(this.db, prefix, from, to, limit + removed)) merged.set(last, value);
    for (const [last, s] of inRange) {
      if (s.value === undefined) merged.delete(last);
      else merged.set(last, s.value);
    }
    return [...merged.entries()]
      .sort(([a], [b]) => compareParts(a, b))
      .slice(0, limit)
      .map(([last, value]) => ({ last, value }));
  }
}
