/**
 * Ring collectives over direct peer links: rank r sends only to r+1 and receives only from r−1.
 *
 * All-reduce is reduce-scatter then all-gather, run as one pipelined stream (as in NCCL and Horovod): the buffer
 * is cut into n chunks (protocol/partition.ts), each chunk into segments. Rank r starts by sending every segment of chunk
 * r−1; a segment that arrives is added into the local buffer and sent on, so after n−1 hops it has collected all
 * n contributions and is final on its owner (chunk c on rank c); from there it travels n−1 more hops as a copy.
 * Each segment moves as soon as it arrives, so every link stays busy while chunks are still being reduced.
 *
 * In float32 (the default), every byte sent is a view into the caller's buffer (no copies): a region is only
 * overwritten after the data sent from it has gone all the way around the ring, which implies the socket has taken it.
 *
 * Compressed wire (`{ wire: 'bf16' | 'f16' }` on all-reduce, reduce-scatter and all-gather; wire.ts): the buffer
 * stays float32 and every segment crosses each link as 16-bit values in a fresh buffer of its own (the socket may
 * hold it until flushed, so none is reused). A reduce-scatter segment that arrives is widened and added in float32,
 * and the sum is encoded again to go on; the owner of a chunk rounds its final sum to the wire format in place
 * before its all-gather, so every rank ends with bit-identical values; all-gather segments are forwarded as the
 * bytes that arrived. A segment in another format than the collective's is a protocol error.
 *
 * Backpressure: a rank injects its own segments only while its outgoing link is below the high-water mark;
 * segments in transit are forwarded at once (holding them back could deadlock the ring, see #forward).
 *
 * Long: every collective here is one pipelined state machine (#run sends, #handle receives, #maybeDone settles) whose
 * invariants (sequence numbers, expected segments, buffer ownership) hold across all of them; split over files,
 * each half would have to trust the other's bookkeeping.
 */
import { ProtocolError } from '../../protocol/errors.ts';
import type { RingData } from '../../protocol/peer.ts';
import { AgentError, outOfRange } from '../errors.ts';
import { chunkRange, mod, segments, type Range } from '../../protocol/partition.ts';
import { addInto, bytesOf, float32View } from './reduce.ts';
import type { GradientWire } from '../../protocol/job-spec.ts';
import { addDecoded, bytesPerElement, decode, encodedBytes, uint16View, type EncodedWire } from './wire.ts';

/** The link to our successor. MessageConnection implements it; tests may use fakes. */
export interface RingOutLink {
  send(msg: RingData | StreamData, payload: Uint8Array): void;
  readonly writable: boolean;
  whenWritable(): Promise<void>;
  flushed(): Promise<void>;
}

/** The link from our predecessor: we only need to stop and restart reading from it. */
export interface RingInLink {
  pause(): void;
  resume(): void;
}

export interface StreamData {
  type: 'stream.data';
  seq: number;
  attach: number;
}

export interface RingOptions {
  /** Largest segment on the wire. 1–4 MB frames are fastest over ws (ARCHITECTURE.md). */
  segmentBytes: number;
  /** A collective that receives nothing for this long fails with AGT_ERR_COLLECTIVE_TIMEOUT. */
  idleTimeoutMs: number;
  /** Bytes of early messages (for a collective we have not started yet) held before pausing the inbound link. */
  earlyLimitBytes?: number;
}

/** How a collective's segments travel (wire.ts); absent or 'f32': float32, as views of the caller's buffer. */
export interface WireOption {
  wire?: GradientWire;
}

/** An all-reduce's options: its wire, and how long it may make no progress (default: the ring's idleTimeoutMs). */
export interface AllReduceOptions extends WireOption {
  /** Longer than the ring's for a collective that waits for peers still computing (a DiLoCo round's end). */
  idleTimeoutMs?: number;
}

type Kind = 'allreduce' | 'reducescatter' | 'allgather' | 'broadcast' | 'stream';

interface Expected {
  end: number; // one past the segment's last element
  hop: number; // the hop count the segment must carry
}

interface Active {
  seq: number;
  kind: Kind;
  buf: Float32Array;
  wire: GradientWire;
  expected: Map<number, Expected>; // key: offset * 2 + phase
  streamBytesLeft: number; // for kind 'stream'
  sendsDone: boolean;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | null;
  idleMs: number; // how long it may go without progress
  settled: boolean;
}

const key = (offset: number, phase: 0 | 1) => offset * 2 + phase;

