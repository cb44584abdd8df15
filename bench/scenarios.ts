/**
 * `fastpaca bench <scenario>`: runs a scenario against a node it starts itself (or `--url`),
 * always next to a bare uWS echo measured in the same run, so the figure that matters is the
 * ratio — absolute req/s on a shared 2-core box says more about the box than about us.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { groupOf } from '../runtime/hash.js';
import { httpRequest, runLoad } from './driver.js';
import { runMailboxBench } from './mailbox.js';
import type { LoadResult } from './driver.js';

export interface BenchArgs {
  url?: string;
  json: boolean;
  durationS?: number;
  connections?: number;
  /** append: also measure a local cluster of this many nodes (3 replicas), beside the single node. */
  cluster?: number;
  /**
   * append on a cluster (--cluster, or --url with several nodes): also measure a leader-aware
   * client, which sends each append to the node leading its context's group (from GET
   * /v1/cluster and the documented id → group hash), so no request is forwarded.
   */
  leaderAware?: boolean;
}

type Scenario = (args: BenchArgs, run: RunState) => Promise<number>;

const SCENARIOS: Record<string, { describe: string; run: Scenario }> = {
  append: {
    describe: 'single-message appends over 1,000 contexts: a bare uWS echo, the node on one thread, the node on its worker threads',
    run: appendScenario,
  },
  mailbox: {
    describe: 'messages between two threads through the shared-memory ring, against worker.postMessage',
    run: (args) => runMailboxBench(args.json),
  },
  replicas: {
    describe: 'one worker\'s write path as Raft groups over RaftWal against the command log, same rounds, real fdatasync',
    run: async (args) => (await import('./replicas.js')).runReplicasBench(args.json, args.durationS),
  },
  raft: {
    describe: 'entries/s through a 3-node in-memory Raft cluster on one thread (the core alone)',
    run: async (args) => (await import('../actors/raft/bench.js')).benchRaft({ json: args.json, durationS: args.durationS }),
  },
};

const DEFAULT_DURATION_S = 10;
const DEFAULT_CONNECTIONS = 64;
const CONTEXTS = 1000;
const READY_TIMEOUT_MS = 30_000;
const ECHO_START_TIMEOUT_MS = 10_000;
const SETUP_TIMEOUT_MS = 60_000;
const KILL_GRACE_MS = 5_000;

const ECHO_SCRIPT = fileURLToPath(new URL('./echo-server.js', import.meta.url));
const NODE_SCRIPT = fileURLToPath(new URL('../bin/fastpaca.js', import.meta.url));

/** Children and temp dirs a run created, so `finally` can undo them whatever failed. */
interface RunState {
  children: ChildProcess[];
  tempDirs: string[];
}

