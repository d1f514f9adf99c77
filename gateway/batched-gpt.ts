/**
 * The GPT's serving engine with its KV cache in tfjs tensors, for the backends whose tensors cannot be written in
 * place from this process (WebGPU; paged-gpt.ts serves wasm and cpu): prefill forwards for the prompts admitted in
 * an iteration (grouped by length; a chunk that continues a prompt alone), then one decode forward per generation
 * step for every running sequence together. The forward's pieces are gpt-forward.ts's: a row computes what
 * GPT.forwardCached computes (to float rounding: decode attention uses products and sums, not matmuls).
 *
 * The batch's KV cache is one tensor pair per layer, keys [rows·nh, width, hs] and values transposed [rows·nh, hs,
 * width] (see LayerKV), right-padded: row b's positions
 * 0…length_b−1 sit in columns 0…length_b−1 (column = position) and later columns are padding the attention mask
 * hides. Keeping every row's real columns at the start is what makes a row's numbers independent of its
 * neighbours: padding only appends exact zeros to the row's sums (masked scores exp to exactly 0), and matmuls
 * and reductions compute rows separately, so a sequence gets the same logits alone or batched (bit for bit on the
 * cpu and wasm backends, as measured; a backend that reorders sums by shape may differ in the last bits).
 * A decode step writes each row's new key and value into its own column, in place where tensors live in CPU memory
 * (the wasm heap, the cpu backend; arrange makes sure the cache owns its buffers) and by tensorScatterUpdate, a copy
 * of the cache, elsewhere (WebGPU); the width grows WIDTH_CHUNK columns at a time, so most steps do not reallocate. Padding columns hold finite values (zeros, or keys of a padded prompt position): masked, they weigh 0.
 * Rows joining or leaving rebuild the cache (arrange: a gather and a concat per layer), which the paged cache avoids.
 */
import * as tf from '@tensorflow/tfjs';
import type { GPT } from '../model/gpt.ts';
import { GptForward, MASKED } from './gpt-forward.ts';
import type { BatchEngine, PrefillInput, PrefillOutput } from './batch-scheduler.ts';
import { takeValues } from '../model/tensor-values.ts';

const WIDTH_CHUNK = 16; // cache columns added at a time: masked columns cost a little attention, reallocations more

interface LayerKV {
  readonly k: tf.Tensor3D; // [rows·nh, width, hs]
  // [rows·nh, hs, width]: values transposed, so that attention's weighted sum over positions reduces the innermost
  // axis (a reduction over another axis transposes its whole input first: measured 0.36 → 0.21 ms a layer, 16 rows)
  readonly v: tf.Tensor3D;
}

/** A prompt's keys and values, to start rows from (one per choice): per layer k [nh, ≥ length, hs], v [nh, hs, ≥ length]. */
export interface PromptKV {
  readonly length: number;
  readonly layers: readonly LayerKV[];
}

const PAD_SLACK = 0.25; // a prompt joins a prefill group when padding it wastes at most this much of the longest…
const PAD_SLACK_TOKENS = 8; // …or this many positions (short prompts: a forward's fixed cost outweighs a few rows)
const MAX_PREFILL_SCORES = 1 << 22; // rows × T² per head in one prefill: bounds its attention scores' memory

/**
 * Which prompts to prefill together (indices into `lengths`, longest first): similar lengths, so that little work
 * goes into padding, and a bounded attention-score tensor. Any grouping gives the same numbers: rows are independent.
 */
export function prefillGroups(lengths: readonly number[]): number[][] {
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b]! - lengths[a]! || a - b);
  const groups: number[][] = [];
  let group: number[] = [];
  let longest = 0;
  for (const i of order) {
    const L = lengths[i]!;
    const fits = group.length > 0 && longest - L <= Math.max(PAD_SLACK_TOKENS, longest * PAD_SLACK) && (group.length + 1) * longest * longest <= MAX_PREFILL_SCORES;
    if (!fits) {
      if (group.length > 0) groups.push(group);
      group = [];
      longest = L;
    }
    group.push(i);
  }
  if (group.length > 0) groups.push(group);
  return groups;
}

/**
 * Runs prompt chunks through `forward`: fresh prompts grouped by length (prefillGroups), each continuation (`from`)
 * alone; the outputs in the order of `prompts`.
 */
export async function prefillGrouped<P>(prompts: ReadonlyArray<PrefillInput<P>>, forward: (group: ReadonlyArray<PrefillInput<P>>) => Promise<Array<PrefillOutput<P>>>): Promise<Array<PrefillOutput<P>>> {
  const out = new Array<PrefillOutput<P>>(prompts.length);
  const fresh = prompts.flatMap((p, i) => (p.from ? [] : [i]));
  for (const group of prefillGroups(fresh.map((i) => prompts[i]!.ids.length))) {
    const members = group.map((j) => fresh[j]!);
    (await forward(members.map((i) => prompts[i]!))).forEach((o, j) => (out[members[j]!] = o));
  }
  for (const [i, p] of prompts.entries()) if (p.from) out[i] = (await forward([p]))[0]!;
  return out;
}

