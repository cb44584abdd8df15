import { Worker } from 'node:worker_threads';
import { FastpacaError } from './errors.js';
import type { Logger } from './log.js';
import { metrics, type ThreadMetrics } from './metrics.js';
import { createMailboxRings, type MailboxRings } from './mailbox.js';
import { Rpc, type RpcOptions } from './rpc.js';

/** What a supervised worker thread receives as workerData, beside its own data. */
export interface SupervisedWorkerData<D> {
  rings: MailboxRings;
  data: D;
}

/** Lifecycle messages a worker posts (traffic goes through the rings). */
export type WorkerLifecycle = { type: 'ready' } | { type: 'oversize'; record: Uint8Array };

export interface SupervisorOptions<D, CallIn, AnswerOut> {
  name: string;
  /** The worker's entry module (compiled JS). */
  entry: URL;
  data: D;
  mailboxBytes: number;
  rpc: Omit<RpcOptions, 'counters'>;
  counters?: RpcOptions['counters'];
  /** Answers the worker's calls to this thread. */
  handler: (call: CallIn) => AnswerOut | Promise<AnswerOut>;
  log: Logger;
  /** Called on every unexpected exit (for a metric). */
  onRestart?: () => void;
  /** Called when the worker keeps failing to start: the node cannot go on. */
  onFatal: (err: Error) => void;
}

/** Restart delays double from the first to the last; a worker that stays up resets them. */
const RestartDelayFirstMs = 50;
const RestartDelayMaxMs = 5_000;
/** Up this long after a restart counts as recovered. */
const StableMs = 30_000;
/** Restarts in a row that never reached ready before the supervisor gives up. */
const FailedStartsMax = 10;
/** A closing worker that does not answer within this is terminated. */
const CloseDeadlineMs = 60_000;

type State = 'starting' | 'up' | 'down' | 'closing' | 'closed';

/**
 * Runs one worker thread and keeps it running: a worker that throws or exits is started again
 * (with a fresh pair of rings: the old ones may hold half a conversation), after a delay that
 * grows while restarts keep failing. Calls made while it is down, and calls in flight when it
 * died, fail with 503 `unavailable`; the worker's state is in LMDB and its command log, which
 * it reloads on start, so nothing acknowledged is lost.
 */
export class SupervisedWorker<D, CallOut, AnswerIn, CallIn, AnswerOut> {
  private state: State = 'down';
  private worker: Worker | undefined;
  private rpc: Rpc<CallOut, AnswerIn, CallIn, AnswerOut> | undefined;
  private restartDelayMs = RestartDelayFirstMs;
  private failedStarts = 0;
  private upSince = 0;
  restarts = 0;

  constructor(private readonly opts: SupervisorOptions<D, CallIn, AnswerOut>) {}

  get up(): boolean {
    return this.state === 'up';
  }

  /** The mailbox to this worker, while it is up (for depth gauges). */
  get channel(): Rpc<CallOut, AnswerIn, CallIn, AnswerOut> | undefined {
    return this.rpc;
  }

  /** Starts the worker; rejects if the first start fails (bad data dir, say): nothing to supervise. */
  start(): Promise<void> {
    return this.spawn();
  }

  call(body: CallOut): Promise<AnswerIn> {
    if (this.state !== 'up' || !this.rpc) {
      return Promise.reject(new FastpacaError('unavailable', `${this.opts.name} is ${this.state === 'closing' || this.state === 'closed' ? 'shutting down' : 'restarting'}; retry`, { retryAfterS: 1 }));
    }
    return this.rpc.call(body);
  }

