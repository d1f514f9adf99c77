/**
 * Point-to-point tensors over one ring's links: what pipeline stages pass each other (activations forward, their
 * gradients backward). A mailbox sends to our successor in the ring and receives from our predecessor; in a ring
 * of two, that is the same peer both ways, which is how pipeline neighbours are linked ('pp.*' rings of 2).
 *
 * Each tensor travels as one `pipe.data` message under a tag both sides agree on (e.g. 'fwd:7'). A message can
 * arrive before its `recv`: it is held, and once held bytes pass the limit the inbound link is paused (the
 * sender's socket then fills and its `send` waits), so a fast stage cannot run a slow one out of memory. The
 * price: while the link is paused nothing behind the held tensors can arrive, so receive in about the order of
 * sending (a 1F1B schedule does); a recv that skips ahead of more than the limit's worth of held tensors times
 * out rather than hangs.
 */
import { ProtocolError } from '../../protocol/errors.ts';
import { MAX_PEER_ATTACHMENT, PipeTag, type PipeData } from '../../protocol/peer.ts';
import { AgentError, outOfRange } from '../errors.ts';
import type { RingInLink } from './ring.ts';

export interface Mailbox {
  /**
   * Sends `data` to our successor in the ring (in a ring of 2, that is the other member). Resolves when the socket
   * has taken the bytes (the caller may then reuse `data`); waits for the link's write window first (backpressure).
   */
  send(tag: string, data: Float32Array): Promise<void>;
  /**
   * The tensor our predecessor sent under `tag` (a fresh Float32Array the caller owns). Messages may arrive before
   * recv is called: they are buffered (bounded: beyond a byte limit, default 256 MiB, the inbound link is paused
   * until recv drains it). A second message under a tag still unreceived is a protocol error; recv of a tag fails
   * with AGT_ERR_COLLECTIVE_TIMEOUT after `timeoutMs` with nothing, and with the link's error when the link closes
   * or the group is released.
   */
  recv(tag: string, timeoutMs: number): Promise<Float32Array>;
}

/** The link to our successor. MessageConnection implements it; tests may use fakes. */
export interface MailboxOutLink {
  send(msg: PipeData, payload: Uint8Array): void;
  readonly writable: boolean;
  whenWritable(): Promise<void>;
  /** Resolves when everything sent so far has been taken by the socket. */
  flushed(): Promise<void>;
}

export interface MailboxOptions {
  /** Bytes of received tensors not yet taken by recv above which the inbound link is paused. */
  limitBytes?: number;
  /** Names the ring in error messages, e.g. "ring pp.0 of group g-1". */
  label?: string;
}

export const DEFAULT_MAILBOX_LIMIT_BYTES = 256 * 1024 * 1024;
/**
 * Tensors held at once above which the inbound link is paused too, whatever their bytes: empty tensors under
 * ever new tags cost no bytes but a map entry each, so a byte limit alone would let a peer grow the map forever.
 * Far above what a 1F1B schedule keeps in flight (at most a few per micro-batch, and microBatches ≤ 4096).
 */
export const MAX_HELD_TENSORS = 16_384;

const TAG = new RegExp(PipeTag.pattern as string);

