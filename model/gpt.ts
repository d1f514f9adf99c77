/**
 * A GPT-2-architecture language model in TensorFlow.js, in the order data flows (after karpathy/nanoGPT's model.py):
 * attention, MLP, block, the model; its config and parameter layout are model/params.ts. Parameter names and layouts are GPT-2's own (`wte.weight`,
 * `h.0.attn.c_attn.weight` as Conv1D [in, out], …), so an exported state dict loads in transformers'
 * GPT2LMHeadModel; the output head is tied to `wte`.
 *
 * Parameters live in tf.Variables for the forward/backward pass, and travel as ONE flat Float32Array (in
 * `paramLayout` order, model/params.ts) everywhere else: the optimizer, the data-parallel all-reduce and checkpoints.
 */
import * as tf from '@tensorflow/tfjs';
import { gptConfig, initParams, paramLayout, unflatten, type GPTConfig, type ParamLayout } from './params.ts';

// ---------------------------------------------------------------------------------------------------- modules

/**
 * A low-rank adapter on one linear layer (model/lora.ts): y += scale·(x·A)·B, A [in, r], B [r, out]. Looked up by
 * the layer's prefix (`h.3.attn.c_attn`); undefined for a layer without one.
 */
export interface LoraFactors {
  readonly A: tf.Tensor2D;
  readonly B: tf.Tensor2D;
  readonly scale: number;
  /** Applied to x before A, e.g. dropout while training (model/lora.ts's loraDropout); none at inference. */
  readonly input?: (x: tf.Tensor2D) => tf.Tensor2D;
}

/** Parameters by GPT-2 name; `lora`, when present, adds adapters to the linear layers (absent: the plain model). */
export type Param = ((name: string) => tf.Tensor) & { lora?: (prefix: string) => LoraFactors | undefined };

const LN_EPS = 1e-5;
const MASKED = -1e9; // added to attention scores above the diagonal; exp underflows to exactly 0

/**
 * y = x·W + b with GPT-2's Conv1D layout W: [in, out], plus scale·(x·A)·B when an adapter is attached to this layer
 * (LoRA, unmerged: two thin matmuls through rank r instead of touching W). No adapter: one property check.
 */
export function linear(x: tf.Tensor2D, p: Param, prefix: string): tf.Tensor2D {
  const y = tf.matMul(x, p(`${prefix}.weight`) as tf.Tensor2D).add(p(`${prefix}.bias`)) as tf.Tensor2D;
  const lora = p.lora?.(prefix);
  if (!lora) return y;
  return y.add(tf.matMul(tf.matMul(lora.input ? lora.input(x) : x, lora.A), lora.B).mul(lora.scale)); // [N, r] in between
}

export function layerNorm(x: tf.Tensor2D, p: Param, prefix: string): tf.Tensor2D {
  const mean = x.mean(-1, true); // [N, 1]
  const xc = x.sub(mean);
  const variance = xc.mul(xc).mean(-1, true); // biased, as torch.nn.LayerNorm
  return xc.mul(variance.add(LN_EPS).rsqrt()).mul(p(`${prefix}.weight`)).add(p(`${prefix}.bias`));
}

/** GPT-2's tanh approximation ("gelu_new"): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function gelu(x: tf.Tensor2D): tf.Tensor2D {
  const inner = x.add(x.mul(x).mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI));
  return x.mul(0.5).mul(inner.tanh().add(1));
}

/** Causal self-attention. Reshapes stay at rank ≤ 4: 5-D transposes are ~50× slower on wasm. */
function attention(x: tf.Tensor2D, p: Param, prefix: string, c: GPTConfig, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
  const nh = c.nHead, hs = c.nEmbd / c.nHead;
  const qkv = linear(x, p, `${prefix}.c_attn`); // [B*T, 3d]
  const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D]; // each [B*T, d]
  const heads = (t: tf.Tensor2D) => t.reshape([B, T, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, T, hs]) as tf.Tensor3D;
  const att = tf.matMul(heads(q), heads(k), false, true).mul(1 / Math.sqrt(hs)).add(mask); // [B*nh, T, T]
  const y = tf.matMul(tf.softmax(att), heads(v)); // [B*nh, T, hs]
  const merged = y.reshape([B, nh, T, hs]).transpose([0, 2, 1, 3]).reshape([B * T, c.nEmbd]) as tf.Tensor2D; // [B*T, d]
  return linear(merged, p, `${prefix}.c_proj`);
}

/**
 * Attention for `t` new positions that follow `past` cached ones: keys and values of the past come from the cache
 * ([B*nh, past, hs] each) instead of being recomputed, so generating a token costs O(context), not O(context²).
 * Returns the output and the keys/values extended by the new positions.
 */
