import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '../bin/fastpaca.js');

/**
 * `fastpaca cluster --nodes N [--base-port P] [--dir D]`: N nodes as child processes on this
 * machine, node i with HTTP on P + i, its cluster port on P + 100 + i and its data in D/node-i,
 * their logs on this terminal prefixed with the node. Ctrl-C stops them all gracefully.
 */
export async function clusterCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { nodes: { type: 'string', default: '3' }, 'base-port': { type: 'string', default: '4000' }, dir: { type: 'string', default: './data-cluster' }, host: { type: 'string', default: '127.0.0.1' } },
  });
  const nodes = Number(values.nodes);
  const base = Number(values['base-port']);
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 9) return usage('--nodes must be a whole number from 1 to 9');
  if (!Number.isInteger(base) || base < 1 || base + 100 + nodes > 65535) return usage('--base-port must leave room for the HTTP and cluster ports');
  const host = values.host!;
  const ids = Array.from({ length: nodes }, (_, i) => `node-${i}`);
  const peers = ids.map((id, i) => `${id}=${host}:${base + 100 + i}`).join(',');
  const children: ChildProcess[] = [];
  for (let i = 0; i < nodes; i++) {
    const dataDir = path.resolve(values.dir!, ids[i]!);
    fs.mkdirSync(dataDir, { recursive: true });
    const child = spawn(process.execPath, [cli, 'serve'], {
      // Nodes that share one machine's cores run on one thread each unless told otherwise.
      env: { FASTPACA_WORKERS: '0', ...process.env, PORT: String(base + i), HOST: host, FASTPACA_NODE_ID: ids[i], FASTPACA_DATA_DIR: dataDir, FASTPACA_PEERS: nodes > 1 ? peers : '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [child.stdout!, child.stderr!]) {
      let rest = '';
      stream.on('data', (d: Buffer) => {
        const lines = (rest + d.toString()).split('\n');
        rest = lines.pop()!;
        for (const line of lines) process.stdout.write(`${ids[i]} | ${line}\n`);
      });
    }
    children.push(child);
    process.stdout.write(`${ids[i]}: http://${host}:${base + i} (cluster port ${base + 100 + i}, data ${dataDir})\n`);
  }
  const exits = children.map((c) => new Promise<number>((resolve) => c.once('exit', (code) => resolve(code ?? 1))));
  const stop = () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  // One node exiting on its own is worth knowing, not a reason to stop the others.
  const codes = await Promise.all(exits);
  return codes.every((c) => c === 0) ? 0 : 1;
}

function usage(message: string): number {
  process.stderr.write(`fastpaca cluster: ${message}\nusage: fastpaca cluster --nodes N [--base-port P] [--dir D] [--host H]\n`);
  return 2;
}
