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
 * (Megatron's full activation recomputation): the stage keeps only its input per micro-batch in flight, and pays
 * one extra forward per micro-batch. The last stage never needs a separate forward (nothing goes downstream), so
 * an unsplit model (one stage) pays nothing extra.
 */
import * as tf from '@tensorflow/tfjs';
import { causalMask, gelu, layerNorm, linear, type GPTConfig, type LoraFactors, type Param } from './gpt.ts';
import { loraDropout } from './lora.ts';
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
    return this.#training(dropoutSeed, () => tf.tidy(() => Float32Array.from(this.#body(this.#input(input, B, T), B, T).dataSync() as Float32Array)));
  }

  /** The micro-batch's loss (last stage only, no gradients): held-out evaluation. */
  loss(input: StageInput, B: number, T: number, targets: Int32Array, objective?: Objective): number {
    if (!this.hasHead) throw new RangeError('only the last stage computes the loss');
    return tf.tidy(() => this.#loss(this.#body(this.#input(input, B, T), B, T), targets, B, T, objective).dataSync()[0]!);
  }

  /**
   * Recomputes the stage under the tape and back-propagates: adds ∂/∂params into `grads` (the shard's flat buffer,
   * layout order) and returns ∂L/∂input (not on the first stage) and, on the last stage, the micro-batch's loss
   * (before `scale`, which multiplies only its gradient: 1/m for a mean over m micro-batches).
   */
  backward(input: StageInput, B: number, T: number, upstream: StageUpstream, grads: Float32Array, dropoutSeed?: number): { gradIn?: Float32Array; loss?: number } {
    if (grads.length !== this.trainable.totalSize) throw new RangeError(`gradient buffer has ${grads.length} elements, the shard trains ${this.trainable.totalSize}`);
    const trained = this.#adapter ? this.#adapterVars : this.#vars;
    const names = [...trained.keys()];
    const vars = [...trained.values()];
    return this.#training(dropoutSeed, () => tf.tidy(() => {
      // The first stage's embedding must run under the tape (wte and wpe train); other stages' input is a leaf.
      const wantInput = !this.hasEmbed;
      const leaf = wantInput ? this.#input(input, B, T) : null;
      const stageInput = () => leaf ?? this.#input(input, B, T);
      const xs: tf.Tensor[] = leaf ? [leaf, ...vars] : vars;
      let result: { value: tf.Tensor; grads: tf.Tensor[] };
      if ('targets' in upstream) {
        if (!this.hasHead) throw new RangeError('targets go to the last stage; other stages get gradOut');
        const { targets, objective } = upstream;
        result = tf.engine().gradients(() => this.#loss(this.#body(stageInput(), B, T), targets, B, T, objective), xs, tf.scalar(upstream.scale));
      } else {
        if (this.hasHead) throw new RangeError('the last stage back-propagates its loss: pass targets');
        if (upstream.gradOut.length !== B * T * this.config.nEmbd) throw new RangeError(`gradOut has ${upstream.gradOut.length} elements, expected ${B * T * this.config.nEmbd}`);
        result = tf.engine().gradients(() => this.#body(stageInput(), B, T), xs, tf.tensor2d(upstream.gradOut, [B * T, this.config.nEmbd]));
      }
      const paramGrads = wantInput ? result.grads.slice(1) : result.grads;
      for (let i = 0; i < names.length; i++) {
        const spec = this.trainable.byName.get(names[i]!)!;
        const g = paramGrads[i]!.dataSync() as Float32Array;
        for (let j = 0, o = spec.offset; j < g.length; j++) grads[o + j] = grads[o + j]! + g[j]!;
      }
      return {
        ...(wantInput ? { gradIn: Float32Array.from(result.grads[0]!.dataSync() as Float32Array) } : {}),
        ...(this.hasHead ? { loss: result.value.dataSync()[0]! } : {}),
      };
    }));
  }

  /** Uploads the trained values (the shard's flat buffer, or the adapter's, in `trainable` order) into the variables. */
  writeParams(flat: Float32Array): void {
    const vars = this.#adapter ? this.#adapterVars : this.#vars;
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
      // One-hot matmul rather than gather: wasm lacks gather's gradient kernel (as gpt.ts).
      const oneHot = tf.oneHot(tf.tensor1d(input.ids, 'int32'), c.vocabSize).cast('float32') as tf.Tensor2D; // [B*T, V]
      const tok = tf.matMul(oneHot, p('wte.weight') as tf.Tensor2D); // [B*T, d]
      const pos = p('wpe.weight').slice([0, 0], [T, c.nEmbd]); // [T, d]
      return tok.reshape([B, T, c.nEmbd]).add(pos).reshape([B * T, c.nEmbd]) as tf.Tensor2D;
    }
    if (!('acts' in input) || input.acts.length !== B * T * c.nEmbd) throw new RangeError(`stage ${this.layout.shard.stage} takes ${B * T}×${c.nEmbd} activations`);
    return tf.tensor2d(input.acts, [B * T, c.nEmbd]);
  }

  /** The stage's blocks, and on the last stage the final LayerNorm. */
  #body(x: tf.Tensor2D, B: number, T: number): tf.Tensor2D {
    const { firstLayer, endLayer } = this.layout.shard;
    const mask = tf.tensor2d(causalMask(T, this.#masks), [T, T]);
    for (let l = firstLayer; l < endLayer; l++) {
      x = x.add(this.#attention(layerNorm(x, this.#param, `h.${l}.ln_1`), `h.${l}.attn`, B, T, mask));
      x = x.add(this.#mlp(layerNorm(x, this.#param, `h.${l}.ln_2`), `h.${l}.mlp`));
    }
    return this.hasHead ? layerNorm(x, this.#param, 'ln_f') : x;
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