function attentionCached(
  x: tf.Tensor2D,
  p: Param,
  prefix: string,
  c: GPTConfig,
  B: number,
  t: number,
  past: { k: tf.Tensor3D; v: tf.Tensor3D } | undefined,
  mask: tf.Tensor2D, // [t, past + t]
): { y: tf.Tensor2D; k: tf.Tensor3D; v: tf.Tensor3D } {
  const nh = c.nHead, hs = c.nEmbd / c.nHead;
  const qkv = linear(x, p, `${prefix}.c_attn`); // [B*t, 3d]
  const [q, kNew, vNew] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
  const heads = (z: tf.Tensor2D) => z.reshape([B, t, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, t, hs]) as tf.Tensor3D;
  const k = past ? tf.concat([past.k, heads(kNew)], 1) : heads(kNew); // [B*nh, past+t, hs]
  const v = past ? tf.concat([past.v, heads(vNew)], 1) : heads(vNew);
  const att = tf.matMul(heads(q), k, false, true).mul(1 / Math.sqrt(hs)).add(mask); // [B*nh, t, past+t]
  const y = tf.matMul(tf.softmax(att), v); // [B*nh, t, hs]
  const merged = y.reshape([B, nh, t, hs]).transpose([0, 2, 1, 3]).reshape([B * t, c.nEmbd]) as tf.Tensor2D;
  return { y: linear(merged, p, `${prefix}.c_proj`), k, v };
}

function mlp(x: tf.Tensor2D, p: Param, prefix: string): tf.Tensor2D {
  return linear(gelu(linear(x, p, `${prefix}.c_fc`)), p, `${prefix}.c_proj`); // [B*T, 4d] inside
}

function block(x: tf.Tensor2D, p: Param, l: number, c: GPTConfig, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
  x = x.add(attention(layerNorm(x, p, `h.${l}.ln_1`), p, `h.${l}.attn`, c, B, T, mask));
  x = x.add(mlp(layerNorm(x, p, `h.${l}.ln_2`), p, `h.${l}.mlp`));
  return x;
}

/**
 * 0 on and below the diagonal, a large negative above: row t attends to positions ≤ t only. Cached per length in
 * `cache` (the caller's: one per model).
 */
