import os from 'node:os';
import path from 'node:path';
import { isLogLevel, type LogLevel } from './log.js';
import { parsePeers, type PeerSpec } from './placement.js';

export const Tokenizers = ['approx', 'o200k_base', 'cl100k_base'] as const;
export type Tokenizer = (typeof Tokenizers)[number];
export function isTokenizer(value: unknown): value is Tokenizer {
  return typeof value === 'string' && (Tokenizers as readonly string[]).includes(value);
}

export interface Config {
  port: number;
  host: string;
  dataDir: string;
  nodeId: string;
  groups: number;
  tokenizer: Tokenizer;
  apiKey: string | undefined;
  maxBodyBytes: number;
  /** Requests per second for the whole node; undefined means no limit. */
  rateLimitPerS: number | undefined;
  logLevel: LogLevel;
  /** Commands waiting for a write round before new ones get 503 `overloaded`. */
  pendingMax: number;
  /** Commands in one write round (one command-log fsync). */
  batchMax: number;
  /** Write rounds logged and awaiting apply at once. */
  roundsInflightMax: number;
  /** Writes held in memory ahead of the state store before new rounds wait. */
  bufferedWritesMax: number;
  /**
   * How the state store follows the command log: the host's own writes as asynchronous LMDB
   * writes (direct), or the logged commands applied again on the host's thread (inline).
   */
  stateWriter: StateWriterMode;
  /** The direct state writer commits the state store at most this often (ms; 0: as soon as the previous commit is done). */
  stateCommitMs: number;
  /** Threads in the piscina pool for exact token counts. */
  tokenizerThreads: number;
  /** Worker threads hosting the groups; 0 hosts them on the gateway's thread. */
  workers: number;
  /** Bytes of each shared-memory ring between the gateway and a worker (a power of two). */
  mailboxBytes: number;
  /** How long the gateway waits for a worker's answer before it answers 503 `unavailable`. */
  requestTimeoutMs: number;
  /** Test-only commands (crashing a worker on purpose); never set in production. */
  testHooks: boolean;
  /** Every node of the cluster, this one included, sorted by id; undefined: a single node. */
  peers: PeerSpec[] | undefined;
  /** Where this node accepts its peers' connections (its own FASTPACA_PEERS port unless set). */
  clusterPort: number;
  /** Nodes of another cluster are refused at the handshake. */
  clusterId: string;
  /** FASTPACA_CLUSTER_SECRET: peers prove they know it at the handshake; undefined: peers are not authenticated. */
  clusterSecret: string | undefined;
  /** Replicas per group, capped by the node count. */
  replicas: number;
  /** One Raft tick. */
  tickMs: number;
  /** A follower that hears nothing from its leader for this many ticks (up to twice it, at random) campaigns. */
  electionTicks: number;
  /** A leader sends heartbeats every this many ticks. */
  heartbeatTicks: number;
  /** Entries a leader keeps in its log for a lagging follower past what its state store holds; beyond, the follower gets a snapshot. */
  lagEntriesMax: number;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

export const StateWriterModes = ['direct', 'inline'] as const;
export type StateWriterMode = (typeof StateWriterModes)[number];

function stateWriter(raw: string | undefined): StateWriterMode {
  if (raw === undefined || raw === '') return 'direct';
  if ((StateWriterModes as readonly string[]).includes(raw)) return raw as StateWriterMode;
  throw new ConfigError(`FASTPACA_STATE_WRITER must be one of ${StateWriterModes.join(', ')}`);
}

function int(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(`${name} must be a whole number, got ${JSON.stringify(raw)}`);
  const value = Number(raw);
  if (value < min || value > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${value}`);
  return value;
}

function powerOfTwo(env: Env, name: string, fallback: number, min: number, max: number): number {
  const value = int(env, name, fallback, min, max);
  if ((value & (value - 1)) !== 0) throw new ConfigError(`${name} must be a power of two, got ${value}`);
  return value;
}

/** FASTPACA_STATE_COMMIT_MS on a cluster node unless set (docs/operations.md). */
export const ClusterStateCommitMs = 50;

/** Reads the node's configuration from the environment; throws ConfigError with a clear sentence. */
export function loadConfig(env: Env = process.env): Config {
  const tokenizer = env.FASTPACA_TOKENIZER || 'approx';
  if (!isTokenizer(tokenizer)) throw new ConfigError(`FASTPACA_TOKENIZER must be one of ${Tokenizers.join(', ')}`);
  const logLevel = env.LOG_LEVEL || 'info';
  if (!isLogLevel(logLevel)) throw new ConfigError('LOG_LEVEL must be one of debug, info, warn, error');
  const rate = env.FASTPACA_RATE_LIMIT;
  const clustered = cluster(env, env.FASTPACA_NODE_ID || os.hostname());
  return {
    port: int(env, 'PORT', 4000, 0, 65535),
    host: env.HOST || '0.0.0.0',
    dataDir: path.resolve(env.FASTPACA_DATA_DIR || './data'),
    nodeId: env.FASTPACA_NODE_ID || os.hostname(),
    groups: int(env, 'FASTPACA_GROUPS', 256, 1, 65536),
    tokenizer,
    apiKey: env.FASTPACA_API_KEY || undefined,
    maxBodyBytes: int(env, 'FASTPACA_MAX_BODY_BYTES', 1024 * 1024, 1024, 64 * 1024 * 1024),
    rateLimitPerS: rate === undefined || rate === '' ? undefined : int(env, 'FASTPACA_RATE_LIMIT', 0, 1, 10_000_000),
    logLevel,
    pendingMax: int(env, 'FASTPACA_PENDING_MAX', 20_000, 1, 1_000_000),
    batchMax: int(env, 'FASTPACA_BATCH_MAX', 2_000, 1, 100_000),
    roundsInflightMax: int(env, 'FASTPACA_ROUNDS_INFLIGHT_MAX', 4, 1, 64),
    bufferedWritesMax: int(env, 'FASTPACA_BUFFERED_WRITES_MAX', 200_000, 1_000, 10_000_000),
    stateWriter: stateWriter(env.FASTPACA_STATE_WRITER),
    // A cluster node acknowledges from its Raft log, not the state store: fewer store commits
    // (each one an fsync beside the log's) cost it nothing but log kept a little longer.
    stateCommitMs: int(env, 'FASTPACA_STATE_COMMIT_MS', clustered.peers ? ClusterStateCommitMs : 0, 0, 1_000),
    tokenizerThreads: int(env, 'FASTPACA_TOKENIZER_THREADS', 1, 1, 64),
    workers: int(env, 'FASTPACA_WORKERS', Math.max(1, os.availableParallelism() - 1), 0, 64),
    mailboxBytes: powerOfTwo(env, 'FASTPACA_MAILBOX_BYTES', 4 * 1024 * 1024, 64 * 1024, 2 ** 30),
    requestTimeoutMs: int(env, 'FASTPACA_REQUEST_TIMEOUT_MS', 30_000, 100, 600_000),
    testHooks: env.FASTPACA_TEST_HOOKS === '1',
    ...clustered,
  };
}

/**
 * FASTPACA_PEERS of a StatefulSet's pod, when it is not given: pods are named <set>-<ordinal>,
 * FASTPACA_CLUSTER_SIZE says how many there are, and each is reached at its stable DNS name
 * <set>-<i>.<FASTPACA_PEER_DOMAIN> (the headless service) on FASTPACA_CLUSTER_PORT.
 */
function statefulSetPeers(env: Env, nodeId: string): string {
  const size = env.FASTPACA_CLUSTER_SIZE;
  if (size === undefined || size === '') return '';
  const n = int(env, 'FASTPACA_CLUSTER_SIZE', 1, 1, 64);
  const m = /^(.+)-(\d+)$/.exec(nodeId);
  if (!m) throw new ConfigError(`FASTPACA_CLUSTER_SIZE derives the peers from a StatefulSet pod name (<set>-<ordinal>), but the node id is ${JSON.stringify(nodeId)}`);
  const domain = env.FASTPACA_PEER_DOMAIN;
  if (!domain) throw new ConfigError('FASTPACA_CLUSTER_SIZE needs FASTPACA_PEER_DOMAIN (the headless service, e.g. fastpaca-headless.default.svc.cluster.local)');
  const port = int(env, 'FASTPACA_CLUSTER_PORT', 4100, 1, 65535);
  return Array.from({ length: n }, (_, i) => `${m[1]}-${i}=${m[1]}-${i}.${domain}:${port}`).join(',');
}

function cluster(env: Env, nodeId: string): Pick<Config, 'peers' | 'clusterPort' | 'clusterId' | 'clusterSecret' | 'replicas' | 'tickMs' | 'electionTicks' | 'heartbeatTicks' | 'lagEntriesMax'> {
  const raw = env.FASTPACA_PEERS || statefulSetPeers(env, nodeId);
  const peers = raw.trim() === '' ? undefined : parsePeers(raw, nodeId);
  const own = peers?.find((p) => p.id === nodeId)?.port;
  return {
    // A node alone in its peer list is a single node.
    peers: peers !== undefined && peers.length > 1 ? peers : undefined,
    clusterPort: int(env, 'FASTPACA_CLUSTER_PORT', own ?? 4100, 1, 65535),
    clusterId: env.FASTPACA_CLUSTER_ID || 'fastpaca',
    clusterSecret: clusterSecret(env.FASTPACA_CLUSTER_SECRET),
    replicas: int(env, 'FASTPACA_REPLICAS', 3, 1, 7),
    tickMs: int(env, 'FASTPACA_TICK_MS', 100, 10, 10_000),
    electionTicks: int(env, 'FASTPACA_ELECTION_TICKS', 10, 3, 1_000),
    heartbeatTicks: int(env, 'FASTPACA_HEARTBEAT_TICKS', 2, 1, 100),
    lagEntriesMax: int(env, 'FASTPACA_RAFT_LAG_ENTRIES', 20_000, 0, 10_000_000),
  };
}

/** Shortest FASTPACA_CLUSTER_SECRET taken: a short one could be guessed from one recorded handshake. */
export const ClusterSecretCharsMin = 16;

function clusterSecret(raw: string | undefined): string | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (raw.length < ClusterSecretCharsMin) throw new ConfigError(`FASTPACA_CLUSTER_SECRET must be at least ${ClusterSecretCharsMin} characters (e.g. openssl rand -hex 32)`);
  return raw;
}
