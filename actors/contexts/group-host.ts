import { FastpacaError } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { metrics } from '../../runtime/metrics.js';
import type { LmdbStore } from './lmdb-store.js';
import { prepare, type TokenCounter } from './prepare.js';
import { query, type QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import { apply, type MachineOptions } from './state-machine.js';
import type { Command, CommandResult } from './types.js';

export interface HostOptions {
  machine: MachineOptions;
  counter: TokenCounter;
  now: () => number;
  log: Logger;
  /** Commands waiting (being prepared or queued) before new writes are refused. */
  pendingMax: number;
  /** Commands applied in one transaction. */
  batchMax: number;
  /** Rounds committed but not yet known durable; lmdb-js folds those waiting on a sync into one. */
  roundsInflightMax: number;
}

interface Pending {
  cmd: Command;
  resolve: (r: CommandResult) => void;
  reject: (err: Error) => void;
}

/**
 * Hosts the context groups of this node and commits their writes in rounds. A round applies
 * the commands queued so far in one LMDB write transaction; a caller is answered only once its
 * round is committed and fsynced. Rounds are pipelined: while one is being synced the next is
 * already applied and committed, and lmdb-js folds transactions queued behind a sync into one,
 * so the busier the disk, the more commands share an fsync.
 *
 * Reads are a barrier: a read that arrives while rounds are in flight waits until they are all
 * durable (no new round starts meanwhile), then runs. So a read sees every acknowledged write
 * and never a write that is not yet on disk and could still be lost.
 */
export class GroupHost {
  private queue: Pending[] = [];
  private waitingReads: Array<() => void> = [];
  private preparing = 0;
  private roundsInflight = 0;
  private pumpScheduled = false;
  private closed = false;
  private drained: Array<() => void> = [];

  constructor(
    private readonly store: LmdbStore,
    private readonly opts: HostOptions,
  ) {}

  get pending(): number {
    return this.queue.length + this.preparing;
  }

  /** Applies a write; resolves once it is applied and durable. */
  submit(req: WriteRequest): Promise<CommandResult> {
    if (this.closed) return Promise.reject(new FastpacaError('unavailable', 'the node is shutting down', { retryAfterS: 1 }));
    if (this.pending >= this.opts.pendingMax) {
      metrics.commandsRejected.inc();
      return Promise.reject(new FastpacaError('overloaded', 'too many writes are waiting; retry shortly', { retryAfterS: 1 }));
    }
    const cmd = prepare(req, { view: this.store.view, counter: this.opts.counter, defaultTokenizer: this.opts.machine.defaultTokenizer, now: this.opts.now });
    if (!(cmd instanceof Promise)) return this.enqueue(cmd);
    this.preparing++;
    return cmd.finally(() => this.preparing--).then((c) => this.enqueue(c));
  }

  /** Answers a read with every acknowledged write visible and nothing that is not yet durable. */
  read(req: ReadRequest): Promise<QueryResult> {
    if (this.roundsInflight === 0) {
      try {
        return Promise.resolve(query(this.store.view, req));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return new Promise((resolve, reject) => {
      this.waitingReads.push(() => {
        try {
          resolve(query(this.store.view, req));
        } catch (err) {
          reject(err);
        }
      });
    });
  }

  /** Stops taking writes and waits until every accepted one is durable and answered. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.preparing > 0 || this.queue.length > 0 || this.roundsInflight > 0) {
      await new Promise<void>((r) => {
        this.drained.push(r);
        setTimeout(r, 20); // preparing (BPE counts) has no event of its own: poll it
      });
    }
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
    if (this.waitingReads.length > 0) {
      if (this.roundsInflight > 0) return; // the barrier: the last round to finish pumps again
      const reads = this.waitingReads;
      this.waitingReads = [];
      for (const r of reads) r();
    }
    while (this.queue.length > 0 && this.roundsInflight < this.opts.roundsInflightMax) {
      this.startRound(this.queue.splice(0, this.opts.batchMax));
    }
    metrics.pendingCommands.set(this.queue.length);
    if (this.roundsInflight === 0 && this.queue.length === 0) {
      for (const r of this.drained.splice(0)) r();
    }
  }

  private startRound(batch: Pending[]): void {
    this.roundsInflight++;
    const started = performance.now();
    this.store
      .writeDurably(() => batch.map((p) => this.applyOne(p.cmd)))
      .then(
        (results) => {
          metrics.writeRounds.inc();
          metrics.roundCommands.observe(batch.length);
          metrics.roundSeconds.observe((performance.now() - started) / 1000);
          for (let i = 0; i < batch.length; i++) {
            const r = results[i]!;
            if (r instanceof Error) batch[i]!.reject(r);
            else batch[i]!.resolve(r);
          }
        },
        (err: unknown) => {
          // The transaction did not commit, so nothing of this round is applied: every caller
          // may be told the write failed (and a retry with an idempotency key stays exact).
          this.opts.log.error('write round failed', { err, commands: batch.length });
          metrics.internalErrors.inc();
          const failure = new FastpacaError('unavailable', 'storage write failed; retry', { retryAfterS: 1 });
          for (const p of batch) p.reject(failure);
        },
      )
      .finally(() => {
        this.roundsInflight--;
        this.pump();
      });
  }

  /**
   * A throw from apply is a bug, never bad input. It is caught here so one command cannot take
   * the round (and everyone else's writes) down with it; apply decides before it writes, so the
   * command has written nothing. The caller gets 500 internal.
   */
  private applyOne(cmd: Command): CommandResult | Error {
    try {
      const result = apply(this.store.view, cmd, this.opts.machine);
      metrics.commandsApplied.inc({ kind: cmd.t });
      return result;
    } catch (err) {
      this.opts.log.error('apply failed', { err, kind: cmd.t, id: cmd.id });
      metrics.internalErrors.inc();
      return new FastpacaError('internal', 'the write failed on an internal error; it was not applied');
    }
  }
}
