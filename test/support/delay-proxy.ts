/**
 * A TCP proxy that adds latency: every byte, each way, reaches the far side `delayMs` after the proxy read it, so a
 * round trip through it gains 2 × delayMs. Where the kernel has no netem (ARCHITECTURE.md), this is how the tests and
 * `npm run bench -- wan` give links a round-trip time; bandwidth is shaped separately (tbf, test/support/netns.ts).
 *
 * Each direction is a delay line, not a stop-and-wait relay: the proxy keeps reading while earlier chunks wait, each
 * chunk stamped with the time it is due, so the delay adds latency without capping throughput (a link of bandwidth
 * B holds B × delay bytes in flight, as a real long link does). Backpressure still reaches the sender: when the far
 * side stops taking bytes, the line fills to `maxBufferedBytes` and the proxy stops reading until it drains below
 * half of that, so TCP's own flow control pushes back on the sender. A half-close (FIN) travels down the line after
 * the last byte and is delayed like it; an error or reset on either end closes the other at once.
 *
 * The TCP handshake is not delayed (the upstream is dialled as soon as a client connects): only data is.
 * `bytes` counts what the proxy delivered, per direction, so a benchmark can see what crossed the link.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { listenOn, portOf } from './tcp-proxy.ts';

export interface DelayProxyOptions {
  /** Where connections are forwarded to. */
  targetPort: number;
  targetHost?: string; // default 127.0.0.1
  /** Where the proxy listens (default 127.0.0.1, any free port). */
  host?: string;
  port?: number;
  /** One-way delay added to every byte, each way, in milliseconds (a round trip gains twice this). */
  delayMs: number;
  /** Bytes one direction may hold waiting before the proxy stops reading (default 16 MiB). */
  maxBufferedBytes?: number;
}

/** Bytes delivered, by direction: upstream = client → target, downstream = target → client. */
export interface DelayProxyBytes {
  upstream: number;
  downstream: number;
}

const END = Symbol('end'); // the half-close, queued behind the data it follows

interface Due {
  atMs: number; // when it may be written to the far side (performance.now() time)
  chunk: Buffer | typeof END;
}

/**
 * One direction of one connection: reads `from`, holds each chunk until it is due, writes it to `to`. Keeps reading
 * while chunks wait, up to `maxBytes` held; pauses `from` beyond that and while `to` is not draining.
 */
class DelayLine {
  readonly #queue: Due[] = [];
  #head = 0; // index of the next chunk in #queue (shifted lazily: a long line would make shift() quadratic)
  #heldBytes = 0;
  #timer: NodeJS.Timeout | null = null;
  #blocked = false; // `to` said no more until 'drain'
  #closed = false;

  constructor(
    readonly from: Socket,
    readonly to: Socket,
    readonly delayMs: number,
    readonly maxBytes: number,
    readonly onDelivered: (bytes: number) => void,
  ) {
    from.on('data', (chunk: Buffer) => this.#push(chunk));
    from.on('end', () => this.#enqueue(END));
    to.on('drain', () => {
      this.#blocked = false;
      this.#flush();
    });
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #push(chunk: Buffer): void {
    this.#heldBytes += chunk.length;
    if (this.#heldBytes >= this.maxBytes) this.from.pause();
    this.#enqueue(chunk);
  }

  #enqueue(chunk: Buffer | typeof END): void {
    if (this.#closed) return;
    this.#queue.push({ atMs: performance.now() + this.delayMs, chunk });
    if (!this.#timer && !this.#blocked) this.#schedule();
  }

  #schedule(): void {
    const next = this.#queue[this.#head];
    if (!next || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#flush();
    }, Math.max(0, next.atMs - performance.now()));
  }

  /** Writes every chunk that is due, until `to` pushes back; then waits for the next due time or 'drain'. */
  #flush(): void {
    if (this.#closed || this.#timer) return;
    const now = performance.now();
    while (this.#head < this.#queue.length && !this.#blocked) {
      const due = this.#queue[this.#head]!;
      if (due.atMs > now) break;
      this.#head++;
      if (due.chunk === END) {
        this.to.end();
        continue;
      }
      this.#heldBytes -= due.chunk.length;
      this.onDelivered(due.chunk.length);
      if (!this.to.write(due.chunk)) this.#blocked = true;
    }
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    if (this.#heldBytes < this.maxBytes / 2 && this.from.isPaused()) this.from.resume();
    if (!this.#blocked) this.#schedule();
  }
}

export class DelayProxy {
  readonly #server: Server;
  readonly #target: { host: string; port: number };
  readonly #delayMs: number;
  readonly #maxBytes: number;
  readonly #sockets = new Set<Socket>();
  readonly #lines = new Set<DelayLine>();
  readonly #bytes: DelayProxyBytes = { upstream: 0, downstream: 0 };

  private constructor(server: Server, o: DelayProxyOptions) {
    this.#server = server;
    this.#target = { host: o.targetHost ?? '127.0.0.1', port: o.targetPort };
    this.#delayMs = o.delayMs;
    this.#maxBytes = o.maxBufferedBytes ?? 16 * 1024 * 1024;
    server.on('connection', (client) => this.#accept(client));
  }

  static async listen(o: DelayProxyOptions): Promise<DelayProxy> {
    if (!(o.delayMs >= 0) || !Number.isFinite(o.delayMs)) throw new RangeError(`delayMs must be a finite number ≥ 0, got ${o.delayMs}`);
    if (o.maxBufferedBytes !== undefined && !(o.maxBufferedBytes >= 1)) throw new RangeError(`maxBufferedBytes must be ≥ 1, got ${o.maxBufferedBytes}`);
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
    const proxy = new DelayProxy(server, o);
    await listenOn(server, o);
    return proxy;
  }

  get port(): number {
    return portOf(this.#server);
  }

  get delayMs(): number {
    return this.#delayMs;
  }

  /** Bytes delivered so far, per direction, over every connection (a copy). */
  get bytes(): DelayProxyBytes {
    return { ...this.#bytes };
  }

  /** Open connections (client sockets and their upstreams, counted once per pair). */
  get connections(): number {
    return this.#sockets.size / 2;
  }

  async close(): Promise<void> {
    for (const line of this.#lines) line.close();
    for (const s of this.#sockets) s.destroy();
    this.#lines.clear();
    this.#sockets.clear();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    const upstream = connect({ host: this.#target.host, port: this.#target.port, allowHalfOpen: true });
    client.setNoDelay(true); // the delay is ours to add; Nagle would add more, unevenly
    upstream.setNoDelay(true);
    const up = new DelayLine(client, upstream, this.#delayMs, this.#maxBytes, (n) => (this.#bytes.upstream += n));
    const down = new DelayLine(upstream, client, this.#delayMs, this.#maxBytes, (n) => (this.#bytes.downstream += n));
    for (const line of [up, down]) this.#lines.add(line);
    for (const s of [client, upstream]) this.#sockets.add(s);
    const teardown = (reset: boolean) => {
      for (const line of [up, down]) (line.close(), this.#lines.delete(line));
      for (const s of [client, upstream]) {
        if (reset && !s.destroyed && s.readyState !== 'opening') s.resetAndDestroy();
        else s.destroy();
        this.#sockets.delete(s);
      }
    };
    // An error (a reset) on either end is passed on at once: it is not data, and is not delayed. A clean close is
    // not: its FIN is already queued behind the bytes before it, so the pair goes once both ends have closed.
    for (const s of [client, upstream]) {
      s.on('error', () => teardown(true));
      s.on('close', () => client.closed && upstream.closed && teardown(false));
    }
    client.resume();
  }
}
