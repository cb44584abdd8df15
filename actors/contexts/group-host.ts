import { FastpacaError, assert } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { metrics } from '../../runtime/metrics.js';
import type { CommandLog } from './command-log.js';
import type { LmdbStore } from './lmdb-store.js';
import type { StateView } from './state-view.js';
import { LogApplier } from './log-applier.js';
import type { StateWriter, StateWriterFactory } from './state-writer.js';
import { WriteBuffer, type PendingWrite } from './tables.js';
import { prepare, type TokenCounter } from './prepare.js';
import { query, type QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import { applySafely, type MachineOptions } from './state-machine.js';
import type { Command, CommandResult, ContextState } from './types.js';
import type { Tokenizer } from '../../runtime/config.js';

const TokenizerCacheMax = 100_000;
/** Bound children: labelling a counter on every command costs a hash of its labels. */
const appliedByKind = {
  put: metrics.commandsApplied.labels('put'),
  append: metrics.commandsApplied.labels('append'),
  compact: metrics.commandsApplied.labels('compact'),
  patch: metrics.commandsApplied.labels('patch'),
  tombstone: metrics.commandsApplied.labels('tombstone'),
} as const;

export interface HostOptions {
  machine: MachineOptions;
  counter: TokenCounter;
  now: () => number;
  log: Logger;
  /** Commands waiting (being prepared or queued) before new writes are refused. */
  pendingMax: number;
  /** Commands in one write round (one command-log fsync). */
  batchMax: number;
  /** Rounds written to the command log and awaiting apply at once. */
  roundsInflightMax: number;
  /** Writes held in memory ahead of the state store before new rounds wait. */
  bufferedWritesMax: number;
  /** Starts what keeps the state store following the command log. */
  stateWriter: StateWriterFactory;
  /** The groups this host serves (listing skips the others); all when undefined. */
  owns?: ((group: number) => boolean) | undefined;
}

interface Pending {
  cmd: Command;
  resolve: (r: CommandResult) => void;
  reject: (err: Error) => void;
}

interface Round {
  batch: Pending[];
  /** Log index of the round's first command. */
  first: number;
  started: number;
  outcome: 'pending' | 'durable' | 'failed';
}

/**
 * Hosts the context groups of this node. Writes go in rounds, in the order Raft will use:
 *
 *   1. persist: the round's commands are appended to the command log and fsynced;
 *   2. apply: then, in log order, the state machine applies them (its writes wait in memory,
 *      readable at once, until the state store holds them);
 *   3. answer: every caller of the round gets its result.
 *
 * Nothing is acknowledged before it is on disk, and nothing is applied (so nothing is readable)
 * before it is on disk either: a read never sees a write that a crash could lose. The log is
 * written and synced on this thread, so requests that arrive meanwhile make up the next round.
 * Behind the rounds the state writer brings the state store up to the host and says how far it
 * is; the host then releases those writes, and the log forgets what the store holds durably.
 * After a crash the log's tail is applied from the store's applied index (see `recover`).
 */
export class GroupHost {
  private queue: Pending[] = [];
  private preparing = 0;
  private pumpScheduled = false;
  private closed = false;
  /** Rounds logged but not yet applied, oldest first. */
  private readonly rounds: Round[] = [];
  private readonly buffer = new WriteBuffer();
  private readonly view: StateView;
  /** Index of the last command applied (its effects are in the buffer or the store). */
  private appliedIndex: number;
  /** Writes of applied rounds, by the index of their last command, until the store holds them. */
  private readonly unreleased: Array<{ index: number; writes: PendingWrite[] }> = [];
  private writer!: StateWriter;
  /**
   * Tokenizers of recently seen contexts, so preparing an append does not read and decode the
   * whole record (apply reads it anyway). Refreshed when a put is applied; a stale entry only
   * means an append racing a tokenizer change is counted with the previous one, which the
   * command then carries, deterministically. Cleared when it reaches TokenizerCacheMax.
   */
  private readonly tokenizers = new Map<string, Tokenizer>();
  private readonly tokenizerOf = (id: string): Tokenizer | undefined => {
    let t = this.tokenizers.get(id);
    if (t === undefined) {
      t = this.view.getContext(id)?.tokenizer;
      if (t !== undefined) this.remember(id, t);
    }
    return t;
  };
  /** Set when the state store cannot be written: the node stops taking writes. */
  private failed: Error | undefined;

  private constructor(
    private readonly store: LmdbStore,
    private readonly log: CommandLog,
    private readonly opts: HostOptions,
  ) {
    this.view = store.bufferedView(this.buffer);
    this.appliedIndex = store.appliedIndex(log.id);
    assert(log.nextIndex > this.appliedIndex, 'the command log continues after what the state store holds');
  }

  /** A host over a recovered store and log (see `recover`), with its state writer started. */
  static async create(store: LmdbStore, log: CommandLog, opts: HostOptions): Promise<GroupHost> {
    const host = new GroupHost(store, log, opts);
    host.writer = await opts.stateWriter({
      persisted: (index) => host.persisted(index),
      durable: (index) => host.durable(index),
      failed: (err) => host.fail(err),
    });
    return host;
  }

  get pending(): number {
    return this.queue.length + this.preparing;
  }

  /** Why this host cannot take writes, if it cannot. */
  get unavailableReason(): string | undefined {
    if (this.failed) return 'the storage cannot be written; restart the node';
    if (this.closed) return 'shutting down';
    return undefined;
  }

  /** Applies a write; resolves once it is durable and applied. */
  submit(req: WriteRequest): Promise<CommandResult> {
    if (this.closed || this.failed) return Promise.reject(new FastpacaError('unavailable', this.failed ? 'the node cannot write to its storage' : 'the node is shutting down', { retryAfterS: 1 }));
    if (this.pending >= this.opts.pendingMax) {
      metrics.commandsRejected.inc();
      return Promise.reject(new FastpacaError('overloaded', 'too many writes are waiting; retry shortly', { retryAfterS: 1 }));
    }
    const cmd = prepare(req, { tokenizerOf: this.tokenizerOf, counter: this.opts.counter, defaultTokenizer: this.opts.machine.defaultTokenizer, now: this.opts.now });
    if (!(cmd instanceof Promise)) return this.enqueue(cmd);
    this.preparing++;
    return cmd.finally(() => this.preparing--).then((c) => this.enqueue(c));
  }

  /** Answers a read: it sees every acknowledged write, and only durable ones. */
  read(req: ReadRequest): Promise<QueryResult> {
    try {
      return Promise.resolve(query(this.view, req, this.opts.owns));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Stops taking writes; resolves once every accepted one is answered and in the state store. */
  async close(): Promise<void> {
    this.closed = true;
    // Preparing (BPE counts) has no event of its own, so this polls; a close waits at most a poll.
    while (!this.failed && (this.preparing > 0 || this.queue.length > 0 || this.rounds.length > 0)) {
      await new Promise((r) => setTimeout(r, 20));
    }
    await this.writer.close();
  }

  private enqueue(cmd: Command): Promise<CommandResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ cmd, resolve, reject });
      metrics.pendingCommands.set(this.queue.length);
      this.schedulePump();
    });
  }

  /** setImmediate lets every request that arrived in this event-loop turn join the same round. */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private pump(): void {
    while (this.queue.length > 0 && this.rounds.length < this.opts.roundsInflightMax && this.buffer.size < this.opts.bufferedWritesMax) {
      this.startRound(this.queue.splice(0, this.opts.batchMax));
    }
    metrics.pendingCommands.set(this.queue.length);
    metrics.bufferedWrites.set(this.buffer.size);
  }

  private startRound(batch: Pending[]): void {
    const started = performance.now();
    const { first, durable } = this.log.append(batch.map((p) => p.cmd));
    const round: Round = { batch, first, started, outcome: 'pending' };
    this.rounds.push(round);
    durable.then(
      () => {
        round.outcome = 'durable';
        this.applyRounds();
      },
      (err: unknown) => {
        round.outcome = 'failed';
        this.opts.log.error('command log write failed', { err, commands: batch.length });
        metrics.internalErrors.inc();
        // The log takes no more appends until a restart: say so to readiness, refuse writes.
        if (this.log.failure) this.fail(this.log.failure);
        this.applyRounds();
      },
    );
  }

  /**
   * Applies finished rounds from the oldest, so commands are applied exactly in log order
   * (recovery replays them in that order and must rebuild the same state), whatever order
   * their fsyncs are reported in.
   */
  private applyRounds(): void {
    while (this.rounds.length > 0 && this.rounds[0]!.outcome !== 'pending') {
      const round = this.rounds.shift()!;
      if (round.outcome === 'failed' || this.failed) {
        // A failed log write: not acknowledged and not applied here; its records may still be on
        // disk and be applied at the next start, which the 503 contract allows (a retry with an
        // idempotency key stays exact). A failed state store: logged but not applied here; the
        // next start applies it.
        const failure = new FastpacaError('unavailable', this.failed ? 'the node cannot write to its storage' : 'storage write failed; retry', { retryAfterS: 1 });
        for (const p of round.batch) p.reject(failure);
        continue;
      }
      const results = round.batch.map((p) => this.applyOne(p.cmd));
      this.appliedIndex = round.first + round.batch.length - 1;
      metrics.writeRounds.inc();
      metrics.roundCommands.observe(round.batch.length);
      metrics.roundSeconds.observe((performance.now() - round.started) / 1000);
      for (let i = 0; i < round.batch.length; i++) {
        const r = results[i]!;
        if (r instanceof Error) round.batch[i]!.reject(r);
        else round.batch[i]!.resolve(r);
      }
      const writes = this.buffer.take();
      if (writes.length > 0) this.unreleased.push({ index: this.appliedIndex, writes });
      this.writer.upTo(this.appliedIndex, writes);
    }
    this.pump();
  }

  /** The state store holds every command up to index: its writes need not stay in memory. */
  private persisted(index: number): void {
    if (this.failed) return;
    this.store.root.resetReadTxn(); // see what lmdb-js's write thread committed before letting go
    while (this.unreleased.length > 0 && this.unreleased[0]!.index <= index) this.buffer.release(this.unreleased.shift()!.writes);
    metrics.bufferedWrites.set(this.buffer.size);
    this.pump();
  }

  /** …and has them on disk: the command log may forget them. */
  private durable(index: number): void {
    if (this.failed) return;
    try {
      this.log.truncate(index);
    } catch (err) {
      // Deleting old segments failed (the next durable index tries again); nothing is lost.
      this.opts.log.warn('command log truncation failed; will retry', { err });
    }
  }


  /** The state store cannot follow the log in this process: stop writes. Everything answered is
   * in the log and is applied at the next start. */
  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.opts.log.error('storage write failed; refusing writes until restart', { err });
    metrics.internalErrors.inc();
  }

  private remember(id: string, tokenizer: Tokenizer): void {
    if (this.tokenizers.size >= TokenizerCacheMax) this.tokenizers.clear();
    this.tokenizers.set(id, tokenizer);
  }

  private applyOne(cmd: Command): CommandResult | Error {
    const result = applySafely(this.view, cmd, this.opts.machine, (err) => {
      this.opts.log.error('apply failed', { err, kind: cmd.t, id: cmd.id });
      metrics.internalErrors.inc();
    });
    if (result instanceof Error) return result;
    appliedByKind[cmd.t].inc();
    if (cmd.t === 'put' && result.ok) this.remember(cmd.id, (result.value as ContextState).tokenizer);
    return result;
  }
}

/**
 * Brings the state store up to the command log after a stop or a crash (LogApplier), makes
 * that durable, lets the log forget it, and makes sure new commands get later indexes.
 */
export async function recover(store: LmdbStore, log: CommandLog, machine: MachineOptions, logger: Logger): Promise<number> {
  const applier = new LogApplier(store, log, machine, logger);
  const replayed = applier.applyUpTo();
  const applied = await applier.durable();
  log.truncate(applied);
  log.skipTo(applied + 1);
  return replayed;
}
