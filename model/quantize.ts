/**
 * Weight-only INT8 quantization for serving: symmetric, per output channel, round to nearest.
 *
 * Which tensors (the rule): every 2-D tensor becomes INT8; 1-D tensors (LayerNorm gains and biases, every bias)
 * stay F32 — they are <1 % of the bytes and LayerNorm gains are the most sensitive values in the model.
 *   - Conv1D weights (`c_attn`, `c_proj`, `c_fc`, GPT-2's [in, out] layout, y = x·W): one scale per COLUMN, i.e.
 *     per output channel, so each output feature keeps its own range.
 *   - Embedding tables `wte.weight` [V, d] and `wpe.weight` [nCtx, d]: one scale per ROW. The embedding reads a
 *     row per token/position, and the tied head computes logit_v = x·wte[v], so a row of wte is the head's output
 *     channel too: per-row is per-output-channel for both of wte's uses.
 *
 * Per channel c: scale_c = max|w_c| / 127 (rounded to float32), q = round-half-away-from-zero(w / scale_c) clamped
 * to [−127, 127] (−128 is never used: the range stays symmetric), and dequantized w' = scale_c · q, so
 * |w − w'| ≤ scale_c / 2. An all-zero channel gets scale 1 and q = 0. No clipping search: on the trained test
 * model plain max-abs scaling already changes held-out perplexity by well under 1 % (see the README), so a search
 * over percentiles would buy nothing measurable.
 *
 * Stored form (model.int8.safetensors): `NAME` as I8 with the F32 tensor's shape, `NAME.scale` as F32 shaped so it
 * broadcasts against it — [rows, 1] for per-row, [1, cols] for per-column — which makes the file self-describing
 * (dequantization needs no naming rule), and every other tensor as F32.
 *
 * This saves bytes on disk and on the wire only: the gateway dequantizes at load and computes in float32.
 */
import { ModelError } from './errors.ts';
import { readSafetensors, writeSafetensors, type Tensor, type TensorMap } from './safetensors.ts';
import type { F32Tensor } from './optim.ts';

/** The file a quantized version's weights live in (beside config.json and tokenizer.json). */
export const INT8_WEIGHTS_FILE = 'model.int8.safetensors';
/** `quantization_config.quant_method` in config.json, and `quantization` in the safetensors metadata. */
export const INT8_METHOD = 'meshtrain-int8';
export const SCALE_SUFFIX = '.scale';
const QMAX = 127;

type F32In = { readonly dtype: string; readonly shape: readonly number[]; readonly data: unknown };

export interface Int8Sizes {
  /** Tensor data bytes of the F32 state dict (headers excluded). */
  readonly f32Bytes: number;
  /** Tensor data bytes of the quantized tensors: I8 weights + F32 scales + the F32 tensors kept as they were. */
  readonly int8Bytes: number;
}

export interface QuantizedInt8 {
  readonly tensors: TensorMap;
  readonly bytes: Int8Sizes;
}

function fail(message: string): never {
  throw new ModelError('MDL_ERR_QUANTIZATION', message);
}

const count = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** 'rows' or 'columns' for a tensor that becomes INT8 (the rule at the top), undefined for one that stays F32. */
export function int8Axis(name: string, shape: readonly number[]): 'rows' | 'columns' | undefined {
  if (shape.length !== 2) return undefined;
  return name === 'wte.weight' || name === 'wpe.weight' ? 'rows' : 'columns';
}

/** Quantizes an F32 state dict (model/gpt.ts `stateDict`). Refuses non-F32, mis-sized or non-finite input. */
export function quantizeInt8(stateDict: Readonly<Record<string, F32In>>): QuantizedInt8 {
  const tensors: TensorMap = {};
  let f32Bytes = 0, int8Bytes = 0;
  for (const [name, t] of Object.entries(stateDict)) {
    if (name.endsWith(SCALE_SUFFIX)) fail(`${name}: input names must not end in ${SCALE_SUFFIX} (reserved for scales)`);
    if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) fail(`${name} is ${t.dtype}, only F32 tensors can be quantized`);
    const w = t.data;
    if (w.length !== count(t.shape)) fail(`${name} holds ${w.length} values, its shape [${t.shape}] needs ${count(t.shape)}`);
    f32Bytes += w.byteLength;
    const axis = int8Axis(name, t.shape);
    if (axis === undefined) {
      tensors[name] = { dtype: 'F32', shape: [...t.shape], data: w };
      int8Bytes += w.byteLength;
      continue;
    }
    const [rows, cols] = t.shape as [number, number];
    for (let i = 0; i < w.length; i++) if (!Number.isFinite(w[i]!)) fail(`${name}[${i}] is ${w[i]}: cannot quantize a non-finite weight`);
    const channels = axis === 'rows' ? rows : cols;
    const channelOf = axis === 'rows' ? (i: number) => Math.floor(i / cols) : (i: number) => i % cols;
    const maxAbs = new Float64Array(channels);
    for (let i = 0; i < w.length; i++) {
      const c = channelOf(i), a = Math.abs(w[i]!);
      if (a > maxAbs[c]!) maxAbs[c] = a;
    }
    const scale = new Float32Array(channels);
    for (let c = 0; c < channels; c++) {
      const s = Math.fround(maxAbs[c]! / QMAX);
      scale[c] = s > 0 ? s : 1; // an all-zero (or subnormal) channel: q = 0 whatever the scale
    }
    const q = new Int8Array(w.length);
    for (let i = 0; i < w.length; i++) {
      const x = w[i]! / scale[channelOf(i)]!;
      q[i] = Math.max(-QMAX, Math.min(QMAX, Math.sign(x) * Math.round(Math.abs(x)))); // half away from zero
    }
    tensors[name] = { dtype: 'I8', shape: [rows, cols], data: q };
    tensors[name + SCALE_SUFFIX] = { dtype: 'F32', shape: axis === 'rows' ? [rows, 1] : [1, cols], data: scale };
    int8Bytes += q.byteLength + scale.byteLength;
  }
  return { tensors, bytes: { f32Bytes, int8Bytes } };
}

