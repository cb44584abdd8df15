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
}

interface Pending {
  cmd: Command;
  resolve: (r: CommandResult) => void;
  reject: (err: Error) => void;
}

/**
 * Hosts the context groups of this node and commits their writes in rounds: every command
 * queued while the previous round was on its way to disk is applied in one LMDB transaction,
 * then one fsync, then every caller of the round is answered. Nothing is acknowledged before
 * it is durable. Reads run only between rounds, so they never see a write that is not yet on
 * disk (and could still be lost), and always see every write already acknowledged.
 */
export class GroupHost {
  private queue: Pending[] = [];
  private waitingReads: Array<() => void> = [];
  private preparing = 0;
  private roundRunning = false;
  private closed = false;
  private idle: Promise<void> = Promise.resolve();
  private markIdle: () => void = () => {};

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
    if (!this.roundRunning) return Promise.resolve(query(this.store.view, req));
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

  /** Stops taking writes and waits for every queued one to be durable. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.roundRunning || this.preparing > 0 || this.queue.length > 0) {
      await this.idle;
      if (this.preparing > 0) await new Promise((r) => setTimeout(r, 5));
    }
  }

  private enqueue(cmd: Command): Promise<CommandResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ cmd, resolve, reject });
      metrics.pendingCommands.set(this.queue.length);
      if (!this.roundRunning) {
        this.roundRunning = true;
        this.idle = new Promise((r) => (this.markIdle = r));
        // setImmediate lets every request that arrived in this event-loop turn join the round.
        setImmediate(() => void this.rounds());
      }
    });
  }

  private async rounds(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.opts.batchMax);
        metrics.pendingCommands.set(this.queue.length);
        const started = performance.now();
        let results: Array<CommandResult | Error>;
        try {
          results = await this.store.writeDurably(() => batch.map((p) => this.applyOne(p.cmd)));
        } catch (err) {
          // The transaction did not commit: nothing of this round is applied, so it is safe to
          // tell every caller the write failed (and retrying with an idempotency key is exact).
          this.opts.log.error('write round failed', { err, commands: batch.length });
          metrics.internalErrors.inc();
          const failure = new FastpacaError('unavailable', 'storage write failed; retry', { retryAfterS: 1 });
          for (const p of batch) p.reject(failure);
          continue;
        }
        metrics.writeRounds.inc();
        metrics.roundCommands.observe(batch.length);
        metrics.roundSeconds.observe((performance.now() - started) / 1000);
        for (let i = 0; i < batch.length; i++) {
          const r = results[i]!;
          if (r instanceof Error) batch[i]!.reject(r);
          else batch[i]!.resolve(r);
        }
        this.serveReads();
      }
    } finally {
      this.roundRunning = false;
      this.serveReads();
      this.markIdle();
    }
  }

  private serveReads(): void {
    const reads = this.waitingReads;
    this.waitingReads = [];
    for (const r of reads) r();
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
