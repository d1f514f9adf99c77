/**
 * One ring group on this agent: its assignment from the coordinator, the link we dial to our successor, the
 * link our predecessor dials to us (accepted by peer-server.ts), and the Ring that runs collectives over them.
 */
import WebSocket from 'ws';
import { timingSafeEqual, createHash } from 'node:crypto';
import { CloseCode } from '../protocol/codes.ts';
import { MessageConnection } from '../protocol/connection.ts';
import { ProtocolError } from '../protocol/errors.ts';
import { MAX_PEER_ATTACHMENT, MAX_PEER_FRAME, parsePeerMessage, type PeerMessage } from '../protocol/peer.ts';
import { PROTOCOL_VERSION } from '../protocol/version.ts';
import { clientOptions } from '../protocol/ws-options.ts';
import type { GroupAssign } from '../protocol/control.ts';
import type { Logger } from '../common/log.ts';
import { Ring } from './collectives/ring.ts';
import { AgentError } from './errors.ts';

export type PeerConnection = MessageConnection<PeerMessage, PeerMessage>;

export interface GroupOptions {
  log: Logger;
  /** How long to keep trying to link to our successor (its listener may still be starting). */
  connectTimeoutMs: number;
  /** A collective that makes no progress for this long fails. */
  collectiveIdleTimeoutMs: number;
}

export class Group {
  readonly id: string;
  readonly rank: number;
  readonly size: number;
  readonly segmentBytes: number;
  readonly #tokenHash: Buffer;
  readonly #assign: GroupAssign;
  readonly #opts: GroupOptions;
  #out: PeerConnection | null = null;
  #in: PeerConnection | null = null;
  #ring: Ring | null = null;
  #inboundWaiters: Array<() => void> = [];
  #released = false;

  constructor(assign: GroupAssign, opts: GroupOptions) {
    this.id = assign.groupId;
    this.rank = assign.rank;
    this.size = assign.size;
    this.segmentBytes = assign.segmentBytes;
    this.#tokenHash = sha256(assign.token);
    this.#assign = assign;
    this.#opts = opts;
  }

  get ring(): Ring {
    if (!this.#ring) throw new AgentError('AGT_ERR_GROUP', `group ${this.id} is not linked yet`);
    return this.#ring;
  }

  get predecessorRank(): number {
    return (this.rank - 1 + this.size) % this.size;
  }

  /** Constant-time token check for a peer that wants to link to us. */
  acceptsToken(token: string): boolean {
    return timingSafeEqual(sha256(token), this.#tokenHash);
  }

  /** Dials the successor and waits for the predecessor's link; resolves when the ring can run. */
  async link(): Promise<void> {
    if (this.size === 1) {
      this.#ring = new Ring(0, 1, null, null, this.#ringOptions());
      return;
    }
    const deadline = Date.now() + this.#opts.connectTimeoutMs;
    const inbound = new Promise<void>((resolve) => (this.#in ? resolve() : this.#inboundWaiters.push(resolve)));
    this.#out = await this.#dialSuccessor(deadline);
    await withDeadline(inbound, deadline, `rank ${this.predecessorRank} did not link to us`);
    if (this.#released) throw new AgentError('AGT_ERR_GROUP', `group ${this.id} was released while linking`);
    this.#ring = new Ring(this.rank, this.size, this.#out, this.#in!, this.#ringOptions());
  }

  /** Called by the peer server once a predecessor's hello checked out. Returns the handler for its messages. */
  attachInbound(conn: PeerConnection): (msg: PeerMessage, payload: Buffer | undefined) => void {
    if (this.#in?.isOpen) {
      throw new ProtocolError('PRT_ERR_UNEXPECTED', `group ${this.id} already has a link from rank ${this.predecessorRank}`);
    }
    this.#in = conn;
    for (const w of this.#inboundWaiters.splice(0)) w();
    return (msg, payload) => {
      if (msg.type !== 'ring.data' && msg.type !== 'stream.data') {
        throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} after the handshake`);
      }
      if (!this.#ring) throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} before group ${this.id} is linked`);
      this.#ring.receive(msg, payload!);
    };
  }

  /** A link of ours closed: collectives on this group can no longer complete. */
  linkLost(which: 'inbound' | 'outbound', code: number, reason: string): void {
    if (this.#released) return;
    const err = new AgentError('AGT_ERR_LINK_CLOSED', `${which} link of group ${this.id} closed (${code}${reason ? `: ${reason}` : ''})`);
    this.#ring?.abort(err);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#ring?.abort(new AgentError('AGT_ERR_GROUP', `group ${this.id} was released`));
    this.#out?.close(CloseCode.NORMAL, 'group released');
    this.#in?.close(CloseCode.NORMAL, 'group released');
  }

  #ringOptions() {
    return { segmentBytes: this.segmentBytes, idleTimeoutMs: this.#opts.collectiveIdleTimeoutMs };
  }

  async #dialSuccessor(deadline: number): Promise<PeerConnection> {
    const next = this.#assign.peers.find((p) => p.rank === (this.rank + 1) % this.size);
    if (!next) throw new AgentError('AGT_ERR_GROUP', `group ${this.id} assignment lacks rank ${(this.rank + 1) % this.size}`);
    let lastError = '';
    for (let attempt = 0; Date.now() < deadline && !this.#released; attempt++) {
      try {
        return await this.#dialOnce(next.address, deadline);
      } catch (err) {
        if (err instanceof AgentError && err.code === 'AGT_ERR_PEER_REFUSED') throw err;
        lastError = (err as Error).message;
        await new Promise((r) => setTimeout(r, Math.min(1000, 50 * 2 ** attempt)));
      }
    }
    throw new AgentError('AGT_ERR_PEER_REFUSED', `could not link to rank ${next.rank} at ${next.address}: ${lastError || 'timed out'}`);
  }

  #dialOnce(address: string, deadline: number): Promise<PeerConnection> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(address, clientOptions(MAX_PEER_FRAME));
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error('handshake timed out'));
      }, Math.max(1, deadline - Date.now()));
      let welcomed = false;
      const conn: PeerConnection = new MessageConnection(ws, {
        parse: parsePeerMessage,
        label: `link to ${address} (group ${this.id})`,
        log: this.#opts.log,
        maxAttachmentBytes: MAX_PEER_ATTACHMENT,
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
            reject(refused ? new AgentError('AGT_ERR_PEER_REFUSED', `${address} refused the link: ${reason}`) : new Error(`closed (${code}) ${reason}`));
          } else this.linkLost('outbound', code, reason);
        },
      });
      ws.once('open', () =>
        conn.send({ type: 'peer.hello', protocol: PROTOCOL_VERSION, groupId: this.id, token: this.#assign.token, rank: this.rank }),
      );
    });
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
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
