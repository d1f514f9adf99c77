/**
 * A GPT-2 model's configuration and its parameters as data: the layout that orders every named tensor into ONE flat
 * Float32Array (the form parameters travel in: the optimizer, the data-parallel all-reduce, checkpoints), seeded
 * initialisation, and the conversions between the flat buffer and GPT-2's state dict. gpt.ts builds the model on it.
 */
import type * as tf from '@tensorflow/tfjs';
import type { F32Tensor } from './optim.ts';

// ---------------------------------------------------------------------------------------------------- config

export interface GPTConfig {
  readonly vocabSize: number; // tokens in the vocabulary (GPT-2: 50257)
  readonly nCtx: number; // longest sequence the model sees: rows of wpe (GPT-2: 1024)
  readonly nLayer: number; // transformer blocks (GPT-2 small: 12)
  readonly nHead: number; // attention heads per block; must divide nEmbd
  readonly nEmbd: number; // model width d (GPT-2 small: 768)
}

const CONFIG_KEYS = ['vocabSize', 'nCtx', 'nLayer', 'nHead', 'nEmbd'] as const;

/** Validates a config (every field a positive integer, nHead divides nEmbd, no unknown keys) and freezes a copy. */
export function gptConfig(raw: GPTConfig): GPTConfig {
  for (const key of Object.keys(raw)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) throw new TypeError(`GPTConfig: unknown key ${key}`);
  }
  for (const key of CONFIG_KEYS) {
    const v = raw[key];
    if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`GPTConfig.${key} must be a positive integer, got ${String(v)}`);
  }
  if (raw.nEmbd % raw.nHead !== 0) {
    throw new RangeError(`GPTConfig.nEmbd (${raw.nEmbd}) must be a multiple of nHead (${raw.nHead})`);
  }
  return Object.freeze({ vocabSize: raw.vocabSize, nCtx: raw.nCtx, nLayer: raw.nLayer, nHead: raw.nHead, nEmbd: raw.nEmbd });
}

// ---------------------------------------------------------------------------------------------------- parameters

export interface ParamSpec {
  readonly name: string; // GPT-2 state-dict name, without the `transformer.` prefix
  readonly shape: readonly number[];
  readonly offset: number; // first element in the flat buffer
  readonly size: number; // elements
  readonly decay: boolean; // AdamW weight decay applies (2-D tensors only, as nanoGPT)
  readonly init:
    | { readonly kind: 'normal'; readonly std: number }
    | { readonly kind: 'uniform'; readonly bound: number } // U(-bound, bound): LoRA's A, as PEFT's kaiming_uniform(a=√5)
    | { readonly kind: 'ones' }
    | { readonly kind: 'zeros' };
}

export interface ParamLayout {
  readonly specs: readonly ParamSpec[];
  readonly totalSize: number;
}

/** Every parameter in GPT-2's state-dict order, with its flat offset and initialisation (GPT-2 / nanoGPT). */
export function paramLayout(config: GPTConfig): ParamLayout {
  const { vocabSize: V, nCtx, nLayer, nEmbd: d } = config;
  const std = 0.02;
  const projStd = 0.02 / Math.sqrt(2 * nLayer); // residual projections, scaled per GPT-2 paper
  const normal = (s: number) => ({ kind: 'normal', std: s }) as const;
  const raw: Array<[string, number[], ParamSpec['init']]> = [
    ['wte.weight', [V, d], normal(std)],
    ['wpe.weight', [nCtx, d], normal(std)],
  ];
  for (let l = 0; l < nLayer; l++) {
    const h = `h.${l}`;
    raw.push(
      [`${h}.ln_1.weight`, [d], { kind: 'ones' }],
      [`${h}.ln_1.bias`, [d], { kind: 'zeros' }],
      [`${h}.attn.c_attn.weight`, [d, 3 * d], normal(std)],
      [`${h}.attn.c_attn.bias`, [3 * d], { kind: 'zeros' }],
      [`${h}.attn.c_proj.weight`, [d, d], normal(projStd)],
      [`${h}.attn.c_proj.bias`, [d], { kind: 'zeros' }],
      [`${h}.ln_2.weight`, [d], { kind: 'ones' }],
      [`${h}.ln_2.bias`, [d], { kind: 'zeros' }],
      [`${h}.mlp.c_fc.weight`, [d, 4 * d], normal(std)],
      [`${h}.mlp.c_fc.bias`, [4 * d], { kind: 'zeros' }],
      [`${h}.mlp.c_proj.weight`, [4 * d, d], normal(projStd)],
      [`${h}.mlp.c_proj.bias`, [d], { kind: 'zeros' }],
    );
  }
  raw.push(['ln_f.weight', [d], { kind: 'ones' }], ['ln_f.bias', [d], { kind: 'zeros' }]);
  let offset = 0;
  const specs = raw.map(([name, shape, init]) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const spec: ParamSpec = Object.freeze({ name, shape: Object.freeze(shape), offset, size, decay: shape.length >= 2, init });
    offset += size;
    return spec;
  });
  return Object.freeze({ specs: Object.freeze(specs), totalSize: offset });
}

