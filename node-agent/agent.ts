/**
 * The node agent: joins a coordinator over one outgoing WebSocket (so it works behind NAT), reports what it can
 * do, heartbeats, opens a peer listener for direct agent-to-agent links, and carries out assignments.
 *
 * Connection life: connect → hello → welcome → (heartbeats, assignments)… → lost → reconnect with capped
 * exponential backoff, reclaiming the same node id with the secret the coordinator gave us. A refused token or
 * protocol version is final: retrying cannot fix it, so the agent says what to do and exits non-zero.
 *
 * The agent keeps the control connection, its groups (group.ts) and the collectives it is asked to run; the one
 * training job it runs at a time lives in job-slot.ts.
 *
 * Behind NAT: the hello's `reachKey` lets the peer port prove to the coordinator's probe that the address is ours;
 * `reach` says whether peers dial us or go through the relay, `relay.open` asks us to open a relayed link; a group
 * may pick us as its relay (`relayFor` in the assignment: agent-relay.ts).
 *
 * Long: one connection's life (hello, heartbeats, dispatch, reconnect) and the roles it hands out (groups, job,
 * relay) read best in one place; each role's work lives in its own module.
 */
import WebSocket from 'ws';
import { createHmac, randomBytes } from 'node:crypto';
import { CloseCode } from '../protocol/codes.ts';
import type { ConnectionLimits } from '../common/conn-limits.ts';
import { MessageConnection } from '../protocol/connection.ts';
import {
  MAX_CONTROL_ATTACHMENT,
  MAX_CONTROL_FRAME,
  parseCoordinatorMessage,
  type AgentMessage,
  type CapabilitiesInfo,
  type CollectiveRun,
  type CoordinatorMessage,
  type GroupAssign,
} from '../protocol/control.ts';
import { PROTOCOL_VERSION } from '../protocol/version.ts';
import { clientOptions } from '../protocol/ws-options.ts';
import type { Logger } from '../common/log.ts';
import type { ServerTls } from '../common/tls.ts';
import { backoffDelayMs, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.ts';
import { runCollective } from './collective-runner.ts';
import type { BackendChoice } from '../model/compute/backend.ts';
import { describeGpu } from '../protocol/gpu.ts';
import { AgentError } from './errors.ts';
import { Group } from './group.ts';
import { httpEndpoints } from './http-endpoints.ts';
import { AgentRelay } from './agent-relay.ts';
import { openRelayedLink } from './relay-link.ts';
import { relayUrlOn } from '../common/relay-endpoint.ts';
import type { AgentMetrics } from './metrics.ts';
import { PeerServer } from './peer-server.ts';
import { httpBaseUrl, JobSlot } from './job-slot.ts';
import type { StepObserver } from '../common/step-report.ts';

export const AGENT_VERSION = '0.1.0';

export interface AgentConfig {
  /** ws(s):// URL of the coordinator's agent endpoint. */
  url: string;
  token: string;
  name: string;
  capabilities: () => Promise<CapabilitiesInfo>;
  /** Address other agents dial; default: the local address of our connection to the coordinator. */
  peerHost: string | undefined;
  /**
   * The peer address sent to the coordinator, verbatim (ws:// or wss://), instead of one made of peerHost and the
   * listener's port: for agents reached through a proxy, a NAT port mapping or a fault-injecting relay.
   */
  peerAdvertise?: string;
  peerListenHost: string;
  peerPort: number;
  /** Nobody can dial this agent (--relay-only): tell the coordinator so, and take every link through its relay. */
  relayOnly?: boolean;
  maxRetries: number; // Infinity: keep trying
  backoff: BackoffOptions;
  collectiveIdleTimeoutMs: number;
  /** A peer link that has not said peer.hello by then is closed; an unknown group in a hello is waited for this long (default 10 s). */
  peerHelloTimeoutMs?: number;
  /** The peer port's headers timeout, socket cap and pending-hello cap (common/conn-limits.ts; defaults for any left out). */
  peerLimits?: Partial<ConnectionLimits>;
  /** A peer link that hears nothing (no frame, no pong) for this long is dropped (default 10 s); pings every fifth of it. */
  peerKeepaliveMs?: number;
  /** CAs trusted for a wss:// coordinator, its artifact API and wss:// peers (--ca); default: Node's + NODE_EXTRA_CA_CERTS. */
  ca?: readonly string[];
  /** Serve the peer listener over TLS (--tls-cert/--tls-key): peers dial wss://, /metrics is https://. */
  tls?: ServerTls;
  log: Logger;
  /** Compute backend for training jobs (default auto). */
  backend?: BackendChoice;
  /** Where jobs keep their data, checkpoints and the artifact cache (default <tmpdir>/meshtrain-agent-<name>). */
  workDir?: string;
  /** Told about every step and checkpoint of the jobs this agent runs (metrics, traces). */
  observers?: readonly StepObserver[];
  /**
   * Served at GET /metrics on the peer port, and told about joins, heartbeats and lost connections. Its step
   * figures come through `observers` (the caller adds it there too).
   */
  metrics?: AgentMetrics;
}

type Control = MessageConnection<CoordinatorMessage, AgentMessage>;

export class Agent {
  readonly #cfg: AgentConfig;
  readonly #log: Logger;
  #peers: PeerServer | null = null;
  #caps: CapabilitiesInfo | null = null;
  #nodeId: string | undefined;
  #nodeSecret: string | undefined;
  #conn: Control | null = null;
  #stopping = false;
  #wake: (() => void) | null = null;
  readonly #groups = new Map<string, Group>();
  readonly #groupWaiters = new Map<string, Array<(g: Group) => void>>();
  /** Proves to the coordinator's reachability probe that our peer port is us (sent in each hello; new per process). */
  readonly #reachKey = randomBytes(24).toString('base64url');
  /** The one training job this agent runs at a time (job-slot.ts). */
  readonly #job: JobSlot;
  readonly #relay: AgentRelay; // our peer port's /ws/relay, for the groups we are picked to relay for

  constructor(cfg: AgentConfig) {
    this.#cfg = cfg;
    this.#log = cfg.log;
    this.#relay = new AgentRelay({ log: cfg.log.child('relay'), control: () => this.#conn, metrics: cfg.metrics?.relay });
    this.#job = new JobSlot(cfg, (m) => {
      const c = this.#conn;
      if (c?.isOpen) c.send(m);
    });
  }

  get nodeId(): string | undefined {
    return this.#nodeId;
  }

  /** Runs until stop() or a fatal error (thrown as AgentError). */
  async run(): Promise<void> {
    this.#peers = await PeerServer.listen({
      host: this.#cfg.peerListenHost,
      port: this.#cfg.peerPort,
      log: this.#log.child('peers'),
      helloTimeoutMs: this.#cfg.peerHelloTimeoutMs ?? 10_000,
      ...(this.#cfg.peerLimits ? { limits: this.#cfg.peerLimits } : {}),
      keepalive: this.#keepalive(),
      ...(this.#cfg.tls ? { tls: this.#cfg.tls } : {}),
      findGroup: (id, ms) => this.#findGroup(id, ms),
      relay: this.#relay,
      proveReach: (challenge) => createHmac('sha256', this.#reachKey).update(challenge).digest('hex'),
      onRequest: httpEndpoints({
        registry: this.#cfg.metrics?.registry,
        health: () => ({ name: this.#cfg.name, nodeId: this.#nodeId ?? null, connected: this.#conn?.isOpen ?? false, job: this.#job.jobId }),
        onError: (err) => this.#log.warn(`GET /metrics: ${(err as Error).message}`),
      }),
    });
    const listen = this.#cfg.peerListenHost;
    this.#log.info(`peer listener on ${formatHost(listen)}:${this.#peers.port}`);
    // A wildcard address is not one to browse to; the peer host (what other agents dial) or loopback is.
    const shown = this.#cfg.peerHost ?? (listen === '0.0.0.0' || listen === '::' ? '127.0.0.1' : listen);
    if (this.#cfg.metrics) this.#log.info(`metrics at ${this.#cfg.tls ? 'https' : 'http'}://${formatHost(shown)}:${this.#peers.port}/metrics`);
    this.#caps = await this.#cfg.capabilities();
    this.#log.info(
      `capabilities: backend ${this.#caps.backend}, ${this.#caps.cores} cores, ${(this.#caps.memoryBytes / 2 ** 30).toFixed(1)} GiB, ` +
        `matmul ${this.#caps.matmulGflops} GFLOP/s${this.#caps.gpu ? ` on ${describeGpu(this.#caps.gpu)}` : ''}`,
    );
    let failures = 0;
    while (!this.#stopping) {
      const outcome = await this.#connectOnce();
      if (this.#stopping) break;
      if (outcome.joined) failures = 0;
      else failures++;
      if (failures > this.#cfg.maxRetries) {
        throw new AgentError('AGT_ERR_UNREACHABLE', `gave up on ${this.#cfg.url} after ${failures} failed attempts (${outcome.why})`);
      }
      const delay = backoffDelayMs(Math.max(0, failures - 1), this.#cfg.backoff);
      this.#log.warn(
        outcome.joined
          ? `lost the coordinator (${outcome.why}); reconnecting in ${(delay / 1000).toFixed(1)} s`
          : `coordinator at ${this.#cfg.url} unreachable (${outcome.why}); retrying in ${(delay / 1000).toFixed(1)} s (attempt ${failures + 1})`,
      );
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.#wake = () => (clearTimeout(t), resolve());
      });
      this.#wake = null;
    }
  }

  /** Leaves the cluster on purpose: tells the coordinator, closes every link. */
  async stop(reason: string): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    this.#wake?.();
    const done = this.#job.done;
    if (done) {
      this.#job.stop(`the agent is leaving (${reason})`);
      await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]); // so its job.finished goes out first
    }
    const conn = this.#conn;
    if (conn?.isOpen) {
      conn.send({ type: 'leave', reason });
      await Promise.race([conn.flushed().catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
      conn.close(CloseCode.GOING_AWAY, 'agent leaving');
    }
    for (const g of this.#groups.values()) g.release();
    this.#groups.clear();
    this.#relay.close();
    await this.#peers?.close();
  }

  #connectOnce(): Promise<{ joined: boolean; why: string }> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.#cfg.url, { ...clientOptions(MAX_CONTROL_FRAME), handshakeTimeout: 10_000, ...(this.#cfg.ca ? { ca: [...this.#cfg.ca] } : {}) });
      let joined = false;
      let lastError = '';
      let localAddress = '127.0.0.1';
      let heartbeat: NodeJS.Timeout | null = null;
      let watchdog: NodeJS.Timeout | null = null;
      ws.on('error', (err) => (lastError = (err as NodeJS.ErrnoException).code ?? err.message));
      ws.once('upgrade', (res) => (localAddress = res.socket.localAddress ?? localAddress));
      const conn: Control = new MessageConnection(ws, {
        parse: parseCoordinatorMessage,
        label: 'coordinator',
        log: this.#log,
        maxAttachmentBytes: MAX_CONTROL_ATTACHMENT,
        onMessage: (msg) => {
          watchdog?.refresh();
          if (!joined) {
            if (msg.type === 'error') this.#log.error(`coordinator: ${msg.code}: ${msg.message}`);
            if (msg.type !== 'welcome') return;
            joined = true;
            this.#cfg.metrics?.joined(this.#nodeId !== undefined); // we had an identity: this is a rejoin
            this.#nodeId = msg.nodeId;
            this.#nodeSecret = msg.nodeSecret;
            this.#log.info(`joined cluster ${msg.clusterId} as node ${msg.nodeId} (${this.#cfg.name})`);
            let seq = 0;
            heartbeat = setInterval(() => {
              if (!conn.isOpen) return;
              conn.send({ type: 'heartbeat', seq: ++seq, sentAt: Date.now() });
              this.#relay.reportTo(conn); // while we relay for a group: what it carried (agent-relay.ts)
              this.#cfg.metrics?.heartbeatSent();
            }, msg.heartbeatMs);
            // A coordinator that stops answering (half-open TCP, frozen process) is given up on, then redialed.
            watchdog = setTimeout(() => {
              this.#log.warn(`no word from the coordinator for ${msg.heartbeatTimeoutMs} ms; reconnecting`);
              ws.terminate();
            }, msg.heartbeatTimeoutMs);
            return;
          }
          return this.#dispatch(conn, msg);
        },
        onClose: (code, reason) => {
          if (heartbeat) clearInterval(heartbeat);
          if (watchdog) clearTimeout(watchdog);
          if (this.#conn === conn) this.#conn = null;
          this.#cfg.metrics?.disconnected();
          // Our groups' peers are told to re-form by the coordinator; links without a coordinator are useless.
          this.#job.stop('lost the control connection to the coordinator');
          for (const g of this.#groups.values()) g.release();
          this.#groups.clear();
          this.#relay.releaseAll();
          if (!joined && code === CloseCode.UNAUTHORIZED) {
            reject(new AgentError('AGT_ERR_UNAUTHORIZED', `the coordinator refused our join token (${reason || 'unauthorized'}). Pass the token that \`coordinator start\` printed with --token.`));
          } else if (code === CloseCode.REVOKED) {
            // Final whether it comes mid-session or on a reconnect: the coordinator will never take this id back.
            reject(new AgentError('AGT_ERR_REVOKED', `the coordinator revoked this agent's credential (node ${this.#nodeId ?? 'unknown'}: ${reason || 'revoked'}); it has stopped its work and will not reconnect. An operator ran \`coordinator nodes revoke\`: ask them before starting it again, which joins the cluster as a new node.`));
          } else if (!joined && code === CloseCode.VERSION_MISMATCH) {
            reject(new AgentError('AGT_ERR_VERSION_MISMATCH', `${reason}. Install the same release on the agent and the coordinator.`));
          } else {
            resolve({ joined, why: lastError || `closed with ${code}${reason ? ` (${reason})` : ''}` });
          }
        },
      });
      this.#conn = conn;
      ws.once('open', () => {
        conn.send({
          type: 'hello',
          protocol: PROTOCOL_VERSION,
          token: this.#cfg.token,
          name: this.#cfg.name,
          ...(this.#nodeId && this.#nodeSecret ? { nodeId: this.#nodeId, nodeSecret: this.#nodeSecret } : {}),
          capabilities: this.#caps!,
          peerAddress: this.#cfg.peerAdvertise ?? `${this.#cfg.tls ? 'wss' : 'ws'}://${formatHost(this.#cfg.peerHost ?? localAddress)}:${this.#peers!.port}`,
          agentVersion: AGENT_VERSION,
          reachKey: this.#reachKey,
          ...(this.#cfg.relayOnly ? { inbound: false } : {}),
        });
      });
    });
  }

  async #dispatch(conn: Control, msg: CoordinatorMessage): Promise<void> {
    switch (msg.type) {
      case 'heartbeat.ack':
        return;
      case 'reach':
        this.#cfg.metrics?.relay.setReachable(msg.reachable);
        if (msg.reachable) this.#log.info(`peers dial us directly: ${msg.reason}`);
        else this.#log.warn(`peers cannot dial us (${msg.reason}); our links go through the ${msg.relay ?? 'coordinator'}'s relay`);
        return;
      case 'relay.open': // a predecessor that cannot dial us waits at the relay, the coordinator's or an agent's (relay-link.ts)
        return openRelayedLink({ controlUrl: this.#cfg.url, ...msg, relayUrl: msg.url, peers: this.#peers!, log: this.#log, ca: this.#cfg.ca, onSocket: (s) => this.#cfg.metrics?.relay.track(s, 'relayed') });
      case 'error':
        this.#log.error(`coordinator: ${msg.code}: ${msg.message}`);
        return;
      case 'welcome':
        this.#log.warn('coordinator sent a second welcome; ignored');
        return;
      case 'group.assign':
        return this.#joinGroup(conn, msg);
      case 'relay.grant': // we relay for a group we are not in (agent-relay.ts)
        return this.#relay.assign({ groupId: msg.groupId, relayFor: { ticket: msg.ticket, targets: msg.targets } });
      case 'group.release':
        if (this.#job.groupId === msg.groupId) this.#job.stop(`group ${msg.groupId} was released`);
        this.#groups.get(msg.groupId)?.release();
        this.#groups.delete(msg.groupId);
        this.#relay.release(msg.groupId);
        return;
      case 'collective.run':
        return this.#runCollective(conn, msg);
      case 'job.start':
        return this.#job.start(msg, (id) => this.#groups.get(id), (m) => {
          if (conn.isOpen) conn.send(m);
        });
      case 'job.stop':
        if (this.#job.jobId === msg.jobId) this.#job.stop(msg.reason);
        else this.#log.info(`job.stop for ${msg.jobId}, which this agent is not running; ignored`);
        return;
    }
  }

  async #joinGroup(conn: Control, assign: GroupAssign): Promise<void> {
    this.#groups.get(assign.groupId)?.release();
    this.#groups.delete(assign.groupId);
    this.#relay.assign(assign); // before linking: our predecessors may dial our relay as soon as they have theirs
    let group: Group;
    try {
      group = new Group(assign, {
        log: this.#log.child(`group ${assign.groupId}`),
        connectTimeoutMs: 15_000,
        ...(this.#cfg.ca ? { ca: this.#cfg.ca } : {}),
        collectiveIdleTimeoutMs: this.#cfg.collectiveIdleTimeoutMs,
        keepalive: this.#keepalive(),
        relayUrl: relayUrlOn(this.#cfg.url),
        onRelaySocket: (socket) => this.#cfg.metrics?.relay.track(socket, 'dialer'),
      });
    } catch (err) {
      // An assignment whose rings do not add up: refuse it, and keep the control channel.
      this.#log.warn(`group ${assign.groupId}: ${(err as Error).message}`);
      if (conn.isOpen) conn.send({ type: 'group.failed', groupId: assign.groupId, rank: assign.rank, error: (err as Error).message.slice(0, 1000) });
      return;
    }
    this.#groups.set(group.id, group);
    for (const w of this.#groupWaiters.get(group.id) ?? []) w(group);
    this.#groupWaiters.delete(group.id);
    try {
      await group.link();
      if (conn.isOpen) conn.send({ type: 'group.ready', groupId: group.id, rank: group.rank });
    } catch (err) {
      this.#log.warn(`group ${group.id}: ${(err as Error).message}`);
      if (conn.isOpen) conn.send({ type: 'group.failed', groupId: group.id, rank: group.rank, error: (err as Error).message.slice(0, 1000) });
    }
  }

  async #runCollective(conn: Control, run: CollectiveRun): Promise<void> {
    const group = this.#groups.get(run.groupId);
    try {
      if (!group) throw new AgentError('AGT_ERR_GROUP', `not a member of group ${run.groupId}`);
      const { result, attachment } = await runCollective(group, run);
      if (conn.isOpen) conn.send(result, attachment);
    } catch (err) {
      this.#log.warn(`${run.op} ${run.runId} failed: ${(err as Error).message}`);
      if (conn.isOpen) {
        conn.send({
          type: 'collective.result',
          groupId: run.groupId,
          runId: run.runId,
          rank: group?.rank ?? 0,
          ok: false,
          error: (err as Error).message.slice(0, 1000),
          ms: [],
          bytes: 0,
          digest: '',
        });
      }
    }
  }

  #keepalive(): { intervalMs: number; timeoutMs: number } {
    const timeoutMs = this.#cfg.peerKeepaliveMs ?? 10_000;
    return { intervalMs: Math.max(50, Math.floor(timeoutMs / 5)), timeoutMs };
  }

  #findGroup(id: string, ms: number): Promise<Group | undefined> {
    const g = this.#groups.get(id);
    if (g) return Promise.resolve(g);
    return new Promise((resolve) => {
      const list = this.#groupWaiters.get(id) ?? [];
      const timer = setTimeout(() => {
        const rest = (this.#groupWaiters.get(id) ?? []).filter((w) => w !== done);
        if (rest.length) this.#groupWaiters.set(id, rest);
        else this.#groupWaiters.delete(id);
        resolve(undefined);
      }, ms);
      const done = (group: Group) => (clearTimeout(timer), resolve(group));
      list.push(done);
      this.#groupWaiters.set(id, list);
    });
  }
}

function formatHost(host: string): string {
  const bare = host.replace(/^::ffff:/, '');
  return bare.includes(':') ? `[${bare}]` : bare;
}

export { DEFAULT_BACKOFF, httpBaseUrl };
