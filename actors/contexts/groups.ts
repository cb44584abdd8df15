import { PoolTokenCounter } from '../tokenizer/pool.js';
import type { Config } from '../../runtime/config.js';
import { FastpacaError, assert } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { Logger } from '../../runtime/log.js';
import type { ThreadMetrics } from '../../runtime/metrics.js';
import { CommandLog } from './command-log.js';
import { GroupHost, recover } from './group-host.js';
import { LmdbStore } from './lmdb-store.js';
import { LogApplier } from './log-applier.js';
import { DirectStateWriter, InlineStateWriter, logStamper, type StateWriterFactory } from './state-writer.js';
import { monotonicClock, type TokenCounter } from './prepare.js';
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
  /** The metrics of the threads that host groups other than this one (merged for /metrics). */
  metrics(): Promise<ThreadMetrics[]>;
  /** What GET /v1/cluster shows: nodes, groups, leaders, terms, commit and applied indexes. */
  cluster?(): unknown | Promise<unknown>;
  /** A cluster node: replaces a node that lost its data directory (ClusterGroups.replaceNode). */
  replaceNode?(id: string): Promise<unknown>;
  /** Test hook (FASTPACA_TEST_HOOKS=1): make worker `index` crash as a bug would. */
  crash?(index: number): Promise<unknown>;
  close(): Promise<void>;
}


/**
 * A cluster node's groups while they open, which waits for a majority of its peers: the gateway
 * serves from the start (live, not ready, every request 503 `unavailable`), so that an
 * orchestrator does not kill a node that waits for its peers, or that its peers refuse.
 */
export class OpeningGroups implements Groups {
  private target: Groups | undefined;

  constructor(readonly count: number) {}

  /** The groups are open: everything goes to them from now on. */
  opened(target: Groups): void {
    this.target = target;
  }

  write(group: number, req: WriteRequest): Promise<CommandResult> {
    return this.target ? this.target.write(group, req) : Promise.reject(opening());
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    return this.target ? this.target.read(group, req) : Promise.reject(opening());
  }

  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    return this.target ? this.target.list(req) : Promise.reject(opening());
  }

  readiness(): Readiness {
    return this.target?.readiness() ?? { ready: false, reason: 'joining the cluster: waiting for a majority of the peers (a peer that refuses this node says why in the log)' };
  }

  metrics(): Promise<ThreadMetrics[]> {
    return this.target?.metrics() ?? Promise.resolve([]);
  }

  cluster(): unknown {
    return this.target ? this.target.cluster?.() : Promise.reject(opening());
  }

  replaceNode(id: string): Promise<unknown> {
    return this.target?.replaceNode ? this.target.replaceNode(id) : Promise.reject(opening());
  }

  crash(index: number): Promise<unknown> {
    if (this.target === undefined) return Promise.reject(opening());
    return this.target.crash ? this.target.crash(index) : Promise.reject(new FastpacaError('not_found', 'this node has no worker threads'));
  }

  close(): Promise<void> {
    return this.target?.close() ?? Promise.resolve();
  }
}

function opening(): FastpacaError {
  return new FastpacaError('unavailable', 'this node is still joining its cluster; retry', { retryAfterS: 1 });
}

/** The host of a thread's groups over their storage, and how to close it all. */
export interface OpenedHost {
  host: GroupHost;
  /** Makes every accepted write durable and in the state store, then closes the storage. */
  close(): Promise<void>;
}

/**
 * Opens the storage and command log `logId`, applies the log's tail (after a stop or a crash),
 * and starts a host for the groups `owns` accepts: what every thread that hosts groups runs.
 */
export async function openHost(config: Config, logId: number, counter: TokenCounter, log: Logger, owns?: (group: number) => boolean): Promise<OpenedHost> {
  const store = LmdbStore.open(config.dataDir, config.groups);
  const commandLog = CommandLog.open(config.dataDir, logId);
  const machine = { defaultTokenizer: config.tokenizer };
  try {
    const replayed = await recover(store, commandLog, machine, log);
    if (replayed > 0) log.info('applied the command log after the last stop', { commands: replayed, log: logId });
  } catch (err) {
    await commandLog.close();
    await store.close();
    throw err;
  }
  const stateWriters: Record<Config['stateWriter'], StateWriterFactory> = {
    direct: (events) => new DirectStateWriter(store, logStamper(store, logId), events, config.stateCommitMs),
    inline: (events) => new InlineStateWriter(new LogApplier(store, commandLog, machine, log), events),
  };
  const stateWriter = stateWriters[config.stateWriter];
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
    owns,
  });
  return {
    host,
    close: async () => {
      await host.close();
      await commandLog.close();
      await store.close();
    },
  };
}

/** Every group of a node hosted on the calling thread (FASTPACA_WORKERS=0). */
export class LocalGroups implements Groups {
  private constructor(
    readonly count: number,
    private readonly opened: OpenedHost,
    private readonly counter: PoolTokenCounter,
  ) {}

  static async open(config: Config, log: Logger): Promise<LocalGroups> {
    // Logs of other workers (the node ran with FASTPACA_WORKERS > 0 before) come first.
    await recoverLogs(config, log, (id) => id !== 0);
    const counter = new PoolTokenCounter(config.tokenizerThreads);
    return new LocalGroups(config.groups, await openHost(config, 0, counter, log), counter);
  }

  private get host(): GroupHost {
    return this.opened.host;
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

  metrics(): Promise<ThreadMetrics[]> {
    return Promise.resolve([]);
  }

  async close(): Promise<void> {
    await this.opened.close();
    await this.counter.close();
  }
}

/**
 * Applies the tails of the command logs `which` accepts, each to the state store. A node that
 * ran with another number of workers left logs whose groups now live elsewhere; applying them
 * before any worker starts keeps every group's commands in their order.
 */
export async function recoverLogs(config: Config, log: Logger, which: (id: number) => boolean): Promise<void> {
  // Opened first and on this thread in any case: it checks (and upgrades) the data directory's
  // format before any worker opens it.
  const store = LmdbStore.open(config.dataDir, config.groups);
  try {
    for (const id of CommandLog.ids(config.dataDir).filter(which)) {
      const commandLog = CommandLog.open(config.dataDir, id);
      try {
        const replayed = await recover(store, commandLog, { defaultTokenizer: config.tokenizer }, log);
        if (replayed > 0) log.info('applied the command log after the last stop', { commands: replayed, log: id });
      } finally {
        await commandLog.close();
      }
    }
  } finally {
    await store.close();
  }
}
