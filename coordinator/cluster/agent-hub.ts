/**
 * The coordinator's side of the control channel. Accepts agent WebSockets on /ws/agent, runs the hello
 * handshake (version, join token, identity), keeps each node's record and liveness in the state store, sweeps
 * for agents whose heartbeats stopped, and routes group/collective messages to whoever asked for them.
 *
 * After each welcome (a first join or a reconnect) it checks whether other agents can dial the agent's advertised
 * peer address (reachability.ts), stores the answer with the node record and tells the agent (`reach`); groups
 * formed meanwhile wait for the answer (`reachSettled`), since it decides whether links to the agent are relayed.
 */
import { describeGpu } from '../../protocol/gpu.ts';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import { CloseCode } from '../../protocol/codes.ts';
import { MessageConnection } from '../../protocol/connection.ts';
import { HelloGate } from '../../common/conn-limits.ts';
import {
  MAX_CONTROL_ATTACHMENT,
  MAX_CONTROL_FRAME,
  parseAgentMessage,
  type AgentMessage,
  type CoordinatorMessage,
  type Hello,
} from '../../protocol/control.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { PROTOCOL_VERSION, assertCompatible } from '../../protocol/version.ts';
import { serverOptions } from '../../protocol/ws-options.ts';
import type { Logger } from '../../common/log.ts';
import type { CoordinatorConfig } from '../config.ts';
import { decideAdmission, findDead } from './membership.ts';
import { decideReach, probePeer } from './reachability.ts';
import type { CoordinatorMetrics } from '../metrics.ts';
import type { NodeReach, NodeRecord, StateStore } from '../store/state-store.ts';

type AgentConnection = MessageConnection<AgentMessage, CoordinatorMessage>;

export interface NodeView extends Omit<NodeRecord, 'secretHash'> {
  connected: boolean;
  heartbeatAgeMs: number;
}

/** Messages the hub does not handle itself go to this listener (the group manager). */
export type AgentMessageListener = (nodeId: string, msg: AgentMessage, attachment: Buffer | undefined) => void;

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

export class AgentHub {
  readonly #wss: WebSocketServer;
  readonly #store: StateStore;
  readonly #cfg: Readonly<CoordinatorConfig>;
  readonly #tokenHash: Buffer;
  readonly #clusterId: string;
  readonly #log: Logger;
  readonly #metrics: CoordinatorMetrics;
  readonly #live = new Map<string, AgentConnection>();
  readonly #sweeper: NodeJS.Timeout;
  readonly #hellos: HelloGate; // connections that have not said hello yet, capped (a flood of silent sockets)
  #listeners: AgentMessageListener[] = [];
  #closing = false;
  #downListeners: Array<(nodeId: string, reason: string) => void> = [];
  readonly #now: () => number;
  /** Reachability checks in flight, by node (a reconnect's check replaces an older one's entry). */
  readonly #probes = new Map<string, { done: Promise<void> }>();

