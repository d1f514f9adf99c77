/**
 * One group on this agent: its assignment from the coordinator and, for every ring of the group that contains our
 * rank, the link we dial to our successor in that ring, the link our predecessor in it dials to us (accepted by
 * peer-server.ts), and the Ring (collectives) and Mailbox (point-to-point tensors) that run over them.
 *
 * A job with data × pipeline × tensor parallelism has several rings among the same members (e.g. 'dp.0' of the
 * ranks holding the same stage, 'pp.0' of two neighbouring stages); a plain group has one, 'world'. Links are per
 * ring: two rings with the same neighbours still get their own sockets, so traffic on one never waits behind the
 * other's and each link's failure is that ring's alone.
 *
 * A successor nobody can dial (its assignment entry carries a relay ticket) is dialled through a relay instead of
 * its address: the coordinator's (coordinator/cluster/relay.ts), or the agent relay the entry's `relay.url` names
 * (agent-relay.ts); the link is otherwise the same: our `peer.hello`
 * with the group token goes through the relay to the successor, which checks it as on a direct link.
 */
import WebSocket from 'ws';
import type { Socket } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import { sha256 } from '../common/relay-endpoint.ts';
import { CloseCode } from '../protocol/codes.ts';
import { MessageConnection } from '../protocol/connection.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { MAX_PEER_ATTACHMENT, MAX_PEER_FRAME, WORLD_RING, parsePeerMessage, type PeerMessage } from '../protocol/peer.ts';
import { PROTOCOL_VERSION } from '../protocol/version.ts';
import { clientOptions } from '../protocol/ws-options.ts';
import { assignedRings, ringProblems, type GroupAssign } from '../protocol/control.ts';
import type { Logger } from '../common/log.ts';
import { LinkMailbox, type Mailbox } from './collectives/mailbox.ts';
import { Ring, type RingInLink } from './collectives/ring.ts';
import { AgentError } from './errors.ts';

export type PeerConnection = MessageConnection<PeerMessage, PeerMessage>;

export interface GroupOptions {
  log: Logger;
  /** How long to keep trying to link to our successors (their listeners may still be starting). */
  connectTimeoutMs: number;
  /** A collective that makes no progress for this long fails. */
  collectiveIdleTimeoutMs: number;
  /** Per ring: bytes of point-to-point tensors held before recv before the inbound link is paused (default 256 MiB). */
  mailboxLimitBytes?: number;
  /** CAs trusted when dialing wss:// peers (--ca; common/tls.ts loadTrust); default: Node's store + NODE_EXTRA_CA_CERTS. */
  ca?: readonly string[];
  /** Pings on every link of the group; a link silent this long is dropped (see MessageConnection's keepalive). */
  keepalive?: { intervalMs: number; timeoutMs: number };
  /** The coordinator's relay endpoint (ws(s)://coordinator/ws/relay), for successors that cannot be dialled. */
  relayUrl?: string;
  /** Told about the socket of every relayed link we open (byte counters: node-agent/metrics.ts). */
  onRelaySocket?(socket: Socket): void;
}

/** Our place in one ring and its links. */
interface RingSlot {
  readonly id: string;
  readonly members: readonly number[]; // group ranks in ring order
  readonly position: number; // our index in `members`: our rank in this ring
  readonly successor: number; // group rank we dial
  readonly predecessor: number; // group rank that dials us
  out: PeerConnection | null;
  in: PeerConnection | null;
  ring: Ring | null;
  mailbox: LinkMailbox | null;
  inboundWaiters: Array<{ resolve(): void; reject(err: Error): void }>;
}

export class Group {
  readonly id: string;
  readonly rank: number;
  readonly size: number;
  readonly segmentBytes: number;
  readonly #tokenHash: Buffer;
  readonly #assign: GroupAssign;
  readonly #opts: GroupOptions;
  /** The rings that contain our rank, by id. */
  readonly #slots = new Map<string, RingSlot>();
  #released = false;

