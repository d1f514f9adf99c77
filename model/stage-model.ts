/**
 * One agent's part of a GPT split over pipeline stages and tensor-parallel shards: the blocks of its stage (plus
 * the embeddings on the first stage, the final LayerNorm, tied head and loss on the last), with each block's
 * attention and MLP cut Megatron-style over the tensor-parallel group (model/shard-layout.ts says which slices).
 *
 * Tensor parallelism (Shoeybi et al., "Megatron-LM", §3): with W_qkv split by columns (heads) and W_proj by rows,
 *   y = Σ_r  attn_r(x) · W_proj[r]  + b_proj
 * so each rank computes its heads and a partial product, and one all-reduce (`reduceFromTp`, Megatron's g) sums
 * the partials; its backward is the identity. The input side (`copyToTp`, Megatron's f) is the identity forward
 * and an all-reduce backward, because every rank's heads contribute to ∂L/∂x. The MLP is the same with c_fc by
 * columns and c_proj by rows: two all-reduces forward and two backward per block. Row-parallel biases are added
 * once, after the all-reduce; LayerNorms and embeddings are replicated, so their gradients come out identical on
 * every rank (their inputs and output gradients are the all-reduced, identical values).
 *
 * The all-reduce is synchronous (`TensorParallel.allReduce` blocks until the group's sum is in the buffer): the
 * compute worker waits on a SharedArrayBuffer while its main thread runs the ring (node-agent/trainer/). tfjs runs
 * gradient functions synchronously, so this is how a collective fits inside its backward pass.
 *
 * Pipeline parallelism: `forward` runs the stage without a tape and returns its output activations (sent to the
 * next stage); `backward` runs it again under the tape and back-propagates the gradient that came back from the
 * next stage (or, on the last stage, the loss). tfjs cannot keep a tape across calls, so the forward is recomputed
 * (Megatron's full activation recomputation): the stage keeps only its input per micro-batch in flight. Within
 * `backward` the recomputation is block by block (activation checkpointing, see there), so memory holds one
 * block's tape at a time whatever the depth.
 */
import * as tf from '@tensorflow/tfjs';
import { causalMask, gelu, layerNorm, linear, type GPTConfig, type LoraFactors, type Param } from './gpt.ts';
import { lmCoefficients, lmHead } from './lm-head.ts';
import { loraDropout } from './lora.ts';
import { withValues } from './tensor-values.ts';
import { objectiveLoss, type Objective } from './objectives.ts';
import type { ShardLayout } from './shard-layout.ts';

/** The tensor-parallel group, as the model sees it. */
export interface TensorParallel {
  readonly size: number;
  /** In place and synchronous: `x` becomes the element-wise sum over the group (bit-identical on every rank). */
  allReduce(x: Float32Array): void;
}

/** A stage's input: token ids [B, T] on the first stage, the previous stage's activations [B·T, d] on others. */
export type StageInput = { readonly ids: Int32Array } | { readonly acts: Float32Array };

/**
 * What flows back into `backward`: next-token targets (and what the stage optimises, model/objectives.ts; default
 * the causal-LM loss) on the last stage, ∂L/∂(our output) on the others.
 */
export type StageUpstream = { readonly targets: Int32Array; readonly scale: number; readonly objective?: Objective } | { readonly gradOut: Float32Array };

/**
 * LoRA (model/lora.ts): the shard's adapter factors, trained while every base weight stays frozen. Its layout is
 * the shard's cut of the adapter (loraShardLayout); `flat` holds its values in that order.
 */
export interface StageAdapter {
  readonly layout: ShardLayout;
  readonly flat: Float32Array;
  readonly scale: number; // alpha / rank
  readonly dropout: number; // on each adapter's input while training
}

export class StageModel {
  readonly config: GPTConfig;
  readonly layout: ShardLayout;
  /** What is trained: the shard's parameters, or with an adapter only its factors (the gradient buffer's layout). */
  readonly trainable: ShardLayout;
  readonly hasEmbed: boolean;
  readonly hasHead: boolean;
  readonly #vars: Map<string, tf.Variable>;
  readonly #adapterVars: Map<string, tf.Variable>;
  readonly #adapter: { scale: number; dropout: number; byPrefix: Map<string, { A: tf.Variable; B: tf.Variable; seed: number }> } | null;
  #dropoutSeed: number | undefined; // set while a training pass runs: adapter dropout is on
  readonly #tp: TensorParallel | null;
  readonly #copyToTp: (x: tf.Tensor) => tf.Tensor;
  readonly #reduceFromTp: (x: tf.Tensor) => tf.Tensor;
  #masks = new Map<number, Float32Array>();

