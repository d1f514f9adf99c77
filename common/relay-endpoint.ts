/**
 * A relay endpoint (`/ws/relay`): the admission, pairing and bookkeeping every relay runs around the splice
 * (common/relay.ts). The coordinator runs one on its port (coordinator/cluster/relay.ts); an agent that can be
 * dialled runs one on its peer port when a group picks it as relay (node-agent/agent-relay.ts). Only how the target
 * is told to call back differs: the coordinator sends `relay.open` itself; an agent relay asks the coordinator to.
 *
 *   dialer                         relay                                    target (behind NAT)
 *   GET /ws/relay?to=NODE  ───────►  ticket covers NODE? reachable?
 *     Authorization: Bearer TICKET   (401 / 503 before any upgrade)
 *                                    relay.open {session, key[, url]} ──►   (over its control channel)
 *                                  ◄─────────────────────────────────────── GET /ws/relay?session=S
 *                                                                            Authorization: Bearer KEY
 *                                    both upgraded, spliced
 *
 * Closed by default: a dialer needs a relay ticket that covers its target (`authorize`), and the target's callback
 * needs the one-time session key. Anything else gets 401 before the upgrade. The relay never learns the group
 * token: the link's `peer.hello` is checked by the target, end to end.
 *
 * The dialer's upgrade is held (not answered) until the target's callback arrives, so nothing it sends can be lost
 * before the splice exists; a target that cannot be told is refused at once (503), one that does not call back
 * within `callbackTimeoutMs` is refused then (503), both with the `unavailable` code naming the node.
 *
 * Per relayed node it counts payload bytes both ways and the round trip of a WebSocket ping on each leg of a link
 * (dialer ⇄ relay, relay ⇄ node), taken when the link opens and every `rttEveryMs` while it is open.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { pingRttMs, splice } from './relay.ts';
import type { Logger } from './log.ts';
import { MAX_PEER_FRAME } from '../protocol/peer.ts';
import { serverOptions } from '../protocol/ws-options.ts';

/** A relay's path, on the coordinator's port and on an agent relay's peer port alike. */
export const RELAY_PATH = '/ws/relay';

/** The relay endpoint on the host of `base` (a coordinator's …/ws/agent URL, or an agent's peer address). */
export const relayUrlOn = (base: string): string => new URL(RELAY_PATH, base).href;

/** sha256 of a secret's text: what tickets, session keys and group tokens are compared by (in constant time). */
export function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Relay figures of one relayed node, as the nodes API shows them. */
export interface RelayStats {
  /** Who relays: 'coordinator', or the name of the agent relaying. */
  via: string;
  /** Payload bytes passed from its dialers to it, and from it back. */
  bytesToNode: number;
  bytesFromNode: number;
  linksOpen: number;
  linksTotal: number;
  /** Last ping round trips of a link's two legs (ms), and their sum. Null until measured. */
  dialerLegRttMs: number | null;
  nodeLegRttMs: number | null;
  relayedRttMs: number | null;
}

export type RelayLinkOutcome = 'spliced' | 'unauthorized' | 'unavailable';

export interface RelayEndpointOptions {
  /** Written into RelayStats.via. */
  via: string;
  /** The group whose relay ticket `ticket` is, when it lets its holder through to node `to`; undefined otherwise. */
  authorize(ticket: string, to: string): string | undefined;
  /** Whether the target can be told to call back now (503 at once if not). */
  canReach(to: string): boolean;
  /** Tells `to` to call back with `session` and `key` (throws when it cannot: 503). */
  open(to: string, session: { session: string; key: string; groupId: string }): void;
  log: Logger;
  /** Error codes of the JSON refusals: 401 and 503 (the coordinator's, or an agent's own). */
  codes: { unauthorized: string; unavailable: string };
  onLink?(outcome: RelayLinkOutcome): void;
  onBytes?(nodeId: string, direction: 'to_node' | 'from_node', bytes: number): void;
  /** How long a dialer waits for the target to open its side (default 5 s). */
  callbackTimeoutMs?: number;
  /** How often each open link's legs are pinged (default 5 s). */
  rttEveryMs?: number;
  /** Dialers waiting for their target at once beyond which new ones get 503 (default 256). */
  maxPending?: number;
}

