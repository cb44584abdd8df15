import type { CommandLog } from './command-log.js';
import type { LmdbStore } from './lmdb-store.js';
import { assert } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { applySafely, type MachineOptions } from './state-machine.js';

/** Commands applied per state-store transaction. */
const ApplyBatch = 2_000;

/**
 * Maintains the state store by applying the command log to it, in log order, each transaction
 * stamped with the index of its last command: at start-up it catches up after a stop or a
 * crash (and, with FASTPACA_STATE_WRITER=inline, it follows the log while the node runs). apply is deterministic, so the store ends up exactly as the host's view
 * of it, which holds the same commands' writes in memory until the store has them.
 */
export class LogApplier {
  private applied: number;

  constructor(
    private readonly store: LmdbStore,
    private readonly log: CommandLog,
    private readonly machine: MachineOptions,
    private readonly logger: Logger,
  ) {
    this.applied = store.appliedIndex(log.id);
    // The log only forgets what the store holds durably; a gap means the two do not belong
    // together (a store deleted or restored without its log): applying would build half a state.
    const oldest = log.firstIndex();
    if (oldest !== undefined && oldest > this.applied + 1) {
      throw new Error(
        `the state store holds commands up to ${this.applied} but the command log starts at ${oldest}: the data directory is incomplete (restore data.mdb and wal/ together)`,
      );
    }
  }

  get appliedIndex(): number {
    return this.applied;
  }

  /**
   * Applies logged commands after the store's index, up to `upTo` (all of the log when
   * undefined). Synchronous. Returns the commands applied.
   */
  applyUpTo(upTo?: number): number {
    let count = 0;
    for (;;) {
      const entries = this.log.read(this.applied + 1, ApplyBatch, upTo);
      if (entries.length === 0) return count;
      assert(entries[0]!.index === this.applied + 1, 'the command log continues right after what the store holds');
      this.store.root.transactionSync(() => {
        for (const e of entries) {
          applySafely(this.store.view, e.cmd, this.machine, (err, cmd) => this.logger.error('apply failed', { err, kind: cmd.t, id: cmd.id, index: e.index }));
        }
        this.store.stampApplied(this.log.id, entries[entries.length - 1]!.index);
      });
      this.applied = entries[entries.length - 1]!.index;
      count += entries.length;
    }
  }

  /** Resolves once everything applied so far is on disk; returns that index. */
  async durable(): Promise<number> {
    const index = this.applied;
    await this.store.root.flushed;
    return index;
  }
}
