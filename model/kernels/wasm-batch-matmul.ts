/**
 * Fast replacements for the wasm backend's `BatchMatMul` and `_FusedMatMul` kernels.
 *
 * Why: the stock wasm kernel (tfjs-backend-wasm 4.22, cc/batch_mat_mul_impl.cc) only takes its XNNPACK
 * fully-connected path when both operands have batch size 1 and neither is transposed; everything else — every
 * gradient matmul (they all transpose one side) and every attention matmul (batched) — runs a scalar blocked loop
 * at 0.7–1.7 GFLOP/s instead of ~20.
 *
 * How: every product is rewritten as a sequence of calls that *do* qualify for the fast path:
 *  - a transposed operand is materialised once (the wasm `Transpose` kernel for small blocks, a cache-blocked JS
 *    copy on the wasm heap for large matrices; memory-bound, cheap next to the matmul); for transposeA && transposeB we instead compute (B·A) and transpose the (smaller) output when that
 *    moves fewer bytes, since Aᵀ·Bᵀ = (B·A)ᵀ and the stored layouts of B and A are then exactly what XNNPACK wants;
 *  - batches are fed one at a time as zero-copy *views*: a fresh tensor id registered on the wasm side
 *    (`tfjs.registerTensor(id, size, byteOffset)`) that points into the middle of the operand's heap buffer, and
 *    unregistered (`tfjs.disposeData(id)`, which frees nothing) afterwards;
 *  - when the right operand is shared by every batch (a linear layer on [batch, seq, d] activations) the batches of
 *    the left operand are contiguous, so the whole product is one [b·m, k]×[k, n] call;
 *  - batch dims broadcast numpy-style (any rank, size-1 dims stretch), a superset of what tfjs' own kernels handle.
 *
 * Packed weights: the wasm backend caches the XNNPACK operator (the right operand, packed) by the right operand's
 * tensor id and deletes it when that tensor is disposed. When a whole tensor is the right operand (linear layers'
 * weights) its own id is passed, so the packing (~0.6 ms for 128×384) is paid once per weight tensor, not per call
 * (up to PACK_CACHE_MAX_ELEMENTS; larger weights are packed per call rather than held twice, except in products of
 * a few rows — decoding — where packing would cost more than the product: PACK_CACHE_ANY_SIZE_ROWS).
 * A reshape shares the id but not the shape, and the cache ignores shapes, so each buffer is remembered with the
 * [k, n] it was packed as; used with another shape (or batch slices of it) it goes in as a fresh view id, whose
 * packed operator is deleted when the view is unregistered. (Two inherited limits: a buffer the *stock* kernel
 * packed under its own id with another shape is not known here; and a fused bias is passed by its own id, so a
 * fused product with batched right operands leaves one stale 24-byte cache key per call on the bias' entry until
 * the bias tensor is disposed.)
 *
 * Falls back to the stock kernel for what it does not speed up: non-float32 inputs, empty tensors, prelu
 * activation, and a fused bias that is not rank 1 with n elements.
 */
import * as tf from '@tensorflow/tfjs';
import type { DataType, KernelConfig, KernelFunc, NamedAttrMap, TensorInfo } from '@tensorflow/tfjs';
import { PACK_CACHE_ANY_SIZE_ROWS, PACK_CACHE_MAX_ELEMENTS } from './pack-cache.ts';

/** The parts of the Emscripten module and of `BackendWasm` this kernel uses (not all public in their typings). */
interface WasmModule {
  HEAPU8: Uint8Array;
  cwrap(name: string, returnType: null, argTypes: string[]): (...args: unknown[]) => void;
  tfjs: {
    registerTensor(id: number, size: number, memoryOffset: number): void;
    disposeData(id: number): void;
  };
}
interface WasmTensorData {
  id: number;
  memoryOffset: number;
  shape: number[];
}
export interface WasmBackendInternals {
  wasm: WasmModule;
  dataIdMap: { get(dataId: object): WasmTensorData | undefined };
  dataIdNextNumber: number;
  makeOutput(shape: number[], dtype: DataType): TensorInfo;
  disposeData(dataId: object, force?: boolean): boolean;
  numDataIds(): number;
}

/** Must match cc/fusable_activations.h (tfjs-backend-wasm dist/kernels/types.js `FusableActivation`). */
const ACTIVATIONS: Record<string, number> = { linear: 0, relu: 1, relu6: 2, leakyrelu: 4, sigmoid: 5, elu: 6 };

type FusedMatMulFn = (
  aId: number, aShape: Uint8Array, aRank: number, bId: number, bShape: Uint8Array, bRank: number,
  transposeA: boolean, transposeB: boolean, activation: number, biasId: number, preluId: number,
  leakyreluAlpha: number, outId: number,
) => void;

