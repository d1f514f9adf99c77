/**
 * The splice every relay runs (common/relay-endpoint.ts, on the coordinator and on an agent relay): two open
 * WebSockets joined message by message, so that a dialer and an agent nobody can dial (behind NAT, a closed
 * firewall) talk as if linked directly. The relay reads no message: binary frames go on as they are and text
 * frames as text, in order, so the agents' own handshake (`peer.hello` with the group's token) and framing run end
 * to end and the relay never sees a credential of theirs worth forging.
 *
 * - Backpressure: when the writing side holds more than `highWaterBytes` unsent, the reading side is paused (TCP
 *   then pushes back on its sender), and resumed once the writer's buffer drops below `lowWaterBytes`. A relay's
 *   memory is thus bounded by about two high-water marks per link, whatever the agents send.
 * - Close: when either side closes, the other is closed with the same code and reason; a code that may not be sent
 *   on the wire (1005 "no status", 1006 "abnormal") becomes 1000 or 1001 GOING_AWAY.
 * - Ping/pong are per leg: ws answers pings itself, so an agent's keepalive checks its leg to the relay, and the
 *   relay, closing the other leg when one drops, carries the failure on.
 */
import WebSocket from 'ws';
import { CloseCode, closeReason } from '../protocol/codes.ts';

export interface SpliceOptions {
  /** Unsent bytes on the writing side above which the reading side is paused (default 16 MiB: four 4 MiB segments). */
  highWaterBytes?: number;
  /** Unsent bytes below which a paused side reads again (default a quarter of the high-water mark). */
  lowWaterBytes?: number;
  /** Told about each message passed on, with its payload bytes: 'ab' from the first socket to the second. */
  onBytes?(direction: 'ab' | 'ba', bytes: number): void;
  /** Told once, when both sides are closed (or closing): the first close seen and which side it came from. */
  onClose?(close: SpliceClose): void;
}

export interface SpliceClose {
  code: number;
  reason: string;
  /** The side that closed first. */
  by: 'a' | 'b';
}

export interface Splice {
  /** Payload bytes passed on so far: a → b and b → a. */
  readonly bytes: { readonly ab: number; readonly ba: number };
  /** Resolves once either side has closed and the other has been told. */
  readonly closed: Promise<SpliceClose>;
  /** Closes both sides with this code and reason. */
  close(code: number, reason: string): void;
}

export const DEFAULT_RELAY_HIGH_WATER_BYTES = 16 * 1024 * 1024;

/** Joins `a` and `b`, both open. Attach it synchronously after they open, before any message can be missed. */
export function splice(a: WebSocket, b: WebSocket, opts: SpliceOptions = {}): Splice {
  const high = opts.highWaterBytes ?? DEFAULT_RELAY_HIGH_WATER_BYTES;
  const low = Math.min(high, opts.lowWaterBytes ?? Math.floor(high / 4));
  const bytes = { ab: 0, ba: 0 };
  let done: SpliceClose | null = null;
  let resolveClosed!: (c: SpliceClose) => void;
  const closed = new Promise<SpliceClose>((r) => (resolveClosed = r));

  const finish = (by: 'a' | 'b', code: number, reason: string) => {
    if (done) return;
    done = { code, reason, by };
    const other = by === 'a' ? b : a;
    closeSocket(other, code, reason);
    opts.onClose?.(done);
    resolveClosed(done);
  };

  const pipe = (from: WebSocket, to: WebSocket, direction: 'ab' | 'ba') => {
    let paused = false;
    from.on('message', (data: Buffer, isBinary: boolean) => {
      if (to.readyState !== WebSocket.OPEN) return;
      bytes[direction] += data.byteLength;
      opts.onBytes?.(direction, data.byteLength);
      to.send(data, { binary: isBinary }, () => {
        // Called once ws has handed this message to the socket (or failed to): the writer may have room again.
        if (paused && to.bufferedAmount <= low) {
          paused = false;
          if (from.readyState === WebSocket.OPEN) from.resume();
        }
      });
      if (!paused && to.bufferedAmount > high) {
        paused = true;
        from.pause();
      }
    });
  };
  pipe(a, b, 'ab');
  pipe(b, a, 'ba');
  a.on('close', (code, reason) => finish('a', code, reason.toString('utf8')));
  b.on('close', (code, reason) => finish('b', code, reason.toString('utf8')));
  // A socket error is followed by its close; listening keeps it from being an unhandled 'error' event.
  a.on('error', () => {});
  b.on('error', () => {});
  // Either may have closed between its open and this call: pass that on too.
  if (a.readyState >= WebSocket.CLOSING) finish('a', CloseCode.GOING_AWAY, 'closed before the relay joined it');
  else if (b.readyState >= WebSocket.CLOSING) finish('b', CloseCode.GOING_AWAY, 'closed before the relay joined it');

  return {
    bytes,
    closed,
    close(code, reason) {
      closeSocket(a, code, reason);
      closeSocket(b, code, reason);
    },
  };
}

/** Round trip of one ping on `ws`, in ms; rejects when no pong comes within `timeoutMs` or the socket closes. */
export function pingRttMs(ws: WebSocket, timeoutMs = 5000): Promise<number> {
  return new Promise((resolve, reject) => {
    if (ws.readyState !== WebSocket.OPEN) return reject(new Error('socket not open'));
    const payload = Buffer.from(Math.random().toString(36).slice(2, 10));
    const started = process.hrtime.bigint();
    const onPong = (data: Buffer) => {
      if (!data.equals(payload)) return; // someone else's ping (a keepalive)
      cleanup();
      resolve(Number(process.hrtime.bigint() - started) / 1e6);
    };
    const onClose = () => (cleanup(), reject(new Error('socket closed before the pong')));
    const timer = setTimeout(() => (cleanup(), reject(new Error(`no pong within ${timeoutMs} ms`))), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      ws.off('pong', onPong);
      ws.off('close', onClose);
    };
    ws.on('pong', onPong);
    ws.on('close', onClose);
    ws.ping(payload);
  });
}

/** Closes with `code` when it may be sent on the wire; 1005 (none given) becomes 1000, 1006 (dropped) 1001. */
function closeSocket(ws: WebSocket, code: number, reason: string): void {
  if (ws.readyState >= WebSocket.CLOSING) return;
  const sendable = code === 1000 || code === 1001 || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
  if (sendable) ws.close(code, closeReason(reason));
  else if (code === 1005) ws.close(CloseCode.NORMAL, closeReason(reason));
  else ws.close(CloseCode.GOING_AWAY, closeReason(reason || 'the other side of the relay dropped its connection'));
}