/**
 * Deterministic initial values for every parameter, as one flat buffer. Each parameter draws from its own stream,
 * seeded by (seed, name), so values do not depend on the backend or on which other parameters exist. The generator
 * is sfc32 with Box-Muller; tf.randomNormal is not used because its seeding differs between backends.
 */
export function initParams(layout: ParamLayout, seed: number): Float32Array {
  const flat = new Float32Array(layout.totalSize);
  for (const spec of layout.specs) fillParam(flat.subarray(spec.offset, spec.offset + spec.size), spec, seed);
  return flat;
}

/** The full initial tensor of one parameter: the same values `initParams` puts at its offset (a sharded model inits from it). */
export function initParam(spec: ParamSpec, seed: number): Float32Array {
  const out = new Float32Array(spec.size);
  fillParam(out, spec, seed);
  return out;
}

/** Writes one parameter's initial values into `out` (zeroed, spec.size long). */
function fillParam(out: Float32Array, spec: ParamSpec, seed: number): void {
  if (spec.init.kind === 'ones') out.fill(1);
  else if (spec.init.kind === 'normal') fillNormal(out, spec.init.std, seedFor(seed, spec.name));
  else if (spec.init.kind === 'uniform') fillUniform(out, spec.init.bound, seedFor(seed, spec.name));
}

function seedFor(seed: number, name: string): number {
  let h = (0x811c9dc5 ^ (seed >>> 0)) >>> 0; // FNV-1a over the name, started from the seed
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

/** sfc32 (seeded, mixed): uniform numbers in (0, 1). */
function sfc32(seed: number): () => number {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0; // sfc32 state
  const next = (): number => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return ((t >>> 0) + 0.5) / 4294967296; // in (0, 1): safe for log
  };
  for (let i = 0; i < 12; i++) next(); // mix the seed in
  return next;
}

function fillNormal(out: Float32Array, std: number, seed: number): void {
  const next = sfc32(seed);
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next()));
    const theta = 2 * Math.PI * next();
    out[i] = std * r * Math.cos(theta);
    if (i + 1 < out.length) out[i + 1] = std * r * Math.sin(theta);
  }
}

function fillUniform(out: Float32Array, bound: number, seed: number): void {
  const next = sfc32(seed);
  for (let i = 0; i < out.length; i++) out[i] = bound * (2 * next() - 1);
}

/** Views of a flat buffer, one per parameter, keyed by name (no copy). */
export function unflatten(flat: Float32Array, layout: ParamLayout): Map<string, Float32Array> {
  if (flat.length !== layout.totalSize) throw new RangeError(`flat buffer has ${flat.length} elements, layout needs ${layout.totalSize}`);
  return new Map(layout.specs.map((s) => [s.name, flat.subarray(s.offset, s.offset + s.size)]));
}

/**
 * The parameters as a state dict in model/safetensors.ts's TensorMap shape, keyed by GPT-2 name in layout order:
 * what model.safetensors holds (GPT2LMHeadModel adds its `transformer.` prefix and ties `lm_head` itself). Copies.
 */
export function stateDict(flat: Float32Array, layout: ParamLayout): Record<string, F32Tensor> {
  const views = unflatten(flat, layout);
  return Object.fromEntries(layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: views.get(s.name)!.slice() } as const]));
}

/** The flat buffer of a state dict (e.g. a loaded checkpoint); every parameter must be F32 with its GPT-2 shape. */
export function flatFromStateDict(
  tensors: Readonly<Record<string, { readonly dtype: string; readonly shape: readonly number[]; readonly data: unknown }>>,
  layout: ParamLayout,
): Float32Array {
  const flat = new Float32Array(layout.totalSize);
  for (const s of layout.specs) {
    const t = tensors[s.name];
    if (t === undefined) throw new RangeError(`state dict lacks ${s.name}`);
    if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) throw new RangeError(`${s.name} is ${t.dtype}, expected F32`);
    if (t.shape.join() !== s.shape.join()) throw new RangeError(`${s.name} has shape [${t.shape}], expected [${s.shape}]`);
    flat.set(t.data, s.offset);
  }
  return flat;
}

/**
 * Adds `scale ×` each gradient tensor into `into` at its parameter's offset (a fresh zero buffer when `into` is
 * omitted) and returns it. Reads every tensor back to JS: a sync point on GPU backends.
 */
export function flattenGrads(grads: ReadonlyMap<string, tf.Tensor>, layout: ParamLayout, into?: Float32Array, scale = 1): Float32Array {
  const flat = into ?? new Float32Array(layout.totalSize);
  if (flat.length !== layout.totalSize) throw new RangeError(`flat buffer has ${flat.length} elements, layout needs ${layout.totalSize}`);
  for (const spec of layout.specs) {
    const g = grads.get(spec.name);
    if (g === undefined) throw new RangeError(`no gradient for ${spec.name}`);
    const values = g.dataSync() as Float32Array;
    if (values.length !== spec.size) throw new RangeError(`gradient for ${spec.name} has ${values.length} elements, expected ${spec.size}`);
    const o = spec.offset;
    for (let i = 0; i < values.length; i++) flat[o + i] = flat[o + i]! + scale * values[i]!;
  }
  return flat;
}
