import { LocalGroups } from '../actors/contexts/groups.js';
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
 * Starts one node: storage first, then the groups, then the gateway. Shutdown runs the other
 * way: stop accepting, answer what is in flight, make every queued write durable, close.
 */
export async function startNode(config: Config, log: Logger): Promise<RunningNode> {
  const groups = await LocalGroups.open(config, log);
  const gateway = createGateway(config, groups, log);
  const port = await gateway.listen();
  log.info('node started', { node_id: config.nodeId, host: config.host, port, data_dir: config.dataDir, groups: config.groups });

  let stopping: Promise<void> | undefined;
  const shutdown = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info('node stopping', { reason });
      gateway.stopListening();
      await gateway.drain(DrainMs);
      await groups.close();
      log.info('node stopped', { reason });
    })();
    return stopping;
  };
  return { port, shutdown };
}
