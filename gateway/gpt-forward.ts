/**
 * The pieces of the GPT's forward pass the serving engines share (batched-gpt.ts keeps the KV cache in tensors,
 * paged-gpt.ts in a paged pool): token and position embeddings, a block's queries, keys and values, the rest of a
 * block after attention, the tied head, and the prompt forward. Built from model/gpt.ts's exported pieces and the
 * model's parameters (`model.param` carries an attached LoRA adapter, unmerged), so a row computes what
 * GPT.forwardCached computes, to float rounding.
 */
import * as tf from '@tensorflow/tfjs';
import { causalMask, gelu, layerNorm, linear, type GPT, type Param } from '../model/gpt.ts';

export const MASKED = -1e9; // added to hidden scores, as gpt.ts does: exp underflows to exactly 0

/** A prompt chunk to run: its token ids, and whether every position's logits are wanted (echo with logprobs). */
export interface ChunkInput {
  readonly ids: readonly number[];
  readonly allPositions: boolean;
}

/** Keys and values of a chunk's cached prefix for one layer, each [nh, p, hs]. */
export interface PrefixKV {
  readonly k: tf.Tensor3D;
  readonly v: tf.Tensor3D;
}

/** What a prompt forward leaves: the wanted rows' logits [rows, V], and per layer the chunk's keys and values [R·T, d]. */
export interface ChunkForward {
  readonly logits: tf.Tensor2D;
  readonly kv: ReadonlyArray<{ readonly k: tf.Tensor2D; readonly v: tf.Tensor2D }>;
  /** The padded length every chunk's rows were given. */
  readonly T: number;
}

export class GptForward {
  readonly model: GPT;
  readonly #p: Param;
  readonly #masks = new Map<number, Float32Array>();
  /** wte transposed once, [d, V]: the head's right operand as XNNPACK wants it, packed once (see headWeight). */
  #headT: { source: tf.Tensor; t: tf.Tensor2D } | null = null;

  constructor(model: GPT) {
    this.model = model;
    this.#p = model.param;
  }