/** Runs one scenario and returns the process exit code (0 ok, 1 failed, 2 usage). */
export async function runBench(scenario: string, args: BenchArgs): Promise<number> {
  const entry = Object.hasOwn(SCENARIOS, scenario) ? SCENARIOS[scenario] : undefined;
  if (entry === undefined) {
    const lines = Object.entries(SCENARIOS).map(([name, s]) => `  ${name.padEnd(10)} ${s.describe}`);
    process.stderr.write(`unknown scenario ${JSON.stringify(scenario)}; scenarios:\n${lines.join('\n')}\n`);
    return 2;
  }
  if (args.durationS !== undefined && !(args.durationS > 0 && args.durationS <= 3600)) {
    process.stderr.write('bench: duration must be between 0 and 3600 seconds\n');
    return 2;
  }
  if (args.connections !== undefined && !(Number.isInteger(args.connections) && args.connections >= 1 && args.connections <= 10_000)) {
    process.stderr.write('bench: connections must be a whole number between 1 and 10000\n');
    return 2;
  }
  if (args.cluster !== undefined && !(Number.isInteger(args.cluster) && args.cluster >= 2 && args.cluster <= 9)) {
    process.stderr.write('bench: --cluster must be a whole number of nodes from 2 to 9\n');
    return 2;
  }
  if (args.leaderAware && args.cluster === undefined && !(args.url?.includes(',') ?? false)) {
    process.stderr.write('bench: --leader-aware needs a cluster: --cluster N, or --url with every node\n');
    return 2;
  }
  const state: RunState = { children: [], tempDirs: [] };
  const cleanup = async (): Promise<void> => {
    await Promise.all(state.children.map((c) => stopChild(c)));
    await Promise.all(state.tempDirs.map((d) => rm(d, { recursive: true, force: true })));
  };
  // Ctrl-C or a CI timeout must not leave a node holding a port and a temp dir behind.
  const onSignal = (signal: NodeJS.Signals): void => {
    process.stderr.write(`bench: ${signal}, stopping children\n`);
    void cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await entry.run(args, state);
  } catch (err) {
    process.stderr.write(`bench ${scenario} failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

// ---------------------------------------------------------------------------------------------
// append

interface Target {
  host: string;
  port: number;
  /** Path prefix from --url, without a trailing slash. */
  base: string;
  /** Host header value; matters only behind a proxy that routes on it. */
  hostHeader: string;
  headers: Record<string, string>;
}

async function appendScenario(args: BenchArgs, run: RunState): Promise<number> {
  const durationS = args.durationS ?? DEFAULT_DURATION_S;
  const connections = args.connections ?? DEFAULT_CONNECTIONS;
  // A short smoke run should not spend most of its time warming up.
  const warmupS = Math.min(2, durationS / 2);
  const log = (msg: string): void => void process.stderr.write(`bench: ${msg}\n`);

  // Baseline first, on its own, so the two servers never compete for the two cores.
  const echoPort = await freePort();
  log(`starting echo baseline on 127.0.0.1:${echoPort}`);
  const echo = spawnChild(run, [ECHO_SCRIPT, String(echoPort), '127.0.0.1'], process.env);
  await waitForLine(echo, `{"listening":${echoPort}}`, ECHO_START_TIMEOUT_MS);
  const echoTarget: Target = { host: '127.0.0.1', port: echoPort, base: '', hostHeader: 'localhost', headers: {} };
  log(`driving echo: ${connections} connections, ${warmupS}s warmup + ${durationS}s`);
  const baseline = await runLoad({
    host: echoTarget.host,
    port: echoTarget.port,
    connections,
    durationS,
    warmupS,
    expectStatus: 201,
    request: appendRequests(echoTarget, connections),
  });
  await stopChild(echo);

  const load = async (target: Target, all?: Target[]): Promise<LoadResult> => {
    log(`driving appends: ${connections} connections${all ? ` spread over ${all.length} nodes` : ''}, ${warmupS}s warmup + ${durationS}s`);
    const servers = all?.map((t) => ({ host: t.host, port: t.port }));
    return runLoad({ host: target.host, port: target.port, ...(servers ? { servers } : {}), connections, durationS, warmupS, expectStatus: 201, request: appendRequests(target, connections) });
  };
  /** The same load from a leader-aware client: connection c sends only appends that node c mod n leads. */
  const loadLeaderAware = async (all: Target[]): Promise<LoadResult> => {
    const byNode = await contextsByLeader(all);
    log(`driving appends from a leader-aware client: ${connections} connections spread over ${all.length} nodes (contexts led: ${byNode.map((l) => l.length).join(', ')}), ${warmupS}s warmup + ${durationS}s`);
    const requests = all.map((t, i) => appendRequestsFor(t, byNode[i]!, Math.ceil(connections / all.length)));
    return runLoad({
      host: all[0]!.host,
      port: all[0]!.port,
      servers: all.map((t) => ({ host: t.host, port: t.port })),
      connections,
      durationS,
      warmupS,
      expectStatus: 201,
      request: (conn, n) => requests[conn % all.length]!(Math.floor(conn / all.length), n),
    });
  };

  const rows: Array<readonly [string, LoadResult]> = [['echo (bare uWS)', baseline]];
  let result: LoadResult;
  let singleThread: LoadResult | undefined;
  const workers = process.env.FASTPACA_WORKERS || String(Math.max(1, os.availableParallelism() - 1));
  let singleNode: LoadResult | undefined;
  let leaderAware: LoadResult | undefined;
  if (args.url !== undefined) {
    // A comma list of URLs (a cluster's nodes): connections are spread over them.
    const targets = args.url.split(',').map((u) => targetFromUrl(u.trim()));
    await prepareNode(targets[0]!, undefined);
    result = await load(targets[0]!, targets.length > 1 ? targets : undefined);
    rows.push(['append', result]);
    if (args.leaderAware) {
      leaderAware = await loadLeaderAware(targets);
      rows.push(['append (leader-aware client)', leaderAware]);
    }
  } else if (args.cluster !== undefined) {
    // The single node first (as configured), then the cluster, each alone on the machine.
    singleNode = await withNode(run, {}, log, (t) => load(t));
    rows.push(['append (single node)', singleNode]);
    const measured = await withCluster(run, args.cluster, log, async (first, all) => ({ any: await load(first, all), aware: args.leaderAware ? await loadLeaderAware(all) : undefined }));
    result = measured.any;
    rows.push([`append (${args.cluster}-node cluster)`, result]);
    if (measured.aware) {
      leaderAware = measured.aware;
      rows.push([`append (${args.cluster}-node cluster, leader-aware client)`, leaderAware]);
    }
  } else {
    // The groups on the gateway's thread (FASTPACA_WORKERS=0), then on worker threads as
    // configured: what the worker threads buy, measured in the same run.
    if (workers !== '0') {
      singleThread = await withNode(run, { FASTPACA_WORKERS: '0' }, log, load);
      rows.push(['append (1 thread)', singleThread]);
    }
    result = await withNode(run, { FASTPACA_WORKERS: workers }, log, load);
    rows.push([`append (${workers} worker${workers === '1' ? '' : 's'})`, result]);
  }

  const ratio = baseline.ops_per_s > 0 ? result.ops_per_s / baseline.ops_per_s : 0;
  printTable(rows);
  process.stdout.write(`ratio append/echo: ${ratio.toFixed(3)}\n`);
  if (singleThread) process.stdout.write(`ratio workers/1 thread: ${(result.ops_per_s / singleThread.ops_per_s).toFixed(3)}\n`);
  if (singleNode) process.stdout.write(`ratio cluster/single node: ${(result.ops_per_s / singleNode.ops_per_s).toFixed(3)}\n`);
  if (leaderAware) process.stdout.write(`ratio leader-aware/any node: ${(leaderAware.ops_per_s / result.ops_per_s).toFixed(3)}\n`);
  for (const [name, r] of rows) {
    if (r.first_error !== undefined) process.stdout.write(`${name}: first error: ${r.first_error}\n`);
  }
  if (args.json) {
    const summary = {
      scenario: 'append',
      ops_per_s: Math.round(result.ops_per_s),
      p50_ms: round(result.p50_ms, 3),
      p99_ms: round(result.p99_ms, 3),
      p999_ms: round(result.p999_ms, 3),
      errors: result.errors,
      baseline_per_s: Math.round(baseline.ops_per_s),
      ratio: round(ratio, 3),
      driver_cpu_pct: round(result.driver_cpu_pct, 1),
      ...(args.url === undefined && args.cluster === undefined ? { workers: Number(workers) } : {}),
      ...(singleNode
        ? {
            nodes: args.cluster,
            single_node_per_s: Math.round(singleNode.ops_per_s),
            single_node_p99_ms: round(singleNode.p99_ms, 3),
            ratio_vs_single_node: round(result.ops_per_s / singleNode.ops_per_s, 3),
          }
        : {}),
      ...(leaderAware
        ? {
            leader_aware_per_s: Math.round(leaderAware.ops_per_s),
            leader_aware_p99_ms: round(leaderAware.p99_ms, 3),
            ratio_leader_aware: round(leaderAware.ops_per_s / result.ops_per_s, 3),
          }
        : {}),
      ...(singleThread
        ? {
            single_thread_per_s: Math.round(singleThread.ops_per_s),
            single_thread_p99_ms: round(singleThread.p99_ms, 3),
            ratio_vs_single_thread: round(result.ops_per_s / singleThread.ops_per_s, 3),
          }
        : {}),
    };
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  }
  return rows.some(([, r]) => r.errors > 0) ? 1 : 0;
}

/** Starts a node on a fresh data dir with `env`, creates the contexts, measures, stops it. */
async function withNode(run: RunState, env: Record<string, string>, log: (msg: string) => void, measure: (target: Target) => Promise<LoadResult>): Promise<LoadResult> {
  const port = await freePort();
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fastpaca-bench-'));
  run.tempDirs.push(dataDir);
  log(`starting node (${Object.entries(env).map(([k, v]) => `${k}=${v}`).join(' ')}) on 127.0.0.1:${port} with data in ${dataDir}`);
  const node = spawnChild(run, [NODE_SCRIPT, 'serve'], { ...process.env, PORT: String(port), HOST: '127.0.0.1', FASTPACA_DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...env });
  const target: Target = { host: '127.0.0.1', port, base: '', hostHeader: 'localhost', headers: {} };
  await prepareNode(target, node);
  const result = await measure(target);
  await stopChild(node);
  return result;
}

/**
 * Starts a cluster of `n` node processes on fresh data dirs (each node's groups on its gateway
 * thread unless FASTPACA_WORKERS is set, FASTPACA_REPLICAS as configured, default 3), waits until every node is ready, creates
 * the contexts through the first, measures with the connections spread over all nodes, stops it.
 */
async function withCluster<T>(run: RunState, n: number, log: (msg: string) => void, measure: (target: Target, all: Target[]) => Promise<T>): Promise<T> {
  const ports = await Promise.all(Array.from({ length: n }, () => freePort()));
  const clusterPorts = await Promise.all(Array.from({ length: n }, () => freePort()));
  const peers = clusterPorts.map((p, i) => `bench-${i}=127.0.0.1:${p}`).join(',');
  const nodes: ChildProcess[] = [];
  for (let i = 0; i < n; i++) {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fastpaca-bench-'));
    run.tempDirs.push(dataDir);
    nodes.push(
      spawnChild(run, [NODE_SCRIPT, 'serve'], {
        // Nodes that share one machine's cores run on one thread each unless told otherwise.
        FASTPACA_WORKERS: '0',
        ...process.env,
        PORT: String(ports[i]),
        HOST: '127.0.0.1',
        FASTPACA_DATA_DIR: dataDir,
        FASTPACA_NODE_ID: `bench-${i}`,
        FASTPACA_PEERS: peers,
        FASTPACA_CLUSTER_PORT: String(clusterPorts[i]),
        LOG_LEVEL: 'warn',
      }),
    );
  }
  log(`started a ${n}-node cluster on 127.0.0.1 ports ${ports.join(', ')}`);
  const targets = ports.map((port): Target => ({ host: '127.0.0.1', port, base: '', hostHeader: 'localhost', headers: {} }));
  for (const [i, t] of targets.entries()) await waitReady(`http://127.0.0.1:${t.port}`, {}, nodes[i]);
  await prepareNode(targets[0]!, nodes[0]);
  const result = await measure(targets[0]!, targets);
  await Promise.all(nodes.map((c) => stopChild(c)));
  return result;
}

async function prepareNode(target: Target, node: ChildProcess | undefined): Promise<void> {
  const origin = `http://${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}${target.base}`;
  await waitReady(origin, target.headers, node);
  process.stderr.write(`bench: creating ${CONTEXTS} contexts\n`);
  await createContexts(origin, target.headers);
}

/**
 * Per node of `all`, the bench contexts whose group it leads now (GET /v1/cluster of each node
 * names the node; the first one's group_status names the leaders), by the id → group hash
 * docs/architecture.md documents (fnv1a32(id) mod groups).
 */
async function contextsByLeader(all: Target[]): Promise<number[][]> {
  const views = await Promise.all(
    all.map(async (t) => {
      const res = await fetch(`http://${t.host.includes(':') ? `[${t.host}]` : t.host}:${t.port}${t.base}/v1/cluster`, { headers: t.headers, signal: AbortSignal.timeout(5000) });
      if (res.status !== 200) throw new Error(`GET /v1/cluster answered ${res.status}`);
      return (await res.json()) as { node: string; groups: number; group_status?: Array<{ group: number; leader: string | null }> };
    }),
  );
  const index = new Map(views.map((v, i) => [v.node, i]));
  const leaders = new Map((views[0]!.group_status ?? []).map((s) => [s.group, s.leader]));
  const byNode: number[][] = all.map(() => []);
  for (let i = 0; i < CONTEXTS; i++) {
    const leader = leaders.get(groupOf(`bench-${i}`, views[0]!.groups));
    const at = leader === null || leader === undefined ? undefined : index.get(leader);
    if (at === undefined) throw new Error(`no leader known for the group of bench-${i}: is every node listed?`);
    byNode[at]!.push(i);
  }
  if (byNode.some((l) => l.length === 0)) throw new Error('a node leads none of the bench contexts: too few contexts to spread');
  return byNode;
}

/** ~250 characters of fixed prose, so every run appends identical bytes. */
const TEXT = (
  'The quick brown fox jumps over the lazy dog while the assistant summarises the previous ' +
  'turns of the conversation, keeps the newest messages in the window, and reports token counts ' +
  'back to the caller so the client can decide when to compact the history.'
).slice(0, 250);

/**
 * Prebuilds one request per context id (the same bytes for echo and the real node) and hands
 * them out round-robin, each connection starting at its own offset so that concurrent
 * connections hit different contexts rather than contending on one.
 */
function appendRequests(target: Target, connections: number): (conn: number, n: number) => Buffer {
  return appendRequestsFor(target, Array.from({ length: CONTEXTS }, (_, i) => i), connections);
}

/** As appendRequests, over the contexts `ids` only (say, those one node leads), for `connections` connections. */
function appendRequestsFor(target: Target, ids: readonly number[], connections: number): (conn: number, n: number) => Buffer {
  const body = JSON.stringify({ message: { role: 'user', parts: [{ type: 'text', text: TEXT }] } });
  const headers = { ...target.headers, host: target.hostHeader };
  const reqs = ids.map((i) => httpRequest('POST', `${target.base}/v1/contexts/bench-${i}/messages`, body, headers));
  const stride = Math.max(1, Math.floor(reqs.length / connections));
  return (conn, n) => reqs[(conn * stride + n) % reqs.length]!;
}

function targetFromUrl(raw: string): Target {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`--url ${JSON.stringify(raw)} is not a URL`);
  }
  if (url.protocol !== 'http:') throw new Error('--url must be http:// (the driver does not speak TLS)');
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const headers: Record<string, string> = {};
  // A node started with FASTPACA_API_KEY refuses /v1 without it; reuse the caller's env.
  const key = process.env.FASTPACA_API_KEY;
  if (key) headers.authorization = `Bearer ${key}`;
  return { host, port: url.port === '' ? 80 : Number(url.port), base: url.pathname.replace(/\/+$/, ''), hostHeader: url.host, headers };
}

