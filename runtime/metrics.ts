import { isMainThread } from 'node:worker_threads';
import client from 'prom-client';

/**
 * The node's metrics. Names start with fastpaca_; no label ever carries an id, so cardinality
 * stays fixed however many conversations there are.
 */
export const registry = new client.Registry();
// Every thread has this registry; the gateway merges the workers' into its own for /metrics.
// Process-wide figures are collected once, on the main thread.
if (isMainThread) client.collectDefaultMetrics({ register: registry, prefix: 'fastpaca_process_' });
let thread = isMainThread ? 'main' : 'worker';

/** Names this thread in per-thread metrics (a worker's number, stable across its restarts). */
export function setMetricsThread(name: string): void {
  thread = name;
}

let eluLast = performance.eventLoopUtilization();

export const metrics = {
  eventLoopUtilization: new client.Gauge({
    name: 'fastpaca_event_loop_utilization',
    help: 'Share of time a thread was busy since the previous scrape (0..1), by thread',
    labelNames: ['thread'] as const,
    registers: [registry],
    collect() {
      const now = performance.eventLoopUtilization();
      this.set({ thread }, performance.eventLoopUtilization(now, eluLast).utilization);
      eluLast = now;
    },
  }),
  httpRequests: new client.Counter({
    name: 'fastpaca_http_requests_total',
    help: 'HTTP requests answered, by route and status class',
    labelNames: ['route', 'status'] as const,
    registers: [registry],
  }),
  writeRounds: new client.Counter({
    name: 'fastpaca_write_rounds_total',
    help: 'Write rounds (one command-log fsync each)',
    registers: [registry],
  }),
  commandsApplied: new client.Counter({
    name: 'fastpaca_commands_applied_total',
    help: 'Commands applied by the state machine, by kind',
    labelNames: ['kind'] as const,
    registers: [registry],
  }),
  commandsRejected: new client.Counter({
    name: 'fastpaca_commands_overloaded_total',
    help: 'Writes refused with 503 overloaded because the pending queue was full',
    registers: [registry],
  }),
  roundSeconds: new client.Histogram({
    name: 'fastpaca_write_round_seconds',
    help: 'Time from the start of a write round to its answer (log fsync, then apply)',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  }),
  roundCommands: new client.Histogram({
    name: 'fastpaca_write_round_commands',
    help: 'Commands per write round',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048],
    registers: [registry],
  }),
  pendingCommands: new client.Gauge({
    name: 'fastpaca_pending_commands',
    help: 'Commands waiting for a write round',
    registers: [registry],
  }),
  bufferedWrites: new client.Gauge({
    name: 'fastpaca_buffered_writes',
    help: 'Applied writes held in memory until the state store commits them (bounded by FASTPACA_BUFFERED_WRITES_MAX)',
    registers: [registry],
  }),
  mailboxDepth: new client.Gauge({
    name: 'fastpaca_mailbox_depth_bytes',
    help: 'Bytes waiting in the shared-memory rings between the gateway and the workers, by direction',
    labelNames: ['direction'] as const,
    registers: [registry],
  }),
  mailboxFull: new client.Counter({
    name: 'fastpaca_mailbox_full_total',
    help: 'Messages refused because a ring was full (calls answered 503 overloaded), by direction',
    labelNames: ['direction'] as const,
    registers: [registry],
  }),
  actorMessages: new client.Counter({
    name: 'fastpaca_actor_messages_total',
    help: 'Messages handled by the group actors on the worker threads',
    registers: [registry],
  }),
  actorBusySeconds: new client.Counter({
    name: 'fastpaca_actor_busy_seconds_total',
    help: 'Time the group actors spent handling messages (divide by fastpaca_actor_messages_total for the mean)',
    registers: [registry],
  }),
  workerRestarts: new client.Counter({
    name: 'fastpaca_worker_restarts_total',
    help: 'Worker threads started again after they crashed',
    registers: [registry],
  }),
  internalErrors: new client.Counter({
    name: 'fastpaca_internal_errors_total',
    help: 'Bugs caught at a boundary (answered with 500 internal)',
    registers: [registry],
  }),
  clusterFrames: new client.Counter({
    name: 'fastpaca_cluster_frames_total',
    help: 'Frames between this node and its peers',
    labelNames: ['direction'],
    registers: [registry],
  }),
  clusterDropped: new client.Counter({
    name: 'fastpaca_cluster_dropped_messages_total',
    help: 'Messages to peers dropped because the peer queue was full (Raft resends)',
    registers: [registry],
  }),
  clusterRejected: new client.Counter({
    name: 'fastpaca_cluster_rejected_connections_total',
    help: 'Peer connections closed for a protocol violation (bad frame or handshake)',
    registers: [registry],
  }),
  clusterReturnedPeers: new client.Gauge({
    name: 'fastpaca_cluster_returned_peers',
    help: 'Peers this node refuses because they came back with a new data directory (replace them: docs/operations.md)',
    registers: [registry],
  }),
  clusterInvalid: new client.Counter({
    name: 'fastpaca_cluster_invalid_messages_total',
    help: 'Messages from peers dropped because they did not have the expected shape',
    registers: [registry],
  }),
  raftRoundSeconds: new client.Histogram({
    name: 'fastpaca_raft_round_seconds',
    help: 'Duration of a Raft round: one write and one fdatasync (off the thread) for every group, send, apply',
    buckets: [0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1],
    registers: [registry],
  }),
  commitSeconds: new client.Histogram({
    name: 'fastpaca_commit_seconds',
    help: 'Time from proposing a write on its leader to applying it (replicated to a quorum)',
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  }),
  snapshotsInstalled: new client.Counter({
    name: 'fastpaca_snapshots_installed_total',
    help: 'Group snapshots this node installed from a leader (it had fallen behind a compacted log)',
    registers: [registry],
  }),
  snapshotsBuilt: new client.Counter({
    name: 'fastpaca_snapshots_built_total',
    help: 'Group snapshots this node built from its state store for a lagging replica',
    registers: [registry],
  }),
  forwarded: new client.Counter({
    name: 'fastpaca_forwarded_requests_total',
    help: 'Requests this node forwarded to the leader of their group on another node',
    registers: [registry],
  }),
};

/** One thread's metrics as prom-client exports them. */
export type ThreadMetrics = Awaited<ReturnType<typeof registry.getMetricsAsJSON>>;

/** Prometheus text for the whole node: this thread's metrics merged with the workers' (summed). */
export async function nodeMetrics(workers: ThreadMetrics[]): Promise<string> {
  if (workers.length === 0) return registry.metrics();
  return client.AggregatorRegistry.aggregate([await registry.getMetricsAsJSON(), ...workers]).metrics();
}
