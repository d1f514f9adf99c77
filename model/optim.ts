/**
 * AdamW, the learning-rate schedule and gradient clipping, on flat Float32Arrays in plain JS (as torch.optim.AdamW
 * and nanoGPT's get_lr). Plain JS on one flat buffer is deterministic whatever the tf backend, so data-parallel
 * replicas that apply the same reduced gradient stay bit-identical, and a ZeRO-1 shard is just a range: each
 * data-parallel rank keeps moments for, and updates, only its [start, end) of the flat buffer, with the same
 * per-element arithmetic, so the ranges put together equal one full update bit for bit.
 */

// ---------------------------------------------------------------------------------------------------- schedule

export interface LrSchedule {
  readonly maxLr: number; // peak learning rate, reached at the end of warmup (nanoGPT learning_rate)
  readonly minLr: number; // floor after decay, ~maxLr/10 per Chinchilla
  readonly warmupSteps: number; // linear warmup over this many steps
  readonly decaySteps: number; // cosine decay ends here (nanoGPT lr_decay_iters); ≥ warmupSteps
}

/** nanoGPT's get_lr: linear warmup, then cosine decay to minLr at decaySteps, then minLr. `step` counts from 0. */
export function lrAt(step: number, s: LrSchedule): number {
  if (step < s.warmupSteps) return (s.maxLr * (step + 1)) / (s.warmupSteps + 1);
  if (step > s.decaySteps) return s.minLr;
  const span = s.decaySteps - s.warmupSteps;
  const ratio = span === 0 ? 1 : (step - s.warmupSteps) / span; // 0 → 1
  const coeff = 0.5 * (1 + Math.cos(Math.PI * ratio)); // 1 → 0
  return s.minLr + coeff * (s.maxLr - s.minLr);
}

// ---------------------------------------------------------------------------------------------------- clipping

/** The L2 norm of the whole flat gradient, accumulated in float64. */
export function globalNorm(grads: Float32Array): number {
  let sq = 0;
  for (let i = 0; i < grads.length; i++) sq += grads[i]! * grads[i]!;
  return Math.sqrt(sq);
}

/**
 * Scales `grads` in place so its global norm is at most `maxNorm` (torch.nn.utils.clip_grad_norm_: coefficient
 * maxNorm / (norm + 1e-6), never above 1). `maxNorm` 0 disables clipping. Returns the norm before clipping.
 */
export function clipGradNorm(grads: Float32Array, maxNorm: number): number {
  const norm = globalNorm(grads);
  if (maxNorm > 0) {
    const coeff = maxNorm / (norm + 1e-6);
    if (coeff < 1) for (let i = 0; i < grads.length; i++) grads[i] = grads[i]! * coeff;
  }
  return norm;
}

// ---------------------------------------------------------------------------------------------------- AdamW

export interface AdamWConfig {
  readonly beta1: number; // first-moment decay (nanoGPT 0.9)
  readonly beta2: number; // second-moment decay (nanoGPT 0.95)
  readonly eps: number; // added to √v̂ (torch default 1e-8)
  readonly weightDecay: number; // decoupled: p ← p·(1 − lr·wd), on `decay` segments only (nanoGPT 0.1)
}

export const ADAMW_DEFAULTS: AdamWConfig = Object.freeze({ beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });

/** One parameter's place in the flat buffer; gpt.ts's ParamSpec fits. */
export interface OptimSegment {
  readonly name: string;
  readonly shape: readonly number[];
  readonly offset: number;
  readonly size: number;
  readonly decay: boolean; // nanoGPT: 2-D weights decay; biases and LayerNorm gains do not
}