  /**
   * Asks the worker to finish and close (`closeCall` is the call that does it), then lets it
   * exit. Bounded: a worker that does not answer in time is terminated.
   */
  async close(closeCall: CallOut): Promise<void> {
    const worker = this.worker;
    const rpc = this.rpc;
    if (this.state !== 'up' || !worker || !rpc) {
      this.state = 'closed';
      await worker?.terminate();
      return;
    }
    this.state = 'closing';
    const deadline = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), CloseDeadlineMs).unref());
    const closed = await Promise.race([rpc.call(closeCall).then(() => 'ok' as const, (err: unknown) => err), deadline]);
    if (closed !== 'ok') this.opts.log.error('worker did not close cleanly; terminating it', { worker: this.opts.name, err: closed === 'late' ? 'deadline' : closed });
    this.state = 'closed';
    rpc.close(new FastpacaError('unavailable', 'the node is shutting down', { retryAfterS: 1 }));
    await worker.terminate();
  }

  /** Test hook: terminate the thread as a crash would (it is restarted like after any crash). */
  async kill(): Promise<void> {
    await this.worker?.terminate();
  }

  private spawn(): Promise<void> {
    this.state = 'starting';
    const { a, b } = createMailboxRings(this.opts.mailboxBytes);
    const workerData: SupervisedWorkerData<D> = { rings: b, data: this.opts.data };
    const worker = new Worker(this.opts.entry, { workerData });
    const rpc = new Rpc<CallOut, AnswerIn, CallIn, AnswerOut>(
      a,
      this.opts.handler,
      (record) => worker.postMessage({ type: 'oversize', record } satisfies WorkerLifecycle, [record.buffer as ArrayBuffer]),
      { ...this.opts.rpc, counters: this.opts.counters },
    );
    this.worker = worker;
    this.rpc = rpc;
    rpc.start();
    return new Promise<void>((resolve, reject) => {
      let ready = false;
      worker.on('message', (m: WorkerLifecycle) => {
        if (m.type === 'oversize') return rpc.mailbox.receiveOversize(m.record);
        if (m.type !== 'ready' || this.worker !== worker) return;
        ready = true;
        this.state = 'up';
        this.failedStarts = 0;
        this.upSince = performance.now();
        resolve();
      });
      worker.on('error', (err) => this.opts.log.error('worker failed', { worker: this.opts.name, err }));
      worker.on('exit', (code) => {
        rpc.close(new FastpacaError('unavailable', `${this.opts.name} stopped before answering; retry`, { retryAfterS: 1 }));
        if (this.worker !== worker || this.state === 'closing' || this.state === 'closed') return;
        this.state = 'down';
        if (!ready && this.restarts === 0) return reject(new Error(`${this.opts.name} exited with code ${code} before it was ready`));
        if (!ready) this.failedStarts++;
        if (this.failedStarts >= FailedStartsMax) {
          return this.opts.onFatal(new Error(`${this.opts.name} failed to start ${this.failedStarts} times in a row`));
        }
        if (ready && performance.now() - this.upSince > StableMs) this.restartDelayMs = RestartDelayFirstMs;
        const delay = this.restartDelayMs;
        this.restartDelayMs = Math.min(RestartDelayMaxMs, this.restartDelayMs * 2);
        this.restarts++;
        this.opts.onRestart?.();
        this.opts.log.error('worker exited; starting it again', { worker: this.opts.name, code, delay_ms: delay, restarts: this.restarts });
        setTimeout(() => {
          if (this.state === 'down') this.spawn().catch((err: unknown) => this.opts.log.error('worker restart failed', { worker: this.opts.name, err }));
        }, delay);
      });
    });
  }
}

/** What a scrape needs of a worker: whether it is up, its mailbox, and a call that returns its metrics. */
interface Scraped {
  readonly up: boolean;
  readonly channel: { mailbox: { outgoingBytes(): number; depthBytes(): number } } | undefined;
  call(body: { t: 'metrics' }): Promise<unknown>;
}

/**
 * For /metrics: sets the mailbox depth gauges from the rings (they hold the truth, nothing to
 * keep in step) and collects the metrics of every worker that is up; one that is down, or does
 * not answer, has none to add (its counters start again with it).
 */
export async function scrapeWorkers(workers: readonly Scraped[]): Promise<ThreadMetrics[]> {
  let toWorker = 0;
  let fromWorker = 0;
  for (const w of workers) {
    const mailbox = w.channel?.mailbox;
    if (!mailbox) continue;
    toWorker += mailbox.outgoingBytes();
    fromWorker += mailbox.depthBytes();
  }
  metrics.mailboxDepth.set({ direction: 'to_worker' }, toWorker);
  metrics.mailboxDepth.set({ direction: 'from_worker' }, fromWorker);
  const all = await Promise.all(workers.map((w) => (w.up ? (w.call({ t: 'metrics' }) as Promise<ThreadMetrics>).catch(() => undefined) : undefined)));
  return all.filter((m) => m !== undefined);
}
