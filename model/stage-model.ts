/**
 * One agent's part of a GPT split over pipeline stages and tensor-parallel shards: the blocks of its stage (plus
 * the embeddings on the first stage, the final LayerNorm, tied head and loss on the last), with each block's
 * attention and MLP cut Megatron-style over the tensor-parallel group (model/shard-layout.ts says which slices).
 *
 * Tensor parallelism (Shoeybi et al., "Megatron-LM", §3): with W_qkv split by columns (heads) and W_proj by rows,
 *   y = Σ_r  attn_r(x) · W_proj[r]  + b_proj
 * so each rank computes its heads and a partial product, and one all-reduce (Megatron's g) sums the partials; its
 * backward is the identity. The input side (Megatron's f) is the identity forward and an all-reduce backward,
 * because every rank's heads contribute to ∂L/∂x. The MLP is the same with c_fc by columns and c_proj by rows: two
 * all-reduces forward and two backward per block. Row-parallel biases are added once, after the all-reduce;
 * LayerNorms and embeddings are replicated, so their gradients come out identical on every rank (their inputs and
 * output gradients are the all-reduced, identical values).
 *
 * The all-reduces run between tapes, never inside one: a tensor-parallel block is cut at them into segments (the
 * LayerNorm, the rank's partial product, the bias and residual), each back-propagated under its own tape, and the
 * sums are taken in between (#tpBlockBackward). A collective needs the values on the CPU, and tfjs runs gradient
 * functions synchronously, which a GPU backend cannot read in (WebGPU in Node has no dataSync at all). The forward
 * pass keeps each block's midpoint (after attention's sum) as well as its input, so the backward pass runs no
 * forward all-reduce again.
 *
 * Reading: every method that reads tensors is async (model/tensor-values.ts): on wasm it reads the heap in place,
 * synchronously; on WebGPU it awaits the device. Gradients, the activations sent between stages and the sums of
 * tensor parallelism are all that come back to the CPU.
 *
 * Pipeline parallelism: `forward` runs the stage without a tape and returns its output activations (sent to the
 * next stage); `backward` runs it again under the tape and back-propagates the gradient that came back from the
 * next stage (or, on the last stage, the loss). tfjs cannot keep a tape across calls, so the forward is recomputed
 * (Megatron's full activation recomputation): the stage keeps only its input per micro-batch in flight. Within
 * `backward` the recomputation is block by block (activation checkpointing, see there), so memory holds one
 * block's tape at a time whatever the depth.
 *
 * Long: one class whose methods share one stage's state (its variables, the inputs of micro-batches in flight, the
 * gradient sums kept on the device); the tensor-parallel segments read best beside the forward pass they mirror.
 */
import * as tf from '@tensorflow/tfjs';
import { causalMask, gelu, layerNorm, linear, type LoraFactors, type Param } from './gpt.ts';
import { type GPTConfig } from './params.ts';
import { lmCoefficients, lmHead } from './lm-head.ts';
import { headChunkRows } from './lm-head-chunks.ts';
import { loraDropout } from './lora.ts';
import { copyOf, readChecked, readsSync, takeValues, valuesOf } from './tensor-values.ts';
import { objectiveLoss, type Objective } from './objectives.ts';
import type { ShardLayout } from './shard-layout.ts';

