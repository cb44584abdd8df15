import net from 'node:net';

/**
 * A fault-injecting TCP proxy on 127.0.0.1, placed between two nodes: it forwards bytes both
 * ways and, on command, drops them (both ways or one way), delays them, or resets every
 * connection. Partitions in the tests are made with this, never with network namespaces.
 */
export type ProxyMode = 'pass' | 'drop' | 'drop-to-target' | 'drop-from-target';

export class FaultProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<{ client: net.Socket; upstream: net.Socket }>();
  mode: ProxyMode = 'pass';
  /** Milliseconds added before each chunk is forwarded (order is kept). */
  delayMs = 0;
  /** Connections accepted so far. */
  accepted = 0;

  private constructor(
    private readonly target: { host: string; port: number },
    readonly port: number,
    server: net.Server,
  ) {
    this.server = server;
  }

  static async start(target: { host: string; port: number }, port = 0): Promise<FaultProxy> {
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port }, () => resolve());
    });
    const proxy = new FaultProxy(target, (server.address() as net.AddressInfo).port, server);
    server.on('connection', (client) => proxy.accept(client));
    return proxy;
  }

  /** Closes every connection through the proxy at once (both sides see a reset). */
  reset(): void {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    this.pairs.clear();
  }

  async close(): Promise<void> {
    this.reset();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    this.accepted++;
    const upstream = net.connect(this.target);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    this.forward(client, upstream, () => this.mode === 'pass' || this.mode === 'drop-from-target');
    this.forward(upstream, client, () => this.mode === 'pass' || this.mode === 'drop-to-target');
  }

  /** Chunks go through in order; a dropped chunk is gone (as on a lossy link, the stream breaks). */
  private forward(from: net.Socket, to: net.Socket, passes: () => boolean): void {
    let chain = Promise.resolve();
    from.on('data', (chunk: Buffer) => {
      if (!passes()) return;
      const due = performance.now() + this.delayMs;
      chain = chain.then(async () => {
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        if (!to.destroyed) to.write(chunk);
      });
    });
  }
}