  /** Token plus position embeddings, gathered (no gradient is needed here, so no one-hot matmul). */
  embed(ids: Int32Array, positions: Int32Array): tf.Tensor2D {
    const tok = tf.gather(this.#p('wte.weight'), tf.tensor1d(ids, 'int32'));
    return tok.add(tf.gather(this.#p('wpe.weight'), tf.tensor1d(positions, 'int32'))) as tf.Tensor2D; // [N, d]
  }

  /** Queries, keys and values of block l, [N, 3d] (q, k, v side by side per row). */
  qkv(x: tf.Tensor2D, l: number): tf.Tensor2D {
    return linear(layerNorm(x, this.#p, `h.${l}.ln_1`), this.#p, `h.${l}.attn.c_attn`);
  }

  /** [B·t, d] split into heads: [B·nh, t, hs]. */
  heads(z: tf.Tensor2D, B: number, t: number): tf.Tensor3D {
    const { nHead: nh, nEmbd: d } = this.model.config;
    const hs = d / nh;
    return (t === 1 ? z.reshape([B * nh, 1, hs]) : z.reshape([B, t, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, t, hs])) as tf.Tensor3D;
  }

  /** The rest of block l after attention: output projection, residual, MLP, residual. y: [B·nh, t, hs] or [B·t, d]. */
  finishBlock(x: tf.Tensor2D, l: number, y: tf.Tensor, B: number, t: number): tf.Tensor2D {
    const { nHead: nh, nEmbd: d } = this.model.config;
    const merged = (y.rank === 2 || t === 1 ? y.reshape([B * t, d]) : y.reshape([B, nh, t, d / nh]).transpose([0, 2, 1, 3]).reshape([B * t, d])) as tf.Tensor2D;
    x = x.add(linear(merged, this.#p, `h.${l}.attn.c_proj`));
    const h = linear(gelu(linear(layerNorm(x, this.#p, `h.${l}.ln_2`), this.#p, `h.${l}.mlp.c_fc`)), this.#p, `h.${l}.mlp.c_proj`);
    return x.add(h);
  }

  /** Final layer norm and the head tied to wte, over all rows of x or only `rows`: [rows, V]. */
  head(x: tf.Tensor2D, rows?: number[]): tf.Tensor2D {
    let h = layerNorm(x, this.#p, 'ln_f');
    if (rows) h = tf.gather(h, tf.tensor1d(rows, 'int32'));
    return tf.matMul(h, this.#headWeight());
  }

  /**
   * One forward over R prompt chunks right-padded to the longest (padding is token 0: computed, never attended to,
   * never read), each at positions p … p + length − 1 after a cached prefix of p positions. With a prefix R is 1:
   * `prefix(l)` gives layer l's cached keys and values, which the chunk's queries attend to before its own
   * (causally). Causality keeps padding out of real positions, so each chunk's numbers are its own.
   * The caller owns (and disposes) the returned tensors.
   */
  chunks(inputs: readonly ChunkInput[], prefix?: { length: number; layer(l: number): PrefixKV }): ChunkForward {
    const { nHead: nh, nEmbd: d, nLayer } = this.model.config;
    const hs = d / nh;
    const R = inputs.length;
    if (prefix && R !== 1) throw new RangeError(`a forward after a cached prefix runs one chunk, got ${R}`);
    const p = prefix?.length ?? 0;
    const T = Math.max(...inputs.map((c) => c.ids.length));
    const ids = new Int32Array(R * T);
    const positions = new Int32Array(R * T);
    const wanted: number[] = []; // rows of [R·T] whose logits come back
    for (const [r, c] of inputs.entries()) {
      ids.set(c.ids, r * T);
      for (let i = 0; i < T; i++) positions[r * T + i] = p + i;
      if (c.allPositions) for (let i = 0; i < c.ids.length; i++) wanted.push(r * T + i);
      else wanted.push(r * T + c.ids.length - 1);
    }
    const kv: Array<{ k: tf.Tensor2D; v: tf.Tensor2D }> = [];
    const logits = tf.tidy(() => {
      const mask = tf.tensor2d(p === 0 ? causalMask(T, this.#masks) : offsetCausalMask(T, p), [T, p + T]);
      let x = this.embed(ids, positions); // [R·T, d]
      for (let l = 0; l < nLayer; l++) {
        const [q2, k2, v2] = tf.split(this.qkv(x, l), 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
        let k = this.heads(k2, R, T), v = this.heads(v2, R, T); // [R·nh, T, hs]
        if (prefix) {
          const past = prefix.layer(l);
          k = tf.concat([past.k, k], 1);
          v = tf.concat([past.v, v], 1);
        }
        const att = tf.matMul(this.heads(q2, R, T), k, false, true).mul(1 / Math.sqrt(hs)).add(mask); // [R·nh, T, p+T]
        x = this.finishBlock(x, l, tf.matMul(tf.softmax(att), v), R, T);
        kv.push({ k: tf.keep(k2), v: tf.keep(v2) });
      }
      return this.head(x, wanted);
    });
    return { logits, kv, T };
  }

  /**
   * The head's weight, wte transposed, made once per weight tensor. Multiplying by wte with transposeB instead
   * transposes and packs the whole [V, d] matrix for every token: measured 954 ms a decode step for GPT-2's
   * 50,257 × 768 on wasm, against 48 ms with this copy (one more [d, V] tensor held while the engine lives).
   */
  #headWeight(): tf.Tensor2D {
    const wte = this.#p('wte.weight');
    if (this.#headT?.source !== wte) {
      this.#headT?.t.dispose();
      this.#headT = { source: wte, t: tf.keep(tf.tidy(() => tf.transpose(wte) as tf.Tensor2D)) };
    }
    return this.#headT.t;
  }

  /** Frees what this made for itself (the transposed head); the model's own weights are its owner's. */
  dispose(): void {
    this.#headT?.t.dispose();
    this.#headT = null;
  }
}

/** [T, p + T]: query i (at position p + i) sees columns 0 … p + i. */
function offsetCausalMask(T: number, p: number): Float32Array {
  const W = p + T;
  const m = new Float32Array(T * W);
  for (let i = 0; i < T; i++) m.fill(MASKED, i * W + p + i + 1, (i + 1) * W);
  return m;
}
