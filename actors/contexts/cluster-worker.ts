/**
 * The cluster worker thread: runs this node's ClusterGroups (its replicas of the groups, the TCP
 * transport to the peers, routing, the coordinator), so that the gateway's thread only parses,
 * validates and answers HTTP. It talks to the gateway through its mailbox (runtime/rpc.ts). Its
 * state is in LMDB and its Raft log, which it reloads on every start: the supervisor can restart
 * it after a crash without losing anything acknowledged (to its peers, a node that restarted).
 */
import { createLogger } from '../../runtime/log.js';
import { setMetricsThread } from '../../runtime/metrics.js';
import { WorkerAccounting, WorkerRpcOptions, crashSoon, workerEndpoint } from '../../runtime/worker-endpoint.js';
import { ClusterGroups } from './cluster-groups.js';
import type { ClusterWorkerData, ToClusterWorker } from './group-protocol.js';

let groups: ClusterGroups | undefined;
const accounting = new WorkerAccounting();
const endpoint = workerEndpoint<ClusterWorkerData, never, unknown, ToClusterWorker, unknown>(handle, WorkerRpcOptions);
const { config } = endpoint.data;
setMetricsThread('cluster');
const log = createLogger(config.logLevel, { node_id: config.nodeId, thread: 'cluster' });

function handle(call: ToClusterWorker): unknown {
  return accounting.timed(() => dispatch(call));
}

function dispatch(call: ToClusterWorker): unknown {
  const g = groups!;
  switch (call.t) {
    case 'write':
      return g.write(call.group, call.req);
    case 'read':
      return g.read(call.group, call.req);
    case 'list':
      return g.list(call.req);
    case 'readiness':
      return g.readiness();
    case 'cluster':
      return g.cluster();
    case 'replace':
      return g.replaceNode(call.node);
    case 'metrics':
      return accounting.report(endpoint.rpc.mailbox.received);
    case 'crash':
      return crashSoon(config.testHooks, log);
    case 'close':
      return g.close().then(() => null);
  }
}

groups = await ClusterGroups.open(config, log);
endpoint.ready();