const wasmFused = new WeakMap<object, FusedMatMulFn>();
function fusedFn(backend: WasmBackendInternals): FusedMatMulFn {
  let fn = wasmFused.get(backend);
  if (!fn) {
    // The `_FusedMatMul` export is the general entry point; `BatchMatMul` is it with linear activation, no bias.
    fn = backend.wasm.cwrap('_FusedMatMul', null, [
      'number', 'array', 'number', 'number', 'array', 'number',
      'number', 'number', 'number', 'number', 'number', 'number', 'number',
    ]) as unknown as FusedMatMulFn;
    wasmFused.set(backend, fn);
  }
  return fn;
}

/** The stock kernels, captured before they are replaced (also what the fallbacks call). */
export interface StockKernels {
  batchMatMul: KernelConfig;
  fusedMatMul: KernelConfig | undefined;
  transpose: KernelConfig;
}
let stock: StockKernels | undefined;
export function setStockKernels(k: StockKernels): void {
  stock = k;
}
function stockKernels(): StockKernels {
  if (!stock) throw new Error('fast wasm matmul kernels used before registerFastWasmKernels() captured the stock ones');
  return stock;
}

function sizeOf(shape: readonly number[]): number {
  let s = 1;
  for (const d of shape) s *= d;
  return s;
}

/**
 * For each flat index of the broadcast batch shape, the flat batch index into an operand with batch dims `dims`
 * (numpy broadcasting: right-aligned, size-1 dims repeat).
 */
export function broadcastBatchIndex(dims: readonly number[], outDims: readonly number[]): Int32Array {
  const n = sizeOf(outDims);
  const idx = new Int32Array(n);
  const offset = outDims.length - dims.length;
  // Stride of each out dim within the operand (0 where the operand broadcasts or lacks the dim).
  const strides = new Array<number>(outDims.length).fill(0);
  let s = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    const d = dims[i]!;
    if (d !== 1) strides[i + offset] = s;
    s *= d;
  }
  for (let flat = 0; flat < n; flat++) {
    let rem = flat;
    let j = 0;
    for (let i = outDims.length - 1; i >= 0; i--) {
      const d = outDims[i]!;
      j += (rem % d) * strides[i]!;
      rem = Math.floor(rem / d);
    }
    idx[flat] = j;
  }
  return idx;
}

function shapeBytes(shape: number[]): Uint8Array {
  return new Uint8Array(new Int32Array(shape).buffer);
}

interface Operand {
  dataId: object; // the buffer the batches live in
  idx: Int32Array; // per output batch: which batch of this buffer
  rows: number;
  cols: number;
}

interface Epilogue {
  activation: number;
  biasId: number; // wasm tensor id of an n-element bias, or 0
  leakyreluAlpha: number;
}

/** The [k, n] each right-operand buffer was first packed as under its own id (see the header). */
const packedAs = new WeakMap<object, string>();

/**
 * out[i] (rows × cols, contiguous, i-th block of `out`) = act(L[idx_L[i]] · R[idx_R[i]] + bias), all operands
 * row-major, through the XNNPACK path only.
 */
function runProducts(backend: WasmBackendInternals, L: Operand, R: Operand, outDataId: object, ep: Epilogue): void {
  const fn = fusedFn(backend);
  const { wasm } = backend;
  const nb = L.idx.length;
  const m = L.rows;
  const k = L.cols;
  const n = R.cols;
  const lBase = backend.dataIdMap.get(L.dataId)!.memoryOffset;
  const rBase = backend.dataIdMap.get(R.dataId)!.memoryOffset;
  const oBase = backend.dataIdMap.get(outDataId)!.memoryOffset;

  const view = (offset: number, size: number): number => {
    const id = backend.dataIdNextNumber++;
    wasm.tfjs.registerTensor(id, size, offset);
    return id;
  };
  const bias = ep.biasId;

  let rShared = true;
  for (let i = 1; i < nb; i++) if (R.idx[i] !== R.idx[0]) rShared = false;
  let lContiguous = true;
  for (let i = 0; i < nb; i++) if (L.idx[i] !== i) lContiguous = false;

  // One call when the right operand is shared and the left batches are stacked in order: [nb·m, k]×[k, n].
  const calls = rShared && lContiguous ? 1 : nb;
  const rowsPerCall = calls === 1 ? nb * m : m;
  const aShape = shapeBytes([1, rowsPerCall, k]);
  const bShape = shapeBytes([1, k, n]);
  // The right operand's own id when it is one whole tensor always packed as [k, n] (its packing stays cached).
  const rData = backend.dataIdMap.get(R.dataId)!;
  let rOwnId = 0;
  if (rShared && sizeOf(rData.shape) === k * n && (k * n <= PACK_CACHE_MAX_ELEMENTS || rowsPerCall <= PACK_CACHE_ANY_SIZE_ROWS)) {
    const key = `${k}x${n}`;
    if (!packedAs.has(R.dataId)) packedAs.set(R.dataId, key);
    if (packedAs.get(R.dataId) === key) rOwnId = rData.id;
  }
  for (let c = 0; c < calls; c++) {
    const lIdx = calls === 1 ? 0 : L.idx[c]!;
    const rIdx = R.idx[c]!;
    const aId = view(lBase + lIdx * m * k * 4, rowsPerCall * k);
    const bId = rOwnId || view(rBase + rIdx * k * n * 4, k * n);
    const oId = view(oBase + c * m * n * 4, rowsPerCall * n);
    try {
      fn(aId, aShape, 3, bId, bShape, 3, false, false, ep.activation, bias, 0, ep.leakyreluAlpha, oId);
    } finally {
      wasm.tfjs.disposeData(aId);
      // For a view this also deletes the XNNPACK operator (packed weights) cached on its id.
      if (bId !== rOwnId) wasm.tfjs.disposeData(bId);
      wasm.tfjs.disposeData(oId);
    }
  }
}

