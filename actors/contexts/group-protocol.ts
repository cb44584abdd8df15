import type { Config, Tokenizer } from '../../runtime/config.js';
import type { ActorAddress } from '../../runtime/actor.js';
import type { ReadRequest, WriteRequest } from './requests.js';
import type { Part } from './types.js';

/** What a group worker thread is started with. */
export interface GroupWorkerData {
  config: Config;
  /** This worker's number: it hosts the groups g with g mod config.workers = index. */
  index: number;
}

/** Gateway → worker calls. Writes and reads go to one group actor; the rest to the thread. */
export type ToGroupWorker =
  | { t: 'write'; to: ActorAddress['actor']; req: WriteRequest }
  | { t: 'read'; to: ActorAddress['actor']; req: ReadRequest }
  | { t: 'list'; req: Extract<ReadRequest, { q: 'list' }> }
  | { t: 'metrics' }
  | { t: 'crash' }
  | { t: 'close' };

/** Worker → gateway calls: exact token counts run in the node's one piscina pool. */
export type FromGroupWorker = { t: 'count'; tokenizer: Exclude<Tokenizer, 'approx'>; parts: Part[][] };

/** Gateway → cluster worker calls: the node's ClusterGroups runs on that thread (cluster-worker.ts). */
export type ToClusterWorker =
  | { t: 'write'; group: number; req: WriteRequest }
  | { t: 'read'; group: number; req: ReadRequest & { id: string } }
  | { t: 'list'; req: Extract<ReadRequest, { q: 'list' }> }
  | { t: 'readiness' }
  | { t: 'cluster' }
  | { t: 'replace'; node: string }
  | { t: 'metrics' }
  | { t: 'crash' }
  | { t: 'close' };

/** What a cluster worker thread is started with. */
export interface ClusterWorkerData {
  config: Config;
}
