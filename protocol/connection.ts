/**
 * MessageConnection: one WebSocket speaking our framing, used by every link (control and data plane).
 *
 * - Each frame is decoded (codec.ts) and validated (the family's parser); a message that declares `attach: n`
 *   is followed by exactly one binary frame of n bytes, delivered with it.
 * - Anything bad — undecodable, unknown, invalid, oversized, out of sequence — is logged, counted through
 *   `onReject`, and the connection is closed with the close code that names the reason. The process goes on.
 * - Sends are tracked until the socket has taken them, so callers can apply backpressure (`writable`,
 *   `whenWritable()`) instead of growing an unbounded queue.
 */
import type WebSocket from 'ws';
import { CloseCode, closeReason } from './codes.ts';
import { decodeFrame, encodeMessage, type Envelope } from './codec.ts';
import { ProtocolError } from './errors.ts';

/** Where a connection reports what it dropped and why (common/log.ts's Logger is one; protocol imports nothing above it). */
export interface ConnectionLog {
  debug(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface ConnectionOptions<In> {
  /** Validates a decoded envelope into a typed message; throws ProtocolError. */
  parse(raw: Envelope): In;
  /** Called for every message in order. A thrown or rejected error closes the connection. */
  onMessage(msg: In, attachment: Buffer | undefined): void | Promise<void>;
  onClose?(code: number, reason: string): void;
  /** Called once per rejected frame, before the close (metrics). */
  onReject?(err: ProtocolError): void;
  label: string;
  log: ConnectionLog;
  maxAttachmentBytes: number;
  /** Bytes handed to ws but not yet written to the socket above which `writable` turns false. */
  highWaterBytes?: number;
  /**
   * The type (or one of the types) the first message must have (a hello). Checked as soon as the message is parsed — before waiting
   * for any attachment it declares — so an unauthenticated peer cannot make us buffer data.
   */
  firstType?: string | readonly string[];
  /**
   * Liveness for links whose peer may vanish without a FIN (a network partition, a frozen host): ping every
   * `intervalMs`; when nothing at all (a frame, a pong) has come back for `timeoutMs`, the socket is dropped and
   * onClose sees HEARTBEAT_TIMEOUT. Silence does not count while we hold the link paused (the peer's pongs sit
   * unread behind our own backpressure) or while our sends are stuck in the socket (a peer that holds us paused
   * looks the same as a dead one then; the caller's own deadlines cover that case).
   */
  keepalive?: { intervalMs: number; timeoutMs: number };
}

export class ConnectionClosedError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`connection closed (${code}${reason ? `: ${reason}` : ''})`);
    this.name = 'ConnectionClosedError';
  }
}

interface DrainWaiter {
  resolve: () => void;
  reject: (e: Error) => void;
  below: number;
}

export class MessageConnection<In extends { type: string }, Out extends Envelope> {
  readonly #ws: WebSocket;
  readonly #opts: ConnectionOptions<In>;
  readonly #highWater: number;
  #pending: { msg: In; bytes: number } | null = null;
  #outstanding = 0;
  #drainWaiters: DrainWaiter[] = [];
  #closed: ConnectionClosedError | null = null;
  #failed = false;
  #seenFirst = false;
  #paused = false;
  #heardMs = Date.now();
  #keepalive: NodeJS.Timeout | null = null;
  #silent: { code: number; reason: string } | null = null;