  /** Throws AGT_ERR_GROUP for an assignment whose rings or peers do not add up. */
  constructor(assign: GroupAssign, opts: GroupOptions) {
    this.id = assign.groupId;
    this.rank = assign.rank;
    this.size = assign.size;
    this.segmentBytes = assign.segmentBytes;
    this.#tokenHash = sha256(assign.token);
    this.#assign = assign;
    this.#opts = opts;
    if (assign.rank >= assign.size) throw new AgentError('AGT_ERR_GROUP', `group ${this.id}: rank ${assign.rank} is not a rank of a group of ${assign.size}`);
    const rings = assignedRings(assign);
    const addressed = new Set(assign.peers.map((p) => p.rank)); // not peers.some per ring: 4096 rings × 65536 peers
    const problems = ringProblems(rings, assign.size);
    if (problems.length) throw new AgentError('AGT_ERR_GROUP', `group ${this.id} has bad rings: ${problems.join('; ')}`);
    for (const { id, members } of rings) {
      const position = members.indexOf(this.rank);
      if (position < 0) continue;
      const n = members.length;
      const slot: RingSlot = {
        id,
        members,
        position,
        successor: members[(position + 1) % n]!,
        predecessor: members[(position - 1 + n) % n]!,
        out: null,
        in: null,
        ring: null,
        mailbox: null,
        inboundWaiters: [],
      };
      if (n > 1 && !addressed.has(slot.successor)) {
        throw new AgentError('AGT_ERR_GROUP', `group ${this.id} assignment lacks the address of rank ${slot.successor}, our successor in ring ${id}`);
      }
      this.#slots.set(id, slot);
    }
  }

