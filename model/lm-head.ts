/**
 * The causal-LM loss through the tied head, a vocabulary chunk at a time (as Liger-Kernel's fused linear
 * cross-entropy and Apple's "Cut Your Losses" do): the [tokens, vocabulary] logits, their log-softmax, the one-hot
 * targets and their gradients never exist whole.
 *
 * Why: through tfjs ops, GPT-2-small's head at one micro-batch of 256 tokens held ~1 GB of wasm heap (the logits
 * and four tensors like them, the transposed and the packed [50,257 × 768] weight, its [50,257 × 768] gradient)
 * and took 6–7 s, most of it in matmuls whose transposed operand is the whole weight. wasm32's heap never shrinks,
 * so that high-water mark stayed in the agent's resident memory for the rest of the job.
 *
 * How, for hidden states h [N, d], the head's weight W [V, d] (wte) and per-token coefficients c (the loss is
 * Σᵢ cᵢ·(lseᵢ − zᵢ,tᵢ), z = h·Wᵀ):
 *  1. For each chunk W_c of rows: z_cᵀ = W_c·hᵀ [v_c, N] (only h, small, is transposed), and per token a running
 *     max and Σ exp (the online log-sum-exp), and the target's logit when it falls in the chunk.
 *  2. With a gradient: ∂L/∂z = gᵢ·(softmax(z)ᵢ − onehot(tᵢ)), gᵢ = cᵢ·upstream, again a chunk at a time: the
 *     chunk's ∂L/∂W_c = (∂L/∂z_c)ᵀ·h goes to `addWeightGrad`, and ∂L/∂h += ∂L/∂z_c·W_c.
 * Pass 2 reuses pass 1's logits when all of them fit LOGITS_KEPT_BYTES, and recomputes each chunk's otherwise.
 * The per-token arithmetic (max, exp, log) is float64 in JS; the products are the backend's float32 matmuls.
 */
import * as tf from '@tensorflow/tfjs';
import { HEAD_CHUNK_ELEMENTS, LOGITS_KEPT_BYTES, headChunkRows } from './lm-head-chunks.ts';
import { readChecked, readsSync, takeValues, valuesOf } from './tensor-values.ts';

export { HEAD_CHUNK_ELEMENTS, LOGITS_KEPT_BYTES } from './lm-head-chunks.ts';

export interface LmHeadResult {
  /** Σᵢ cᵢ·(−log p(tᵢ)): the objective's value before any upstream scale. */
  loss: number;
  /** ∂L/∂h [N, d] when a gradient was asked for (upstream · the loss). */
  dh?: Float32Array;
}

/**
 * Per-token coefficients of the causal-LM loss (model/objectives.ts 'lm'): the mean over all B·T tokens, or with
 * `weights` each row's weighted mean (0 for a row with no weight), then the mean over rows.
 */
export function lmCoefficients(B: number, T: number, weights?: Float32Array): Float64Array {
  const c = new Float64Array(B * T);
  if (weights === undefined) return c.fill(1 / (B * T));
  if (weights.length !== B * T) throw new RangeError(`weights has ${weights.length} values, expected ${B * T}`);
  for (let b = 0; b < B; b++) {
    let sum = 0;
    for (let t = 0; t < T; t++) sum += weights[b * T + t]!;
    const denom = Math.max(sum, 1e-9) * B;
    for (let t = 0; t < T; t++) c[b * T + t] = weights[b * T + t]! / denom;
  }
  return c;
}

export interface LmHeadOptions {
  /** With a gradient: the upstream gradient of the loss (the micro-batch's scale, 1/m over m micro-batches). */
  upstream?: number;
  /**
   * Receives ∂L/∂W's rows [row0, row0 + values.length / d), in order; omit it when W is frozen. `values` may view
   * backend memory (model/tensor-values.ts): read it before returning, and make no tensor meanwhile.
   */
  addWeightGrad?: (row0: number, values: Float32Array) => void;
  /**
   * On a GPU backend, instead of addWeightGrad: receives each chunk's ∂L/∂W rows as a tensor the callee owns
   * (disposes), so the gradient can stay on the device (StageModel accumulates it there over a step).
   */
  addWeightGradTensor?: (row0: number, grad: tf.Tensor2D) => void;
  /** Elements of W per chunk (default HEAD_CHUNK_ELEMENTS). */
  chunkElements?: number;
  /** Pass 1's logits are kept for pass 2 up to this many bytes (default LOGITS_KEPT_BYTES). */
  keptBytes?: number;
}

/**
 * The loss (and with `upstream`, ∂/∂h and ∂/∂W) of the tied head over h [N, d] and W [V, d]. Tensors it makes are
 * disposed before it returns; h and W are the caller's.
 */