/**
 * [batch, r, c] → [batch, c, r] into a new wasm buffer; the caller disposes the result. Large matrices go through a
 * cache-blocked JS loop on the wasm heap: measured ~2× faster than the wasm `Transpose` kernel (which writes with a
 * full-row stride) for [1024, 512] (1.6 vs 3.5 ms) and [1024, 128] (0.4 vs 0.9 ms). Small blocks (attention's
 * [64, 64, 32]) stay on the wasm kernel, which measured faster there (e.g. 64×[64,64]: whole product 1.7 vs 2.2 ms).
 */
const JS_TRANSPOSE_MIN_ELEMENTS = 1 << 16;
function transposeLast2(backend: WasmBackendInternals, dataId: object, batch: number, r: number, c: number): TensorInfo {
  if (r * c < JS_TRANSPOSE_MIN_ELEMENTS) {
    const x: TensorInfo = { dataId, shape: [batch, r, c], dtype: 'float32' };
    return stockKernels().transpose.kernelFunc({
      inputs: { x },
      backend: backend as unknown as object,
      attrs: { perm: [0, 2, 1] },
    }) as TensorInfo;
  }
  const out = backend.makeOutput([batch, c, r], 'float32');
  // Views only after the allocation: growing wasm memory replaces the heap's ArrayBuffer.
  const heap = backend.wasm.HEAPU8.buffer;
  const size = batch * r * c;
  const src = new Float32Array(heap, backend.dataIdMap.get(dataId)!.memoryOffset, size);
  const dst = new Float32Array(heap, backend.dataIdMap.get(out.dataId)!.memoryOffset, size);
  const T = 16;
  for (let b = 0; b < batch; b++) {
    const base = b * r * c;
    for (let i0 = 0; i0 < r; i0 += T) {
      const i1 = Math.min(i0 + T, r);
      for (let j0 = 0; j0 < c; j0 += T) {
        const j1 = Math.min(j0 + T, c);
        for (let i = i0; i < i1; i++) {
          let s = base + i * c + j0;
          let d = base + j0 * r + i;
          for (let j = j0; j < j1; j++, s++, d += r) dst[d] = src[s]!;
        }
      }
    }
  }
  return out;
}

interface MatMulArgs {
  a: TensorInfo;
  b: TensorInfo;
  transposeA: boolean;
  transposeB: boolean;
  ep: Epilogue;
}

