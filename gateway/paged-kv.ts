/**
 * The serving KV cache as vLLM's paged attention keeps it: a pool of fixed-size blocks (BLOCK positions, every
 * layer's keys and values) in a WebAssembly memory of its own, and per sequence a table of the blocks that hold
 * its positions. Nothing is rebuilt when sequences come and go: a new row takes blocks from the free list, a
 * finished one gives them back, and a request's choices share their prompt's blocks until they write into one
 * (copy on write of that block alone). Decode attention (paged-attention.wat, SIMD) reads only each sequence's own
 * positions, so a row's cost is its length, not the longest row's.
 *
 * Memory grows by whole blocks as sequences need them (doubling the pool, up to WebAssembly's 4 GiB) and is never
 * given back to the system (WebAssembly memories do not shrink), only to the free list. A sequence that needs a
 * block the pool cannot have gets GW_ERR_OVERLOADED, which fails the iteration's requests and nothing else.
 *
 * The kernel needs a head size that is a multiple of 4 (its 4-lane SIMD); every GPT-2 size qualifies. `supports`
 * says whether a model does: the gateway serves others with the tensor cache (batched-gpt.ts).
 */
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { GatewayError } from './errors.ts';

// tsconfig has no DOM library and @types/node 20 does not declare WebAssembly: what this file uses of it.
declare global {
  namespace WebAssembly {
    class Module {
      constructor(bytes: Uint8Array);
    }
    class Instance {
      constructor(module: Module, imports: object);
      readonly exports: Record<string, unknown>;
    }
    class Memory {
      readonly buffer: ArrayBuffer;
      grow(pages: number): number;
    }
  }
}

/** Positions in a block (vLLM's default block size). */
export const BLOCK = 16;
const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB: wasm32's whole address space
const MIN_GROWTH_BLOCKS = 8;

let kernelModule: WebAssembly.Module | undefined;
function kernel(): WebAssembly.Module {
  if (!kernelModule) {
    // V8's dynamic tiering runs a wasm function in its baseline compiler (Liftoff) until it has used a budget of
    // execution: measured 4.3 ms for a 16-row step's attention over the first ~50 steps, against 0.7 ms optimised.
    // Without it V8 optimises every function of modules compiled from now on, in the background, at once.
    setFlagsFromString('--no-wasm-dynamic-tiering');
    kernelModule = new WebAssembly.Module(readFileSync(new URL('./paged-attention.wasm', import.meta.url)));
  }
  return kernelModule;
}

export interface KvShape {
  readonly nLayer: number;
  readonly nHead: number;
  readonly nEmbd: number;
  readonly nCtx: number;
}

/** A sequence's cache: its blocks (indices into the pool) and how many positions they hold. */
export interface KvSequence {
  blocks: number[];
  length: number;
}

type AttendFn = (q: number, y: number, table: number, len: number, layerOff: number, nh: number, hs: number, d: number, vOff: number, scores: number, scale: number) => void;

export class PagedKv {
  /** Whether the kernel can serve a model of this shape (head size a multiple of 4). */
  static supports(shape: Pick<KvShape, 'nHead' | 'nEmbd'>): boolean {
    return shape.nEmbd % shape.nHead === 0 && (shape.nEmbd / shape.nHead) % 4 === 0;
  }

  readonly #d: number;
  readonly #nh: number;
  readonly #hs: number;
  readonly #nCtx: number;
  readonly #rowBytes: number; // one position of one layer's keys (or values)
  readonly #layerBytes: number; // one layer of a block: keys then values
  readonly #blockBytes: number;
  readonly #memory: WebAssembly.Memory;
  readonly #attend: AttendFn;
  // scratch at the start of the memory: a query, its output, scores and one block table
  readonly #qAt: number;
  readonly #yAt: number;
  readonly #scoresAt: number;
  readonly #tableAt: number;
  readonly #poolAt: number;
  #f32: Float32Array;
  #i32: Int32Array;
  #blocks = 0; // in the pool
  readonly #free: number[] = [];
  #refs = new Int32Array(0); // per block: sequences holding it (0: free)

