import { Worker } from 'node:worker_threads';
import type { LogLevel, Logger } from '../../runtime/log.js';
import type { LmdbStore } from './lmdb-store.js';
import type { LogApplier } from './log-applier.js';
import type { PendingWrite } from './tables.js';
import type { MachineOptions } from './state-machine.js';

/** What a state writer tells the host. */
export interface StateWriterEvents {
  /** The state store holds (committed) every command up to index. */
  persisted(index: number): void;
  /** …and has it on disk: the command log may forget up to index. */
  durable(index: number): void;
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

const ignore = () => {};

/**
 * Writes the host's buffered writes to the state store itself, as lmdb-js asynchronous writes:
 * they are encoded here, then inserted and committed by lmdb-js's own write thread, all writes
 * of an event turn in one transaction with the applied index of their last command (so the
 * store never holds half a command, and recovery knows where to resume). Nothing is applied
 * twice: the values are the ones apply computed. The default.
 */
export class DirectStateWriter implements StateWriter {
  private last: Promise<unknown> = Promise.resolve();
  /** The store has committed every command up to here (persisted <= the host's applied). */
  private persistedIndex = 0;
  private syncing = false;
  private failed = false;
  /** Writes handed over since the last commit, oldest first, and the index they reach. */
  private waiting: Array<readonly PendingWrite[]> = [];
  private waitingIndex = 0;
  /** Cancels the scheduled commit, while one is scheduled. */
  private cancel: (() => void) | undefined;

  constructor(
    private readonly store: LmdbStore,
    private readonly log: number,
    private readonly events: StateWriterEvents,
    /** Commits at most this often (0: at the end of every event turn). */
    private readonly commitIntervalMs = 0,
  ) {}

  upTo(index: number, writes: readonly PendingWrite[]): void {
    if (this.failed) return;
    this.waiting.push(writes);
    this.waitingIndex = index;
    if (this.cancel !== undefined) return;
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
    const index = this.waitingIndex;
    const batches = this.waiting;
    this.waiting = [];
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
    this.last = this.store.putApplied(this.log, index).then(
      () => {
        this.persistedIndex = index;
        this.events.persisted(index);
        this.sync();
      },
      (err: unknown) => {
        this.failed = true;
        this.events.failed(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }

  /** One fsync at a time; writes committed meanwhile ride on the next. */
  private sync(): void {
    if (this.syncing) return;
    this.syncing = true;
    const index = this.persistedIndex;
    void this.store.root.flushed.then(() => {
      this.syncing = false;
      this.events.durable(index);
      if (this.persistedIndex > index) this.sync();
    });
  }

  async close(): Promise<void> {
    if (this.cancel !== undefined) {
      this.cancel();
      this.commit();
    }
    await this.last;
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

/** Thread → host. */
export type FromStateWriter =
  | { type: 'ready' }
  | { type: 'persisted'; index: number }
  | { type: 'durable'; index: number }
  | { type: 'failed'; message: string }
  | { type: 'closed'; index: number };

export interface StateWriterThreadData {
  dataDir: string;
  /** The command log it follows. */
  log: number;
  groups: number;
  machine: MachineOptions;
  logLevel: LogLevel;
  nodeId: string;
}

/** Unexpected exits of the writer thread tolerated before the host is told the store failed. */
const RestartsMax = 5;
/** Closing waits this long for the thread to finish applying and syncing. */
const CloseDeadlineMs = 60_000;

/**
 * Applies on a thread of its own, so the gateway's thread never runs the state store's
 * transactions. The thread reads the command log itself; only indexes cross between threads.
 * A thread that dies is started again (it resumes from the store's applied index); after
 * RestartsMax the host is told the store failed.
 */
export class ThreadStateWriter implements StateWriter {
  private worker!: Worker;
  private asked = 0;
  private restarts = 0;
  private closing: ((index: number) => void) | undefined;
  private alive = false;

  private constructor(
    private readonly data: StateWriterThreadData,
    private readonly events: StateWriterEvents,
    private readonly log: Logger,
  ) {}

  static async start(data: StateWriterThreadData, events: StateWriterEvents, log: Logger): Promise<ThreadStateWriter> {
    const writer = new ThreadStateWriter(data, events, log);
    await writer.spawn();
    return writer;
  }

  private spawn(): Promise<void> {
    return new Promise((resolve, reject) => {
      let ready = false;
      const worker = new Worker(new URL('./state-writer-thread.js', import.meta.url), { workerData: this.data });
      this.worker = worker;
      worker.on('message', (m: FromStateWriter) => {
        switch (m.type) {
          case 'ready':
            ready = true;
            this.alive = true;
            if (this.asked > 0) worker.postMessage({ upTo: this.asked });
            resolve();
            return;
          case 'persisted':
            this.events.persisted(m.index);
            return;
          case 'durable':
            this.events.durable(m.index);
            return;
          case 'failed':
            this.events.failed(new Error(m.message));
            return;
          case 'closed':
            this.closing?.(m.index);
            return;
        }
      });
      worker.on('error', (err) => this.log.error('state writer thread failed', { err }));
      worker.on('exit', (code) => {
        this.alive = false;
        if (this.closing) return this.closing(-1);
        if (!ready) return reject(new Error(`the state writer thread exited with code ${code} before it was ready`));
        if (++this.restarts > RestartsMax) return this.events.failed(new Error(`the state writer thread keeps exiting (code ${code})`));
        this.log.error('state writer thread exited; starting it again', { code, restarts: this.restarts });
        this.spawn().catch((err: unknown) => this.events.failed(err instanceof Error ? err : new Error(String(err))));
      });
    });
  }

  upTo(index: number): void {
    if (index <= this.asked) return;
    this.asked = index;
    this.worker.postMessage({ upTo: index });
  }

  /** Stops the thread abruptly, as a crash would; it is started again like after any crash. */
  async kill(): Promise<void> {
    await this.worker.terminate();
  }

  /**
   * Asks the thread to apply everything asked for, sync and close the store. A thread that is
   * gone (it failed for good) has nothing to finish: the log holds the commands for next start.
   */
  async close(): Promise<void> {
    if (!this.alive) return;
    const closed = new Promise<number>((resolve) => (this.closing = resolve));
    this.worker.postMessage({ close: true, upTo: this.asked });
    const deadline = setTimeout(() => this.closing?.(-1), CloseDeadlineMs);
    const index = await closed;
    clearTimeout(deadline);
    if (index < 0) this.log.error('state writer thread did not close in time; the command log will be applied at the next start');
    await this.worker.terminate();
  }
}