/** The tensor-parallel group, as the model sees it. */
export interface TensorParallel {
  readonly size: number;
  /** In place: `x` becomes the element-wise sum over the group (bit-identical on every rank). */
  allReduce(x: Float32Array): void | Promise<void>;
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
  #masks = new Map<number, Float32Array>();
  /**
   * On a GPU backend the parameters' gradients are summed on the device (by trained tensor; the tied head's in
   * vocabulary chunks, by first row) and read into the flat buffer once, by flushGrads: one read a step instead of
   * one per tensor per segment per micro-batch, each of which drained the device's queue. Null on wasm, where a
   * gradient is read in place from the heap as soon as it exists.
   */
  readonly #deviceGrads: Map<string, { t: tf.Tensor; offset: number }> | null = readsSync() ? null : new Map();

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
  }

  /** The sum of `x` over the tensor-parallel group, as a new tensor; `x` is disposed. */
  async #allReduce(x: tf.Tensor): Promise<tf.Tensor2D> {
    const data = await takeValues(x);
    await this.#tp!.allReduce(data);
    return tf.tensor2d(data, x.shape as [number, number], 'float32');
  }

  /**
   * Runs the stage without gradients; returns its output activations [B·T, d] (not on the last stage). A training
   * pass gives `dropoutSeed` (adapter dropout on), and its backward the same seed, so the recomputation matches.
   */
  async forward(input: StageInput, B: number, T: number, dropoutSeed?: number): Promise<Float32Array> {
    if (this.hasHead) throw new RangeError('the last stage has no activations to send; call backward (or loss)');
    return this.#training(dropoutSeed, () => this.#withMask(T, async (mask) => {
      return takeValues(await this.#blocks(tf.tidy(() => this.#input(input, B, T)), B, T, mask));
    }));
  }

  /** The micro-batch's loss (last stage only, no gradients): held-out evaluation. */
  async loss(input: StageInput, B: number, T: number, targets: Int32Array, objective?: Objective): Promise<number> {
    if (!this.hasHead) throw new RangeError('only the last stage computes the loss');
    return this.#withMask(T, async (mask) => {
      const x = await this.#blocks(tf.tidy(() => this.#input(input, B, T)), B, T, mask);
      try {
        if ((objective?.kind ?? 'lm') === 'lm') {
          const h = tf.tidy(() => layerNorm(x, this.#param, 'ln_f'));
          try {
            return (await lmHead(h, this.#param('wte.weight') as tf.Tensor2D, targets, lmCoefficients(B, T, objective?.weights))).loss;
          } finally {
            h.dispose();
          }
        }
        const value = tf.tidy(() => this.#loss(layerNorm(x, this.#param, 'ln_f'), targets, B, T, objective));
        try {
          return (await readChecked(value))[0]!;
        } finally {
          value.dispose();
        }
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
  async backward(
    input: StageInput, B: number, T: number, upstream: StageUpstream, grads: Float32Array, dropoutSeed?: number, options: { flush?: boolean } = {},
  ): Promise<{ gradIn?: Float32Array; loss?: number }> {
    const r = await this.#backward(input, B, T, upstream, grads, dropoutSeed);
    if (options.flush ?? true) await this.flushGrads(grads);
    return r;
  }

  /**
   * Adds the gradients summed on the device since the last flush into `grads` (a no-op on wasm, where backward
   * adds them as it goes). backward flushes unless told not to: the trainer flushes once, after a step's last
   * micro-batch, before the gradients are all-reduced.
   */
  async flushGrads(grads: Float32Array): Promise<void> {
    const acc = this.#deviceGrads;
    if (!acc || acc.size === 0) return;
    const entries = [...acc.values()];
    acc.clear();
    try {
      // every read at once: one wait on the device, not one per tensor
      const values = await Promise.all(entries.map(({ t }) => readChecked(t)));
      entries.forEach(({ offset }, i) => {
        const v = values[i]!;
        for (let j = 0; j < v.length; j++) grads[offset + j] = grads[offset + j]! + v[j]!;
      });
    } finally {
      for (const { t } of entries) t.dispose();
    }
  }

  /** Drops gradients summed on the device and not flushed (a step that failed half-way must not leak into the next). */
  discardGrads(): void {
    for (const { t } of this.#deviceGrads?.values() ?? []) t.dispose();
    this.#deviceGrads?.clear();
  }

  /**
   * Adds rows [row0, row0 + g's rows) of wte's gradient (the caller's tensor) into the device-side sums, which hold
   * wte in the head's vocabulary chunks (lm-head.ts, default chunking) whoever adds to it: the head a chunk at a
   * time, the embeddings' scatter-add and a whole-logits objective all at once. One set of sums, so a flush reads
   * wte's gradient once, not once per contributor.
   */
  #accumulateWte(row0: number, g: tf.Tensor2D): void {
    const { offset } = this.trainable.byName.get('wte.weight')!;
    const d = this.config.nEmbd, rows = headChunkRows(this.config.vocabSize, d), n = g.shape[0];
    if (row0 % rows === 0 && n <= rows) return this.#accumulate(`wte.weight#${row0}`, offset + row0 * d, g);
    for (let r = row0; r < row0 + n; r += rows) {
      const part = g.slice([r - row0, 0], [Math.min(rows, row0 + n - r), d]);
      try {
        this.#accumulate(`wte.weight#${r}`, offset + r * d, part);
      } finally {
        part.dispose();
      }
    }
  }

  /** Adds `g` (the caller's) into the device-side sum at `key`, which lands at `offset` of the flat buffer. */
  #accumulate(key: string, offset: number, g: tf.Tensor): void {
    const acc = this.#deviceGrads!;
    const old = acc.get(key);
    acc.set(key, { t: tf.keep(old ? tf.add(old.t, g) : tf.clone(g)), offset });
    old?.t.dispose();
  }

  async #backward(
    input: StageInput, B: number, T: number, upstream: StageUpstream, grads: Float32Array, dropoutSeed?: number,
  ): Promise<{ gradIn?: Float32Array; loss?: number }> {
    if (grads.length !== this.trainable.totalSize) throw new RangeError(`gradient buffer has ${grads.length} elements, the shard trains ${this.trainable.totalSize}`);
    if ('targets' in upstream && !this.hasHead) throw new RangeError('targets go to the last stage; other stages get gradOut');
    if (!('targets' in upstream)) {
      if (this.hasHead) throw new RangeError('the last stage back-propagates its loss: pass targets');
      if (upstream.gradOut.length !== B * T * this.config.nEmbd) throw new RangeError(`gradOut has ${upstream.gradOut.length} elements, expected ${B * T * this.config.nEmbd}`);
    }
    const trained = this.#adapter ? this.#adapterVars : this.#vars;
    const { firstLayer, endLayer } = this.layout.shard;
    return this.#training(dropoutSeed, () => this.#withMask(T, async (mask) => {
      const kept: tf.Tensor[] = [];
      try {
        // 1. the stage's input (the embeddings' output on the first stage) and each block's input (and, with
        //    tensor parallelism, its midpoint), without a tape
        const x0 = tf.tidy(() => this.#input(input, B, T));
        kept.push(x0);
        const inputs: tf.Tensor2D[] = [x0], mids: tf.Tensor2D[] = [];
        let x = x0;
        for (let l = firstLayer; l < endLayer; l++) {
          const r = await this.#blockForward(x, l, B, T, mask);
          if (r.mid) {
            kept.push(r.mid);
            mids.push(r.mid);
          }
          x = r.out;
          kept.push(x);
          inputs.push(x);
        }
        // 2. the head and the loss (last stage), or the gradient the next stage sent
        let loss: number | undefined;
        let dy: tf.Tensor2D;
        if ('targets' in upstream && (upstream.objective?.kind ?? 'lm') === 'lm') {
          const r = await this.#lmHeadBackward(trained, x, grads, upstream.targets, upstream.scale, B, T, upstream.objective?.weights);
          loss = r.loss;
          dy = r.dx;
        } else if ('targets' in upstream) {
          const { targets, objective } = upstream;
          const scale = tf.scalar(upstream.scale);
          kept.push(scale);
          const r = await this.#segment(trained, (name) => name === 'wte.weight' || name.startsWith('ln_f.'), x, grads, scale,
            (leaf) => this.#loss(layerNorm(leaf, this.#param, 'ln_f'), targets, B, T, objective));
          loss = r.value;
          dy = r.dx!;
        } else {
          dy = tf.tensor2d(upstream.gradOut, [B * T, this.config.nEmbd]);
        }
        kept.push(dy);
        // 3. the blocks, last to first
        for (let l = endLayer - 1; l >= firstLayer; l--) {
          const leaf = inputs[l - firstLayer]!;
          if (this.#tp) {
            dy = await this.#tpBlockBackward(trained, l, leaf, mids[l - firstLayer]!, dy, grads, B, T, mask);
          } else {
            const prefix = `h.${l}.`;
            dy = (await this.#segment(trained, (name) => name.startsWith(prefix), leaf, grads, dy, (z) => this.#block(z, l, B, T, mask))).dx!;
          }
          kept.push(dy);
        }
        // 4. the embeddings (first stage), or ∂L/∂input for the previous stage
        if (this.hasEmbed) {
          const ids = (input as { ids: Int32Array }).ids;
          if (this.#deviceGrads) this.#embeddingGradsOnDevice(ids, B, T, dy);
          else await valuesOf(dy, (v) => this.#embeddingGrads(ids, B, T, v, grads));
          return loss !== undefined ? { loss } : {};
        }
        return { gradIn: await copyOf(dy), ...(loss !== undefined ? { loss } : {}) };
      } finally {
        for (const t of kept) t.dispose();
      }
    }));
  }

  /**
   * One segment's backward under its own tape: ∂/∂(the trained variables `owns` picks) are added into `grads`, and
   * ∂/∂leaf is returned (kept: the caller disposes it). `dy` is the upstream gradient (a scalar scale for a loss).
   */
  async #segment(
    trained: Map<string, tf.Variable>, owns: (name: string) => boolean, leaf: tf.Tensor2D | null, grads: Float32Array, dy: tf.Tensor,
    f: (leaf: tf.Tensor2D) => tf.Tensor,
  ): Promise<{ dx: tf.Tensor2D | null; value: number | undefined }> {
    const names = [...trained.keys()].filter(owns);
    const vars = names.map((n) => trained.get(n)!);
    if (!leaf && vars.length === 0) return { dx: null, value: undefined }; // nothing trains here (a LoRA stage's embeddings)
    // The tape ends inside the tidy; what it returns (the value, ∂/∂leaf, each parameter's gradient) outlives it
    // to be read, which a GPU backend does asynchronously.
    let value: tf.Tensor | null = null, dx: tf.Tensor2D | null = null, paramGrads: Array<tf.Tensor | undefined> = [];
    tf.tidy(() => {
      const xs: tf.Tensor[] = leaf ? [leaf, ...vars] : vars;
      const r = tf.engine().gradients(() => f(leaf as tf.Tensor2D), xs, dy, true);
      if (r.value.rank === 0) value = tf.keep(r.value);
      if (leaf) dx = tf.keep(r.grads[0] as tf.Tensor2D);
      paramGrads = (leaf ? r.grads.slice(1) : r.grads).map((g) => (g ? tf.keep(g) : undefined));
    });
    try {
      for (let i = 0; i < names.length; i++) {
        const g = paramGrads[i];
        if (!g) continue; // not on this segment's path (cannot happen for the segments above; harmless if it does)
        await this.#addGrad(names[i]!, g, grads);
      }
      return { dx, value: value ? (await readChecked(value as tf.Tensor))[0]! : undefined };
    } catch (err) {
      (dx as tf.Tensor2D | null)?.dispose();
      throw err;
    } finally {
      (value as tf.Tensor | null)?.dispose();
      for (const g of paramGrads) g?.dispose();
    }
  }

  /** Adds the gradient `g` of trained tensor `name` into its place in `grads`. */
  #addGrad(name: string, g: tf.Tensor, grads: Float32Array): Promise<void> {
    const spec = this.trainable.byName.get(name)!;
    if (this.#deviceGrads) {
      if (name === 'wte.weight') this.#accumulateWte(0, g as tf.Tensor2D);
      else this.#accumulate(name, spec.offset, g);
      return Promise.resolve();
    }
    return valuesOf(g, (v) => {
      for (let j = 0, o = spec.offset; j < v.length; j++) grads[o + j] = grads[o + j]! + v[j]!;
    });
  }

  /**
   * A tensor-parallel block's backward, cut at its all-reduces (see the top of the file). With x its input, x₁ its
   * midpoint and dy = ∂L/∂(its output):
   *   MLP:       ∂m_r = back(partial_mlp_r at m = ln_2(x₁), dy);  ∂m = Σ_r ∂m_r;  ∂x₁ = dy + back(ln_2 at x₁, ∂m)
   *   attention: ∂a_r = back(partial_attn_r at a = ln_1(x), ∂x₁); ∂a = Σ_r ∂a_r;  ∂x = ∂x₁ + back(ln_1 at x, ∂a)
   * and each row-parallel bias gets the column sums of the gradient at its output (dy, then ∂x₁).
   */
  async #tpBlockBackward(
    trained: Map<string, tf.Variable>, l: number, x: tf.Tensor2D, x1: tf.Tensor2D, dy: tf.Tensor2D, grads: Float32Array,
    B: number, T: number, mask: tf.Tensor2D,
  ): Promise<tf.Tensor2D> {
    const p = `h.${l}.`;
    const half = async (
      input: tf.Tensor2D, upstream: tf.Tensor2D, ln: string, branch: string, partial: (z: tf.Tensor2D) => tf.Tensor2D,
    ): Promise<tf.Tensor2D> => {
      const bias = `${p}${branch}.c_proj.bias`;
      if (trained.has(bias)) {
        const g = tf.tidy(() => upstream.sum(0));
        try {
          await this.#addGrad(bias, g, grads);
        } finally {
          g.dispose();
        }
      }
      const normed = tf.tidy(() => layerNorm(input, this.#param, `${p}${ln}`));
      let dNormed: tf.Tensor2D;
      try {
        const owns = (name: string) => name.startsWith(`${p}${branch}.`) && name !== bias;
        const r = await this.#segment(trained, owns, normed, grads, upstream, partial);
        dNormed = await this.#allReduce(r.dx!);
      } finally {
        normed.dispose();
      }
      try {
        const r = await this.#segment(trained, (name) => name.startsWith(`${p}${ln}.`), input, grads, dNormed, (z) => layerNorm(z, this.#param, `${p}${ln}`));
        try {
          return tf.tidy(() => upstream.add(r.dx!) as tf.Tensor2D);
        } finally {
          r.dx!.dispose();
        }
      } finally {
        dNormed.dispose();
      }
    };
    const dx1 = await half(x1, dy, 'ln_2', 'mlp', (m) => this.#mlpPartial(m, `${p}mlp`));
    try {
      return await half(x, dx1, 'ln_1', 'attn', (a) => this.#attentionPartial(a, `${p}attn`, B, T, mask));
    } finally {
      dx1.dispose();
    }
  }

  /**
   * The last stage's head for the causal-LM objective (model/lm-head.ts: a vocabulary chunk at a time, never the
   * whole logits): the final LayerNorm without a tape, the tied head by hand (its weight's gradient straight into
   * `grads` when wte trains here), then the LayerNorm's own segment with the head's ∂L/∂h as upstream.
   */
  async #lmHeadBackward(
    trained: Map<string, tf.Variable>, x: tf.Tensor2D, grads: Float32Array, targets: Int32Array, scale: number, B: number, T: number,
    weights?: Float32Array,
  ): Promise<{ loss: number; dx: tf.Tensor2D }> {
    const d = this.config.nEmbd;
    const wte = trained.has('wte.weight') ? this.trainable.byName.get('wte.weight')! : undefined;
    const h = tf.tidy(() => layerNorm(x, this.#param, 'ln_f'));
    let r: Awaited<ReturnType<typeof lmHead>>;
    try {
      r = await lmHead(h, this.#param('wte.weight') as tf.Tensor2D, targets, lmCoefficients(B, T, weights), {
        upstream: scale,
        ...(wte ? { addWeightGrad: (row0: number, v: Float32Array) => {
          for (let j = 0, o = wte.offset + row0 * d; j < v.length; j++) grads[o + j] = grads[o + j]! + v[j]!;
        } } : {}),
        ...(wte && this.#deviceGrads ? { addWeightGradTensor: (row0: number, g: tf.Tensor2D) => {
          try {
            this.#accumulateWte(row0, g);
          } finally {
            g.dispose();
          }
        } } : {}),
      });
    } finally {
      h.dispose();
    }
    const dh = tf.tensor2d(r.dh!, [B * T, d]);
    try {
      const s = await this.#segment(trained, (name) => name.startsWith('ln_f.'), x, grads, dh, (leaf) => layerNorm(leaf, this.#param, 'ln_f'));
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

  /**
   * The embeddings' backward on a GPU backend, summed on the device with the other gradients (#deviceGrads): the
   * scatter-add is UnsortedSegmentSum there (WebGPU has the kernel; wasm has not, hence #embeddingGrads), and ∂L/∂x
   * never comes back to the CPU.
   */
  #embeddingGradsOnDevice(ids: Int32Array, B: number, T: number, dy: tf.Tensor2D): void {
    const d = this.config.nEmbd;
    const wte = this.trainable.byName.get('wte.weight'), wpe = this.trainable.byName.get('wpe.weight');
    if (wte) {
      const g = tf.tidy(() => tf.unsortedSegmentSum(dy, tf.tensor1d(ids, 'int32'), this.config.vocabSize));
      try {
        this.#accumulateWte(0, g);
      } finally {
        g.dispose();
      }
    }
    if (wpe) {
      const g = tf.tidy(() => dy.reshape([B, T, d]).sum(0)); // positions 0…T−1: wpe's first T rows
      try {
        this.#accumulate(`wpe.weight#${T}`, wpe.offset, g);
      } finally {
        g.dispose();
      }
    }
  }

  async #withMask<R>(T: number, run: (mask: tf.Tensor2D) => Promise<R>): Promise<R> {
    const mask = tf.tensor2d(causalMask(T, this.#masks), [T, T]);
    try {
      return await run(mask);
    } finally {
      mask.dispose();
    }
  }

  /** Blocks [firstLayer, endLayer) and, on the last stage, nothing more; each block in its own tidy (no tape). */
  async #blocks(x: tf.Tensor2D, B: number, T: number, mask: tf.Tensor2D): Promise<tf.Tensor2D> {
    const { firstLayer, endLayer } = this.layout.shard;
    for (let l = firstLayer; l < endLayer; l++) {
      const prev = x;
      try {
        const r = await this.#blockForward(prev, l, B, T, mask);
        r.mid?.dispose();
        x = r.out;
      } finally {
        prev.dispose();
      }
    }
    return x;
  }

  /**
   * Block `l` without a tape: its output, and with tensor parallelism its midpoint x₁ = x + attn(ln_1(x)) too,
   * summed over the group between the two halves (both are new tensors; `x` stays the caller's).
   */
  async #blockForward(x: tf.Tensor2D, l: number, B: number, T: number, mask: tf.Tensor2D): Promise<{ out: tf.Tensor2D; mid?: tf.Tensor2D }> {
    if (!this.#tp) return { out: tf.tidy(() => this.#block(x, l, B, T, mask)) };
    const p = `h.${l}.`;
    const s = await this.#allReduce(tf.tidy(() => this.#attentionPartial(layerNorm(x, this.#param, `${p}ln_1`), `${p}attn`, B, T, mask)));
    const mid = tf.tidy(() => x.add(s.add(this.#param(`${p}attn.c_proj.bias`))) as tf.Tensor2D);
    s.dispose();
    try {
      const r = await this.#allReduce(tf.tidy(() => this.#mlpPartial(layerNorm(mid, this.#param, `${p}ln_2`), `${p}mlp`)));
      const out = tf.tidy(() => mid.add(r.add(this.#param(`${p}mlp.c_proj.bias`))) as tf.Tensor2D);
      r.dispose();
      return { out, mid };
    } catch (err) {
      mid.dispose();
      throw err;
    }
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
    this.discardGrads();
  }

  async #training<R>(dropoutSeed: number | undefined, run: () => Promise<R>): Promise<R> {
    this.#dropoutSeed = dropoutSeed;
    try {
      return await run();
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

  /** Block `l` without tensor parallelism: x + attn(ln_1(x)), then + mlp(ln_2(·)). */
  #block(x: tf.Tensor2D, l: number, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
    const p = `h.${l}.`;
    x = x.add(this.#attentionPartial(layerNorm(x, this.#param, `${p}ln_1`), `${p}attn`, B, T, mask).add(this.#param(`${p}attn.c_proj.bias`)));
    return x.add(this.#mlpPartial(layerNorm(x, this.#param, `${p}ln_2`), `${p}mlp`).add(this.#param(`${p}mlp.c_proj.bias`)));
  }

  /** The objective (default: mean cross-entropy) through the head tied to wte. */
  #loss(x: tf.Tensor2D, targets: Int32Array, B: number, T: number, objective?: Objective): tf.Scalar {
    const logits = tf.matMul(x, this.#param('wte.weight') as tf.Tensor2D, false, true) as tf.Tensor2D; // [B*T, V]
    return objectiveLoss(logits, targets, B, T, objective);
  }

  /**
   * Causal self-attention over this rank's heads, c_attn by columns and c_proj by rows (see the top of the file):
   * this rank's partial product, before the sum over the group and c_proj's bias.
   */
  #attentionPartial(x: tf.Tensor2D, prefix: string, B: number, T: number, mask: tf.Tensor2D): tf.Tensor2D {
    const c = this.config, t = this.layout.shard.tpSize;
    const nh = c.nHead / t, hs = c.nEmbd / c.nHead, width = c.nEmbd / t; // local heads, head size, local width
    const qkv = linear(x, this.#param, `${prefix}.c_attn`); // [B*T, 3·width]
    const [q, k, v] = tf.split(qkv, 3, 1) as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
    const heads = (z: tf.Tensor2D) => z.reshape([B, T, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, T, hs]) as tf.Tensor3D;
    const att = tf.matMul(heads(q), heads(k), false, true).mul(1 / Math.sqrt(hs)).add(mask); // [B*nh, T, T]
    const y = tf.matMul(tf.softmax(att), heads(v)); // [B*nh, T, hs]
    const merged = y.reshape([B, nh, T, hs]).transpose([0, 2, 1, 3]).reshape([B * T, width]) as tf.Tensor2D;
    return this.#rowPartial(merged, `${prefix}.c_proj`);
  }

  /** The MLP's partial product on this rank (c_fc by columns, c_proj by rows), before the sum and the bias. */
  #mlpPartial(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    const h = gelu(linear(x, this.#param, `${prefix}.c_fc`)); // [B*T, 4d/t]
    return this.#rowPartial(h, `${prefix}.c_proj`);
  }

  /**
   * x·W_rows: this rank's term of the sum over the group (the replicated bias is added once, after it). An
   * adapter's rows-cut A_k adds scale·(x_k·A_k)·B to this rank's partial before the same sum (model/lora.ts
   * LORA_TP_RULES).
   */
  #rowPartial(x: tf.Tensor2D, prefix: string): tf.Tensor2D {
    let partial = tf.matMul(x, this.#param(`${prefix}.weight`) as tf.Tensor2D) as tf.Tensor2D;
    const lora = this.#param.lora?.(prefix);
    if (lora) partial = partial.add(tf.matMul(tf.matMul(lora.input ? lora.input(x) : x, lora.A), lora.B).mul(lora.scale));
    return partial;
  }

  #lookup(name: string): tf.Tensor {
    const v = this.#vars.get(name);
    if (!v) throw new RangeError(`shard of stage ${this.layout.shard.stage}, tp rank ${this.layout.shard.tpRank} has no ${name}`);
    return v;
  }

  #param: Param = (name) => this.#lookup(name);
}