  constructor(shape: KvShape) {
    if (!PagedKv.supports(shape)) throw new RangeError(`paged KV cache: head size ${shape.nEmbd / shape.nHead} is not a multiple of 4`);
    this.#d = shape.nEmbd;
    this.#nh = shape.nHead;
    this.#hs = shape.nEmbd / shape.nHead;
    this.#nCtx = shape.nCtx;
    this.#rowBytes = this.#d * 4;
    this.#layerBytes = 2 * BLOCK * this.#rowBytes;
    this.#blockBytes = shape.nLayer * this.#layerBytes;
    const align = (n: number) => Math.ceil(n / 64) * 64;
    this.#qAt = 0;
    this.#yAt = align(this.#qAt + this.#rowBytes);
    this.#scoresAt = align(this.#yAt + this.#rowBytes);
    this.#tableAt = align(this.#scoresAt + 4 * this.#nh * this.#nCtx);
    this.#poolAt = align(this.#tableAt + 4 * Math.ceil(this.#nCtx / BLOCK));
    const instance = new WebAssembly.Instance(kernel(), {});
    this.#memory = instance.exports.memory as WebAssembly.Memory;
    this.#attend = instance.exports.attend as AttendFn;
    const pages = Math.ceil(this.#poolAt / PAGE);
    if (pages > this.#memory.buffer.byteLength / PAGE) this.#memory.grow(pages - this.#memory.buffer.byteLength / PAGE);
    this.#f32 = new Float32Array(this.#memory.buffer);
    this.#i32 = new Int32Array(this.#memory.buffer);
  }

  /** Bytes the pool holds (free blocks included): what the cache costs this process. */
  get bytes(): number {
    return this.#blocks * this.#blockBytes;
  }

  /** Blocks in use by some sequence. */
  get blocksInUse(): number {
    return this.#blocks - this.#free.length;
  }

  /** A new, empty sequence. */
  sequence(): KvSequence {
    return { blocks: [], length: 0 };
  }

  /** A sequence that starts as a copy of `seq` (sharing its blocks until one of them writes). */
  fork(seq: KvSequence): KvSequence {
    for (const b of seq.blocks) this.#refs[b]!++;
    return { blocks: [...seq.blocks], length: seq.length };
  }

  /** Gives a sequence's blocks back (to the free list when no other sequence holds them). */
  release(seq: KvSequence): void {
    for (const b of seq.blocks) if (--this.#refs[b]! === 0) this.#free.push(b);
    seq.blocks = [];
    seq.length = 0;
  }

  /**
   * Makes positions seq.length … seq.length + n − 1 writable by this sequence alone: new blocks at the end, and a
   * private copy of a partly filled last block that another sequence shares. Does not change seq.length.
   */
  reserve(seq: KvSequence, n: number): void {
    const end = seq.length + n;
    if (end > this.#nCtx) throw new RangeError(`a sequence needs ${end} positions, more than the context of ${this.#nCtx}`);
    const first = Math.floor(seq.length / BLOCK);
    if (seq.length % BLOCK !== 0 && this.#refs[seq.blocks[first]!]! > 1) {
      const copy = this.#take();
      const from = seq.blocks[first]!;
      new Uint8Array(this.#memory.buffer).copyWithin(this.#at(copy), this.#at(from), this.#at(from) + this.#blockBytes);
      this.#refs[from]!--;
      seq.blocks[first] = copy;
    }
    while (seq.blocks.length * BLOCK < end) seq.blocks.push(this.#take());
  }

  /**
   * Writes `count` positions from `pos` on (reserved) of layer `layer`: position pos + i's key is
   * k[kAt + i·stride … + d], its value v[vAt + i·stride … + d].
   */
  write(seq: KvSequence, layer: number, pos: number, count: number, k: Float32Array, kAt: number, v: Float32Array, vAt: number, stride: number): void {
    const d = this.#d, f32 = this.#f32;
    for (let i = 0; i < count; i++) {
      const j = pos + i;
      const row = (this.#at(seq.blocks[Math.floor(j / BLOCK)]!) + layer * this.#layerBytes + (j % BLOCK) * this.#rowBytes) / 4;
      f32.set(k.subarray(kAt + i * stride, kAt + i * stride + d), row);
      f32.set(v.subarray(vAt + i * stride, vAt + i * stride + d), row + BLOCK * d);
    }
  }

  /**
   * Attention of one query (all heads, q[qAt … + d]) over the sequence's positions 0 … len − 1 of `layer`, into
   * y[yAt … + d]: softmax(q·kᵀ / √hs) · v per head.
   */
  attend(seq: KvSequence, layer: number, len: number, q: Float32Array, qAt: number, y: Float32Array, yAt: number): void {
    const d = this.#d, f32 = this.#f32;
    const nBlocks = Math.ceil(len / BLOCK);
    if (len < 1 || nBlocks > seq.blocks.length) throw new RangeError(`attend: ${len} positions, the sequence has ${seq.blocks.length} blocks`);
    for (let b = 0; b < nBlocks; b++) this.#i32[this.#tableAt / 4 + b] = this.#at(seq.blocks[b]!);
    f32.set(q.subarray(qAt, qAt + d), this.#qAt / 4);
    this.#attend(this.#qAt, this.#yAt, this.#tableAt, len, layer * this.#layerBytes, this.#nh, this.#hs, d, BLOCK * this.#rowBytes, this.#scoresAt, 1 / Math.sqrt(this.#hs));
    y.set(f32.subarray(this.#yAt / 4, this.#yAt / 4 + d), yAt);
  }

  /** Keys and values of positions 0 … len − 1 of `layer`, each [len, d] (position-major): a chunk's prefix. */
  read(seq: KvSequence, layer: number, len: number): { k: Float32Array; v: Float32Array } {
    const d = this.#d;
    const k = new Float32Array(len * d), v = new Float32Array(len * d);
    for (let start = 0; start < len; start += BLOCK) {
      const n = Math.min(BLOCK, len - start);
      const at = (this.#at(seq.blocks[start / BLOCK]!) + layer * this.#layerBytes) / 4;
      k.set(this.#f32.subarray(at, at + n * d), start * d);
      v.set(this.#f32.subarray(at + BLOCK * d, at + BLOCK * d + n * d), start * d);
    }
    return { k, v };
  }

  #at(block: number): number {
    return this.#poolAt + block * this.#blockBytes;
  }

  /** A free block, growing the pool when there is none. */
  #take(): number {
    if (this.#free.length === 0) this.#grow(Math.max(MIN_GROWTH_BLOCKS, this.#blocks));
    const b = this.#free.pop()!;
    this.#refs[b] = 1;
    return b;
  }

  #grow(more: number): void {
    const maxBlocks = Math.floor((MAX_PAGES * PAGE - this.#poolAt) / this.#blockBytes);
    more = Math.min(more, maxBlocks - this.#blocks);
    const pages = Math.ceil((this.#poolAt + (this.#blocks + more) * this.#blockBytes) / PAGE) - this.#memory.buffer.byteLength / PAGE;
    try {
      if (more <= 0) throw new RangeError('the address space is full');
      if (pages > 0) this.#memory.grow(pages);
    } catch (err) {
      throw new GatewayError('GW_ERR_OVERLOADED', `the KV cache is full: ${this.#blocks} blocks of ${BLOCK} positions (${(this.bytes / 2 ** 30).toFixed(2)} GiB) are in use and no more memory could be had (${(err as Error).message}); retry when fewer requests run`, { retryAfterS: 1 });
    }
    this.#f32 = new Float32Array(this.#memory.buffer);
    this.#i32 = new Int32Array(this.#memory.buffer);
    const refs = new Int32Array(this.#blocks + more);
    refs.set(this.#refs);
    this.#refs = refs;
    for (let b = this.#blocks + more - 1; b >= this.#blocks; b--) this.#free.push(b);
    this.#blocks += more;
  }
}