  constructor(ws: WebSocket, opts: ConnectionOptions<In>) {
    this.#ws = ws;
    this.#opts = opts;
    this.#highWater = opts.highWaterBytes ?? 8 * 1024 * 1024;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.#onFrame(data as Buffer, isBinary));
    // ws emits 'error' for protocol violations it detects itself (e.g. maxPayload → 1009) and for socket errors;
    // it closes the socket right after. Without a listener the process would crash.
    ws.on('error', (err) => opts.log.debug(`${opts.label}: ${err.message}`));
    ws.on('close', (code, reason) => this.#onClose(code, reason.toString()));
    if (opts.keepalive) this.#startKeepalive(opts.keepalive);
  }

  get label(): string {
    return this.#opts.label;
  }

  get isOpen(): boolean {
    return this.#closed === null && this.#ws.readyState === 1;
  }

  /** Bytes sent but not yet taken by the socket. */
  get outstandingBytes(): number {
    return this.#outstanding;
  }

  get writable(): boolean {
    return this.#outstanding < this.#highWater;
  }

  /** Resolves once outstanding bytes drop below `below` (default: the high-water mark). Rejects if the link closes. */
  whenWritable(below: number = this.#highWater): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closed);
    if (this.#outstanding < below) return Promise.resolve();
    return new Promise((resolve, reject) => this.#drainWaiters.push({ resolve, reject, below }));
  }

  /** Resolves when everything sent so far has been handed to the kernel. */
  flushed(): Promise<void> {
    return this.whenWritable(1);
  }

  send(msg: Out, attachment?: Uint8Array): void {
    if (this.#closed) throw this.#closed;
    const header = encodeMessage(attachment ? { ...msg, attach: attachment.byteLength } : msg);
    this.#track(header.byteLength);
    this.#ws.send(header, { binary: true }, (err) => this.#written(header.byteLength, err));
    if (attachment && attachment.byteLength > 0) {
      this.#track(attachment.byteLength);
      this.#ws.send(attachment, { binary: true }, (err) => this.#written(attachment.byteLength, err));
    }
  }

  pause(): void {
    this.#paused = true;
    this.#ws.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#heardMs = Date.now(); // the silence while paused was ours
    this.#ws.resume();
  }

  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.#ws.readyState === 0 || this.#ws.readyState === 1) this.#ws.close(code, closeReason(reason));
  }

  /** Logs and counts `err`, then closes with the close code it maps to. */
  fail(err: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    if (err instanceof ProtocolError) {
      this.#opts.log.warn(`${this.#opts.label}: rejected (${err.code}): ${err.message}; closing`);
      try {
        this.#opts.onReject?.(err);
      } catch (hookErr) {
        this.#opts.log.error(`${this.#opts.label}: onReject hook failed: ${(hookErr as Error).message}`);
      }
      this.close(err.closeCode, err.message);
    } else {
      this.#opts.log.error(`${this.#opts.label}: handler failed: ${(err as Error)?.stack ?? String(err)}; closing`);
      this.close(CloseCode.INTERNAL, 'internal error handling your message');
    }
    // A misbehaving peer that ignores our close frame must not hold the socket open.
    setTimeout(() => this.#ws.terminate(), 2000).unref();
  }

  #startKeepalive({ intervalMs, timeoutMs }: { intervalMs: number; timeoutMs: number }): void {
    const heard = () => (this.#heardMs = Date.now());
    this.#ws.on('pong', heard);
    this.#ws.on('ping', heard);
    this.#keepalive = setInterval(() => {
      if (this.#ws.readyState !== 1) return;
      if (this.#paused || this.#outstanding > 0) {
        heard();
      } else if (Date.now() - this.#heardMs > timeoutMs) {
        const reason = `nothing heard for ${timeoutMs} ms (keepalive)`;
        this.#opts.log.warn(`${this.#opts.label}: ${reason}; dropping the link`);
        this.#silent = { code: CloseCode.HEARTBEAT_TIMEOUT, reason };
        this.#ws.terminate();
        return;
      }
      this.#ws.ping();
    }, intervalMs);
    this.#keepalive.unref();
  }

  #onFrame(data: Buffer, isBinary: boolean): void {
    this.#heardMs = Date.now();
    if (this.#failed) return;
    try {
      if (!isBinary) throw new ProtocolError('PRT_ERR_MALFORMED', 'text frames are not part of the protocol; send binary msgpack');
      const pending = this.#pending;
      if (pending) {
        this.#pending = null;
        if (data.byteLength !== pending.bytes) {
          throw new ProtocolError(
            'PRT_ERR_UNEXPECTED',
            `attachment for ${pending.msg.type} is ${data.byteLength} bytes, header said ${pending.bytes}`,
          );
        }
        this.#deliver(pending.msg, data);
        return;
      }
      const msg = this.#opts.parse(decodeFrame(data));
      if (!this.#seenFirst) {
        this.#seenFirst = true;
        const first = this.#opts.firstType;
        if (first && !(typeof first === 'string' ? msg.type === first : first.includes(msg.type))) {
          throw new ProtocolError('PRT_ERR_UNEXPECTED', `expected ${[first].flat().join(' or ')} first, got ${msg.type}`);
        }
      }
      const attach = (msg as { attach?: unknown }).attach;
      if (typeof attach === 'number') {
        if (attach > this.#opts.maxAttachmentBytes) {
          throw new ProtocolError('PRT_ERR_TOO_LARGE', `attachment of ${attach} bytes exceeds ${this.#opts.maxAttachmentBytes}`);
        }
        if (attach > 0) {
          this.#pending = { msg, bytes: attach };
          return;
        }
        this.#deliver(msg, Buffer.alloc(0));
        return;
      }
      this.#deliver(msg, undefined);
    } catch (err) {
      this.fail(err);
    }
  }

  #deliver(msg: In, attachment: Buffer | undefined): void {
    const result = this.#opts.onMessage(msg, attachment);
    if (result && typeof (result as Promise<void>).then === 'function') {
      (result as Promise<void>).catch((err) => this.fail(err));
    }
  }

  #track(bytes: number): void {
    this.#outstanding += bytes;
  }

  #written(bytes: number, err?: Error): void {
    this.#outstanding -= bytes;
    if (err && !this.#closed) this.#opts.log.debug(`${this.#opts.label}: send failed: ${err.message}`);
    if (this.#drainWaiters.length === 0) return;
    const still: DrainWaiter[] = [];
    for (const w of this.#drainWaiters) (this.#outstanding < w.below ? w.resolve() : still.push(w));
    this.#drainWaiters = still;
  }

  #onClose(code: number, reason: string): void {
    if (this.#keepalive) clearInterval(this.#keepalive);
    if (this.#silent) ({ code, reason } = this.#silent);
    if (this.#closed) return;
    this.#closed = new ConnectionClosedError(code, reason);
    for (const w of this.#drainWaiters) w.reject(this.#closed);
    this.#drainWaiters = [];
    this.#opts.onClose?.(code, reason);
  }
}