/** One float32 tensor in model/safetensors.ts's shape (`dtype: 'F32'`), so it drops into a TensorMap. */
export interface F32Tensor {
  readonly dtype: 'F32';
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/**
 * AdamW's state as model/checkpoint.ts stores it (optimizer.safetensors: `exp_avg.<param>`, `exp_avg_sq.<param>`,
 * the step in its metadata): moments keyed by parameter name, each with the parameter's shape.
 */
export interface OptimizerState {
  readonly step: number; // updates applied so far (torch's `step`); bias correction uses it
  readonly expAvg: Readonly<Record<string, F32Tensor>>; // m
  readonly expAvgSq: Readonly<Record<string, F32Tensor>>; // v
}

/** What importState accepts: any safetensors TensorMap; it checks dtype, shape and names. */
export interface OptimizerStateLike {
  readonly step: number;
  readonly expAvg: Readonly<Record<string, { readonly dtype: string; readonly shape: readonly number[]; readonly data: unknown }>>;
  readonly expAvgSq: Readonly<Record<string, { readonly dtype: string; readonly shape: readonly number[]; readonly data: unknown }>>;
}

/** The elements [start, end) of the flat buffer one optimizer updates (ZeRO-1: this rank's share). */
export interface OptimRange {
  readonly start: number; // first element
  readonly end: number; // one past the last element
}

/** A ranged AdamW's state as one flat copy of its range's moments (ZeRO-1 shards are saved and moved this way). */
export interface FlatOptimizerState {
  readonly step: number;
  readonly expAvg: Float32Array; // m, end − start elements
  readonly expAvgSq: Float32Array; // v
}

export class AdamW {
  readonly config: AdamWConfig;
  readonly segments: readonly OptimSegment[];
  readonly size: number; // elements of the whole flat buffer that update() takes
  readonly range: OptimRange; // the elements this optimizer updates and keeps moments for; default the whole buffer
  #expAvg: Float32Array; // m of range.start + i at i
  #expAvgSq: Float32Array; // v
  #step = 0;

  constructor(segments: readonly OptimSegment[], config: Partial<AdamWConfig> = {}, options: { range?: OptimRange } = {}) {
    const c = { ...ADAMW_DEFAULTS, ...config };
    if (!(c.beta1 >= 0 && c.beta1 < 1)) throw new RangeError(`AdamW beta1 must be in [0, 1), got ${c.beta1}`);
    if (!(c.beta2 >= 0 && c.beta2 < 1)) throw new RangeError(`AdamW beta2 must be in [0, 1), got ${c.beta2}`);
    if (!(c.eps > 0)) throw new RangeError(`AdamW eps must be positive, got ${c.eps}`);
    if (!(c.weightDecay >= 0)) throw new RangeError(`AdamW weightDecay must be ≥ 0, got ${c.weightDecay}`);
    this.config = Object.freeze(c);
    this.segments = segments;
    this.size = segments.reduce((n, s) => Math.max(n, s.offset + s.size), 0);
    const { start, end } = options.range ?? { start: 0, end: this.size };
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || start > end || end > this.size) {
      throw new RangeError(`AdamW range must satisfy 0 ≤ start ≤ end ≤ ${this.size} (integers), got [${start}, ${end})`);
    }
    this.range = Object.freeze({ start, end });
    this.#expAvg = new Float32Array(end - start);
    this.#expAvgSq = new Float32Array(end - start);
  }

  get step(): number {
    return this.#step;
  }

  /**
   * One update of `params` in place from `grads` (same layout), as torch.optim.AdamW (foreach=False):
   *   p ← p·(1 − lr·wd)            (decay segments only)
   *   m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²
   *   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
   * Arithmetic is float64 per element, stored as float32. Only elements inside `range` are read or written; the
   * buffers are still the whole flat length, so offsets stay the layout's.
   */
  update(params: Float32Array, grads: Float32Array, lr: number): void {
    if (params.length !== this.size || grads.length !== this.size) {
      throw new RangeError(`AdamW expects ${this.size} elements, got params ${params.length}, grads ${grads.length}`);
    }
    const { beta1: b1, beta2: b2, eps, weightDecay } = this.config;
    const t = ++this.#step;
    const stepSize = lr / (1 - b1 ** t);
    const bc2Sqrt = Math.sqrt(1 - b2 ** t);
    const m = this.#expAvg, v = this.#expAvgSq;
    const base = this.range.start;
    for (const seg of this.segments) {
      const keep = seg.decay ? 1 - lr * weightDecay : 1;
      const from = Math.max(seg.offset, base), to = Math.min(seg.offset + seg.size, this.range.end); // seg ∩ range
      for (let i = from; i < to; i++) {
        const g = grads[i]!;
        const mi = b1 * m[i - base]! + (1 - b1) * g;
        const vi = b2 * v[i - base]! + (1 - b2) * g * g;
        m[i - base] = mi;
        v[i - base] = vi;
        params[i] = params[i]! * keep - (stepSize * mi) / (Math.sqrt(vi) / bc2Sqrt + eps);
      }
    }
  }

