/**
 * Bounds every listening port puts on hostile or broken clients, so that none of them can take a process down:
 *
 * - a headers timeout: an HTTP client must finish sending its request headers within `headersTimeoutMs`, so a
 *   slow-loris client (one byte a second, forever) is answered 408 and cut. Node checks the deadline every
 *   `connectionsCheckingInterval`, which is therefore tied to the timeout here (its default, 30 s, would let a
 *   short timeout run 30 s late);
 * - a cap on open sockets (`server.maxConnections`): beyond it Node destroys a new socket as soon as it is accepted;
 * - a cap on WebSockets that have upgraded but not yet completed their hello (HelloGate): beyond it a new one is
 *   closed at once with 1013 TRY_AGAIN, so a flood of silent connections costs a few KiB each for at most the
 *   hello timeout, and a real agent (which retries) gets in once the flood is gone.
 *
 * A WebSocket is no longer an HTTP request once upgraded, so the headers timeout never cuts a live link; a
 * WebSocket that upgrades and then says nothing is cut by its endpoint's hello timeout.
 */
import type { Server } from 'node:http';
import type { WebSocket } from 'ws';
import { CloseCode } from '../protocol/codes.ts';

export interface ConnectionLimits {
  headersTimeoutMs: number; // an HTTP client must send its whole request head within this (slow-loris guard)
  maxConnections: number; // open sockets on the port (HTTP and WebSocket alike) beyond which new ones are dropped
  maxPendingHellos: number; // upgraded WebSockets still owing their hello beyond which new ones get 1013
}

export const DEFAULT_CONNECTION_LIMITS: Readonly<ConnectionLimits> = Object.freeze({
  headersTimeoutMs: 10_000,
  maxConnections: 1024,
  maxPendingHellos: 64,
});

/**
 * Applies the headers timeout and the socket cap to `server` (http or https). Call it before listen: Node starts
 * checking deadlines when the server starts listening, every `connectionsCheckingInterval`.
 */
export function limitServer(server: Server, limits: Pick<ConnectionLimits, 'headersTimeoutMs' | 'maxConnections'>): void {
  server.headersTimeout = limits.headersTimeoutMs;
  // Read by Node when the server starts listening (its typings omit the property; it is set from the constructor's options).
  (server as Server & { connectionsCheckingInterval: number }).connectionsCheckingInterval = Math.max(50, Math.min(1000, Math.floor(limits.headersTimeoutMs / 4)));
  server.maxConnections = limits.maxConnections;
}

/** Counts WebSockets that have not completed their hello; beyond `max`, a new one is refused with 1013 TRY_AGAIN. */
export class HelloGate {
  readonly max: number;
  #pending = 0;
  #refused = 0;

  constructor(max: number) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`maxPendingHellos must be a positive integer, got ${max}`);
    this.max = max;
  }

  /** Connections admitted that still owe their hello. */
  get pending(): number {
    return this.#pending;
  }

  /** Connections refused so far because too many were pending. */
  get refused(): number {
    return this.#refused;
  }

  /**
   * Admits `ws` as pending and returns the function that ends its pending state (call it when its hello is
   * accepted and when it closes; calls after the first do nothing), or closes it with TRY_AGAIN and returns null.
   */
  admit(ws: WebSocket): (() => void) | null {
    if (this.#pending >= this.max) {
      this.#refused++;
      ws.on('error', () => {}); // e.g. ECONNRESET from a flooder that does not wait for our close frame
      ws.close(CloseCode.TRY_AGAIN, `more than ${this.max} connections are waiting to say hello; try again later`);
      setTimeout(() => ws.terminate(), 1000).unref(); // a client that ignores the close must not hold the socket
      return null;
    }
    this.#pending++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#pending--;
    };
  }
}