/**
 * Early messages held at once above which the inbound link is paused, whatever their bytes: empty segments cost
 * no bytes but an entry each, so the byte limit alone would let a peer grow the queue forever.
 */
export const MAX_EARLY_MESSAGES = 16_384;

/** Most values in one bf16/f16 segment: 1 Mi values encode in ~2 ms (bf16) to ~5 ms (f16) on these machines (wire.ts). */
export const MAX_ENCODED_SEGMENT = 1 << 20;

export class Ring {
  readonly rank: number;
  readonly size: number;
  readonly #out: RingOutLink | null;
  readonly #in: RingInLink | null;
  readonly #segmentElems: number;
  readonly #idleTimeoutMs: number;
  readonly #earlyLimit: number;
  #seq = 0;
  #active: Active | null = null;
  #early: Array<{ msg: RingData | StreamData; payload: Buffer }> = [];
  #earlyBytes = 0;
  #pausedFor = new Set<'early'>();
  #broken: Error | null = null;

  constructor(rank: number, size: number, out: RingOutLink | null, inbound: RingInLink | null, opts: RingOptions) {
    if (!Number.isInteger(size) || size < 1) throw outOfRange(`ring size must be a positive integer, got ${size}`);
    if (!Number.isInteger(rank) || rank < 0 || rank >= size) throw outOfRange(`rank ${rank} is outside ring of ${size}`);
    if (size > 1 && (!out || !inbound)) throw outOfRange('a ring of more than one rank needs both links');
    if (opts.segmentBytes < 4) throw outOfRange(`segmentBytes must be at least 4, got ${opts.segmentBytes}`);
    if (opts.idleTimeoutMs <= 0) throw outOfRange(`idleTimeoutMs must be positive, got ${opts.idleTimeoutMs}`);
    this.rank = rank;
    this.size = size;
    this.#out = out;
    this.#in = inbound;
    this.#segmentElems = Math.floor(opts.segmentBytes / 4);
    this.#idleTimeoutMs = opts.idleTimeoutMs;
    this.#earlyLimit = opts.earlyLimitBytes ?? 64 * 1024 * 1024;
  }