/** The product with the shapes tfjs gives it, or null when the caller should use the stock kernel. */
function fastMatMul(backend: WasmBackendInternals, { a, b, transposeA, transposeB, ep }: MatMulArgs): TensorInfo | null {
  if (a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  const ra = a.shape.length;
  const rb = b.shape.length;
  if (ra < 2 || rb < 2) return null;
  const m = transposeA ? a.shape[ra - 1]! : a.shape[ra - 2]!;
  const kA = transposeA ? a.shape[ra - 2]! : a.shape[ra - 1]!;
  const kB = transposeB ? b.shape[rb - 1]! : b.shape[rb - 2]!;
  const n = transposeB ? b.shape[rb - 2]! : b.shape[rb - 1]!;
  const outerA = a.shape.slice(0, -2);
  const outerB = b.shape.slice(0, -2);
  const outBatch = tf.broadcast_util.assertAndGetBroadcastShape(outerA, outerB);
  tf.util.assert(kA === kB, () =>
    `Error in matMul: inner shapes (${kA}) and (${kB}) of Tensors with shapes ${a.shape} and ${b.shape} and ` +
    `transposeA=${transposeA} and transposeB=${transposeB} must match.`);
  const k = kA;
  const nb = sizeOf(outBatch);
  if (m === 0 || n === 0 || k === 0 || nb === 0) return null;
  const batchA = sizeOf(outerA);
  const batchB = sizeOf(outerB);
  const idxA = broadcastBatchIndex(outerA, outBatch);
  const idxB = broadcastBatchIndex(outerB, outBatch);
  const outShape = [...outBatch, m, n];

  const temps: TensorInfo[] = [];
  try {
    // Aᵀ·Bᵀ = (B·A)ᵀ: B stored [n, k] and A stored [k, m] are already the layouts the fast path wants, so only
    // the m·n output needs transposing instead of m·k + k·n of inputs. Not with a bias (it is per output column).
    if (transposeA && transposeB && ep.biasId === 0 && m * n <= (m + n) * k) {
      const swapped = backend.makeOutput([nb, n, m], 'float32');
      try {
        runProducts(
          backend,
          { dataId: b.dataId, idx: idxB, rows: n, cols: k },
          { dataId: a.dataId, idx: idxA, rows: k, cols: m },
          swapped.dataId,
          ep,
        );
        const out = transposeLast2(backend, swapped.dataId, nb, n, m);
        out.shape = outShape;
        return out;
      } finally {
        backend.disposeData(swapped.dataId);
      }
    }
    let aData = a.dataId;
    if (transposeA) {
      const t = transposeLast2(backend, a.dataId, batchA, k, m);
      temps.push(t);
      aData = t.dataId;
    }
    let bData = b.dataId;
    if (transposeB) {
      const t = transposeLast2(backend, b.dataId, batchB, n, k);
      temps.push(t);
      bData = t.dataId;
    }
    const out = backend.makeOutput(outShape, 'float32');
    try {
      runProducts(
        backend,
        { dataId: aData, idx: idxA, rows: m, cols: k },
        { dataId: bData, idx: idxB, rows: k, cols: n },
        out.dataId,
        ep,
      );
    } catch (e) {
      backend.disposeData(out.dataId);
      throw e;
    }
    return out;
  } finally {
    for (const t of temps) backend.disposeData(t.dataId);
  }
}

/** How many kernel calls took the fast route and how many went to the stock kernel (for tests and diagnostics). */
export const fastMatMulStats = { fast: 0, fallback: 0 };

const NO_EPILOGUE: Epilogue = { activation: 0, biasId: 0, leakyreluAlpha: 0 };

export const fastBatchMatMul: KernelFunc = (args) => {
  const backend = args.backend as unknown as WasmBackendInternals;
  const { a, b } = args.inputs as { a: TensorInfo; b: TensorInfo };
  const attrs = (args.attrs ?? {}) as NamedAttrMap;
  const out = fastMatMul(backend, {
    a, b, transposeA: Boolean(attrs.transposeA), transposeB: Boolean(attrs.transposeB), ep: NO_EPILOGUE,
  });
  if (out) {
    fastMatMulStats.fast++;
    return out;
  }
  fastMatMulStats.fallback++;
  return stockKernels().batchMatMul.kernelFunc(args);
};

export const fastFusedMatMul: KernelFunc = (args) => {
  const backend = args.backend as unknown as WasmBackendInternals;
  const { a, b, bias } = args.inputs as { a: TensorInfo; b: TensorInfo; bias?: TensorInfo | null };
  const attrs = (args.attrs ?? {}) as NamedAttrMap;
  const fallback = () => {
    fastMatMulStats.fallback++;
    const k = stockKernels().fusedMatMul;
    if (!k) throw new Error('no stock _FusedMatMul kernel for wasm');
    return k.kernelFunc(args);
  };
  const activation = ACTIVATIONS[String(attrs.activation ?? 'linear')];
  if (activation === undefined) return fallback(); // prelu (per-channel weights) and anything unknown
  const transposeB = Boolean(attrs.transposeB);
  const n = b.shape.length >= 2 ? (transposeB ? b.shape[b.shape.length - 2] : b.shape[b.shape.length - 1]) : -1;
  let biasId = 0;
  if (bias != null) {
    if (bias.shape.length !== 1 || bias.shape[0] !== n || bias.dtype !== 'float32') return fallback();
    biasId = backend.dataIdMap.get(bias.dataId)!.id;
  }
  const alpha = Number(attrs.leakyreluAlpha ?? 0) || 0;
  const out = fastMatMul(backend, {
    a, b, transposeA: Boolean(attrs.transposeA), transposeB, ep: { activation, biasId, leakyreluAlpha: alpha },
  });
  if (!out) return fallback();
  fastMatMulStats.fast++;
  return out;
};
