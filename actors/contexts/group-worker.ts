/**
 * A group worker thread: hosts the group actors g with g mod W = its index, all sharing one
 * write round (one command-log fsync) per turn. It talks to the gateway only through its
 * mailbox (runtime/rpc.ts); its state is in LMDB and its own command log, which it applies on
 * every start, so the supervisor can restart it after a crash without losing anything
 * acknowledged.
 */
import { workerOf } from '../../runtime/actor.js';
import { FastpacaError } from '../../runtime/errors.js';
import { createLogger } from '../../runtime/log.js';
import { metrics, setMetricsThread } from '../../runtime/metrics.js';
import { WorkerAccounting, WorkerRpcOptions, crashSoon, workerEndpoint } from '../../runtime/worker-endpoint.js';
import type { FromGroupWorker, GroupWorkerData, ToGroupWorker } from './group-protocol.js';
import { openHost, type OpenedHost } from './groups.js';
import type { TokenCounter } from './prepare.js';

let opened: OpenedHost | undefined;

const accounting = new WorkerAccounting();
const endpoint = workerEndpoint<GroupWorkerData, FromGroupWorker, unknown, ToGroupWorker, unknown>(handle, WorkerRpcOptions);
const { config, index } = endpoint.data;
setMetricsThread(`worker-${index}`);
const log = createLogger(config.logLevel, { node_id: config.nodeId, thread: `worker-${index}` });
const owns = (group: number) => workerOf(group, config.workers) === index;
const counter: TokenCounter = {
  countParts: (tokenizer, parts) => endpoint.rpc.call({ t: 'count', tokenizer, parts }) as Promise<number[][]>,
};

function notHere(group: number): FastpacaError {
  // The gateway routes by the same placement; reaching this is a bug, answered as retryable.
  metrics.internalErrors.inc();
  return new FastpacaError('unavailable', `group ${group} is not hosted by worker ${index}; retry`, { retryAfterS: 1 });
}

function handle(call: ToGroupWorker): unknown {
  return accounting.timed(() => dispatch(call));
}

function dispatch(call: ToGroupWorker): unknown {
  const host = opened!.host;
  switch (call.t) {
    case 'write':
      if (!owns(call.to)) throw notHere(call.to);
      return host.submit(call.req);
    case 'read':
      if (!owns(call.to)) throw notHere(call.to);
      return host.read(call.req);
    case 'list':
      return host.read(call.req);
    case 'metrics':
      return accounting.report(endpoint.rpc.mailbox.received);
    case 'crash':
      return crashSoon(config.testHooks, log);
    case 'close':
      return opened!.close().then(() => null);
  }
}
opened = await openHost(config, index, counter, log, owns);
endpoint.ready();