  /**
   * In place: every rank ends with the element-wise float32 sum of all ranks' buffers. With `wire` bf16 or f16 the
   * sum is of the values as they crossed the links, rounded to the wire format at the end, bit-identical on every rank.
   */
  allReduce(buf: Float32Array, opts?: AllReduceOptions): Promise<void> {
    if (opts?.idleTimeoutMs !== undefined && !(opts.idleTimeoutMs > 0)) return Promise.reject(outOfRange(`idleTimeoutMs must be positive, got ${opts.idleTimeoutMs}`));
    return this.#run('allreduce', buf, opts?.wire, opts?.idleTimeoutMs, (elems) => {
      const n = this.size;
      const r = this.rank;
      const expected = new Map<number, Expected>();
      for (let c = 0; c < n; c++) {
        const range = chunkRange(buf.length, n, c);
        if (c !== mod(r - 1, n)) this.#expect(elems, expected, range, 0, mod(r - 2 - c, n));
        if (c !== r) this.#expect(elems, expected, range, 1, mod(r - 1 - c, n));
      }
      return { expected, initial: [{ range: chunkRange(buf.length, n, mod(r - 1, n)), phase: 0 as const }] };
    });
  }

  /**
   * In place: afterwards this rank's chunk (returned) holds the sum over all ranks; the rest is scratch. With `wire`,
   * the chunk is the float32 sum of what arrived in that format (not rounded to it).
   */
  async reduceScatter(buf: Float32Array, opts?: WireOption): Promise<Range> {
    await this.#run('reducescatter', buf, opts?.wire, undefined, (elems) => {
      const n = this.size;
      const r = this.rank;
      const expected = new Map<number, Expected>();
      for (let c = 0; c < n; c++) {
        if (c !== mod(r - 1, n)) this.#expect(elems, expected, chunkRange(buf.length, n, c), 0, mod(r - 2 - c, n));
      }
      return { expected, initial: [{ range: chunkRange(buf.length, n, mod(r - 1, n)), phase: 0 as const }] };
    });
    return chunkRange(buf.length, this.size, this.rank);
  }

  /**
   * In place: each rank contributes its own chunk (chunkRange(L, n, rank)); every rank ends with all of them. With
   * `wire`, each rank first rounds its own chunk to that format in place, so all ranks end with the same values.
   */
  allGather(buf: Float32Array, opts?: WireOption): Promise<void> {
    return this.#run('allgather', buf, opts?.wire, undefined, (elems) => {
      const n = this.size;
      const r = this.rank;
      const expected = new Map<number, Expected>();
      for (let c = 0; c < n; c++) if (c !== r) this.#expect(elems, expected, chunkRange(buf.length, n, c), 1, mod(r - 1 - c, n));
      return { expected, initial: [{ range: chunkRange(buf.length, n, r), phase: 1 as const }] };
    });
  }

  /** In place: every rank ends with `root`'s buffer, pipelined segment by segment along the ring. */
  broadcast(buf: Float32Array, root: number): Promise<void> {
    if (!Number.isInteger(root) || root < 0 || root >= this.size) {
      return Promise.reject(outOfRange(`broadcast root ${root} is outside ring of ${this.size}`));
    }
    return this.#run('broadcast', buf, 'f32', undefined, (elems) => {
      const whole = { start: 0, end: buf.length };
      const expected = new Map<number, Expected>();
      if (this.rank !== root) this.#expect(elems, expected, whole, 1, mod(this.rank - root - 1, this.size));
      return { expected, initial: this.rank === root ? [{ range: whole, phase: 1 as const }] : [] };
    });
  }

  /** Resolves once every rank has entered it. */
  async barrier(): Promise<void> {
    await this.allReduce(new Float32Array(1));
  }

  /**
   * Link-capacity probe: send `sendBytes` of filler to the successor while receiving `recvBytes` from the
   * predecessor, with no reduction. Measures what the links carry (the ceiling for the collectives above).
   */
  stream(sendBytes: number, recvBytes: number): Promise<void> {
    if (this.size === 1 && (sendBytes > 0 || recvBytes > 0)) {
      return Promise.reject(outOfRange('a ring of one rank has no links to stream over'));
    }
    const payload = new Uint8Array(Math.min(this.#segmentElems * 4, Math.max(sendBytes, 0)));
    return this.#start('stream', new Float32Array(0), 'f32', new Map(), recvBytes, undefined, async (a) => {
      for (let left = sendBytes; left > 0; ) {
        const n = Math.min(left, payload.byteLength);
        await this.#sendWhenWritable(a, { type: 'stream.data', seq: a.seq, attach: n }, payload.subarray(0, n));
        left -= n;
      }
    });
  }

  /** Feed a message that arrived from the predecessor. Throws ProtocolError for data that does not fit. */
  receive(msg: RingData | StreamData, payload: Buffer): void {
    // What can be checked without knowing the collective is checked now, so that a bad segment for a collective
    // we have not started yet is refused at once rather than held until then.
    if (msg.type === 'ring.data' && (payload.byteLength !== msg.count * bytesPerElement(msg.wire ?? 'f32') || msg.count === 0 || msg.hop > this.size - 2)) {
      throw new ProtocolError(
        'PRT_ERR_UNEXPECTED',
        `ring.data (hop ${msg.hop}, count ${msg.count}, wire ${msg.wire ?? 'f32'}, ${payload.byteLength} bytes) cannot belong to any collective on a ring of ${this.size}`,
      );
    }
    const a = this.#active;
    if (!a || msg.seq > a.seq) {
      if (msg.seq <= this.#seq) throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} for finished collective #${msg.seq}`);
      this.#early.push({ msg, payload });
      this.#earlyBytes += payload.byteLength;
      if (this.#earlyBytes > this.#earlyLimit || this.#early.length > MAX_EARLY_MESSAGES) this.#pause('early');
      return;
    }
    if (msg.seq < a.seq) throw new ProtocolError('PRT_ERR_UNEXPECTED', `${msg.type} for finished collective #${msg.seq}`);
    this.#handle(a, msg, payload);
  }

  /** Fails the running collective (and every later one) with `err`: a link closed, the group was released. */
  abort(err: Error): void {
    this.#broken ??= err;
    if (this.#active) this.#settle(this.#active, err);
  }

  #expect(elems: number, into: Map<number, Expected>, range: Range, phase: 0 | 1, hop: number): void {
    for (const s of segments(range, elems)) into.set(key(s.start, phase), { end: s.end, hop });
  }

  #run(
    kind: Kind,
    buf: Float32Array,
    wire: GradientWire | undefined,
    idleMs: number | undefined,
    plan: (elems: number) => { expected: Map<number, Expected>; initial: Array<{ range: Range; phase: 0 | 1 }> },
  ): Promise<void> {
    const w = wire ?? 'f32';
    // Encoded segments are converted on this (heartbeating) thread: at most MAX_ENCODED_SEGMENT values each, so one
    // conversion stays a few milliseconds whatever segmentBytes is. Every rank derives the same size.
    const elems = w === 'f32' ? this.#segmentElems : Math.min(this.#segmentElems, MAX_ENCODED_SEGMENT);
    if (this.size === 1 || buf.length === 0) {
      // Nothing crosses a link, but the sequence number must advance on every rank alike. (A ring of one leaves
      // the buffer as it is whatever the wire: there is nobody to agree with.)
      return this.#start(kind, buf, w, new Map(), 0, undefined, async () => {});
    }
    const { expected, initial } = plan(elems);
    return this.#start(kind, buf, w, expected, 0, idleMs, async (a) => {
      for (const { range, phase } of initial) {
        for (const s of segments(range, elems)) {
          if (w === 'f32') {
            await this.#sendWhenWritable(a, this.#header(a.seq, phase, 0, s, w), bytesOf(buf, s.start, s.end));
            continue;
          }
          const out = this.#out!;
          if (!out.writable) await out.whenWritable(); // encode only once the window is open: one buffer at a time
          // Our own chunk in an all-gather is final: round it as the receivers will see it.
          const encoded = encodedBytes(w, buf.subarray(s.start, s.end), phase === 1);
          await this.#sendWhenWritable(a, this.#header(a.seq, phase, 0, s, w), encoded);
        }
      }
    });
  }

  #start(
    kind: Kind,
    buf: Float32Array,
    wire: GradientWire,
    expected: Map<number, Expected>,
    streamBytes: number,
    idleMs: number | undefined,
    sendInitial: (a: Active) => Promise<void>,
  ): Promise<void> {
    if (this.#broken) return Promise.reject(this.#broken);
    if (this.#active) return Promise.reject(new AgentError('AGT_ERR_GROUP', `collective #${this.#active.seq} is still running`));
    return new Promise<void>((resolve, reject) => {
      const a: Active = {
        seq: ++this.#seq,
        kind,
        buf,
        wire,
        expected,
        streamBytesLeft: streamBytes,
        sendsDone: false,
        resolve,
        reject,
        timer: null,
        idleMs: idleMs ?? this.#idleTimeoutMs,
        settled: false,
      };
      this.#active = a;
      this.#touch(a);
      // Messages that arrived before we started this collective.
      const early = this.#early;
      this.#early = [];
      this.#earlyBytes = 0;
      this.#unpause('early');
      try {
        for (const { msg, payload } of early) this.receive(msg, payload);
      } catch (err) {
        this.#settle(a, err as Error);
        return;
      }
      sendInitial(a).then(
        () => {
          a.sendsDone = true;
          this.#maybeDone(a);
        },
        (err) => this.#settle(a, err as Error),
      );
    });
  }

  #handle(a: Active, msg: RingData | StreamData, payload: Buffer): void {
    this.#touch(a);
    if (msg.type === 'stream.data') {
      if (a.kind !== 'stream' || payload.byteLength > a.streamBytesLeft) {
        throw new ProtocolError('PRT_ERR_UNEXPECTED', `unexpected stream.data of ${payload.byteLength} bytes in ${a.kind}`);
      }
      a.streamBytesLeft -= payload.byteLength;
      this.#maybeDone(a);
      return;
    }
    const k = key(msg.offset, msg.phase);
    const exp = a.expected.get(k);
    const wire = msg.wire ?? 'f32';
    if (!exp || exp.end - msg.offset !== msg.count || exp.hop !== msg.hop || wire !== a.wire || payload.byteLength !== msg.count * bytesPerElement(wire)) {
      throw new ProtocolError(
        'PRT_ERR_UNEXPECTED',
        `ring.data (phase ${msg.phase}, hop ${msg.hop}, offset ${msg.offset}, count ${msg.count}, wire ${wire}) does not match collective #${a.seq} (${a.kind}, wire ${a.wire})`,
      );
    }
    a.expected.delete(k);
    const n = this.size;
    const dst = a.buf.subarray(msg.offset, msg.offset + msg.count);
    const seg = { start: msg.offset, end: msg.offset + msg.count };
    if (wire !== 'f32') {
      this.#handleEncoded(a, msg, wire, payload, dst, seg);
      this.#maybeDone(a);
      return;
    }
    const src = float32View(payload);
    if (msg.phase === 0) {
      addInto(dst, src);
      if (msg.hop < n - 2) this.#forward(a, this.#header(a.seq, 0, msg.hop + 1, seg), seg);
      else if (a.kind === 'allreduce') this.#forward(a, this.#header(a.seq, 1, 0, seg), seg); // final: start the all-gather
    } else {
      dst.set(src);
      if (msg.hop < n - 2) this.#forward(a, this.#header(a.seq, 1, msg.hop + 1, seg), seg);
    }
    this.#maybeDone(a);
  }

  /** A segment in bf16 / f16: widened and added (or copied), and sent on encoded. */
  #handleEncoded(a: Active, msg: RingData, wire: EncodedWire, payload: Buffer, dst: Float32Array, seg: Range): void {
    const n = this.size;
    const src = uint16View(payload);
    if (msg.phase === 0) {
      addDecoded(dst, src, wire);
      if (msg.hop < n - 2) this.#out!.send(this.#header(a.seq, 0, msg.hop + 1, seg, wire), encodedBytes(wire, dst, false));
      // final on its owner: round it in place to what the others will get, and start its all-gather
      else if (a.kind === 'allreduce') this.#out!.send(this.#header(a.seq, 1, 0, seg, wire), encodedBytes(wire, dst, true));
    } else {
      decode(wire, src, dst);
      // Final values: pass on the bytes as they came (ours now; nothing else writes them).
      if (msg.hop < n - 2) this.#out!.send(this.#header(a.seq, 1, msg.hop + 1, seg, wire), payload);
    }
  }

  #header(seq: number, phase: 0 | 1, hop: number, s: Range, wire: GradientWire = 'f32'): RingData {
    const count = s.end - s.start;
    if (wire === 'f32') return { type: 'ring.data', seq, phase, hop, offset: s.start, count, attach: count * 4 };
    return { type: 'ring.data', seq, phase, hop, offset: s.start, count, wire, attach: count * 2 };
  }

  #forward(a: Active, header: RingData, s: Range): void {
    // Transit traffic is never held back: if every rank stopped reading while its outgoing link was full, the
    // ring would deadlock (each waits for its successor to read). Only new data entering the ring (the initial
    // sends) waits for the window, so the bytes queued per link stay bounded by about one window per rank, and
    // they are views of the caller's buffer, not copies.
    this.#out!.send(header, bytesOf(a.buf, s.start, s.end));
  }

  async #sendWhenWritable(a: Active, header: RingData | StreamData, payload: Uint8Array): Promise<void> {
    const out = this.#out!;
    if (!out.writable) await out.whenWritable();
    if (a.settled) throw this.#broken ?? new AgentError('AGT_ERR_GROUP', 'collective ended');
    out.send(header, payload);
  }

  #maybeDone(a: Active): void {
    if (!a.sendsDone || a.expected.size > 0 || a.streamBytesLeft > 0 || a.settled) return;
    if (!this.#out) return this.#settle(a, null);
    // The caller may reuse the buffer as soon as we resolve: wait until the socket has taken our views of it.
    this.#out.flushed().then(
      () => this.#settle(a, null),
      (err) => this.#settle(a, err as Error),
    );
  }

  #settle(a: Active, err: Error | null): void {
    if (a.settled) return;
    a.settled = true;
    if (a.timer) clearTimeout(a.timer);
    if (this.#active === a) this.#active = null;
    if (err) {
      this.#broken ??= err;
      a.reject(err);
    } else a.resolve();
  }

  #touch(a: Active): void {
    if (a.timer) a.timer.refresh();
    else {
      a.timer = setTimeout(() => {
        this.#settle(
          a,
          new AgentError(
            'AGT_ERR_COLLECTIVE_TIMEOUT',
            `${a.kind} #${a.seq} on rank ${this.rank}/${this.size} made no progress for ${a.idleMs} ms (waiting for ${a.expected.size} segments)`,
          ),
        );
      }, a.idleMs);
    }
  }

  #pause(reason: 'early'): void {
    if (this.#pausedFor.size === 0) this.#in?.pause();
    this.#pausedFor.add(reason);
  }

  #unpause(reason: 'early'): void {
    if (!this.#pausedFor.delete(reason)) return;
    if (this.#pausedFor.size === 0) this.#in?.resume();
  }
}