export class GptBatchEngine implements BatchEngine<PromptKV> {
  readonly logitsWidth: number;
  readonly #model: GPT;
  readonly #fwd: GptForward;
  #layers: LayerKV[] = [];
  #width = 0; // columns of every cache tensor
  #lengths: number[] = []; // positions cached per row

  constructor(model: GPT) {
    this.#model = model;
    this.#fwd = new GptForward(model);
    this.logitsWidth = model.config.vocabSize;
  }

  get rows(): number {
    return this.#lengths.length;
  }

  /**
   * Runs prompt chunks: fresh prompts grouped by length (prefillGroups: one forward per group, usually one in all),
   * a continuation (`from`, a prompt cached so far) alone, attending to its cached prefix. A continued prompt is
   * consumed: the result's prompt replaces it.
   */
  prefill(prompts: ReadonlyArray<PrefillInput<PromptKV>>): Promise<Array<PrefillOutput<PromptKV>>> {
    return prefillGrouped(prompts, (group) => this.#prefillGroup(group));
  }

  /** One forward over chunks right-padded to the longest (one chunk when it continues a prompt). */
  async #prefillGroup(prompts: ReadonlyArray<PrefillInput<PromptKV>>): Promise<Array<PrefillOutput<PromptKV>>> {
    const { nHead: nh, nEmbd: d, nLayer } = this.#model.config;
    const hs = d / nh;
    const from = prompts[0]!.from;
    const p = from?.length ?? 0;
    const run = this.#fwd.chunks(prompts, from && {
      length: p,
      layer: (l) => ({ k: from.layers[l]!.k.slice([0, 0, 0], [nh, p, hs]), v: from.layers[l]!.v.slice([0, 0, 0], [nh, hs, p]).transpose([0, 2, 1]) }),
    });
    const { T } = run;
    // Per prompt and layer: keys [nh, ≥ length, hs], values [nh, hs, ≥ length] (padded columns included: arrange()
    // cuts or pads them to the batch's width), after the continued prompt's own.
    const kv = prompts.map((c, r) => run.kv.map(({ k, v }, l) => tf.tidy(() => {
      const rows = (z: tf.Tensor2D) => z.slice([r * T, 0], [T, d]).reshape([T, nh, hs]).transpose([1, 0, 2]) as tf.Tensor3D; // [nh, T, hs]
      const kNew = rows(k), vNew = rows(v).transpose([0, 2, 1]) as tf.Tensor3D; // [nh, hs, T]
      if (!from) return { k: kNew, v: vNew };
      const old = from.layers[l]!;
      return { k: tf.concat([old.k.slice([0, 0, 0], [nh, p, hs]), kNew], 1), v: tf.concat([old.v.slice([0, 0, 0], [nh, hs, p]), vNew], 2) };
    })));
    for (const { k, v } of run.kv) tf.dispose([k, v]);
    let values: Float32Array;
    try {
      values = await takeValues(run.logits); // [wanted, V]; a sync point on GPU backends
    } catch (err) {
      for (const layers of kv) for (const { k, v } of layers) tf.dispose([k, v]);
      throw err;
    }
    if (from) this.release(from);
    const V = this.logitsWidth;
    let row = 0;
    return prompts.map((c, r) => {
      const rows = c.allPositions ? c.ids.length : 1;
      const result = { logits: values.subarray(row * V, (row + rows) * V), prompt: { length: p + c.ids.length, layers: kv[r]! } };
      row += rows;
      return result;
    });
  }

  /** The batch becomes: current rows `keep` (in that order), then one new row per entry of `add`. */
  arrange(keep: readonly number[], add: readonly PromptKV[]): void {
    if (add.length === 0 && keep.length === this.rows && keep.every((b, i) => b === i)) return;
    const lengths = [...keep.map((b) => this.#lengths[b]!), ...add.map((p) => p.length)];
    if (lengths.length === 0) return this.clear();
    const nh = this.#model.config.nHead;
    const width = this.#fitWidth(Math.max(...lengths) + 1); // room for the next decode's token
    const kept = tf.tensor1d(keep.flatMap((b) => Array.from({ length: nh }, (_, h) => b * nh + h)), 'int32');
    const fit = (t: tf.Tensor3D, axis: 1 | 2) => { // the width axis: 1 for keys, 2 for values
      const w = t.shape[axis];
      if (w === width) return t;
      const size: [number, number, number] = [-1, -1, -1];
      size[axis] = width;
      const pad: Array<[number, number]> = [[0, 0], [0, 0], [0, 0]];
      pad[axis] = [0, width - w];
      return (w > width ? t.slice([0, 0, 0], size) : t.pad(pad)) as tf.Tensor3D; // padding: zeros
    };
    // The batch's cache must own its buffers: decode writes new keys and values into them in place. concat of two
    // or more parts, and gather, write fresh buffers; concat of one prompt's part alone is a clone of it (or of a
    // slice that may view the prompt's buffer), so that one is copied.
    const build = (old: tf.Tensor3D | undefined, fresh: tf.Tensor3D[], axis: 1 | 2) =>
      tf.tidy(() => {
        const parts = [...(keep.length ? [fit(tf.gather(old!, kept), axis)] : []), ...fresh.map((t) => fit(t, axis))];
        const out = tf.concat(parts, 0) as tf.Tensor3D;
        return keep.length === 0 && fresh.length === 1 ? (out.add(0) as tf.Tensor3D) : out;
      });
    const layers = Array.from({ length: this.#model.config.nLayer }, (_, l) => ({
      k: build(this.#layers[l]?.k, add.map((p) => p.layers[l]!.k), 1),
      v: build(this.#layers[l]?.v, add.map((p) => p.layers[l]!.v), 2),
    }));
    kept.dispose();
    this.#disposeLayers();
    this.#layers = layers;
    this.#width = width;
    this.#lengths = lengths;
  }

  /** Feeds tokens[b] to row b at its next position, every row in one forward; returns logits [rows, V]. */
  async decode(tokens: readonly number[]): Promise<Float32Array> {
    const B = this.rows;
    if (tokens.length !== B) throw new RangeError(`decode: ${tokens.length} tokens for ${B} rows`);
    const { nHead: nh, nEmbd: d, nLayer } = this.#model.config;
    const hs = d / nh;
    const positions = Int32Array.from(this.#lengths); // each token goes in the column after its row's last
    this.#ensureWidth(Math.max(...positions) + 1);
    const W = this.#width;
    const mask = new Float32Array(B * W).fill(MASKED); // row b sees columns 0…positions[b]
    for (let b = 0; b < B; b++) mask.fill(0, b * W, b * W + positions[b]! + 1);
    const next: LayerKV[] = [];
    const inPlace = writableBuffer(this.#layers[0]!.k) !== undefined;
    const logits = tf.tidy(() => {
      const atK = inPlace ? undefined : keyIndices(positions, nh); // (cache row, column) of each new key
      const atV = inPlace ? undefined : valueIndices(positions, nh, hs); // (cache row, i, column) of each new value
      const maskT = tf.tensor3d(mask, [B, 1, W]);
      let x = this.#fwd.embed(Int32Array.from(tokens), positions); // [B, d]
      for (let l = 0; l < nLayer; l++) {
        const [q2, k2, v2] = tf.split(this.#fwd.qkv(x, l), 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
        const q = this.#fwd.heads(q2, B, 1), kNew = this.#fwd.heads(k2, B, 1), vNew = this.#fwd.heads(v2, B, 1); // each [B·nh, 1, hs]
        const old = this.#layers[l]!;
        let k = old.k, v = old.v;
        if (inPlace) { // each row's and head's new key and value into its column of the cache: no copy of the cache
          writeColumns(old.k, kNew, positions, nh, W, hs);
          writeValueColumns(old.v, vNew, positions, nh, W, hs);
        } else { // backends whose tensors cannot be written (WebGPU): a copy of the cache per layer
          k = tf.tensorScatterUpdate(old.k, atK!, kNew.reshape([B * nh, hs])); // [B·nh, W, hs]
          v = tf.tensorScatterUpdate(old.v, atV!, vNew.reshape([B * nh * hs])); // [B·nh, hs, W]
        }
        // One query per row: products and sums instead of B·nh matrix-vector matmuls (slow batched on wasm).
        const scores = q.mul(k).sum(2).mul(1 / Math.sqrt(hs)); // [B·nh, W]
        const att = tf.softmax(scores.reshape([B, nh, W]).add(maskT)).reshape([B * nh, 1, W]);
        const y = att.mul(v).sum(2).reshape([B * nh, 1, hs]) as tf.Tensor3D; // [B·nh, 1, hs]: v is [B·nh, hs, W]
        x = this.#fwd.finishBlock(x, l, y, B, 1);
        if (!inPlace) next.push({ k: tf.keep(k), v: tf.keep(v) });
      }
      return this.#fwd.head(x);
    });
    if (!inPlace) {
      this.#disposeLayers();
      this.#layers = next; // before the wait: the engine's state is whole whatever happens during it
    }
    this.#lengths = this.#lengths.map((n) => n + 1);
    return takeValues(logits); // [B, V]: the step's one sync point
  }

  release(prompt: PromptKV): void {
    for (const { k, v } of prompt.layers) tf.dispose([k, v]);
  }

  clear(): void {
    this.#disposeLayers();
    this.#layers = [];
    this.#width = 0;
    this.#lengths = [];
  }

  /** Frees what the engine made for itself (the transposed head); the model's own weights are its owner's. */
  dispose(): void {
    this.#fwd.dispose();
    this.#disposeLayers();
  }

  /** Cache width for `needed` columns: rounded up to a chunk, never past the context. */
  #fitWidth(needed: number): number {
    const nCtx = this.#model.config.nCtx;
    if (needed > nCtx) throw new RangeError(`a batch row needs ${needed} positions, more than nCtx ${nCtx}`);
    return Math.min(nCtx, Math.ceil(needed / WIDTH_CHUNK) * WIDTH_CHUNK);
  }

  #ensureWidth(needed: number): void {
    if (this.#width >= needed) return;
    const width = this.#fitWidth(needed);
    const more = width - this.#width; // zeros: finite
    const layers = this.#layers.map(({ k, v }) => ({ k: k.pad([[0, 0], [0, more], [0, 0]]) as tf.Tensor3D, v: v.pad([[0, 0], [0, 0], [0, more]]) as tf.Tensor3D }));
    this.#disposeLayers();
    this.#layers = layers;
    this.#width = width;
  }

  #disposeLayers(): void {
    for (const { k, v } of this.#layers) tf.dispose([k, v]);
  }
}

/**
 * The buffer of a tensor this process may write into, on the backends that keep tensors in CPU memory: the wasm
 * heap (typedArrayFromHeap, a view, no copy) and the cpu backend's typed array. Undefined elsewhere (WebGPU).
 */
function writableBuffer(t: tf.Tensor): Float32Array | undefined {
  const backend = tf.backend() as unknown as { typedArrayFromHeap?(t: tf.TensorInfo): Float32Array; data?: { get(id: object): { values?: unknown } } };
  const name = tf.getBackend();
  if (name === 'wasm' && backend.typedArrayFromHeap) return backend.typedArrayFromHeap(t);
  if (name === 'cpu') {
    const values = backend.data?.get(t.dataId)?.values;
    return values instanceof Float32Array ? values : undefined;
  }
  return undefined;
}

/**
 * Writes `fresh` [B·nh, 1, hs] into `cache` [B·nh, W, hs] at column positions[b] of row b's heads. The cache's
 * buffer is the engine's own (arrange builds it, nothing else holds it), so writing into it changes no other tensor.
 */
function writeColumns(cache: tf.Tensor3D, fresh: tf.Tensor3D, positions: Int32Array, nh: number, W: number, hs: number): void {
  const src = writableBuffer(fresh)!;
  const dst = writableBuffer(cache)!; // after src: reading src allocates nothing, so this view stays valid
  for (let r = 0; r < positions.length * nh; r++) dst.set(src.subarray(r * hs, (r + 1) * hs), (r * W + positions[Math.floor(r / nh)]!) * hs);
}

/** Like writeColumns, into the values' cache [B·nh, hs, W] (transposed): element i of a new value at row i·W + column. */
function writeValueColumns(cache: tf.Tensor3D, fresh: tf.Tensor3D, positions: Int32Array, nh: number, W: number, hs: number): void {
  const src = writableBuffer(fresh)!;
  const dst = writableBuffer(cache)!;
  for (let r = 0; r < positions.length * nh; r++) {
    const col = positions[Math.floor(r / nh)]!;
    for (let i = 0; i < hs; i++) dst[(r * hs + i) * W + col] = src[r * hs + i]!;
  }
}

/** Indices [B·nh, 2] of each row's and head's new key in the keys' cache, for tensorScatterUpdate. */
function keyIndices(positions: Int32Array, nh: number): tf.Tensor2D {
  const R = positions.length * nh;
  const at = new Int32Array(R * 2);
  for (let r = 0; r < R; r++) {
    at[2 * r] = r;
    at[2 * r + 1] = positions[Math.floor(r / nh)]!;
  }
  return tf.tensor2d(at, [R, 2], 'int32');
}

/** Indices [B·nh·hs, 3] of each new value element in the transposed values' cache, for tensorScatterUpdate. */
function valueIndices(positions: Int32Array, nh: number, hs: number): tf.Tensor2D {
  const R = positions.length * nh;
  const at = new Int32Array(R * hs * 3);
  for (let r = 0; r < R; r++) {
    const col = positions[Math.floor(r / nh)]!;
    for (let i = 0, j = r * hs * 3; i < hs; i++, j += 3) {
      at[j] = r;
      at[j + 1] = i;
      at[j + 2] = col;
    }
  }
  return tf.tensor2d(at, [R * hs, 3], 'int32');
}

