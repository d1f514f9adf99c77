/**
 * An in-memory stand-in for a `ws` WebSocket, for unit tests of MessageConnection. Tests inject frames with
 * `ws.emit('message', buffer, isBinary)` (or `receive`) and read back what the connection did: `sent`,
 * `closeCalls`, `terminated`, `isPaused`.
 *
 * `close(code, reason)` validates its arguments exactly as ws does (a code ws would refuse throws TypeError, a
 * reason over 123 UTF-8 bytes throws RangeError), so a connection that would crash a real socket fails here too.
 * By default it then emits 'close' at once; with `{ manualClose: true }` the socket stays CLOSING (ws still
 * emits frames that arrive in that window) until the test calls `finishClose()`.
 */
import { EventEmitter } from 'node:events';
import type WebSocket from 'ws';

/** ws's own rule (lib/validation.js isValidStatusCode) for codes an endpoint may send. */
export function isValidCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

export interface FakeWebSocketOptions {
  /** Keep the socket CLOSING after `close()` until `finishClose()` is called. */
  manualClose?: boolean;
}

export class FakeWebSocket extends EventEmitter {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;

  /** Not ws's default, so a test can see that the connection chose 'nodebuffer' itself. */
  binaryType: string = 'arraybuffer';
  readyState: number = FakeWebSocket.OPEN;
  isPaused = false;
  /** Frames handed to `send`, in order. */
  readonly sent: Array<{ data: Buffer; binary: boolean }> = [];
  /** Every `close` call that got past the state check (at most one on a well-behaved caller). */
  readonly closeCalls: Array<{ code: number | undefined; reason: string }> = [];
  /** The 'close' events emitted. */
  readonly closeEvents: Array<{ code: number; reason: string }> = [];
  terminated = 0;
  readonly #manualClose: boolean;
  #pendingClose: { code: number; reason: string } | null = null;

  constructor(options: FakeWebSocketOptions = {}) {
    super();
    this.#manualClose = options.manualClose ?? false;
  }

  /** This object typed as the ws WebSocket that MessageConnection expects. */
  get asWebSocket(): WebSocket {
    return this as unknown as WebSocket;
  }

  /** Injects one received frame, as ws's receiver would. */
  receive(data: Buffer | Uint8Array, isBinary = true): void {
    this.emit('message', Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength), isBinary);
  }

  send(data: Buffer | Uint8Array, opts?: { binary?: boolean }, cb?: (err?: Error) => void): void {
    if (this.readyState !== FakeWebSocket.OPEN) {
      const err = new Error(`WebSocket is not open: readyState ${this.readyState}`);
      if (cb) process.nextTick(cb, err);
      return;
    }
    this.sent.push({ data: Buffer.from(data), binary: opts?.binary ?? true });
    if (cb) process.nextTick(cb);
  }

  close(code?: number, reason?: string | Buffer): void {
    if (this.readyState === FakeWebSocket.CLOSED || this.readyState === FakeWebSocket.CLOSING) return;
    if (code !== undefined && (typeof code !== 'number' || !isValidCloseCode(code))) {
      throw new TypeError('First argument must be a valid error code number');
    }
    const text = reason === undefined ? '' : reason.toString();
    if (reason !== undefined && Buffer.byteLength(reason) > 123) {
      throw new RangeError('The message must not be greater than 123 bytes');
    }
    this.closeCalls.push({ code, reason: text });
    this.readyState = FakeWebSocket.CLOSING;
    this.#pendingClose = { code: code ?? 1005, reason: text };
    if (!this.#manualClose) this.finishClose();
  }

  /** Completes a close handshake started by `close()`, emitting 'close' with the code that was sent. */
  finishClose(): void {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    const { code, reason } = this.#pendingClose ?? { code: 1006, reason: '' };
    this.#emitClose(code, reason);
  }

  /** Simulates the peer closing the link (a close frame received). */
  remoteClose(code: number, reason = ''): void {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.#emitClose(code, reason);
  }

  terminate(): void {
    this.terminated++;
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.#emitClose(this.#pendingClose?.code ?? 1006, this.#pendingClose?.reason ?? '');
  }

  pause(): void {
    this.isPaused = true;
  }

  resume(): void {
    this.isPaused = false;
  }

  #emitClose(code: number, reason: string): void {
    this.readyState = FakeWebSocket.CLOSED;
    this.closeEvents.push({ code, reason });
    this.emit('close', code, Buffer.from(reason));
  }
}