/** Polls /health/ready; `node` is the child we started, if any, so its early death fails fast. */
async function waitReady(origin: string, headers: Record<string, string>, node: ChildProcess | undefined): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (node !== undefined && (node.exitCode !== null || node.signalCode !== null)) {
      throw new Error(`node exited (${node.exitCode ?? node.signalCode}) before it was ready\n${outputTail(node)}`);
    }
    try {
      const res = await fetch(`${origin}/health/ready`, { headers, signal: AbortSignal.timeout(2000) });
      last = `${res.status} ${await res.text()}`;
      if (res.status === 200) return;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    await sleep(200);
  }
  const tail = node === undefined ? '' : outputTail(node);
  throw new Error(`${origin} not ready after ${READY_TIMEOUT_MS / 1000}s (last: ${last})${tail ? `\n${tail}` : ''}`);
}

async function createContexts(origin: string, headers: Record<string, string>): Promise<void> {
  const deadline = Date.now() + SETUP_TIMEOUT_MS;
  const body = JSON.stringify({ token_budget: 100000 });
  let next = 0;
  // A few parallel lanes: setup speed is not measured, it only has to finish in bounded time.
  const lane = async (): Promise<void> => {
    while (next < CONTEXTS) {
      if (Date.now() > deadline) throw new Error(`creating contexts took over ${SETUP_TIMEOUT_MS / 1000}s`);
      const i = next++;
      const res = await fetch(`${origin}/v1/contexts/bench-${i}`, {
        method: 'PUT',
        headers: { ...headers, 'content-type': 'application/json' },
        body,
        signal: AbortSignal.timeout(5000),
      });
      const text = await res.text();
      if (res.status < 200 || res.status > 299) throw new Error(`PUT /v1/contexts/bench-${i} answered ${res.status}: ${text.slice(0, 200)}`);
    }
  };
  await Promise.all(Array.from({ length: 16 }, lane));
}