export async function lmHead(h: tf.Tensor2D, W: tf.Tensor2D, targets: Int32Array, coeff: Float64Array, options: LmHeadOptions = {}): Promise<LmHeadResult> {
  const { upstream, addWeightGrad, chunkElements = HEAD_CHUNK_ELEMENTS, keptBytes = LOGITS_KEPT_BYTES } = options;
  const [N, d] = h.shape;
  const [V, dw] = W.shape;
  if (dw !== d) throw new RangeError(`the head's weight is ${V}×${dw}, the hidden states ${N}×${d}`);
  if (targets.length !== N || coeff.length !== N) throw new RangeError(`${N} hidden states need ${N} targets and coefficients, got ${targets.length} and ${coeff.length}`);
  for (let i = 0; i < N; i++) if (!(targets[i]! >= 0 && targets[i]! < V)) throw new RangeError(`target ${targets[i]} is outside the vocabulary [0, ${V})`);
  const rows = headChunkRows(V, d, chunkElements);
  const chunks: Array<[number, number]> = [];
  for (let r0 = 0; r0 < V; r0 += rows) chunks.push([r0, Math.min(V, r0 + rows)]);
  if (!readsSync()) return lmHeadOnDevice(h, W, targets, coeff, chunks, upstream, addWeightGrad, options.addWeightGradTensor);
  const keep = upstream !== undefined && N * V * 4 <= keptBytes;
  const kept: Float32Array[] = [];

  // zᵀ of W_c's rows: [rows, N] (only h, small, goes in transposed).
  const logitsT = (Wc: tf.Tensor2D): Promise<Float32Array> => takeValues(tf.matMul(Wc, h, false, true));
  const rowsOf = (r0: number, r1: number) => W.slice([r0, 0], [r1 - r0, d]);

  // 1. log-sum-exp per token, and the target's logit
  const max = new Float64Array(N).fill(-Infinity), sum = new Float64Array(N), picked = new Float64Array(N);
  const chunkMax = new Float64Array(N);
  for (const [r0, r1] of chunks) {
    const Wc = rowsOf(r0, r1);
    let z: Float32Array;
    try {
      z = await logitsT(Wc);
    } finally {
      Wc.dispose();
    }
    if (keep) kept.push(z);
    chunkMax.fill(-Infinity);
    for (let j = 0; j < r1 - r0; j++) {
      const row = j * N;
      for (let i = 0; i < N; i++) if (z[row + i]! > chunkMax[i]!) chunkMax[i] = z[row + i]!;
    }
    for (let i = 0; i < N; i++) {
      if (chunkMax[i]! > max[i]!) {
        sum[i] = sum[i]! * Math.exp(max[i]! - chunkMax[i]!);
        max[i] = chunkMax[i]!;
      }
      const t = targets[i]!;
      if (t >= r0 && t < r1) picked[i] = z[(t - r0) * N + i]!;
    }
    for (let j = 0; j < r1 - r0; j++) {
      const row = j * N;
      for (let i = 0; i < N; i++) sum[i] = sum[i]! + Math.exp(z[row + i]! - max[i]!);
    }
  }
  const lse = new Float64Array(N);
  let loss = 0;
  for (let i = 0; i < N; i++) {
    lse[i] = max[i]! + Math.log(sum[i]!);
    loss += coeff[i]! * (lse[i]! - picked[i]!);
  }
  if (upstream === undefined) return { loss };

  // 2. ∂L/∂z a chunk at a time → ∂L/∂W_c and ∂L/∂h
  const g = coeff.map((c) => c * upstream);
  const dh = new Float32Array(N * d);
  for (const [k, [r0, r1]] of chunks.entries()) {
    const Wc = rowsOf(r0, r1);
    try {
      const z = keep ? kept[k]! : await logitsT(Wc);
      const vc = r1 - r0;
      const dz = new Float32Array(vc * N);
      for (let j = 0; j < vc; j++) {
        const row = j * N;
        for (let i = 0; i < N; i++) dz[row + i] = g[i]! * Math.exp(z[row + i]! - lse[i]!);
      }
      for (let i = 0; i < N; i++) {
        const t = targets[i]!;
        if (t >= r0 && t < r1) dz[(t - r0) * N + i] = dz[(t - r0) * N + i]! - g[i]!;
      }
      const [dWc, partT] = tf.tidy(() => {
        const dzT = tf.tensor2d(dz, [vc, N]);
        // (∂L/∂h)ᵀ = W_cᵀ·∂L/∂z_cᵀ [d, N]: the packed right operand is the chunk's gradient (N columns), not
        // W_c (d columns), 1.5× faster here than ∂L/∂z_c·W_c.
        return [addWeightGrad ? tf.matMul(dzT, h) : null, tf.matMul(Wc, dzT, true, false)] as const; // [vc, d], [d, N]
      });
      try {
        if (dWc) await valuesOf(dWc, (v) => addWeightGrad!(r0, v));
        await valuesOf(partT, (v) => {
          for (let k = 0; k < d; k++) {
            const row = k * N;
            for (let i = 0; i < N; i++) dh[i * d + k] = dh[i * d + k]! + v[row + i]!;
          }
        });
      } finally {
        dWc?.dispose();
        partT.dispose();
      }
    } finally {
      Wc.dispose();
    }
  }
  return { loss, dh };
}

