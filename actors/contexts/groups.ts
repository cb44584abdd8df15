import { PoolTokenCounter } from '../tokenizer/pool.js';
import type { Config } from '../../runtime/config.js';
import { assert } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { Logger } from '../../runtime/log.js';
import { CommandLog } from './command-log.js';
import { GroupHost, recover } from './group-host.js';
import { LmdbStore } from './lmdb-store.js';
import { LogApplier } from './log-applier.js';
import { InlineStateWriter, ThreadStateWriter, type StateWriterFactory } from './state-writer.js';
import { monotonicClock } from './prepare.js';
import type { QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult } from './types.js';

export type Readiness = { ready: true } | { ready: false; reason: string };

/**
 * The seam between the gateway and the groups. The gateway addresses the group that owns an id
 * (`groupOf(id)`); where that group runs (this thread, a worker, another node's leader) is the
 * implementation's business.
 */
export interface Groups {
  readonly count: number;
  write(group: number, req: WriteRequest): Promise<CommandResult>;
  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult>;
  /** Listing spans every group. */
  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult>;
  readiness(): Readiness;
  close(): Promise<void>;
}

/** Every group of a node hosted on the calling thread: storage, command log, host, token pool. */
export class LocalGroups implements Groups {
  private constructor(
    readonly count: number,
    private readonly host: GroupHost,
    private readonly closeStorage: () => Promise<void>,
  ) {}

  /** Opens the storage, applies the command log's tail, and starts the host. */
  static async open(config: Config, log: Logger): Promise<LocalGroups> {
    const store = LmdbStore.open(config.dataDir, config.groups);
    const commandLog = CommandLog.open(config.dataDir);
    const machine = { defaultTokenizer: config.tokenizer };
    const replayed = await recover(store, commandLog, machine, log);
    if (replayed > 0) log.info('applied the command log after the last stop', { commands: replayed });
    const counter = new PoolTokenCounter(config.tokenizerThreads);
    const stateWriter: StateWriterFactory =
      config.stateWriter === 'inline'
        ? (events) => new InlineStateWriter(new LogApplier(store, commandLog, machine, log), events)
        : (events) => ThreadStateWriter.start({ dataDir: config.dataDir, groups: config.groups, machine, logLevel: config.logLevel, nodeId: config.nodeId }, events, log);
    const host = await GroupHost.create(store, commandLog, {
      machine,
      counter,
      now: monotonicClock(),
      log,
      pendingMax: config.pendingMax,
      batchMax: config.batchMax,
      roundsInflightMax: config.roundsInflightMax,
      bufferedWritesMax: config.bufferedWritesMax,
      stateWriter,
    });
    return new LocalGroups(config.groups, host, async () => {
      await commandLog.close();
      await store.close();
      await counter.close();
    });
  }

  write(group: number, req: WriteRequest): Promise<CommandResult> {
    assert(group === groupOf(req.id, this.count), 'write addressed to the group that owns the id');
    return this.host.submit(req);
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    assert(group === groupOf(req.id, this.count), 'read addressed to the group that owns the id');
    return this.host.read(req);
  }

  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    return this.host.read(req);
  }

  readiness(): Readiness {
    const reason = this.host.unavailableReason;
    return reason === undefined ? { ready: true } : { ready: false, reason };
  }

  /** Makes every accepted write durable and in the state store, then closes the storage. */
  async close(): Promise<void> {
    await this.host.close();
    await this.closeStorage();
  }
}