  /** Copies of the range's moments and the step, for a ZeRO-1 shard's checkpoint or hand-over. */
  exportFlat(): FlatOptimizerState {
    return { step: this.#step, expAvg: this.#expAvg.slice(), expAvgSq: this.#expAvgSq.slice() };
  }

  /**
   * The range's moments themselves (not copies) and the step: for writing them out between updates without a
   * second copy of optimizer state (GPT-2-small's is 1 GB). They change with the next update; do not write to them.
   */
  viewFlat(): FlatOptimizerState {
    return { step: this.#step, expAvg: this.#expAvg, expAvgSq: this.#expAvgSq };
  }

  /**
   * Replaces the state from exportFlat's form; the moments must be float32 of exactly the range's length. They are
   * copied, unless `adopt`: then these arrays become the optimizer's own (the caller must not use them again).
   */
  importFlat(state: FlatOptimizerState, options: { adopt?: boolean } = {}): void {
    checkStep(state.step);
    const n = this.range.end - this.range.start;
    for (const [label, a] of [['expAvg', state.expAvg], ['expAvgSq', state.expAvgSq]] as const) {
      if (!(a instanceof Float32Array)) throw new RangeError(`AdamW.importFlat: ${label} must be a Float32Array`);
      if (a.length !== n) throw new RangeError(`AdamW.importFlat: ${label} has ${a.length} elements, the range [${this.range.start}, ${this.range.end}) has ${n}`);
    }
    this.#expAvg = options.adopt ? state.expAvg : state.expAvg.slice();
    this.#expAvgSq = options.adopt ? state.expAvgSq : state.expAvgSq.slice();
    this.#step = state.step;
  }

  /** Per-parameter state needs every parameter's moments: only an optimizer over the whole buffer has them. */
  #requireWhole(what: string): void {
    if (this.range.start !== 0 || this.range.end !== this.size) {
      throw new RangeError(
        `AdamW.${what} needs the whole buffer, but this optimizer holds [${this.range.start}, ${this.range.end}) of ${this.size}: use exportFlat/importFlat`,
      );
    }
  }

  /** Copies of the moments, keyed by parameter name in segment order. */
  exportState(): OptimizerState {
    this.#requireWhole('exportState');
    const expAvg: Record<string, F32Tensor> = {}, expAvgSq: Record<string, F32Tensor> = {};
    for (const s of this.segments) {
      expAvg[s.name] = { dtype: 'F32', shape: s.shape, data: this.#expAvg.slice(s.offset, s.offset + s.size) };
      expAvgSq[s.name] = { dtype: 'F32', shape: s.shape, data: this.#expAvgSq.slice(s.offset, s.offset + s.size) };
    }
    return { step: this.#step, expAvg, expAvgSq };
  }

  /** Replaces the state; every parameter's moments must be present, float32, with its shape, and nothing else. */
  importState(state: OptimizerStateLike): void {
    this.#requireWhole('importState');
    checkStep(state.step);
    const m = new Float32Array(this.size), v = new Float32Array(this.size);
    for (const [label, moments, into] of [['exp_avg', state.expAvg, m], ['exp_avg_sq', state.expAvgSq, v]] as const) {
      for (const s of this.segments) {
        const t = moments[s.name];
        if (t === undefined) throw new RangeError(`optimizer state lacks ${label}.${s.name}`);
        if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) throw new RangeError(`${label}.${s.name} is ${t.dtype}, expected F32`);
        if (t.shape.join() !== s.shape.join() || t.data.length !== s.size) {
          throw new RangeError(`${label}.${s.name} has shape [${t.shape}], expected [${s.shape}]`);
        }
        into.set(t.data, s.offset);
      }
      const extra = Object.keys(moments).find((name) => !this.segments.some((s) => s.name === name));
      if (extra !== undefined) throw new RangeError(`optimizer state has ${label}.${extra}, which is no parameter`);
    }
    this.#expAvg = m;
    this.#expAvgSq = v;
    this.#step = state.step;
  }
}

function checkStep(step: number): void {
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`optimizer step must be a non-negative integer, got ${step}`);
}