/**
 * The same head on a GPU backend, where reading every chunk's logits back (2 × N × V floats a micro-batch: 823 MB
 * for GPT-2 at 2,048 tokens) would cost more than computing them: the online log-sum-exp, the target's logit and
 * ∂L/∂z stay on the device in float32, and only the loss, ∂L/∂h [N, d] and each chunk's ∂L/∂W_c (which the
 * gradient buffer needs anyway) come back. Pass 2 recomputes each chunk's logits (a matmul: cheap there).
 */
async function lmHeadOnDevice(
  h: tf.Tensor2D, W: tf.Tensor2D, targets: Int32Array, coeff: Float64Array, chunks: Array<[number, number]>,
  upstream: number | undefined, addWeightGrad: LmHeadOptions['addWeightGrad'], addWeightGradTensor: LmHeadOptions['addWeightGradTensor'],
): Promise<LmHeadResult> {
  const [N, d] = h.shape;
  const t = tf.tensor1d(targets, 'int32');
  const columns = tf.range(0, N, 1, 'int32');
  const c = tf.tensor1d(Float32Array.from(coeff));
  // Per chunk: its rows of W, zᵀ [vc, N], which tokens' targets fall in it and at which row.
  const chunk = (r0: number, r1: number) => {
    const Wc = W.slice([r0, 0], [r1 - r0, d]) as tf.Tensor2D;
    const zT = tf.matMul(Wc, h, false, true) as tf.Tensor2D;
    const inChunk = t.greaterEqual(r0).logicalAnd(t.less(r1));
    const row = t.sub(tf.scalar(r0, 'int32')).clipByValue(0, r1 - r0 - 1) as tf.Tensor1D;
    return { Wc, zT, inChunk, row };
  };
  let lse: tf.Tensor1D | null = null;
  let dhT: tf.Tensor2D | null = null;
  try {
    // 1. log-sum-exp per token and the target's logit, a chunk at a time
    let max = tf.fill([N], -Infinity) as tf.Tensor1D, sum = tf.zeros([N]) as tf.Tensor1D, picked = tf.zeros([N]) as tf.Tensor1D;
    for (const [r0, r1] of chunks) {
      const next = tf.tidy(() => {
        const { zT, inChunk, row } = chunk(r0, r1);
        const m = tf.maximum(max, zT.max(0));
        const s = sum.mul(tf.exp(max.sub(m))).add(tf.exp(zT.sub(m)).sum(0));
        const p = picked.add(tf.where(inChunk, tf.gatherND(zT, tf.stack([row, columns], 1)), tf.zerosLike(picked)));
        return [m, s, p] as tf.Tensor1D[];
      });
      tf.dispose([max, sum, picked]);
      [max, sum, picked] = next as [tf.Tensor1D, tf.Tensor1D, tf.Tensor1D];
    }
    lse = tf.tidy(() => max.add(sum.log())) as tf.Tensor1D;
    const lossT = tf.tidy(() => c.mul(lse!.sub(picked)).sum());
    tf.dispose([max, sum, picked]);
    const loss = (await readChecked(lossT))[0]!;
    lossT.dispose();
    if (upstream === undefined) return { loss };

    // 2. ∂L/∂z = g·(softmax(z) − onehot(t)) a chunk at a time → ∂L/∂W_c (read back) and ∂L/∂h (kept on the device)
    const g = c.mul(upstream) as tf.Tensor1D;
    try {
      for (const [r0, r1] of chunks) {
        const [dWc, partT] = tf.tidy(() => {
          const { Wc, zT, inChunk, row } = chunk(r0, r1);
          const hit = tf.oneHot(row, r1 - r0).transpose().mul(inChunk.cast('float32')); // [vc, N]
          const dzT = tf.exp(zT.sub(lse!)).sub(hit).mul(g); // [vc, N]
          return [addWeightGrad || addWeightGradTensor ? tf.matMul(dzT, h) as tf.Tensor2D : null, tf.matMul(Wc, dzT, true, false)] as const; // [vc, d], [d, N]
        });
        let handedOver = false;
        try {
          if (dWc && addWeightGradTensor) {
            addWeightGradTensor(r0, dWc);
            handedOver = true;
          } else if (dWc) await valuesOf(dWc, (v) => addWeightGrad!(r0, v));
          if (dhT) {
            const sumT: tf.Tensor2D = tf.add(dhT, partT);
            dhT.dispose();
            partT.dispose();
            dhT = sumT;
          } else dhT = partT; // the first chunk's part is the sum so far
        } catch (err) {
          if (partT !== dhT) partT.dispose();
          throw err;
        } finally {
          if (!handedOver) dWc?.dispose();
        }
      }
    } finally {
      g.dispose();
    }
    return { loss, dh: await takeValues(tf.tidy(() => dhT!.transpose())) };
  } finally {
    tf.dispose([t, columns, c]);
    lse?.dispose();
    (dhT as tf.Tensor2D | null)?.dispose();
  }
}
