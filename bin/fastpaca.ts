#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from '../runtime/config.js';
import { createLogger } from '../runtime/log.js';
import { startNode } from '../runtime/node.js';

const usage = `usage: fastpaca <command>

commands:
  serve                         run a node configured from the environment (see docs/operations.md)
  bench <scenario> [--url U] [--json] [--duration S] [--connections N] [--cluster N] [--leader-aware]
                                run a benchmark scenario (scenarios: append, mailbox, raft)
  cluster [--nodes N] [--base-port P] [--dir D]
                                run a local cluster of N nodes (HTTP on P+i, cluster port P+100+i)
  sim [--seeds N] [--start S] [--steps M] [--trace]
                                run the deterministic Raft simulator; exits 1 on a violation
`;

async function serve(): Promise<number> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`fastpaca: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = createLogger(config.logLevel, { node_id: config.nodeId });
  const node = await startNode(config, log);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => void node.shutdown(signal).then(resolve);
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}

async function bench(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { url: { type: 'string' }, json: { type: 'boolean', default: false }, duration: { type: 'string' }, connections: { type: 'string' }, cluster: { type: 'string' }, 'leader-aware': { type: 'boolean', default: false } },
  });
  const { runBench } = await import('../bench/scenarios.js');
  return runBench(positionals[0] ?? '', {
    url: values.url,
    json: values.json ?? false,
    durationS: values.duration === undefined ? undefined : Number(values.duration),
    connections: values.connections === undefined ? undefined : Number(values.connections),
    cluster: values.cluster === undefined ? undefined : Number(values.cluster),
    leaderAware: values['leader-aware'] ?? false,
  });
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      return serve();
    case 'bench':
      return bench(rest);
    case 'cluster':
      return (await import('../runtime/local-cluster.js')).clusterCommand(rest);
    case 'sim':
      return (await import('../actors/raft/sim/cli.js')).simCommand(rest);
    case undefined:
    case 'help':
    case '--help':
      process.stdout.write(usage);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`fastpaca: unknown command ${JSON.stringify(command)}\n${usage}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    // A mistyped option (any subcommand's parseArgs) is a usage error, not a crash.
    const code = (err as { code?: unknown } | undefined)?.code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS_')) {
      process.stderr.write(`fastpaca: ${(err as Error).message.split('. ')[0]}\n${usage}`);
      process.exit(2);
    }
    process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), level: 'error', msg: 'fatal', err: String((err as Error)?.stack ?? err) })}\n`);
    process.exit(1);
  },
);