  /** The ids of the rings we are in. */
  get ringIds(): string[] {
    return [...this.#slots.keys()];
  }

  /** Our Ring in the 'world' ring (the whole group, unless the assignment named other rings). */
  get ring(): Ring {
    return this.ringOf(WORLD_RING);
  }

  /** Our Ring in ring `id`: its rank is our position in the ring's member list, its size the member count. */
  ringOf(id: string = WORLD_RING): Ring {
    const ring = this.#slot(id).ring;
    if (!ring) throw new AgentError('AGT_ERR_GROUP', `ring ${id} of group ${this.id} is not linked yet`);
    return ring;
  }

  /** Point-to-point tensors in ring `id`: to our successor, from our predecessor. */
  mailbox(id: string = WORLD_RING): Mailbox {
    const mailbox = this.#slot(id).mailbox;
    if (!mailbox) throw new AgentError('AGT_ERR_GROUP', `ring ${id} of group ${this.id} is not linked yet`);
    return mailbox;
  }

  /** The group rank that may link to us in ring `ringId`; undefined if we are not in it or it has one member. */
  predecessorRank(ringId: string): number | undefined {
    const slot = this.#slots.get(ringId);
    return slot && slot.members.length > 1 ? slot.predecessor : undefined;
  }

  /** Constant-time token check for a peer that wants to link to us. */
  acceptsToken(token: string): boolean {
    return timingSafeEqual(sha256(token), this.#tokenHash);
  }

  /** Links every ring we are in, all at once; resolves when each can run, within the connect deadline. */
  async link(): Promise<void> {
    const deadline = Date.now() + this.#opts.connectTimeoutMs;
    await Promise.all([...this.#slots.values()].map((slot) => this.#linkRing(slot, deadline)));
  }

  /**
   * Called by the peer server once a hello checked out: the token is ours and the dialer is our predecessor in
   * ring `ringId`. Returns the handler for the link's messages.
   */
  attachInbound(ringId: string, conn: PeerConnection): (msg: PeerMessage, payload: Buffer | undefined) => void {
    const slot = this.#slots.get(ringId);
    if (!slot || slot.members.length < 2) throw new ProtocolError('PRT_ERR_UNAUTHORIZED', `group ${this.id} takes no link in ring ${ringId}`);
    if (this.#released) throw new ProtocolError('PRT_ERR_UNEXPECTED', `group ${this.id} was released`);
    if (slot.in?.isOpen) {
      throw new ProtocolError('PRT_ERR_UNEXPECTED', `ring ${ringId} of group ${this.id} already has a link from rank ${slot.predecessor}`);
    }
    slot.in = conn;
    for (const w of slot.inboundWaiters.splice(0)) w.resolve();
    return (msg, payload) => {
      switch (msg.type) {
        case 'ring.data':
        case 'stream.data':
          if (!slot.ring) throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} before ring ${ringId} of group ${this.id} is linked`);
          return slot.ring.receive(msg, payload!);
        case 'pipe.data':
          if (!slot.mailbox) throw new ProtocolError('PRT_ERR_UNEXPECTED', `pipe.data before ring ${ringId} of group ${this.id} is linked`);
          return slot.mailbox.receive(msg, payload!);
        default:
          throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} after the handshake`);
      }
    };
  }

  /** A link of ring `ringId` closed: its collectives and point-to-point messages can no longer complete. */
  linkLost(ringId: string, which: 'inbound' | 'outbound', code: number, reason: string): void {
    if (this.#released) return;
    const slot = this.#slots.get(ringId);
    if (!slot) return;
    const err = new AgentError(
      'AGT_ERR_LINK_CLOSED',
      `${which} link of ring ${ringId} in group ${this.id} closed (${code}${reason ? `: ${reason}` : ''})`,
    );
    slot.ring?.abort(err);
    slot.mailbox?.abort(err);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    const err = new AgentError('AGT_ERR_GROUP', `group ${this.id} was released`);
    for (const slot of this.#slots.values()) {
      slot.ring?.abort(err);
      slot.mailbox?.abort(err);
      for (const w of slot.inboundWaiters.splice(0)) w.reject(err);
      slot.out?.close(CloseCode.NORMAL, 'group released');
      slot.in?.close(CloseCode.NORMAL, 'group released');
    }
  }

  async #linkRing(slot: RingSlot, deadline: number): Promise<void> {
    const n = slot.members.length;
    const label = `ring ${slot.id} of group ${this.id}`;
    const mailboxOptions = { label, ...(this.#opts.mailboxLimitBytes !== undefined ? { limitBytes: this.#opts.mailboxLimitBytes } : {}) };
    if (n === 1) {
      slot.ring = new Ring(0, 1, null, null, this.#ringOptions());
      slot.mailbox = new LinkMailbox(null, null, mailboxOptions);
      return;
    }
    const inbound = new Promise<void>((resolve, reject) => (slot.in ? resolve() : slot.inboundWaiters.push({ resolve, reject })));
    inbound.catch(() => {}); // observed below; a release while we still dial must not go unhandled
    slot.out = await this.#dialSuccessor(slot, deadline);
    await withDeadline(inbound, deadline, `rank ${slot.predecessor} did not link to us in ring ${slot.id}`);
    if (this.#released) throw new AgentError('AGT_ERR_GROUP', `group ${this.id} was released while linking`);
    if (!slot.out.isOpen || !slot.in?.isOpen) throw new AgentError('AGT_ERR_LINK_CLOSED', `a link of ${label} closed while linking`);
    // The Ring (early collective data) and the Mailbox (unreceived tensors) may each pause the inbound link.
    const [ringIn, mailboxIn] = sharedPause(slot.in);
    slot.ring = new Ring(slot.position, n, slot.out, ringIn, this.#ringOptions());
    slot.mailbox = new LinkMailbox(slot.out, mailboxIn, mailboxOptions);
  }

  #slot(id: string): RingSlot {
    const slot = this.#slots.get(id);
    if (!slot) throw new AgentError('AGT_ERR_GROUP', `rank ${this.rank} is not in ring ${id} of group ${this.id}`);
    return slot;
  }

  #ringOptions() {
    return { segmentBytes: this.segmentBytes, idleTimeoutMs: this.#opts.collectiveIdleTimeoutMs };
  }

  async #dialSuccessor(slot: RingSlot, deadline: number): Promise<PeerConnection> {
    const next = this.#assign.peers.find((p) => p.rank === slot.successor)!; // checked in the constructor
    let target: DialTarget = { address: next.address };
    if (next.relay) {
      const relayUrl = next.relay.url ?? this.#opts.relayUrl;
      if (!relayUrl) throw new AgentError('AGT_ERR_PEER_UNREACHABLE', `rank ${next.rank} can only be reached through a relay, and this agent knows none`);
      const url = new URL(relayUrl);
      url.searchParams.set('to', next.nodeId);
      target = { address: url.href, relayTicket: next.relay.ticket, ...(next.relay.url ? { agentRelay: true } : {}) };
    }
    let lastError = '';
    for (let attempt = 0; Date.now() < deadline && !this.#released; attempt++) {
      try {
        return await this.#dialOnce(slot, target, deadline);
      } catch (err) {
        if (err instanceof AgentError && err.code === 'AGT_ERR_PEER_REFUSED') throw err;
        lastError = (err as Error).message;
        await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
      }
    }
    throw new AgentError('AGT_ERR_PEER_REFUSED', `could not link to rank ${next.rank} at ${target.address} in ring ${slot.id}: ${lastError || 'timed out'}`);
  }

  #dialOnce(slot: RingSlot, target: DialTarget, deadline: number): Promise<PeerConnection> {
    const address = target.address;
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(address, {
        ...clientOptions(MAX_PEER_FRAME),
        ...(this.#opts.ca ? { ca: [...this.#opts.ca] } : {}),
        ...(target.relayTicket ? { headers: { authorization: `Bearer ${target.relayTicket}` } } : {}),
      });
      if (target.relayTicket) {
        ws.once('upgrade', (res) => this.#opts.onRelaySocket?.(res.socket));
        // The relay refuses with an HTTP status and a JSON error before any upgrade: say what it said.
        ws.once('unexpected-response', (_req, res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.length < 16 && chunks.push(c));
          res.once('end', () => {
            clearTimeout(timer);
            let why = `HTTP ${res.statusCode}`;
            try {
              const err = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error: { code: string; message: string } }).error;
              why = `${err.code}: ${err.message}`;
            } catch {
              // not our relay's JSON: the status alone
            }
            // An agent relay learns its grant from its own assignment, which may reach it after ours reached us: its
            // 401 is retried until the ring's deadline; the coordinator's relay knows the ticket before anyone has it.
            const final = res.statusCode === 401 && !target.agentRelay;
            reject(new AgentError(final ? 'AGT_ERR_PEER_REFUSED' : 'AGT_ERR_PEER_UNREACHABLE', `the relay refused the link (${why})`));
            ws.terminate(); // aborts the request; the connection's close then finds the promise settled
          });
          res.once('error', () => {});
        });
      }
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new AgentError('AGT_ERR_PEER_UNREACHABLE', 'handshake timed out'));
      }, Math.max(1, deadline - Date.now()));
      let welcomed = false;
      const conn: PeerConnection = new MessageConnection(ws, {
        parse: parsePeerMessage,
        label: `link to ${address} (group ${this.id}, ring ${slot.id})`,
        log: this.#opts.log,
        maxAttachmentBytes: MAX_PEER_ATTACHMENT,
        ...(this.#opts.keepalive ? { keepalive: this.#opts.keepalive } : {}),
        onMessage: (msg) => {
          if (msg.type !== 'peer.welcome' || welcomed) throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} on an outbound link`);
          welcomed = true;
          clearTimeout(timer);
          resolve(conn);
        },
        onClose: (code, reason) => {
          clearTimeout(timer);
          if (!welcomed) {
            const refused = code === CloseCode.UNAUTHORIZED || code === CloseCode.VERSION_MISMATCH;
            reject(refused ? new AgentError('AGT_ERR_PEER_REFUSED', `${address} refused the link: ${reason}`) : new AgentError('AGT_ERR_PEER_UNREACHABLE', `closed (${code}) ${reason}`));
          } else this.linkLost(slot.id, 'outbound', code, reason);
        },
      });
      ws.once('open', () =>
        conn.send({
          type: 'peer.hello',
          protocol: PROTOCOL_VERSION,
          groupId: this.id,
          token: this.#assign.token,
          rank: this.rank,
          // The world ring's hello leaves the field out, so that it reads as it did before groups had rings.
          ...(slot.id === WORLD_RING ? {} : { ring: slot.id }),
        }),
      );
    });
  }
}

/** Where a link is dialled: a peer's own address, or the relay with the group's ticket. */
interface DialTarget {
  address: string;
  relayTicket?: string;
  /** The relay is an agent (the entry's relay.url), not the coordinator. */
  agentRelay?: boolean;
}

/**
 * Two handles on one inbound link for two readers (the Ring and the Mailbox) that may each pause it: the socket
 * reads again only when neither holds it paused. (ws's pause is a flag, not a count.)
 */
function sharedPause(link: RingInLink): [RingInLink, RingInLink] {
  const holders = new Set<number>();
  const handle = (id: number): RingInLink => ({
    pause() {
      if (holders.size === 0) link.pause();
      holders.add(id);
    },
    resume() {
      if (holders.delete(id) && holders.size === 0) link.resume();
    },
  });
  return [handle(0), handle(1)];
}


function withDeadline<T>(p: Promise<T>, deadline: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new AgentError('AGT_ERR_COLLECTIVE_TIMEOUT', `${what} in time`)), Math.max(1, deadline - Date.now()));
    p.then(
      (v) => (clearTimeout(timer), resolve(v)),
      (e) => (clearTimeout(timer), reject(e)),
    );
  });
}