interface Pending {
  to: string;
  keyHash: Buffer;
  req: IncomingMessage;
  socket: Duplex;
  head: Buffer;
  timer: NodeJS.Timeout;
}

export class RelayEndpoint {
  readonly #opts: RelayEndpointOptions;
  readonly #wss = new WebSocketServer({ noServer: true, ...serverOptions(MAX_PEER_FRAME) });
  readonly #pending = new Map<string, Pending>();
  readonly #stats = new Map<string, RelayStats>();
  readonly #open = new Set<{ close(code: number, reason: string): void }>();
  readonly #timers = new Set<NodeJS.Timeout>();

  constructor(opts: RelayEndpointOptions) {
    this.#opts = opts;
    this.#wss.on('error', () => {});
  }

  /** The relay figures of a node it has relayed for; null for one it never has. */
  stats(nodeId: string): RelayStats | null {
    const s = this.#stats.get(nodeId);
    return s ? { ...s } : null;
  }

  /** Every relayed node's figures, by node id. */
  allStats(): Array<RelayStats & { nodeId: string }> {
    return [...this.#stats].map(([nodeId, s]) => ({ nodeId, ...s }));
  }

  /** An upgrade request for RELAY_PATH: a dialer (`?to=NODE`) or a target calling back (`?session=S`). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const query = new URL(req.url ?? '', 'http://relay').searchParams;
    const header = req.headers.authorization;
    const bearer = header?.startsWith('Bearer ') ? header.slice(7) : undefined;
    const to = query.get('to');
    const session = query.get('session');
    if (to !== null && session === null) return this.#dial(req, socket, head, to, bearer);
    if (session !== null && to === null) return this.#callback(req, socket, head, session, bearer);
    this.#refuse(socket, 401, 'the relay needs ?to=NODE with a relay ticket, or ?session=S with its key');
  }

  close(reason = 'relay shutting down'): void {
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.socket.destroy();
    }
    this.#pending.clear();
    for (const s of this.#open) s.close(1001, reason);
    for (const t of this.#timers) clearInterval(t);
    this.#wss.close();
  }

  #dial(req: IncomingMessage, socket: Duplex, head: Buffer, to: string, ticket: string | undefined): void {
    const groupId = ticket && ticket.length <= 1024 ? this.#opts.authorize(ticket, to) : undefined;
    if (!groupId) {
      this.#opts.onLink?.('unauthorized');
      return this.#refuse(socket, 401, 'missing or wrong relay ticket: send Authorization: Bearer <the relay ticket of a group that relays to this node>');
    }
    if (!this.#opts.canReach(to)) {
      this.#opts.onLink?.('unavailable');
      return this.#refuse(socket, 503, `node ${to} is not attached to the relay (its control connection is down)`);
    }
    if (this.#pending.size >= (this.#opts.maxPending ?? 256)) {
      this.#opts.onLink?.('unavailable');
      return this.#refuse(socket, 503, 'too many relayed links are being opened at once; retry');
    }
    const id = `rs-${randomBytes(8).toString('hex')}`;
    const key = randomBytes(24).toString('base64url');
    const waitMs = this.#opts.callbackTimeoutMs ?? 5000;
    const timer = setTimeout(() => {
      if (!this.#pending.delete(id)) return;
      this.#opts.onLink?.('unavailable');
      this.#refuse(socket, 503, `node ${to} did not open its side of the relay within ${waitMs} ms`);
    }, waitMs);
    this.#pending.set(id, { to, keyHash: sha256(key), req, socket, head, timer });
    socket.once('close', () => {
      const p = this.#pending.get(id);
      if (p?.socket === socket) {
        clearTimeout(p.timer);
        this.#pending.delete(id);
      }
    });
    try {
      this.#opts.open(to, { session: id, key, groupId });
    } catch (err) {
      clearTimeout(timer);
      this.#pending.delete(id);
      this.#opts.onLink?.('unavailable');
      this.#refuse(socket, 503, `node ${to} is not attached to the relay (${(err as Error).message})`);
    }
  }

  #callback(req: IncomingMessage, socket: Duplex, head: Buffer, id: string, key: string | undefined): void {
    const p = this.#pending.get(id);
    const keyOk = p !== undefined && key !== undefined && key.length <= 1024 && timingSafeEqual(sha256(key), p.keyHash);
    if (!p || !keyOk) {
      this.#opts.onLink?.('unauthorized');
      return this.#refuse(socket, 401, 'unknown relay session or wrong session key');
    }
    this.#pending.delete(id);
    clearTimeout(p.timer);
    // The target first: it says nothing until the dialer's hello comes through, so neither side can send before
    // the splice below listens (ws calls both callbacks synchronously; data is read on a later tick).
    let joined = false;
    this.#wss.handleUpgrade(req, socket, head, (nodeWs) => {
      this.#wss.handleUpgrade(p.req, p.socket, p.head, (dialerWs) => {
        joined = true;
        this.#join(p.to, dialerWs, nodeWs);
      });
      if (!joined) nodeWs.close(1011, 'the dialer is gone'); // ws refused the dialer's request (it answered it 400)
    });
    if (!joined && !p.socket.destroyed) this.#refuse(p.socket, 503, `node ${p.to} opened its side of the relay with a bad request`);
  }

  #join(nodeId: string, dialerWs: WebSocket, nodeWs: WebSocket): void {
    const stats = this.#stats.get(nodeId) ?? {
      via: this.#opts.via, bytesToNode: 0, bytesFromNode: 0, linksOpen: 0, linksTotal: 0, dialerLegRttMs: null, nodeLegRttMs: null, relayedRttMs: null,
    };
    this.#stats.set(nodeId, stats);
    stats.linksOpen++;
    stats.linksTotal++;
    this.#opts.onLink?.('spliced');
    const link = splice(dialerWs, nodeWs, {
      onBytes: (direction, n) => {
        if (direction === 'ab') stats.bytesToNode += n;
        else stats.bytesFromNode += n;
        this.#opts.onBytes?.(nodeId, direction === 'ab' ? 'to_node' : 'from_node', n);
      },
    });
    this.#open.add(link);
    const measure = () => {
      Promise.all([pingRttMs(dialerWs), pingRttMs(nodeWs)]).then(
        ([dialerMs, nodeMs]) => {
          stats.dialerLegRttMs = round(dialerMs);
          stats.nodeLegRttMs = round(nodeMs);
          stats.relayedRttMs = round(dialerMs + nodeMs);
        },
        () => {}, // the link closed meanwhile
      );
    };
    measure();
    const every = setInterval(measure, this.#opts.rttEveryMs ?? 5000);
    every.unref();
    this.#timers.add(every);
    void link.closed.then(({ code, reason, by }) => {
      clearInterval(every);
      this.#timers.delete(every);
      this.#open.delete(link);
      stats.linksOpen--;
      this.#opts.log.debug(`relayed link to ${nodeId} closed by the ${by === 'a' ? 'dialer' : 'node'} (${code}${reason ? `: ${reason}` : ''}); ${link.bytes.ab} B to it, ${link.bytes.ba} B back`);
    });
  }

  /** Answers an upgrade request with an HTTP error (the error body every API route uses) and hangs up. */
  #refuse(socket: Duplex, status: 401 | 503, message: string): void {
    const code = status === 401 ? this.#opts.codes.unauthorized : this.#opts.codes.unavailable;
    this.#opts.log.debug(`relay refused a link: ${status} ${code}: ${message}`);
    if (socket.destroyed) return;
    const body = JSON.stringify({ error: { code, message } });
    socket.end(
      `HTTP/1.1 ${status} ${status === 401 ? 'Unauthorized' : 'Service Unavailable'}\r\n` +
        `Content-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
}


function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
