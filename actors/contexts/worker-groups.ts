import { workerOf } from '../../runtime/actor.js';
import type { Config } from '../../runtime/config.js';
import { FastpacaError, assert } from '../../runtime/errors.js';
import { groupOf } from '../../runtime/hash.js';
import type { Logger } from '../../runtime/log.js';
import { metrics, type ThreadMetrics } from '../../runtime/metrics.js';
import { SupervisedWorker, scrapeWorkers } from '../../runtime/supervisor.js';
import { PoolTokenCounter } from '../tokenizer/pool.js';
import type { FromGroupWorker, GroupWorkerData, ToGroupWorker } from './group-protocol.js';
import { recoverLogs, type Groups, type Readiness } from './groups.js';
import type { QueryResult } from './queries.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { CommandResult } from './types.js';

type GroupWorker = SupervisedWorker<GroupWorkerData, ToGroupWorker, unknown, FromGroupWorker, unknown>;

const fullToWorker = metrics.mailboxFull.labels('to_worker');

/**
 * The groups of this node on FASTPACA_WORKERS worker threads, group g on worker g mod W, each
 * worker supervised (restarted after a crash). The gateway's thread only parses, validates and
 * routes: a call crosses the worker's shared-memory mailbox and its answer comes back the same
 * way. The node's one tokenizer pool lives here and answers the workers' count calls.
 */
export class WorkerGroups implements Groups {
  private constructor(
    readonly count: number,
    private readonly workers: GroupWorker[],
    private readonly counter: PoolTokenCounter,
  ) {}

  static async open(config: Config, log: Logger, onFatal: (err: Error) => void): Promise<WorkerGroups> {
    assert(config.workers >= 1, 'worker groups need at least one worker');
    // Logs no worker writes now (the node ran with more workers, or with none) go first; each
    // worker applies its own log when it starts.
    await recoverLogs(config, log, (id) => id >= config.workers);
    const counter = new PoolTokenCounter(config.tokenizerThreads);
    const handler = (call: FromGroupWorker): Promise<number[][]> => counter.countParts(call.tokenizer, call.parts);
    const workers: GroupWorker[] = [];
    for (let index = 0; index < config.workers; index++) {
      workers.push(
        new SupervisedWorker({
          name: `worker-${index}`,
          entry: new URL('./group-worker.js', import.meta.url),
          data: { config, index },
          mailboxBytes: config.mailboxBytes,
          rpc: {
            timeoutMs: config.requestTimeoutMs,
            // Writes beyond pendingMax are refused by the worker; reads ride along.
            inflightMax: 2 * config.pendingMax,
            outboxMax: 2 * config.pendingMax,
          },
          counters: { full: () => fullToWorker.inc() },
          handler,
          log,
          onRestart: () => metrics.workerRestarts.inc(),
          onFatal,
        }),
      );
    }
    try {
      await Promise.all(workers.map((w) => w.start()));
    } catch (err) {
      await Promise.all(workers.map((w) => w.close({ t: 'close' })));
      await counter.close();
      throw err;
    }
    return new WorkerGroups(config.groups, workers, counter);
  }

  private workerFor(group: number): GroupWorker {
    return this.workers[workerOf(group, this.workers.length)]!;
  }

  write(group: number, req: WriteRequest): Promise<CommandResult> {
    assert(group === groupOf(req.id, this.count), 'write addressed to the group that owns the id');
    return this.workerFor(group).call({ t: 'write', to: group, req }) as Promise<CommandResult>;
  }

  read(group: number, req: ReadRequest & { id: string }): Promise<QueryResult> {
    assert(group === groupOf(req.id, this.count), 'read addressed to the group that owns the id');
    return this.workerFor(group).call({ t: 'read', to: group, req }) as Promise<QueryResult>;
  }

  /** Each worker lists its own groups' contexts in id order; the first `limit` of the merge win. */
  async list(req: Extract<ReadRequest, { q: 'list' }>): Promise<QueryResult> {
    const parts = (await Promise.all(this.workers.map((w) => w.call({ t: 'list', req })))) as Array<Extract<QueryResult, { q: 'list' }>>;
    const contexts = parts.flatMap((p) => p.contexts).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return { q: 'list', contexts: contexts.slice(0, req.limit) };
  }

  readiness(): Readiness {
    const down = this.workers.findIndex((w) => !w.up);
    return down < 0 ? { ready: true } : { ready: false, reason: `worker ${down} is restarting` };
  }

  metrics(): Promise<ThreadMetrics[]> {
    return scrapeWorkers(this.workers);
  }

  /** Test hook: make worker `index` throw, as a bug would. */
  crash(index: number): Promise<unknown> {
    const worker = this.workers[index];
    if (worker === undefined) return Promise.reject(new FastpacaError('not_found', `this node has no worker ${index}`));
    return worker.call({ t: 'crash' });
  }

  /** Called by the gateway after it has stopped accepting and drained. */
  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.close({ t: 'close' })));
    await this.counter.close();
  }
}
