import { ClusterGroups } from '../actors/contexts/cluster-groups.js';
import { ClusterOnWorker } from '../actors/contexts/cluster-on-worker.js';
import { LocalGroups, OpeningGroups, type Groups } from '../actors/contexts/groups.js';
import { WorkerGroups } from '../actors/contexts/worker-groups.js';
import { createGateway } from '../gateway/server.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';

export interface RunningNode {
  port: number;
  shutdown(reason: string): Promise<void>;
}

/** Time a graceful shutdown gives requests in flight before the store is closed anyway. */
const DrainMs = 10_000;

/**
 * Starts one node: storage first, then the groups, then the gateway (a cluster node's gateway
 * first, answering 503 until its groups have joined). Shutdown runs the other way: stop
 * accepting, answer what is in flight, make every queued write durable, close.
 */
export async function startNode(config: Config, log: Logger): Promise<RunningNode> {
  // A worker that cannot start again leaves its groups without a host: let the orchestrator
  // restart the whole node (the data is on disk).
  const fatal = (err: Error) => {
    log.error('a worker cannot be restarted; exiting', { err });
    process.exit(1);
  };
  let groups: Groups;
  let gateway: ReturnType<typeof createGateway>;
  let port: number;
  if (config.peers !== undefined) {
    // A cluster node serves HTTP while it joins (live, not ready): joining waits for a majority
    // of its peers, and a node its peers refuse waits for an operator, not for a restart.
    const opening = new OpeningGroups(config.groups);
    gateway = createGateway(config, opening, log);
    port = await gateway.listen();
    try {
      groups = config.workers === 0 ? await ClusterGroups.open(config, log) : await ClusterOnWorker.open(config, log, fatal);
    } catch (err) {
      gateway.close();
      throw err;
    }
    opening.opened(groups);
  } else {
    groups = config.workers === 0 ? await LocalGroups.open(config, log) : await WorkerGroups.open(config, log, fatal);
    gateway = createGateway(config, groups, log);
    port = await gateway.listen();
  }
  log.info('node started', { node_id: config.nodeId, host: config.host, port, data_dir: config.dataDir, groups: config.groups, workers: config.peers ? Math.min(1, config.workers) : config.workers, cluster: config.peers ? config.peers.map((p) => p.id) : undefined });

  let stopping: Promise<void> | undefined;
  const shutdown = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info('node stopping', { reason });
      gateway.stopListening();
      await gateway.drain(DrainMs);
      // The app closes before any worker exits (terminating a thread under a live uWS app can
      // abort the process); then the workers make every accepted write durable and stop.
      gateway.close();
      await groups.close();
      log.info('node stopped', { reason });
    })();
    return stopping;
  };
  return { port, shutdown };
}
