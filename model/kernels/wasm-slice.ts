/**
 * A wasm `Slice` that reads its input where it lies on the heap.
 *
 * Why: the stock kernel (tfjs-backend-wasm 4.22, kernels/Slice.js) starts with `backend.readSync(x)`, which copies
 * the *whole* input out of the heap into a fresh JS buffer before copying the slice into the output. Taking 5,461
 * rows (16 MB) of GPT-2's [50,257 × 768] embedding matrix copied its 154 MB and took 140 ms; the chunked LM head
 * (model/lm-head.ts) takes ten such slices per pass.
 *
 * How: the output is allocated first (allocating may grow the heap, which replaces its ArrayBuffer), then the input
 * is viewed on the heap (`typedArrayFromHeap`) and copied run by run: one `set` for a contiguous slice, one per
 * innermost row otherwise. String tensors (not on the heap) go to the stock kernel.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs';

interface HeapBackend {
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(t: TensorInfo): Float32Array | Int32Array | Uint8Array;
}

let stockSlice: KernelFunc | undefined;

export const heapSlice: KernelFunc = (args) => {
  const { inputs, attrs, backend } = args;
  const x = inputs.x as TensorInfo;
  if (x.dtype === 'string') return stockSlice!(args);
  const [begin, size] = tf.slice_util.parseSliceParams(x as unknown as tf.Tensor, attrs!.begin as number | number[], attrs!.size as number | number[]) as [number[], number[]];
  const b = backend as unknown as HeapBackend;
  const out = b.makeOutput(size, x.dtype);
  if (tf.util.sizeFromShape(size) === 0) return out;
  const xVals = b.typedArrayFromHeap(x), outVals = b.typedArrayFromHeap(out);
  const strides = tf.util.computeStrides(x.shape);
  if (tf.slice_util.isSliceContinous(x.shape, begin, size)) {
    const from = tf.slice_util.computeFlatOffset(begin, strides);
    outVals.set(xVals.subarray(from, from + tf.util.sizeFromShape(size)));
    return out;
  }
  // Row by row along the innermost dimension.
  const rank = x.shape.length, inner = size[rank - 1]!;
  const rows = tf.util.sizeFromShape(size) / inner;
  const idx = new Array<number>(Math.max(0, rank - 1)).fill(0);
  for (let r = 0; r < rows; r++) {
    let from = begin[rank - 1]!;
    for (let k = 0; k < rank - 1; k++) from += (begin[k]! + idx[k]!) * strides[k]!;
    outVals.set(xVals.subarray(from, from + inner), r * inner);
    for (let k = rank - 2; k >= 0; k--) {
      if (++idx[k]! < size[k]!) break;
      idx[k] = 0;
    }
  }
  return out;
};

/** Registered in place of the stock kernel by registerFastWasmKernels (model/kernels/index.ts). */
export function heapSliceConfig(stock: KernelConfig): KernelConfig {
  stockSlice = stock.kernelFunc;
  return { kernelName: stock.kernelName, backendName: 'wasm', kernelFunc: heapSlice, ...(stock.setupFunc ? { setupFunc: stock.setupFunc } : {}) };
}
