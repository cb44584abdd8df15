import { CommandLog } from '../actors/contexts/command-log.js';
import { GroupHost, recover } from '../actors/contexts/group-host.js';
import { LocalGroups } from '../actors/contexts/groups.js';
import { LmdbStore } from '../actors/contexts/lmdb-store.js';
import { monotonicClock } from '../actors/contexts/prepare.js';
import { PoolTokenCounter } from '../actors/tokenizer/pool.js';
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
  const store = LmdbStore.open(config.dataDir, config.groups);
  const commandLog = CommandLog.open(config.dataDir);
  const machine = { defaultTokenizer: config.tokenizer };
  const replayed = await recover(store, commandLog, machine);
  if (replayed > 0) log.info('applied the command log after the last stop', { commands: replayed });
  const counter = new PoolTokenCounter(config.tokenizerThreads);
  const host = new GroupHost(store, commandLog, {
    machine,
    counter,
    now: monotonicClock(),
    log,
    pendingMax: config.pendingMax,
    batchMax: config.batchMax,
    roundsInflightMax: config.roundsInflightMax,
    bufferedWritesMax: config.bufferedWritesMax,
  });
  const groups = new LocalGroups(config.groups, host);
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
      await commandLog.close();
      await store.close();
      await counter.close();
      log.info('node stopped', { reason });
    })();
    return stopping;
  };
  return { port, shutdown };
}
