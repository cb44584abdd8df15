import { parentPort, workerData } from 'node:worker_threads';
import { FastpacaError, assert } from './errors.js';
import type { Logger } from './log.js';
import { metrics, registry } from './metrics.js';
import { Rpc, type RpcOptions } from './rpc.js';
import type { SupervisedWorkerData, WorkerLifecycle } from './supervisor.js';

/**
 * The worker thread's end of a SupervisedWorker: its data, and the Rpc to the thread that
 * started it. Call `ready()` once the worker can serve; the supervisor routes nothing to it
 * before. The parent port's listener keeps the thread alive (Atomics.waitAsync does not).
 */
export function workerEndpoint<D, CallOut, AnswerIn, CallIn, AnswerOut>(
  handler: (call: CallIn) => AnswerOut | Promise<AnswerOut>,
  opts: RpcOptions,
): { data: D; rpc: Rpc<CallOut, AnswerIn, CallIn, AnswerOut>; ready(): void } {
  assert(parentPort !== null, 'a worker endpoint runs on a worker thread');
  const port = parentPort;
  const { rings, data } = workerData as SupervisedWorkerData<D>;
  const rpc = new Rpc<CallOut, AnswerIn, CallIn, AnswerOut>(
    rings,
    handler,
    (record) => port.postMessage({ type: 'oversize', record } satisfies WorkerLifecycle, [record.buffer as ArrayBuffer]),
    opts,
  );
  port.on('message', (m: WorkerLifecycle) => {
    if (m.type === 'oversize') rpc.mailbox.receiveOversize(m.record);
  });
  return {
    data,
    rpc,
    ready: () => {
      rpc.start();
      port.postMessage({ type: 'ready' } satisfies WorkerLifecycle);
    },
  };
}

/**
 * A worker's end of its mailbox: its calls to the gateway are few (token counts), and the
 * gateway bounds what it sends, so these limits only catch a runaway.
 */
export const WorkerRpcOptions: RpcOptions = {
  timeoutMs: 30_000,
  inflightMax: 100_000,
  outboxMax: 1_000_000,
  counters: { full: () => metrics.mailboxFull.labels('from_worker').inc() },
};

/** What a worker reports when the gateway scrapes it: time in its handlers and messages taken, since the last scrape. */
export class WorkerAccounting {
  private busyMs = 0;
  private reportedMessages = 0;

  /** Runs a call's handler, counting its time as busy. */
  timed<T>(handler: () => T): T {
    const started = performance.now();
    try {
      return handler();
    } finally {
      this.busyMs += performance.now() - started;
    }
  }

  /** The thread's metrics, with what happened since the last report counted in. */
  report(messagesReceived: number): unknown {
    metrics.actorBusySeconds.inc(this.busyMs / 1000);
    this.busyMs = 0;
    metrics.actorMessages.inc(messagesReceived - this.reportedMessages);
    this.reportedMessages = messagesReceived;
    return registry.getMetricsAsJSON();
  }
}

/** Test hook (FASTPACA_TEST_HOOKS=1 only): the thread throws on its next turn, as a bug would. */
export function crashSoon(testHooks: boolean, log: Logger): null {
  if (!testHooks) throw new FastpacaError('not_found', 'test hooks are off');
  log.warn('crashing on request (test hook)');
  setImmediate(() => {
    throw new Error('worker crash requested by a test');
  });
  return null;
}
