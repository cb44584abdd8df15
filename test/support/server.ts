import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const cli = path.join(root, 'dist/bin/fastpaca.js');

/** A free TCP port on 127.0.0.1 (the OS picks it; we release it straight away). */
/** Ports this test process has handed out: the kernel may give a just-closed port out again. */
const handedOut = new Set<number>();

/** A port nobody listens on now, and never one this process handed out before. */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.on('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as net.AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

/** A fresh directory inside the run's directory (test/support/global-setup.ts removes it). */
export function tempDir(prefix = 'fastpaca-test-'): string {
  return fs.mkdtempSync(path.join(process.env.FASTPACA_TEST_TMP ?? os.tmpdir(), prefix));
}

export interface TestServer {
  url: string;
  port: number;
  dataDir: string;
  pid: number;
  output(): string;
  /** Graceful stop (SIGTERM), escalating to SIGKILL after a deadline. */
  stop(): Promise<number | null>;
  /** kill -9. */
  kill(): Promise<void>;
  /** Resolves when the process exits. */
  exited: Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Starts `fastpaca serve` as a real process on a free port and waits until it is ready. */
export async function startServer(opts: { dataDir?: string; env?: Record<string, string>; waitFor?: 'ready' | 'live' } = {}): Promise<TestServer> {
  const port = await freePort();
  const dataDir = opts.dataDir ?? tempDir();
  const child = spawn(process.execPath, [cli, 'serve'], {
    env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', FASTPACA_DATA_DIR: dataDir, LOG_LEVEL: 'warn', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}: ${out}`);
    try {
      const r = await fetch(`${url}/health/${opts.waitFor ?? 'ready'}`);
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server not ready in time: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url,
    port,
    dataDir,
    pid: child.pid!,
    output: () => out,
    exited,
    stop: async () => {
      if (child.exitCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    kill: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

export interface Res<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/** A small JSON client for tests. `body` may be a string to send it raw. */
export async function call<T = any>(base: string, method: string, route: string, body?: unknown, headers: Record<string, string> = {}): Promise<Res<T>> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
  }
  const r = await fetch(base + route, init);
  const text = await r.text();
  let parsed: unknown = text;
  try {
    parsed = text === '' ? null : JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: r.status, body: parsed as T, headers: r.headers };
}
