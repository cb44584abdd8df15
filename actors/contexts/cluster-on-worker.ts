import type { Config } from '../../runtime/config.js';
import { FastpacaError, assert } from '../../runtime/errors.js';
import type { Logger } from '../../runtime/log.js';
import { metrics, type ThreadMetrics } from '../../runtime/metrics.js';
import { SupervisedWorker, scrapeWorkers } from '../../runtime/supervisor.js';
import type { ClusterWorkerData, ToClusterWorker } from './group-protocol.js';
import type { Groups, Readiness } from './groups.js';
import type { QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult } from './types.js';

type ClusterWorker = SupervisedWorker<ClusterWorkerData, ToClusterWorker, unknown, never, unknown>;

/** The gateway asks the worker how ready it is this often (readiness is answered from the last word). */
const ReadinessEveryMs = 250;

const fullToWorker = metrics.mailboxFull.labels('to_worker');

/**
 * A cluster node whose ClusterGroups runs on a supervised worker thread (cluster-worker.ts): the
 * gateway's thread parses, validates and answers HTTP, and every request crosses the worker's
 * shared-memory mailbox. A worker that crashes is started again; it reloads its replicas from
 * its Raft log and state store, and its peers see a node that restarted.
 */
export class ClusterOnWorker implements Groups {
  private last: Readiness = { ready: false, reason: 'the cluster worker is starting' };
  /** The worker's start the last word came from: a word from before a restart says nothing. */
  private lastFrom = -1;
  private readonly poller: NodeJS.Timeout;

  private constructor(
    readonly count: number,
    private readonly worker: ClusterWorker,
  ) {
    this.poller = setInterval(() => this.pollReadiness(), ReadinessEveryMs);
    this.poller.unref();
    this.pollReadiness();
  }

  static async open(config: Config, log: Logger, onFatal: (err: Error) => void): Promise<ClusterOnWorker> {
    assert(config.peers !== undefined, 'a cluster worker runs a cluster node');
    const worker: ClusterWorker = new SupervisedWorker({
      name: 'cluster',
      entry: new URL('./cluster-worker.js', import.meta.url),
      data: { config },
      mailboxBytes: config.mailboxBytes,
      // Each write, read and forwarded request crosses once; ClusterGroups bounds what waits in it.
      rpc: { timeoutMs: config.requestTimeoutMs + 1_000, inflightMax: 2 * config.pendingMax, outboxMax: 2 * config.pendingMax },
      counters: { full: () => fullToWorker.inc() },
      handler: () => Promise.reject(new FastpacaError('internal', 'the gateway takes no calls from the cluster worker')),
      log,
      onRestart: () => metrics.workerRestarts.inc(),
      onFatal,
    });
    await worker.start();
    return new ClusterOnWorker(config.groups, worker);
  }

  // The worker's ClusterGroups checks that the group owns the id: it is not hashed twice here.
  write(group: number, req: WriteRequest): Promise<CommandResult> {
    return this.worker.call({ t: 'write', group, req }) as Promise<CommandResult>;
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    return this.worker.call({ t: 'read', group, req }) as Promise<QueryResult>;
  }

  list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    return this.worker.call({ t: 'list', req }) as Promise<QueryResult>;
  }

  /** The worker's last word (at most ReadinessEveryMs old); not ready while it is restarting. */
  readiness(): Readiness {
    if (!this.worker.up) return { ready: false, reason: 'the cluster worker is restarting' };
    return this.lastFrom === this.worker.restarts ? this.last : { ready: false, reason: 'the cluster worker has started again and is rejoining' };
  }

  cluster(): Promise<unknown> {
    return this.worker.call({ t: 'cluster' });
  }

  replaceNode(id: string): Promise<unknown> {
    return this.worker.call({ t: 'replace', node: id });
  }

  metrics(): Promise<ThreadMetrics[]> {
    return scrapeWorkers([this.worker]);
  }

  /** Test hook: make the cluster worker (index 0, the only one) throw, as a bug would. */
  crash(index: number): Promise<unknown> {
    if (index !== 0) return Promise.reject(new FastpacaError('not_found', `this node has one cluster worker (0), not ${index}`));
    return this.worker.call({ t: 'crash' });
  }

  async close(): Promise<void> {
    clearInterval(this.poller);
    await this.worker.close({ t: 'close' });
  }

  private pollReadiness(): void {
    if (!this.worker.up) return;
    const from = this.worker.restarts;
    (this.worker.call({ t: 'readiness' }) as Promise<Readiness>).then(
      (r) => {
        this.last = r;
        this.lastFrom = from;
      },
      (err: unknown) => {
        this.last = { ready: false, reason: `the cluster worker did not answer: ${(err as Error).message}` };
        this.lastFrom = from;
      },
    );
  }
}
