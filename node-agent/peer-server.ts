/**
 * The agent's peer listener: other agents of a group dial in here (never through the coordinator). A link is
 * accepted only after a `peer.hello` whose protocol version matches, whose group this agent belongs to, whose
 * token is that group's, and whose rank is our predecessor in the ring the hello names ('world' if none); anything
 * else is closed with the code that says why. The link then carries that ring's traffic only. A hello may arrive
 * just before our own assignment does, so an unknown group is waited for briefly.
 *
 * Two other kinds of link end here. The coordinator's reachability check sends `peer.probe` first instead of a
 * hello and gets `peer.probed` (HMAC of its challenge under the key our control hello carried), proving that the
 * address it dialled is this agent. And when nobody can dial us (NAT), a link relayed through the coordinator
 * arrives from `acceptRelayed` over a connection we opened ourselves: it runs the same accept path, hello and token
 * checks included, as a direct one.
 *
 * The port also answers plain HTTP (GET /metrics, GET /healthz: http-endpoints.ts), so the listener is an HTTP
 * server we own with the WebSocket server attached to its upgrades.
 */
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { CloseCode } from '../protocol/codes.ts';
import { RELAY_PATH } from '../common/relay-endpoint.ts';
import { DEFAULT_CONNECTION_LIMITS, HelloGate, limitServer, type ConnectionLimits } from '../common/conn-limits.ts';
import { MessageConnection } from '../protocol/connection.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { MAX_PEER_ATTACHMENT, MAX_PEER_FRAME, WORLD_RING, parsePeerMessage, type PeerMessage } from '../protocol/peer.ts';
import { assertCompatible } from '../protocol/version.ts';
import { serverOptions } from '../protocol/ws-options.ts';
import type { Logger } from '../common/log.ts';
import type { ServerTls } from '../common/tls.ts';
import type { Group, PeerConnection } from './group.ts';

export interface PeerServerOptions {
  host: string;
  port: number;
  log: Logger;
  /** Finds a group by id, waiting up to `ms` for its assignment to arrive. */
  findGroup(groupId: string, ms: number): Promise<Group | undefined>;
  helloTimeoutMs: number;
  onReject?(err: ProtocolError): void;
  /** Pings on every accepted link; a link silent this long is dropped (see MessageConnection's keepalive). */
  keepalive?: { intervalMs: number; timeoutMs: number };
  /** Answers plain HTTP requests (no upgrade) on the port; default: 404 for every one. */
  onRequest?: RequestListener;
  /** Serve TLS (peers dial wss://, /metrics is https://) with this certificate and key (--tls-cert/--tls-key). */
  tls?: ServerTls;
  /** Answers a reachability probe's challenge: HMAC-SHA256(reachKey, challenge), hex. Absent: probes are refused. */
  proveReach?(challenge: string): string;
  /** Headers timeout, socket cap and pending-hello cap of the port (common/conn-limits.ts); defaults for any left out. */
  limits?: Partial<ConnectionLimits>;
  /**
   * Upgrades for /ws/relay go here (this agent relays for a group: agent-relay.ts); every other upgrade is a peer
   * link. Absent: /ws/relay is a peer link like any path, refused at its hello.
   */
  relay?: { handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void };
}

export class PeerServer {
  readonly #server: Server;
  readonly #wss: WebSocketServer;
  readonly #opts: PeerServerOptions;
  readonly #hellos: HelloGate; // links that have not been welcomed yet, capped (a flood of silent sockets)

