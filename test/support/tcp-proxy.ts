/**
 * A TCP proxy in front of one port, for fault tests on real processes: point a client at `proxy.port` instead of
 * the target's, then switch the mode while it runs.
 *   pass       bytes flow both ways (the default)
 *   blackhole  a network partition, not a reset: every open connection stays open but every byte, either way, is
 *              silently dropped; new connections are accepted and go nowhere (the target is not dialed). Nobody
 *              sees an error or a close: only a timeout or a keepalive can tell.
 *   reset      every connection is reset (RST) and new ones are reset as soon as they arrive
 * Back to `pass` heals the network for NEW connections. A connection that lost bytes while blackholed stays a
 * black hole until an end closes it: its stream has a gap, so letting bytes through again would hand the peer a
 * corrupt stream rather than a healed one (real TCP would retransmit; this proxy drops instead of holding).
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export type ProxyMode = 'pass' | 'blackhole' | 'reset';

export interface TcpProxyOptions {
  /** Where connections are forwarded to. */
  targetPort: number;
  targetHost?: string; // default 127.0.0.1
  /** Where the proxy listens (default 127.0.0.1, any free port). */
  host?: string;
  port?: number;
}

interface Link {
  client: Socket;
  upstream: Socket | null; // null: accepted while blackholed, never dialed
  dead: boolean; // blackholed: bytes are read and dropped, nothing is forwarded, nothing is closed
}

export class TcpProxy {
  readonly #server: Server;
  readonly #target: { host: string; port: number };
  readonly #links = new Set<Link>();
  #mode: ProxyMode = 'pass';
  #dropped = 0; // bytes swallowed while blackholed, both ways

  private constructor(server: Server, target: { host: string; port: number }) {
    this.#server = server;
    this.#target = target;
    server.on('connection', (client) => this.#accept(client));
  }

  static async listen(o: TcpProxyOptions): Promise<TcpProxy> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
    const proxy = new TcpProxy(server, { host: o.targetHost ?? '127.0.0.1', port: o.targetPort });
    await listenOn(server, o);
    return proxy;
  }

  get port(): number {
    return portOf(this.#server);
  }

  get mode(): ProxyMode {
    return this.#mode;
  }

  /** Connections with an end still open, whatever their state. */
  get connections(): number {
    return this.#links.size;
  }

  /** Bytes dropped while blackholed, both directions together. */
  get droppedBytes(): number {
    return this.#dropped;
  }

  setMode(mode: ProxyMode): void {
    this.#mode = mode;
    if (mode === 'blackhole') for (const link of this.#links) this.#blackhole(link);
    if (mode === 'reset') for (const link of this.#links) this.#reset(link);
  }

  async close(): Promise<void> {
    for (const link of this.#links) {
      link.client.destroy();
      link.upstream?.destroy();
    }
    this.#links.clear();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    client.on('error', () => {}); // resets are what this proxy is for; the close handler cleans up
    if (this.#mode === 'reset') {
      client.resetAndDestroy();
      return;
    }
    const link: Link = { client, upstream: null, dead: false };
    this.#links.add(link);
    // A blackholed link is forgotten once both ends are closed: a partition tells neither side of the other's close.
    const forget = () => link.client.destroyed && (!link.upstream || link.upstream.destroyed) && this.#links.delete(link);
    client.on('close', () => {
      if (!link.dead) link.upstream?.destroy();
      forget();
    });
    if (this.#mode === 'blackhole') {
      this.#blackhole(link);
      return;
    }
    const upstream = connect({ host: this.#target.host, port: this.#target.port, allowHalfOpen: true });
    link.upstream = upstream;
    upstream.on('error', () => {});
    upstream.on('close', () => {
      if (!link.dead) client.destroy();
      forget();
    });
    this.#forward(link, client, upstream);
    this.#forward(link, upstream, client);
    client.resume();
  }

  /** Copies `from` → `to` with backpressure while the link is alive; half-closes follow. */
  #forward(link: Link, from: Socket, to: Socket): void {
    from.on('data', (chunk: Buffer) => {
      if (!to.write(chunk)) from.pause();
    });
    to.on('drain', () => !link.dead && from.resume());
    from.on('end', () => !link.dead && to.end());
  }

  #blackhole(link: Link): void {
    if (link.dead) return;
    link.dead = true;
    for (const s of [link.client, link.upstream]) {
      if (!s) continue;
      s.removeAllListeners('data');
      s.on('data', (chunk: Buffer) => (this.#dropped += chunk.length));
      s.resume(); // keep reading, so the sender's writes succeed and vanish, as into a partition
    }
  }

  #reset(link: Link): void {
    this.#links.delete(link);
    link.dead = true;
    link.client.resetAndDestroy();
    link.upstream?.resetAndDestroy();
  }
}

/** Starts `server` listening on `o.host` (default 127.0.0.1) and `o.port` (default: any free one); rejects on a listen error. */
export function listenOn(server: Server, o: { host?: string; port?: number }): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => (server.off('error', reject), resolve()));
  });
}

/** The port a proxy's server listens on. */
export function portOf(server: Server): number {
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('the proxy is not listening');
  return addr.port;
}