/**
 * The F32 state dict back from quantized tensors: I8 × its broadcast scale, F32 tensors as they are. Refuses an I8
 * tensor without its scale, a scale without its I8 tensor, a scale of the wrong dtype or shape, a scale that is
 * not finite and positive, and any other dtype.
 */
export function dequantizeInt8(tensors: Readonly<Record<string, Tensor>>): Record<string, F32Tensor> {
  const out: Record<string, F32Tensor> = {};
  for (const [name, t] of Object.entries(tensors)) {
    if (name.endsWith(SCALE_SUFFIX)) {
      const base = name.slice(0, -SCALE_SUFFIX.length);
      if (tensors[base]?.dtype !== 'I8') fail(`${name} is a scale but ${base} is ${tensors[base] ? `${tensors[base].dtype}, not I8` : 'missing'}`);
      continue;
    }
    if (t.dtype === 'F32') {
      out[name] = { dtype: 'F32', shape: t.shape, data: t.data };
      continue;
    }
    if (t.dtype !== 'I8') fail(`${name} is ${t.dtype}; quantized weights hold only I8 and F32 tensors`);
    if (t.shape.length !== 2) fail(`${name} is I8 with shape [${t.shape}]; only 2-D tensors are quantized`);
    const [rows, cols] = t.shape as [number, number];
    const s = tensors[name + SCALE_SUFFIX];
    if (!s) fail(`${name} is I8 but has no ${name}${SCALE_SUFFIX}`);
    if (s.dtype !== 'F32') fail(`${name}${SCALE_SUFFIX} is ${s.dtype}, expected F32`);
    const perRow = s.shape.length === 2 && s.shape[0] === rows && s.shape[1] === 1;
    const perCol = s.shape.length === 2 && s.shape[0] === 1 && s.shape[1] === cols;
    if (!perRow && !perCol) fail(`${name}${SCALE_SUFFIX} has shape [${s.shape}]; for [${rows}, ${cols}] it must be [${rows}, 1] (per row) or [1, ${cols}] (per column)`);
    for (let c = 0; c < s.data.length; c++) {
      const v = s.data[c]!;
      if (!(Number.isFinite(v) && v > 0)) fail(`${name}${SCALE_SUFFIX}[${c}] is ${v}; scales must be finite and positive`);
    }
    const w = new Float32Array(rows * cols);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) w[r * cols + c] = t.data[r * cols + c]! * s.data[perRow ? r : c]!;
    }
    out[name] = { dtype: 'F32', shape: [rows, cols], data: w };
  }
  return out;
}

/** model.int8.safetensors's bytes for an F32 state dict, with the sizes (tensor data bytes, before and after). */
export function writeInt8Safetensors(stateDict: Readonly<Record<string, F32In>>): { bytes: Uint8Array; sizes: Int8Sizes } {
  const { tensors, bytes: sizes } = quantizeInt8(stateDict);
  return { bytes: writeSafetensors(tensors, { format: 'pt', quantization: INT8_METHOD }), sizes };
}

/** The F32 state dict in a model.int8.safetensors file (MDL_ERR_SAFETENSORS for bad bytes, MDL_ERR_QUANTIZATION for bad contents). */
export function readInt8Safetensors(bytes: Uint8Array): Record<string, F32Tensor> {
  const { tensors, metadata } = readSafetensors(bytes);
  if (metadata.quantization !== INT8_METHOD) fail(`the file's metadata says quantization ${JSON.stringify(metadata.quantization ?? null)}, expected "${INT8_METHOD}"`);
  return dequantizeInt8(tensors);
}