  constructor(opts: {
    store: StateStore;
    config: Readonly<CoordinatorConfig>;
    tokenHash: string;
    clusterId: string;
    log: Logger;
    metrics: CoordinatorMetrics;
    now?: () => number;
  }) {
    this.#store = opts.store;
    this.#cfg = opts.config;
    this.#tokenHash = Buffer.from(opts.tokenHash, 'hex');
    this.#clusterId = opts.clusterId;
    this.#log = opts.log;
    this.#metrics = opts.metrics;
    this.#now = opts.now ?? Date.now;
    this.#wss = new WebSocketServer({ noServer: true, ...serverOptions(MAX_CONTROL_FRAME) });
    this.#hellos = new HelloGate(this.#cfg.maxPendingHellos);
    this.#wss.on('connection', (ws, req) => this.#accept(ws, req));
    // Nodes alive before a restart get a full timeout from now to reconnect before they are declared dead.
    const now = this.#now();
    for (const n of this.#store.listNodes()) if (n.status === 'alive') this.#store.touchNode(n.id, now);
    const every = Math.max(50, Math.min(1000, Math.floor(this.#cfg.heartbeatTimeoutMs / 4)));
    this.#sweeper = setInterval(() => this.sweep(), every);
    this.#sweeper.unref();
    opts.metrics.countNodesWith(() => this.#countNodes());
  }

  /** Every listener sees every message the hub does not handle itself, and ignores the types it does not know. */
  onAgentMessage(listener: AgentMessageListener): void {
    this.#listeners.push(listener);
  }

  onNodeDown(listener: (nodeId: string, reason: string) => void): void {
    this.#downListeners.push(listener);
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#wss.emit('connection', ws, req));
  }

  isConnected(nodeId: string): boolean {
    return this.#live.get(nodeId)?.isOpen ?? false;
  }

  send(nodeId: string, msg: CoordinatorMessage, attachment?: Uint8Array): void {
    const conn = this.#live.get(nodeId);
    if (!conn?.isOpen) throw new Error(`node ${nodeId} is not connected`);
    conn.send(msg, attachment);
  }

  /** Resolves once no reachability check of these nodes is running (each takes at most PROBE_TIMEOUT_MS). */
  async reachSettled(nodeIds: readonly string[]): Promise<void> {
    await Promise.all(nodeIds.map((id) => this.#probes.get(id)?.done));
  }

  /** Alive and connected nodes, oldest first: the ones work can be given to. */
  availableNodes(): NodeRecord[] {
    return this.#store.listNodes().filter((n) => n.status === 'alive' && this.isConnected(n.id));
  }

  views(): NodeView[] {
    const now = this.#now();
    return this.#store.listNodes().map(({ secretHash: _secret, ...n }) => ({
      ...n,
      connected: this.isConnected(n.id),
      heartbeatAgeMs: Math.max(0, now - n.lastSeenMs),
    }));
  }

  /**
   * Revokes a node's credential: its status becomes 'revoked' (final), its secret hash is cleared so no secret
   * matches it again, its live connection is closed with REVOKED, and the node-down listeners stop and re-queue
   * the work it held, as for a dead node. Revoking a revoked node changes nothing. Undefined for an unknown id.
   */
  revoke(id: string, reason = 'revoked by an operator'): NodeView | undefined {
    const node = this.#store.getNode(id);
    if (!node) return undefined;
    if (node.status !== 'revoked') {
      this.#log.warn(`node ${id} (${node.name}) revoked: ${reason}`);
      this.#store.putNode({ ...node, secretHash: '' }); // same status: no event; markDown records the change
      this.#live.get(id)?.close(CloseCode.REVOKED, reason);
      this.#live.delete(id);
      this.#markDown(id, 'revoked', reason);
    }
    return this.views().find((n) => n.id === id);
  }

  /** Marks dead every alive node whose heartbeats stopped; runs on a timer, callable from tests. */
  sweep(): void {
    for (const { id, reason } of findDead(this.#store.listNodes(), this.#now(), this.#cfg.heartbeatTimeoutMs)) {
      this.#log.warn(`node ${id} is dead: ${reason}`);
      this.#markDown(id, 'dead', reason);
      this.#live.get(id)?.close(CloseCode.HEARTBEAT_TIMEOUT, reason);
      this.#live.delete(id);
    }
  }

  close(): void {
    // Shutting down is not the agents' fault: leave their status as it is, so they reclaim it on reconnect.
    this.#closing = true;
    clearInterval(this.#sweeper);
    for (const conn of this.#live.values()) conn.close(CloseCode.GOING_AWAY, 'coordinator shutting down');
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
  }

  #accept(ws: WebSocket, req: IncomingMessage): void {
    const remote = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    const helloDone = this.#hellos.admit(ws);
    if (!helloDone) return; // closed with 1013 TRY_AGAIN
    let nodeId: string | null = null;
    const helloTimer = setTimeout(
      () => conn.fail(new ProtocolError('PRT_ERR_HELLO_TIMEOUT', `no hello within ${this.#cfg.helloTimeoutMs} ms`)),
      this.#cfg.helloTimeoutMs,
    );
    const conn: AgentConnection = new MessageConnection(ws, {
      parse: parseAgentMessage,
      label: `agent ${remote}`,
      log: this.#log,
      maxAttachmentBytes: MAX_CONTROL_ATTACHMENT,
      firstType: 'hello',
      onReject: (err) => this.#metrics.protocolRejections.inc({ code: err.code }),
      onMessage: (msg, attachment) => {
        if (nodeId === null) {
          if (msg.type !== 'hello') throw new ProtocolError('PRT_ERR_UNEXPECTED', `expected hello first, got ${msg.type}`);
          clearTimeout(helloTimer);
          helloDone();
          nodeId = this.#admit(conn, msg, remote);
          this.#checkReach(nodeId, conn, msg);
          return;
        }
        this.#onMessage(nodeId, conn, msg, attachment);
      },
      onClose: (code, reason) => {
        clearTimeout(helloTimer);
        helloDone();
        if (this.#closing) return;
        this.#metrics.agentConnections.set(this.#wss.clients.size);
        if (nodeId === null || this.#live.get(nodeId) !== conn) return;
        this.#live.delete(nodeId);
        const node = this.#store.getNode(nodeId);
        if (node?.status === 'alive') {
          this.#markDown(nodeId, 'dead', `connection lost (${code}${reason ? `: ${reason}` : ''})`);
        }
      },
    });
    this.#metrics.agentConnections.set(this.#wss.clients.size);
  }

  /** Runs the hello checks; returns the node id, or throws a ProtocolError that closes the connection. */
  #admit(conn: AgentConnection, hello: Hello, remote: string): string {
    try {
      assertCompatible(hello.protocol, `agent ${hello.name}`);
    } catch (err) {
      this.#metrics.joins.inc({ outcome: 'version_mismatch' });
      throw err;
    }
    if (!timingSafeEqual(Buffer.from(sha256Hex(hello.token), 'hex'), this.#tokenHash)) {
      this.#metrics.joins.inc({ outcome: 'unauthorized' });
      throw new ProtocolError('PRT_ERR_UNAUTHORIZED', 'wrong join token');
    }
    const secretHash = hello.nodeSecret ? sha256Hex(hello.nodeSecret) : undefined;
    const existing = hello.nodeId ? this.#store.getNode(hello.nodeId) : undefined;
    const decision = decideAdmission({ nodeId: hello.nodeId, secretHash }, existing);
    if (decision.action === 'refuse') {
      this.#metrics.joins.inc({ outcome: 'refused' });
      throw new ProtocolError('PRT_ERR_UNAUTHORIZED', decision.reason);
    }
    if (decision.action === 'revoked') {
      this.#metrics.joins.inc({ outcome: 'revoked' });
      this.#log.warn(`refused ${hello.name} from ${remote}: ${decision.reason}`);
      throw new ProtocolError('PRT_ERR_REVOKED', decision.reason);
    }
    const now = this.#now();
    const id = decision.action === 'reclaim' ? decision.id : `node-${randomBytes(4).toString('hex')}`;
    const secret = randomBytes(24).toString('base64url');
    this.#store.putNode({
      id,
      name: hello.name,
      status: 'alive',
      statusReason: decision.action === 'reclaim' ? 'reconnected' : 'joined',
      capabilities: hello.capabilities,
      peerAddress: hello.peerAddress,
      agentVersion: hello.agentVersion,
      remoteAddress: remote,
      firstSeenMs: existing?.firstSeenMs ?? now,
      lastSeenMs: now,
      secretHash: sha256Hex(secret),
      reach: decideReach(hello, undefined, now),
    });
    const previous = this.#live.get(id);
    this.#live.set(id, conn);
    if (previous && previous !== conn) previous.close(CloseCode.REPLACED, 'a newer connection took over this node');
    this.#metrics.joins.inc({ outcome: decision.action === 'reclaim' ? 'reclaimed' : 'new' });
    conn.send({
      type: 'welcome',
      protocol: PROTOCOL_VERSION,
      clusterId: this.#clusterId,
      nodeId: id,
      nodeSecret: secret,
      heartbeatMs: this.#cfg.heartbeatMs,
      heartbeatTimeoutMs: this.#cfg.heartbeatTimeoutMs,
    });
    this.#log.info(
      `${decision.action === 'reclaim' ? 'node reconnected' : 'node joined'}: ${id} (${hello.name}) from ${remote}, ` +
        `${hello.capabilities.backend} ${hello.capabilities.matmulGflops} GFLOP/s${hello.capabilities.gpu ? ` on ${describeGpu(hello.capabilities.gpu)}` : ''}, ` +
        `peers at ${hello.peerAddress}`,
    );
    return id;
  }

  /** Probes the agent's peer address unless its hello already decided (--relay-only, an older agent), then tells it. */
  #checkReach(id: string, conn: AgentConnection, hello: Hello): void {
    const tell = (reach: NodeReach) => {
      // An older agent (no reach key, no inbound flag) would not know the message.
      if (!conn.isOpen || (hello.reachKey === undefined && hello.inbound === undefined)) return;
      conn.send({ type: 'reach', reachable: reach.state !== 'relayed', reason: reach.reason.slice(0, 512), ...(reach.relay ? { relay: reach.relay } : {}) });
    };
    const first = decideReach(hello, undefined, this.#now());
    if (first.state !== 'checking') {
      if (first.state === 'relayed') this.#log.info(`node ${id} (${hello.name}) is relayed: ${first.reason}`);
      return tell(first);
    }
    const done = probePeer(hello.peerAddress, hello.reachKey!, { log: this.#log }).then((outcome) => {
      if (this.#closing || this.#live.get(id) !== conn) return; // shutting down, or it reconnected: that hello's check decides
      const reach = decideReach(hello, outcome, this.#now());
      this.#store.setNodeReach(id, reach);
      if (reach.state === 'relayed') this.#log.info(`node ${id} (${hello.name}) cannot be dialled at ${hello.peerAddress}: ${reach.reason}; its links go through the relay`);
      else this.#log.debug(`node ${id} (${hello.name}) is reachable at ${hello.peerAddress}: ${reach.reason}`);
      tell(reach);
    }).catch((err: unknown) => this.#log.warn(`reachability check of node ${id}: ${(err as Error).message}`));
    const entry = { done: done.finally(() => this.#probes.get(id) === entry && this.#probes.delete(id)) };
    this.#probes.set(id, entry);
  }

  #onMessage(nodeId: string, conn: AgentConnection, msg: AgentMessage, attachment: Buffer | undefined): void {
    switch (msg.type) {
      case 'hello':
        throw new ProtocolError('PRT_ERR_UNEXPECTED', 'second hello on one connection');
      case 'heartbeat':
        this.#metrics.heartbeats.inc();
        this.#store.touchNode(nodeId, this.#now());
        conn.send({ type: 'heartbeat.ack', seq: msg.seq });
        return;
      case 'leave':
        this.#log.info(`node ${nodeId} left: ${msg.reason}`);
        this.#markDown(nodeId, 'left', msg.reason || 'left');
        this.#live.delete(nodeId);
        conn.close(CloseCode.NORMAL, 'goodbye');
        return;
      default:
        for (const l of this.#listeners) l(nodeId, msg, attachment);
    }
  }

  #markDown(id: string, status: 'dead' | 'left' | 'revoked', reason: string): void {
    this.#store.setNodeStatus(id, status, reason, this.#now());
    for (const l of this.#downListeners) l(id, reason);
  }

  #countNodes(): Record<string, number> {
    const counts = { alive: 0, dead: 0, left: 0, revoked: 0 };
    for (const n of this.#store.listNodes()) counts[n.status]++;
    return counts;
  }
}
