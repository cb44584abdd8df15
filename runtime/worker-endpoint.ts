import { parentPort, workerData } from 'node:worker_threads';
import { assert } from './errors.js';
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