// ---------------------------------------------------------------------------------------------
// output

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function printTable(rows: ReadonlyArray<readonly [string, LoadResult]>): void {
  const header = ['', 'ops/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'errors', 'driver cpu%'];
  const body = rows.map(([name, r]) => [
    name,
    Math.round(r.ops_per_s).toString(),
    r.p50_ms.toFixed(3),
    r.p99_ms.toFixed(3),
    r.p999_ms.toFixed(3),
    r.max_ms.toFixed(3),
    r.errors.toString(),
    r.driver_cpu_pct.toFixed(1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  process.stdout.write(`${[fmt(header), ...body.map(fmt)].join('\n')}\n`);
}

// ---------------------------------------------------------------------------------------------
// processes

const TAIL_BYTES = 8 * 1024;
const tails = new WeakMap<ChildProcess, { text: string }>();

/**
 * Spawns `node <argv>` and always drains its stdout/stderr: a child writing logs into a pipe
 * nobody reads blocks once the pipe fills, which would show up as a latency cliff.
 */
function spawnChild(run: RunState, argv: string[], env: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(process.execPath, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  run.children.push(child);
  const tail = { text: '' };
  tails.set(child, tail);
  const keep = (chunk: Buffer): void => {
    tail.text = (tail.text + chunk.toString('utf8')).slice(-TAIL_BYTES);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // Spawn failures surface as 'error'; without a listener they would crash the bench process.
  child.on('error', (err) => keep(Buffer.from(`spawn error: ${err.message}\n`)));
  return child;
}

function outputTail(child: ChildProcess): string {
  const text = tails.get(child)?.text.trim() ?? '';
  return text === '' ? '' : `--- output of pid ${child.pid} ---\n${text}`;
}

function waitForLine(child: ChildProcess, line: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const done = (err?: Error): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer): void => {
      seen = (seen + chunk.toString('utf8')).slice(-TAIL_BYTES);
      if (seen.split('\n').some((l) => l.trim() === line)) done();
    };
    const onExit = (): void => done(new Error(`child exited (${child.exitCode ?? child.signalCode}) before printing ${line}\n${outputTail(child)}`));
    const timer = setTimeout(() => done(new Error(`no ${line} within ${timeoutMs / 1000}s\n${outputTail(child)}`)), timeoutMs);
    child.stdout?.on('data', onData);
    child.on('exit', onExit);
    if (child.exitCode !== null || child.signalCode !== null) onExit();
  });
}

/** SIGTERM by pid, SIGKILL if still alive after the grace period; resolves once it has exited. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const killTimer = setTimeout(() => {
      child.kill('SIGKILL');
      // If even SIGKILL goes unacknowledged, do not hang the bench forever.
      setTimeout(finish, 2000).unref();
    }, KILL_GRACE_MS);
    function finish(): void {
      clearTimeout(killTimer);
      resolve();
    }
    child.once('exit', finish);
    child.kill('SIGTERM');
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('could not find a free port'))));
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