interface Waiter {
  resolve(data: Float32Array): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class LinkMailbox implements Mailbox {
  readonly #out: MailboxOutLink | null;
  readonly #in: RingInLink | null;
  readonly #limit: number;
  readonly #label: string;
  readonly #held = new Map<string, Float32Array>(); // arrived, not yet received
  #heldBytes = 0;
  readonly #waiters = new Map<string, Waiter>();
  #paused = false;
  #broken: Error | null = null;
  #onAbort!: (err: Error) => void;
  /** Rejects on abort, so a send waiting for the write window does not wait for a link that is gone. */
  readonly #aborted: Promise<never>;

  /** `out` and `inbound` are null in a ring of one, which has nobody to talk to. */
  constructor(out: MailboxOutLink | null, inbound: RingInLink | null, opts: MailboxOptions = {}) {
    const limit = opts.limitBytes ?? DEFAULT_MAILBOX_LIMIT_BYTES;
    if (!(limit >= 0)) throw outOfRange(`mailbox limitBytes must be ≥ 0, got ${limit}`);
    if (!out !== !inbound) throw outOfRange('a mailbox needs both links or neither');
    this.#out = out;
    this.#in = inbound;
    this.#limit = limit;
    this.#label = opts.label ?? 'ring';
    this.#aborted = new Promise<never>((_, reject) => (this.#onAbort = reject));
    this.#aborted.catch(() => {});
  }

  /** Bytes held for tags nobody has received yet. */
  get heldBytes(): number {
    return this.#heldBytes;
  }

  async send(tag: string, data: Float32Array): Promise<void> {
    checkTag(tag);
    if (data.byteLength > MAX_PEER_ATTACHMENT) {
      throw outOfRange(`a pipe.data tensor is at most ${MAX_PEER_ATTACHMENT} bytes; '${tag}' has ${data.byteLength}: split it`);
    }
    if (this.#broken) throw this.#broken;
    const out = this.#out;
    if (!out) throw new AgentError('AGT_ERR_GROUP', `${this.#label} has one member: there is nobody to send '${tag}' to`);
    if (!out.writable) await Promise.race([out.whenWritable(), this.#aborted]);
    if (this.#broken) throw this.#broken;
    out.send({ type: 'pipe.data', tag, attach: data.byteLength }, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    // The socket holds a view of the caller's buffer until it has written it.
    await Promise.race([out.flushed(), this.#aborted]);
  }

  recv(tag: string, timeoutMs: number): Promise<Float32Array> {
    try {
      checkTag(tag);
    } catch (err) {
      return Promise.reject(err);
    }
    if (!(timeoutMs > 0)) return Promise.reject(outOfRange(`recv timeoutMs must be positive, got ${timeoutMs}`));
    if (this.#broken) return Promise.reject(this.#broken);
    if (!this.#in) return Promise.reject(new AgentError('AGT_ERR_GROUP', `${this.#label} has one member: nobody will send '${tag}'`));
    const held = this.#held.get(tag);
    if (held) {
      this.#held.delete(tag);
      this.#heldBytes -= held.byteLength;
      if (this.#paused && !this.#overLimit()) this.#resume();
      return Promise.resolve(held);
    }
    if (this.#waiters.has(tag)) return Promise.reject(new AgentError('AGT_ERR_GROUP', `${this.#label}: a recv of '${tag}' is already waiting`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(tag);
        reject(new AgentError('AGT_ERR_COLLECTIVE_TIMEOUT', `${this.#label}: nothing arrived under '${tag}' within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(tag, { resolve, reject, timer });
    });
  }

  /** Feed a pipe.data that arrived from the predecessor. Throws ProtocolError for one that breaks the rules. */
  receive(msg: PipeData, payload: Buffer): void {
    if (payload.byteLength % 4 !== 0) {
      throw new ProtocolError('PRT_ERR_INVALID', `pipe.data '${msg.tag}' carries ${payload.byteLength} bytes, not a whole number of float32 values`);
    }
    if (this.#broken) return; // the link is going away; nobody can receive this any more
    if (this.#held.has(msg.tag)) {
      throw new ProtocolError('PRT_ERR_UNEXPECTED', `a second pipe.data under '${msg.tag}' arrived before the first was received`);
    }
    // A copy: the caller owns what recv returns, and ws's buffer may be a slice of a larger, unaligned chunk.
    const data = new Float32Array(payload.byteLength / 4);
    new Uint8Array(data.buffer).set(payload);
    const waiter = this.#waiters.get(msg.tag);
    if (waiter) {
      this.#waiters.delete(msg.tag);
      clearTimeout(waiter.timer);
      waiter.resolve(data);
      return;
    }
    this.#held.set(msg.tag, data);
    this.#heldBytes += data.byteLength;
    if (!this.#paused && this.#overLimit()) {
      this.#paused = true;
      this.#in?.pause();
    }
  }

  /** Fails every waiting and later send and recv with `err` (a link closed, the group was released); drops held tensors. */
  abort(err: Error): void {
    if (this.#broken) return;
    this.#broken = err;
    this.#onAbort(err);
    for (const w of this.#waiters.values()) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.#waiters.clear();
    this.#held.clear();
    this.#heldBytes = 0;
    if (this.#paused) this.#resume();
  }

  #overLimit(): boolean {
    return this.#heldBytes > this.#limit || this.#held.size > MAX_HELD_TENSORS;
  }

  #resume(): void {
    this.#paused = false;
    this.#in?.resume();
  }
}

function checkTag(tag: string): void {
  if (typeof tag !== 'string' || !TAG.test(tag)) {
    throw outOfRange(`pipe tag '${String(tag).slice(0, 70)}' must be 1–64 characters of A–Z a–z 0–9 . _ : -`);
  }
}