  /**
   * `flat` is the shard's parameters in `layout` order. With `adapter`, they are the frozen base and only the
   * adapter's factors are variables that train (backward's gradients and writeParams are in the adapter's layout).
   */
  constructor(config: GPTConfig, layout: ShardLayout, flat: Float32Array, tp?: TensorParallel, adapter?: StageAdapter) {
    if (flat.length !== layout.totalSize) throw new RangeError(`shard buffer has ${flat.length} elements, its layout needs ${layout.totalSize}`);
    if (adapter && adapter.flat.length !== adapter.layout.totalSize) throw new RangeError(`adapter buffer has ${adapter.flat.length} elements, its layout needs ${adapter.layout.totalSize}`);
    const shard = layout.shard;
    if ((tp?.size ?? 1) !== shard.tpSize) throw new RangeError(`the shard is one of ${shard.tpSize} tensor-parallel ranks, the group has ${tp?.size ?? 1}`);
    this.config = config;
    this.layout = layout;
    this.hasEmbed = shard.stage === 0;
    this.hasHead = shard.stage === shard.stages - 1;
    this.#tp = shard.tpSize > 1 ? tp! : null;
    this.trainable = adapter?.layout ?? layout;
    const variables = (l: ShardLayout, values: Float32Array, trainable: boolean) => new Map(l.specs.map((s) => {
      const t = tf.tensor(values.subarray(s.offset, s.offset + s.size), s.shape as number[], 'float32');
      const v = tf.variable(t, trainable);
      t.dispose();
      return [s.name, v];
    }));
    this.#vars = variables(layout, flat, !adapter);
    this.#adapterVars = adapter ? variables(adapter.layout, adapter.flat, true) : new Map();
    this.#adapter = null;
    if (adapter) {
      const byPrefix = new Map<string, { A: tf.Variable; B: tf.Variable; seed: number }>();
      for (const [name, A] of this.#adapterVars) {
        if (!name.endsWith('.lora_A')) continue;
        const prefix = name.slice(0, -'.lora_A'.length);
        const B = this.#adapterVars.get(`${prefix}.lora_B`);
        if (!B || !this.#vars.has(`${prefix}.weight`)) throw new RangeError(`adapter ${prefix} needs lora_A, lora_B and a base ${prefix}.weight in this shard`);
        byPrefix.set(prefix, { A, B, seed: byPrefix.size + 1 });
      }
      this.#adapter = { scale: adapter.scale, dropout: adapter.dropout, byPrefix };
      this.#param = Object.assign((name: string) => this.#lookup(name), { lora: (prefix: string) => this.#lora(prefix) });
    }
    const sum = (x: tf.Tensor): tf.Tensor => {
      const data = Float32Array.from(x.dataSync() as Float32Array);
      this.#tp!.allReduce(data);
      return tf.tensor(data, x.shape, 'float32');
    };
    // Megatron's f and g (see the top of this file); the identity when there is no tensor parallelism.
    this.#copyToTp = this.#tp ? tf.customGrad((x) => ({ value: (x as tf.Tensor).clone(), gradFunc: (dy) => sum(dy) })) as (x: tf.Tensor) => tf.Tensor : (x) => x;
    this.#reduceFromTp = this.#tp ? tf.customGrad((x) => ({ value: sum(x as tf.Tensor), gradFunc: (dy) => dy.clone() })) as (x: tf.Tensor) => tf.Tensor : (x) => x;
  }

  /**
   * Runs the stage without gradients; returns its output activations [B·T, d] (not on the last stage). A training
   * pass gives `dropoutSeed` (adapter dropout on), and its backward the same seed, so the recomputation matches.
   */
  forward(input: StageInput, B: number, T: number, dropoutSeed?: number): Float32Array {
    if (this.hasHead) throw new RangeError('the last stage has no activations to send; call backward (or loss)');
    return this.#training(dropoutSeed, () => this.#withMask(T, (mask) => {
      const out = this.#blocks(tf.tidy(() => this.#input(input, B, T)), B, T, mask);
      try {
        return Float32Array.from(out.dataSync() as Float32Array);
      } finally {
        out.dispose();
      }
    }));
  }

  /** The micro-batch's loss (last stage only, no gradients): held-out evaluation. */
  loss(input: StageInput, B: number, T: number, targets: Int32Array, objective?: Objective): number {
    if (!this.hasHead) throw new RangeError('only the last stage computes the loss');
    return this.#withMask(T, (mask) => {
      const x = this.#blocks(tf.tidy(() => this.#input(input, B, T)), B, T, mask);
      try {
        if ((objective?.kind ?? 'lm') === 'lm') {
          const h = tf.tidy(() => layerNorm(x, this.#param, 'ln_f'));
          try {
            return lmHead(h, this.#param('wte.weight') as tf.Tensor2D, targets, lmCoefficients(B, T, objective?.weights)).loss;
          } finally {
            h.dispose();
          }
        }
        return tf.tidy(() => this.#loss(layerNorm(x, this.#param, 'ln_f'), targets, B, T, objective).dataSync()[0]!);
      } finally {
        x.dispose();
      }
    });
  }

  /**
   * Back-propagates one micro-batch: adds ∂/∂params into `grads` (the shard's flat buffer, layout order) and
   * returns ∂L/∂input (not on the first stage) and, on the last stage, the micro-batch's loss (before `scale`, which
   * multiplies only its gradient: 1/m for a mean over m micro-batches).
   *
   * Activation checkpointing, block by block (Chen et al. 2016; Megatron's full recomputation per layer): a forward
   * pass without a tape keeps only each block's input; then, from the last segment back to the first, each segment
   * (the head with the loss, every block, the embeddings) is recomputed under its own tape and back-propagated on its
   * own. A tfjs tape keeps every intermediate tensor and every intermediate gradient until it ends, so one tape over
   * the whole stage held ~16 GB for GPT-2-small at 2 × 256 tokens, past wasm32's 4 GB; per segment it holds one
   * block's. The price is one more forward of each block (the stage's forward pass is run twice).
   */
  backward(input: StageInput, B: number, T: number, upstream: StageUpstream, grads: Float32Array, dropoutSeed?: number): { gradIn?: Float32Array; loss?: number } {
    if (grads.length !== this.trainable.totalSize) throw new RangeError(`gradient buffer has ${grads.length} elements, the shard trains ${this.trainable.totalSize}`);
    if ('targets' in upstream && !this.hasHead) throw new RangeError('targets go to the last stage; other stages get gradOut');
    if (!('targets' in upstream)) {
      if (this.hasHead) throw new RangeError('the last stage back-propagates its loss: pass targets');
      if (upstream.gradOut.length !== B * T * this.config.nEmbd) throw new RangeError(`gradOut has ${upstream.gradOut.length} elements, expected ${B * T * this.config.nEmbd}`);
    }
    const trained = this.#adapter ? this.#adapterVars : this.#vars;
    const { firstLayer, endLayer } = this.layout.shard;
    return this.#training(dropoutSeed, () => this.#withMask(T, (mask) => {
      const kept: tf.Tensor[] = [];
      try {
        // 1. the stage's input (the embeddings' output on the first stage) and each block's input, without a tape
        const x0 = tf.tidy(() => this.#input(input, B, T));
        kept.push(x0);
        const inputs: tf.Tensor2D[] = [x0];
        let x = x0;
        for (let l = firstLayer; l < endLayer; l++) {
          x = tf.tidy(() => this.#block(x, l, B, T, mask));
          kept.push(x);
          inputs.push(x);
        }
        // 2. the head and the loss (last stage), or the gradient the next stage sent
        let loss: number | undefined;
        let dy: tf.Tensor2D;
        if ('targets' in upstream && (upstream.objective?.kind ?? 'lm') === 'lm') {
          const r = this.#lmHeadBackward(trained, x, grads, upstream.targets, upstream.scale, B, T, upstream.objective?.weights);
          loss = r.loss;
          dy = r.dx;
        } else if ('targets' in upstream) {
          const { targets, objective } = upstream;
          const r = this.#segment(trained, (name) => name === 'wte.weight' || name.startsWith('ln_f.'), x, grads, tf.scalar(upstream.scale),
            (leaf) => this.#loss(layerNorm(leaf, this.#param, 'ln_f'), targets, B, T, objective));
          loss = r.value;
          dy = r.dx!;
        } else {
          dy = tf.tensor2d(upstream.gradOut, [B * T, this.config.nEmbd]);
        }
        kept.push(dy);
        // 3. the blocks, last to first
        for (let l = endLayer - 1; l >= firstLayer; l--) {
          const prefix = `h.${l}.`;
          const r = this.#segment(trained, (name) => name.startsWith(prefix), inputs[l - firstLayer]!, grads, dy, (leaf) => this.#block(leaf, l, B, T, mask));
          dy = r.dx!;
          kept.push(dy);
        }
        // 4. the embeddings (first stage), or ∂L/∂input for the previous stage
        if (this.hasEmbed) {
          this.#embeddingGrads((input as { ids: Int32Array }).ids, B, T, dy.dataSync() as Float32Array, grads);
          return loss !== undefined ? { loss } : {};
        }
        return { gradIn: Float32Array.from(dy.dataSync() as Float32Array), ...(loss !== undefined ? { loss } : {}) };
      } finally {
        for (const t of kept) t.dispose();
      }
    }));
  }

  /**
   * One segment's backward under its own tape: ∂/∂(the trained variables `owns` picks) are added into `grads`, and
   * ∂/∂leaf is returned (kept: the caller disposes it). `dy` is the upstream gradient (a scalar scale for a loss).
   */
  #segment(
    trained: Map<string, tf.Variable>, owns: (name: string) => boolean, leaf: tf.Tensor2D | null, grads: Float32Array, dy: tf.Tensor,
    f: (leaf: tf.Tensor2D) => tf.Tensor,
  ): { dx: tf.Tensor2D | null; value: number | undefined } {
    const names = [...trained.keys()].filter(owns);
    const vars = names.map((n) => trained.get(n)!);
    if (!leaf && vars.length === 0) return { dx: null, value: undefined }; // nothing trains here (a LoRA stage's embeddings)
    let value: number | undefined;
    const dx = tf.tidy(() => {
      const xs: tf.Tensor[] = leaf ? [leaf, ...vars] : vars;
      const r = tf.engine().gradients(() => f(leaf as tf.Tensor2D), xs, dy, true);
      const paramGrads = leaf ? r.grads.slice(1) : r.grads;
      for (let i = 0; i < names.length; i++) {
        const g = paramGrads[i];
        if (!g) continue; // not on this segment's path (cannot happen for the segments above; harmless if it does)
        const spec = this.trainable.byName.get(names[i]!)!;
        withValues(g, (v) => {
          for (let j = 0, o = spec.offset; j < v.length; j++) grads[o + j] = grads[o + j]! + v[j]!;
        });
      }
      if (r.value.rank === 0) value = r.value.dataSync()[0]!;
      return leaf ? (r.grads[0] as tf.Tensor2D) : tf.scalar(0); // what tidy returns survives it
    });
    if (leaf) return { dx: dx as tf.Tensor2D, value };
    dx.dispose();
    return { dx: null, value };
  }

  /**
   * The last stage's head for the causal-LM objective (model/lm-head.ts: a vocabulary chunk at a time, never the
   * whole logits): the final LayerNorm without a tape, the tied head by hand (its weight's gradient straight into
   * `grads` when wte trains here), then the LayerNorm's own segment with the head's ∂L/∂h as upstream.
   */
  #lmHeadBackward(
    trained: Map<string, tf.Variable>, x: tf.Tensor2D, grads: Float32Array, targets: Int32Array, scale: number, B: number, T: number,
    weights?: Float32Array,
  ): { loss: number; dx: tf.Tensor2D } {
    const d = this.config.nEmbd;
    const wte = trained.has('wte.weight') ? this.trainable.byName.get('wte.weight')! : undefined;
    const h = tf.tidy(() => layerNorm(x, this.#param, 'ln_f'));
    let r: ReturnType<typeof lmHead>;
    try {
      r = lmHead(h, this.#param('wte.weight') as tf.Tensor2D, targets, lmCoefficients(B, T, weights), {
        upstream: scale,
        ...(wte ? { addWeightGrad: (row0: number, v: Float32Array) => {
          for (let j = 0, o = wte.offset + row0 * d; j < v.length; j++) grads[o + j] = grads[o + j]! + v[j]!;
        } } : {}),
      });
    } finally {
      h.dispose();
    }
    const dh = tf.tensor2d(r.dh!, [B * T, d]);
    try {
      const s = this.#segment(trained, (name) => name.startsWith('ln_f.'), x, grads, dh, (leaf) => layerNorm(leaf, this.#param, 'ln_f'));
      return { loss: r.loss, dx: s.dx! };
    } finally {
      dh.dispose();
    }
  }

  /**
   * The embeddings' backward, by hand: the gradient of a row lookup is a scatter-add of the output's gradient into
   * the rows looked up (what wasm lacks as a kernel, UnsortedSegmentSum), and wpe's is the sum over the batch.
   * O(B·T·d), where a one-hot matmul costs O(B·T·V·d) each way (≈40 GFLOP for GPT-2 at 512 tokens).
   */
  #embeddingGrads(ids: Int32Array, B: number, T: number, dy: Float32Array, grads: Float32Array): void {
    const d = this.config.nEmbd;
    const wte = this.trainable.byName.get('wte.weight'), wpe = this.trainable.byName.get('wpe.weight');
    if (!wte && !wpe) return; // frozen (LoRA)
    for (let i = 0; i < B * T; i++) {
      const src = i * d;
      if (wte) {
        const o = wte.offset + ids[i]! * d;
        for (let j = 0; j < d; j++) grads[o + j] = grads[o + j]! + dy[src + j]!;
      }
      if (wpe) {
        const o = wpe.offset + (i % T) * d;
        for (let j = 0; j < d; j++) grads[o + j] = grads[o + j]! + dy[src + j]!;
      }
    }
  }

  #withMask<T>(T: number, run: (mask: tf.Tensor2D) => T): T {
    const mask = tf.tensor2d(causalMask(T, this.#masks), [T, T]);
    try {
      return run(mask);
    } finally {
      mask.dispose();
    }
  }

  /** Blocks [firstLayer, endLayer) and, on the last stage, nothing more; each block in its own tidy (no tape). */
  #blocks(x: tf.Tensor2D, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
    const { firstLayer, endLayer } = this.layout.shard;
    for (let l = firstLayer; l < endLayer; l++) {
      const prev = x;
      x = tf.tidy(() => this.#block(prev, l, B, T, mask));
      prev.dispose();
    }
    return x;
  }

  /**
   * Uploads the trained values (the shard's flat buffer, or the adapter's, in `trainable` order) into the variables.
   * The shard's own variables are replaced, each freed before its new value is made: `assign` would hold the old
   * and the new value at once, and on wasm the heap (which never shrinks) grew by the largest weight for it
   * (GPT-2-small's wte: 154 MB).
   */
  writeParams(flat: Float32Array): void {
    if (!this.#adapter) {
      for (const s of this.trainable.specs) {
        const old = this.#vars.get(s.name)!;
        const { trainable, name } = old;
        old.dispose();
        const t = tf.tensor(flat.subarray(s.offset, s.offset + s.size), s.shape as number[], 'float32');
        this.#vars.set(s.name, tf.variable(t, trainable, name));
        t.dispose();
      }
      return;
    }
    const vars = this.#adapterVars;
    for (const s of this.trainable.specs) {
      const t = tf.tensor(flat.subarray(s.offset, s.offset + s.size), s.shape as number[], 'float32');
      vars.get(s.name)!.assign(t);
      t.dispose();
    }
  }

  dispose(): void {
    for (const v of [...this.#vars.values(), ...this.#adapterVars.values()]) v.dispose();
  }

  #training<T>(dropoutSeed: number | undefined, run: () => T): T {
    this.#dropoutSeed = dropoutSeed;
    try {
      return run();
    } finally {
      this.#dropoutSeed = undefined;
    }
  }

  /**
   * The adapter on layer `prefix`, if any. Dropout masks are seeded by the pass and the layer, so a pipeline
   * stage's recomputed forward sees the masks its first forward saw, and every tensor-parallel rank the same mask
   * on its replicated input.
   */
  #lora(prefix: string): LoraFactors | undefined {
    const a = this.#adapter!, f = a.byPrefix.get(prefix);
    if (!f) return undefined;
    const seed = this.#dropoutSeed;
    const input = a.dropout > 0 && seed !== undefined ? (x: tf.Tensor2D) => loraDropout(x, a.dropout, (seed * 1009 + f.seed) % 2 ** 31) : undefined;
    return { A: f.A as tf.Tensor2D, B: f.B as tf.Tensor2D, scale: a.scale, ...(input ? { input } : {}) };
  }

  // ------------------------------------------------------------------------------------------------ the stage

  #input(input: StageInput, B: number, T: number): tf.Tensor2D {
    const c = this.config;
    if (T > c.nCtx) throw new RangeError(`sequence length ${T} exceeds nCtx ${c.nCtx}`);
    if (this.hasEmbed) {
      if (!('ids' in input) || input.ids.length !== B * T) throw new RangeError(`the first stage takes ${B}×${T} token ids`);
      const p = this.#param;
      // A gather: never under a tape here (backward differentiates the embeddings by hand, #embeddingGrads).
      for (let i = 0; i < input.ids.length; i++) if (!(input.ids[i]! >= 0 && input.ids[i]! < c.vocabSize)) throw new RangeError(`token ${input.ids[i]} is outside the vocabulary [0, ${c.vocabSize})`);
      const tok = tf.gather(p('wte.weight'), tf.tensor1d(input.ids, 'int32')) as tf.Tensor2D; // [B*T, d]
      const pos = p('wpe.weight').slice([0, 0], [T, c.nEmbd]); // [T, d]
      return tok.reshape([B, T, c.nEmbd]).add(pos).reshape([B * T, c.nEmbd]) as tf.Tensor2D;
    }
    if (!('acts' in input) || input.acts.length !== B * T * c.nEmbd) throw new RangeError(`stage ${this.layout.shard.stage} takes ${B * T}×${c.nEmbd} activations`);
    return tf.tensor2d(input.acts, [B * T, c.nEmbd]);
  }

  /** Block `l`: x + attn(ln_1(x)), then + mlp(ln_2(·)). */
  #block(x: tf.Tensor2D, l: number, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
    x = x.add(this.#attention(layerNorm(x, this.#param, `h.${l}.ln_1`), `h.${l}.attn`, B, T, mask));
    return x.add(this.#mlp(layerNorm(x, this.#param, `h.${l}.ln_2`), `h.${l}.mlp`));
  }

  /** The objective (default: mean cross-entropy) through the head tied to wte. */
  #loss(x: tf.Tensor2D, targets: Int32Array, B: number, T: number, objective?: Objective): tf.Scalar {
    const logits = tf.matMul(x, this.#param('wte.weight') as tf.Tensor2D, false, true) as tf.Tensor2D; // [B*T, V]
    return objectiveLoss(logits, targets, B, T, objective);
  }

  /** Causal self-attention over this rank's heads; c_attn by columns, c_proj by rows (see the top of the file). */
  #attention(x: tf.Tensor2D, prefix: string, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
    const c = this.config, t = this.layout.shard.tpSize;
    const nh = c.nHead / t, hs = c.nEmbd / c.nHead, width = c.nEmbd / t; // local heads, head size, local width
    const qkv = linear(this.#copyToTp(x) as tf.Tensor2D, this.#param, `${prefix}.c_attn`); // [B*T, 3·width]
    const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    const heads = (z: tf.Tensor2D) => z.reshape([B, T, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, T, hs]) as tf.Tensor3D;
    const att = tf.matMul(heads(q), heads(k), false, true).mul(1 / Math.sqrt(hs)).add(mask); // [B*nh, T, T]
    const y = tf.matMul(tf.softmax(att), heads(v)); // [B*nh, T, hs]
    const merged = y.reshape([B, nh, T, hs]).transpose([0, 2, 1, 3]).reshape([B * T, width]) as tf.Tensor2D;
    return this.#rowParallel(merged, `${prefix}.c_proj`);
  }

  #mlp(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    const h = gelu(linear(this.#copyToTp(x) as tf.Tensor2D, this.#param, `${prefix}.c_fc`)); // [B*T, 4d/t]
    return this.#rowParallel(h, `${prefix}.c_proj`);
  }

  /**
   * x·W_rows summed over the group, then the (replicated) bias once. An adapter's rows-cut A_k adds
   * scale·(x_k·A_k)·B to this rank's partial before the same sum (model/lora.ts LORA_TP_RULES).
   */
  #rowParallel(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    let partial = tf.matMul(x, this.#param(`${prefix}.weight`) as tf.Tensor2D);
    const lora = this.#param.lora?.(prefix);
    if (lora) partial = partial.add(tf.matMul(tf.matMul(lora.input ? lora.input(x) : x, lora.A), lora.B).mul(lora.scale));
    return (this.#reduceFromTp(partial) as tf.Tensor2D).add(this.#param(`${prefix}.bias`));
  }

  #lookup(name: string): tf.Tensor {
    const v = this.#vars.get(name);
    if (!v) throw new RangeError(`shard of stage ${this.layout.shard.stage}, tp rank ${this.layout.shard.tpRank} has no ${name}`);
    return v;
  }

  #param: Param = (name) => this.#lookup(name);
}