  private constructor(server: Server, wss: WebSocketServer, opts: PeerServerOptions) {
    this.#server = server;
    this.#wss = wss;
    this.#opts = opts;
    this.#hellos = new HelloGate(opts.limits?.maxPendingHellos ?? DEFAULT_CONNECTION_LIMITS.maxPendingHellos);
    wss.on('connection', (ws, req) => this.#accept(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
  }

  static listen(opts: PeerServerOptions): Promise<PeerServer> {
    return new Promise((resolve, reject) => {
      const onRequest: RequestListener = opts.onRequest ?? ((_req, res) => res.writeHead(404).end());
      // An https.Server is an http.Server over TLS sockets: the same requests, upgrades and limits.
      const server = (opts.tls ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, onRequest) : createServer(onRequest)) as Server;
      limitServer(server, { ...DEFAULT_CONNECTION_LIMITS, ...opts.limits });
      const wss = new WebSocketServer({ noServer: true, ...serverOptions(MAX_PEER_FRAME) });
      wss.on('error', () => {});
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        if (opts.relay && new URL(req.url ?? '/', 'http://peer').pathname === RELAY_PATH) return opts.relay.handleUpgrade(req, socket, head);
        wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
      });
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        server.on('error', (err) => opts.log.error(`peer listener: ${err.message}`));
        resolve(new PeerServer(server, wss, opts));
      });
    });
  }

  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  close(): Promise<void> {
    for (const ws of this.#wss.clients) ws.close(CloseCode.GOING_AWAY, 'agent shutting down');
    // wss.close() leaves a server it was given alone: close that too, and drop idle keep-alive HTTP connections
    // (a scraper's), which would otherwise hold close() open until they time out.
    return new Promise((resolve) =>
      this.#wss.close(() => {
        this.#server.close(() => resolve());
        this.#server.closeIdleConnections();
      }),
    );
  }

  /**
   * A link a relay handed us: `ws` is a connection we opened to the relay for one dialer, who is on its other end.
   * It is checked exactly as a direct link is (peer.hello, group token, ring, rank), but answers no peer.probe:
   * reachability is proved on the address itself, never through a relay.
   */
  acceptRelayed(ws: import('ws').WebSocket, label: string): void {
    this.#accept(ws, label, false);
  }

  #accept(ws: import('ws').WebSocket, remote: string, direct = true): void {
    const log = this.#opts.log;
    const helloDone = this.#hellos.admit(ws);
    if (!helloDone) return; // closed with 1013 TRY_AGAIN
    let handler: ((msg: PeerMessage, payload: Buffer | undefined) => void) | null = null;
    let handshaking = false;
    let group: Group | undefined;
    let ringId = WORLD_RING;
    const timer = setTimeout(() => conn.fail(new ProtocolError('PRT_ERR_HELLO_TIMEOUT', `no peer.hello within ${this.#opts.helloTimeoutMs} ms`)), this.#opts.helloTimeoutMs);
    const conn: PeerConnection = new MessageConnection(ws, {
      parse: parsePeerMessage,
      label: `peer link from ${remote}`,
      log,
      maxAttachmentBytes: MAX_PEER_ATTACHMENT,
      firstType: direct ? ['peer.hello', 'peer.probe'] : 'peer.hello',
      ...(this.#opts.keepalive ? { keepalive: this.#opts.keepalive } : {}),
      onReject: this.#opts.onReject,
      onClose: (code, reason) => {
        clearTimeout(timer);
        helloDone();
        if (handler && group) group.linkLost(ringId, 'inbound', code, reason);
      },
      onMessage: async (msg, payload) => {
        if (handler) return handler(msg, payload);
        if (msg.type === 'peer.probe' && direct && !handshaking) {
          handshaking = true;
          clearTimeout(timer);
          if (!this.#opts.proveReach) throw new ProtocolError('PRT_ERR_UNEXPECTED', 'this agent answers no reachability probes');
          conn.send({ type: 'peer.probed', proof: this.#opts.proveReach(msg.challenge) });
          await conn.flushed().catch(() => {});
          conn.close(CloseCode.NORMAL, 'probe answered');
          return;
        }
        if (msg.type !== 'peer.hello' || handshaking) {
          throw new ProtocolError('PRT_ERR_UNEXPECTED', `expected peer.hello first, got ${msg.type}`);
        }
        handshaking = true;
        clearTimeout(timer); // the hello came in time; findGroup's own wait bounds the rest
        assertCompatible(msg.protocol, 'the dialing agent');
        group = await this.#opts.findGroup(msg.groupId, this.#opts.helloTimeoutMs);
        if (!group || !group.acceptsToken(msg.token)) {
          // One answer for both cases, so a stranger learns nothing about which groups exist.
          throw new ProtocolError('PRT_ERR_UNAUTHORIZED', 'unknown group or wrong group token');
        }
        ringId = msg.ring ?? WORLD_RING;
        const predecessor = group.predecessorRank(ringId);
        if (predecessor === undefined) {
          throw new ProtocolError('PRT_ERR_UNAUTHORIZED', `rank ${group.rank} of group ${group.id} takes no link in ring ${ringId}`);
        }
        if (msg.rank !== predecessor) {
          throw new ProtocolError('PRT_ERR_UNAUTHORIZED', `rank ${msg.rank} is not rank ${group.rank}'s predecessor in ring ${ringId} of group ${group.id}`);
        }
        handler = group.attachInbound(ringId, conn);
        helloDone();
        conn.send({ type: 'peer.welcome', rank: group.rank });
      },
    });
  }
}