export function causalMask(T: number, cache: Map<number, Float32Array>): Float32Array {
  let m = cache.get(T);
  if (m === undefined) {
    m = new Float32Array(T * T);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) m[i * T + j] = MASKED;
    cache.set(T, m);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------------- the model

/** Keys and values of the positions generated so far, per layer, each [B*nh, length, hs]. */
export interface KVCache {
  readonly length: number;
  readonly layers: ReadonlyArray<{ readonly k: tf.Tensor3D; readonly v: tf.Tensor3D }>;
}

export function disposeCache(cache: KVCache | undefined): void {
  if (cache) for (const l of cache.layers) tf.dispose([l.k, l.v]);
}

export class GPT {
  readonly config: GPTConfig;
  readonly layout: ParamLayout;
  /** tf.Variables in layout order, keyed by GPT-2 name. Their tfjs names are auto-generated, so models can coexist. */
  readonly params: ReadonlyMap<string, tf.Variable>;
  /** The parameters as a Param for the modules; carries the attached adapter's lookup while there is one. */
  readonly param: Param;
  #masks = new Map<number, Float32Array>(); // causal mask values per sequence length
  #adapter: { layout: ParamLayout; vars: Map<string, tf.Variable>; byPrefix: Map<string, LoraFactors> } | undefined;

  /** A model initialised from `initParams(layout, seed)`, or from `flat` when given (e.g. a checkpoint). */
  constructor(config: GPTConfig, init: { seed: number } | { flat: Float32Array }) {
    this.config = gptConfig(config);
    this.layout = paramLayout(this.config);
    const flat = 'flat' in init ? init.flat : initParams(this.layout, init.seed);
    const views = unflatten(flat, this.layout);
    this.params = new Map(this.layout.specs.map((s) => {
      const t = tf.tensor(views.get(s.name)!, s.shape as number[], 'float32'); // copies
      const v = tf.variable(t, true);
      t.dispose(); // the variable keeps the data alive
      return [s.name, v];
    }));
    this.param = (name) => this.params.get(name)!;
  }

  /**
   * Attaches a low-rank adapter (model/lora.ts's `attachLora` builds the arguments): `layout` names
   * `<layer>.lora_A` [in, r] and `<layer>.lora_B` [r, out] for the adapted layers, `flat` holds them in that order.
   * Every forward then computes W·x + b + scale·(x·A)·B on those layers, unmerged; the base weights are untouched.
   * The adapter's tf.Variables (`adapterVariables`) are what an adapter-only training step differentiates.
   */
  attachAdapter(layout: ParamLayout, flat: Float32Array, scale: number): void {
    const views = unflatten(flat, layout);
    const vars = new Map(layout.specs.map((s) => {
      if (!/\.lora_[AB]$/.test(s.name) || s.shape.length !== 2) throw new RangeError(`adapter parameter ${s.name} [${s.shape}] is not a 2-D lora_A or lora_B`);
      const t = tf.tensor2d(views.get(s.name)!, s.shape as [number, number], 'float32');
      const v = tf.variable(t, true);
      t.dispose();
      return [s.name, v] as const;
    }));
    const byPrefix = new Map<string, LoraFactors>();
    for (const name of vars.keys()) {
      const prefix = name.slice(0, -'.lora_A'.length);
      const A = vars.get(`${prefix}.lora_A`), B = vars.get(`${prefix}.lora_B`);
      if (!A || !B) throw new RangeError(`adapter for ${prefix} needs both lora_A and lora_B`);
      if (!this.params.has(`${prefix}.weight`)) throw new RangeError(`adapter names ${prefix}, which is no linear layer of this model`);
      const W = this.params.get(`${prefix}.weight`)!.shape;
      if (A.shape[0] !== W[0] || B.shape[1] !== W[1] || A.shape[1] !== B.shape[0]) {
        throw new RangeError(`adapter for ${prefix}: A [${A.shape}] · B [${B.shape}] does not fit the weight [${W}]`);
      }
      byPrefix.set(prefix, { A: A as tf.Variable<tf.Rank.R2>, B: B as tf.Variable<tf.Rank.R2>, scale });
    }
    this.detachAdapter();
    this.#adapter = { layout, vars, byPrefix };
    this.param.lora = (prefix) => byPrefix.get(prefix);
  }

  /** Back to the plain base model (the adapter's variables are disposed). */
  detachAdapter(): void {
    delete this.param.lora;
    for (const v of this.#adapter?.vars.values() ?? []) v.dispose();
    this.#adapter = undefined;
  }

  /** The attached adapter's tf.Variables by name (`h.0.attn.c_attn.lora_A`, …); empty without one. */
  get adapterVariables(): ReadonlyMap<string, tf.Variable> {
    return this.#adapter?.vars ?? new Map();
  }

  /** A copy of the attached adapter as one flat buffer in its layout's order. */
  readAdapter(): Float32Array {
    const a = this.#adapter;
    if (!a) throw new RangeError('no adapter is attached');
    const flat = new Float32Array(a.layout.totalSize);
    for (const s of a.layout.specs) flat.set(a.vars.get(s.name)!.dataSync() as Float32Array, s.offset);
    return flat;
  }

  get variables(): tf.Variable[] {
    return [...this.params.values()];
  }

  /** ids: [B, T] int32 with T ≤ nCtx → logits [B, T, vocab]. */
  forward(ids: tf.Tensor2D): tf.Tensor3D {
    const c = this.config;
    const [B, T] = ids.shape;
    if (ids.dtype !== 'int32') throw new TypeError(`ids must be int32, got ${ids.dtype}`);
    if (T > c.nCtx) throw new RangeError(`sequence length ${T} exceeds nCtx ${c.nCtx}`);
    const p = this.param;
    return tf.tidy(() => {
      const mask = tf.tensor2d(this.#mask(T), [T, T]);
      // Token embedding as a one-hot matmul: wasm has no UnsortedSegmentSum, the gradient of gather. tf.oneHot with
      // a float32 dtype is wrong on wasm, so it is made int32 and cast.
      const oneHot = tf.oneHot(ids.reshape([B * T]) as tf.Tensor1D, c.vocabSize).cast('float32'); // [B*T, V]
      const tok = tf.matMul(oneHot as tf.Tensor2D, p('wte.weight') as tf.Tensor2D); // [B*T, d]
      const pos = p('wpe.weight').slice([0, 0], [T, c.nEmbd]); // [T, d]
      let x = tok.reshape([B, T, c.nEmbd]).add(pos).reshape([B * T, c.nEmbd]) as tf.Tensor2D; // [B*T, d]
      for (let l = 0; l < c.nLayer; l++) x = block(x, p, l, c, B, T, mask);
      x = layerNorm(x, p, 'ln_f');
      const logits = tf.matMul(x, p('wte.weight') as tf.Tensor2D, false, true); // [B*T, V], head tied to wte
      return logits.reshape([B, T, c.vocabSize]) as tf.Tensor3D;
    });
  }

  /**
   * Incremental forward for generation: logits [B, t, vocab] of `t` new positions (ids [B, t]) that follow what
   * `cache` holds (none: a fresh sequence). Returns the cache extended by the new positions; the caller owns it
   * and disposes it (`disposeCache`) when the sequence is done. Equal to forward() on the whole sequence.
   */
  forwardCached(ids: tf.Tensor2D, cache?: KVCache): { logits: tf.Tensor3D; cache: KVCache } {
    const c = this.config;
    const [B, t] = ids.shape;
    const past = cache?.length ?? 0;
    if (ids.dtype !== 'int32') throw new TypeError(`ids must be int32, got ${ids.dtype}`);
    if (past + t > c.nCtx) throw new RangeError(`${past} cached + ${t} new positions exceed nCtx ${c.nCtx}`);
    const p = this.param;
    const layers: Array<{ k: tf.Tensor3D; v: tf.Tensor3D }> = [];
    const logits = tf.tidy(() => {
      // Row i (absolute position past + i) may attend to positions ≤ past + i.
      const maskValues = new Float32Array(t * (past + t));
      for (let i = 0; i < t; i++) for (let j = past + i + 1; j < past + t; j++) maskValues[i * (past + t) + j] = MASKED;
      const mask = tf.tensor2d(maskValues, [t, past + t]);
      const oneHot = tf.oneHot(ids.reshape([B * t]) as tf.Tensor1D, c.vocabSize).cast('float32'); // [B*t, V]
      const tok = tf.matMul(oneHot as tf.Tensor2D, p('wte.weight') as tf.Tensor2D); // [B*t, d]
      const pos = p('wpe.weight').slice([past, 0], [t, c.nEmbd]); // [t, d]
      let x = tok.reshape([B, t, c.nEmbd]).add(pos).reshape([B * t, c.nEmbd]) as tf.Tensor2D;
      for (let l = 0; l < c.nLayer; l++) {
        const a = attentionCached(layerNorm(x, p, `h.${l}.ln_1`), p, `h.${l}.attn`, c, B, t, cache?.layers[l], mask);
        layers.push({ k: tf.keep(a.k), v: tf.keep(a.v) });
        x = x.add(a.y);
        x = x.add(mlp(layerNorm(x, p, `h.${l}.ln_2`), p, `h.${l}.mlp`));
      }
      x = layerNorm(x, p, 'ln_f');
      return tf.matMul(x, p('wte.weight') as tf.Tensor2D, false, true).reshape([B, t, c.vocabSize]) as tf.Tensor3D;
    });
    return { logits, cache: { length: past + t, layers } };
  }

  /** Mean cross-entropy of predicting targets [B, T] (int32) from ids [B, T], via a stable log-softmax. */
  loss(ids: tf.Tensor2D, targets: tf.Tensor2D): tf.Scalar {
    if (targets.dtype !== 'int32') throw new TypeError(`targets must be int32, got ${targets.dtype}`);
    if (targets.shape[0] !== ids.shape[0] || targets.shape[1] !== ids.shape[1]) {
      throw new RangeError(`targets shape [${targets.shape}] differs from ids shape [${ids.shape}]`);
    }
    const [B, T] = ids.shape;
    const V = this.config.vocabSize;
    return tf.tidy(() => {
      const logp = tf.logSoftmax(this.forward(ids).reshape([B * T, V]) as tf.Tensor2D); // [B*T, V]
      const picked = tf.oneHot(targets.reshape([B * T]) as tf.Tensor1D, V).cast('float32'); // [B*T, V]
      return logp.mul(picked).sum().div(-(B * T)) as tf.Scalar;
    });
  }

  /** Loss and gradients (keyed by GPT-2 name); the caller disposes the tensors. */
  lossAndGrads(ids: tf.Tensor2D, targets: tf.Tensor2D): { loss: tf.Scalar; grads: Map<string, tf.Tensor> } {
    const vars = this.variables;
    const { value, grads } = tf.variableGrads(() => this.loss(ids, targets), vars);
    const names = [...this.params.keys()];
    return { loss: value, grads: new Map(vars.map((v, i) => [names[i]!, grads[v.name]!])) };
  }

  /** A copy of every parameter as one flat buffer in layout order. */
  readParams(): Float32Array {
    const flat = new Float32Array(this.layout.totalSize);
    for (const s of this.layout.specs) flat.set(this.params.get(s.name)!.dataSync() as Float32Array, s.offset);
    return flat;
  }

  /** Uploads a flat buffer (layout order) into the variables. */
  writeParams(flat: Float32Array): void {
    const views = unflatten(flat, this.layout);
    for (const s of this.layout.specs) {
      const t = tf.tensor(views.get(s.name)!, s.shape as number[], 'float32');
      this.params.get(s.name)!.assign(t);
      t.dispose();
    }
  }

  dispose(): void {
    this.detachAdapter();
    for (const v of this.params.values()) v.dispose();
  }

  #mask(T: number): Float32Array {
    return causalMask(T, this.#masks);
  }

}
