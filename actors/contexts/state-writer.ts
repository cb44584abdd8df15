import type { LmdbStore } from './lmdb-store.js';
import type { LogApplier } from './log-applier.js';
import type { PendingWrite } from './tables.js';

/** What a state writer tells the host; M is how far the host's writes reach (a log index). */
export interface StateWriterEvents<M = number> {
  /** The state store holds (committed) every command up to mark. */
  persisted(mark: M): void;
  /** …and has it on disk: the log may forget up to mark. */
  durable(mark: M): void;
  /** The state store cannot be written. */
  failed(err: Error): void;
}

/** Keeps the state store following the command log, on some thread. */
export interface StateWriter {
  /**
   * The host has applied (and logged) every command up to index; `writes` are the buffered
   * writes of the commands since the previous call, as they stand now (called synchronously
   * after those commands were applied, before any later one is).
   */
  upTo(index: number, writes: readonly PendingWrite[]): void;
  /** Resolves once the store holds every command asked for, on disk. */
  close(): Promise<void>;
}

export type StateWriterFactory = (events: StateWriterEvents) => StateWriter | Promise<StateWriter>;

/**
 * How a commit records how far the store has come, in the same transaction as its writes:
 * `put` issues the stamp (in the asynchronous batch of this event turn); `merge` folds a later
 * mark into an earlier one that has not been committed yet.
 */
export interface Stamper<M> {
  put(mark: M): Promise<boolean>;
  merge(earlier: M, later: M): M;
}

/** The stamp of a command log: the index of its last command in the store. */
export function logStamper(store: LmdbStore, log: number): Stamper<number> {
  return { put: (index) => store.putApplied(log, index), merge: (_, later) => later };
}

const ignore = () => {};

/**
 * Writes the host's buffered writes to the state store itself, as lmdb-js asynchronous writes:
 * they are encoded here, then inserted and committed by lmdb-js's own write thread, all writes
 * of a commit issued in one event turn (one transaction) with the applied index of their last
 * command (so the store never holds half a command, and recovery knows where to resume).
 * Nothing is applied twice: the values are the ones apply computed. The default.
 *
 * Commits are issued at most every `commitIntervalMs` and one at a time: the next waits until
 * the previous one has succeeded, so a failed commit can never be followed by a later one whose
 * applied stamp would claim the writes it lost. After a failure nothing more is written; the
 * host refuses writes, and the next start applies the command log from the last good stamp.
 */
export class DirectStateWriter<M = number> {
  /** The commit in flight, if any. */
  private inflight: Promise<void> | undefined;
  /** The store has committed every command up to here (persisted <= the host's applied). */
  private persistedMark: M | undefined;
  /** An fsync is in flight. */
  private syncing = false;
  private failed = false;
  /** Writes handed over since the last commit, oldest first, and the mark they reach. */
  private waiting: Array<readonly PendingWrite[]> = [];
  private waitingMark: M | undefined;
  /** Cancels the scheduled commit, while one is scheduled. */
  private cancel: (() => void) | undefined;

  constructor(
    private readonly store: LmdbStore,
    private readonly stamper: Stamper<M>,
    private readonly events: StateWriterEvents<M>,
    /** Commits at most this often (0: at the end of every event turn). */
    private readonly commitIntervalMs = 0,
  ) {}

  upTo(mark: M, writes: readonly PendingWrite[]): void {
    if (this.failed) return;
    this.waiting.push(writes);
    this.waitingMark = this.waitingMark === undefined ? mark : this.stamper.merge(this.waitingMark, mark);
    this.schedule();
  }

  private schedule(): void {
    if (this.cancel !== undefined || this.inflight !== undefined || this.waiting.length === 0) return;
    if (this.commitIntervalMs > 0) {
      const t = setTimeout(() => this.commit(), this.commitIntervalMs);
      this.cancel = () => clearTimeout(t);
    } else {
      const t = setImmediate(() => this.commit());
      this.cancel = () => clearImmediate(t);
    }
  }

  private commit(): void {
    this.cancel = undefined;
    if (this.failed || this.waiting.length === 0) return;
    const mark = this.waitingMark!;
    const batches = this.waiting;
    this.waiting = [];
    this.waitingMark = undefined;
    let stamped: Promise<boolean>;
    try {
      for (const writes of batches) {
        for (const w of writes) {
          // A slot written again by a later command holds that command's value (it is in this
          // commit too): its last write is the one to store.
          if (w.slot.gen !== w.gen) continue;
          const db = w.table.db;
          const done = w.slot.value === undefined ? db.remove(w.slot.key) : db.put(w.slot.key, w.slot.value);
          done.catch(ignore); // the applied stamp below is in the same transaction and reports it
        }
      }
      stamped = this.stamper.put(mark);
    } catch (err) {
      // An encoding error or a closed store, thrown before anything was issued for the stamp.
      this.fail(err);
      return;
    }
    this.inflight = stamped.then(
      () => {
        this.inflight = undefined;
        if (this.failed) return;
        this.persistedMark = mark;
        this.events.persisted(mark);
        this.sync();
        this.schedule();
      },
      (err: unknown) => {
        this.inflight = undefined;
        this.fail(err);
      },
    );
  }

  private fail(err: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.waiting = [];
    this.events.failed(err instanceof Error ? err : new Error(String(err)));
  }

  /** One fsync at a time; writes committed meanwhile ride on the next. */
  private sync(): void {
    if (this.syncing) return;
    this.syncing = true;
    const mark = this.persistedMark!;
    void this.store.root.flushed.then(() => {
      this.syncing = false;
      if (this.failed) return;
      this.events.durable(mark);
      if (this.persistedMark !== mark) this.sync();
    });
  }

  async close(): Promise<void> {
    this.cancel?.();
    this.cancel = undefined;
    await this.inflight;
    this.commit();
    await this.inflight;
    await this.store.root.flushed;
  }
}

/** Applies on the calling thread, one event-loop turn after it is asked (tests and tools). */
export class InlineStateWriter implements StateWriter {
  private target = 0;
  private scheduled = false;

  constructor(
    private readonly applier: LogApplier,
    private readonly events: StateWriterEvents,
  ) {}

  upTo(index: number): void {
    this.target = Math.max(this.target, index);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.run());
  }

  private run(): void {
    this.scheduled = false;
    try {
      this.applier.applyUpTo(this.target);
    } catch (err) {
      this.events.failed(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.events.persisted(this.applier.appliedIndex);
    void this.applier.durable().then((i) => this.events.durable(i));
  }

  async close(): Promise<void> {
    this.applier.applyUpTo(this.target);
    await this.applier.durable();
  }
}
