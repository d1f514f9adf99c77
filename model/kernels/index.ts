/**
 * Registers the fast wasm matmul kernels (see wasm-batch-matmul.ts) in place of the stock ones.
 *
 * Call `registerFastWasmKernels()` after `@tensorflow/tfjs-backend-wasm` has been imported (that import registers
 * the stock wasm kernels); before or after `tf.setBackend('wasm')` both work, since the kernels set themselves up
 * lazily per backend instance. Gradients need nothing extra: MatMul's gradient is itself BatchMatMul (with
 * transposes), so the backward pass goes through the fast kernel too. `unregisterFastWasmKernels()` puts the stock
 * kernels back (benchmarks compare the two in one process).
 */
import * as tf from '@tensorflow/tfjs';
import { fastBatchMatMul, fastFusedMatMul, setStockKernels, type StockKernels } from './wasm-batch-matmul.ts';
import { zeroCopyIdentity, zeroCopyIdentityConfig } from './wasm-identity.ts';
import { heapSlice, heapSliceConfig } from './wasm-slice.ts';

export { broadcastBatchIndex, fastMatMulStats } from './wasm-batch-matmul.ts';

let stock: StockKernels | undefined;
let stockIdentity: tf.KernelConfig | undefined;
let stockSlice: tf.KernelConfig | undefined;

/** True when the wasm backend's BatchMatMul is the fast one. */
export function fastWasmKernelsRegistered(): boolean {
  return tf.getKernel('BatchMatMul', 'wasm')?.kernelFunc === fastBatchMatMul;
}

/**
 * Replaces wasm `BatchMatMul` and `_FusedMatMul` with the fast kernels, `Identity` with a zero-copy one
 * (wasm-identity.ts) and `Slice` with one that does not copy its whole input first (wasm-slice.ts). Idempotent.
 */
export function registerFastWasmKernels(): void {
  if (fastWasmKernelsRegistered()) return;
  const batchMatMul = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!batchMatMul || !transpose) {
    throw new Error("the wasm backend's kernels are not registered: import '@tensorflow/tfjs-backend-wasm' first");
  }
  const fusedMatMul = tf.getKernel('_FusedMatMul', 'wasm');
  stock = { batchMatMul, fusedMatMul, transpose };
  setStockKernels(stock);
  tf.unregisterKernel('BatchMatMul', 'wasm');
  // The stock setup functions still run (a backend initialised after this needs them for the fallbacks).
  tf.registerKernel({
    kernelName: 'BatchMatMul', backendName: 'wasm', kernelFunc: fastBatchMatMul, setupFunc: batchMatMul.setupFunc,
  });
  if (fusedMatMul) {
    tf.unregisterKernel('_FusedMatMul', 'wasm');
    tf.registerKernel({
      kernelName: '_FusedMatMul', backendName: 'wasm', kernelFunc: fastFusedMatMul, setupFunc: fusedMatMul.setupFunc,
    });
  }
  const identity = tf.getKernel('Identity', 'wasm');
  if (identity && identity.kernelFunc !== zeroCopyIdentity) {
    stockIdentity = identity;
    tf.unregisterKernel('Identity', 'wasm');
    tf.registerKernel(zeroCopyIdentityConfig(identity));
  }
  const slice = tf.getKernel('Slice', 'wasm');
  if (slice && slice.kernelFunc !== heapSlice) {
    stockSlice = slice;
    tf.unregisterKernel('Slice', 'wasm');
    tf.registerKernel(heapSliceConfig(slice));
  }
}

/** Puts the stock wasm kernels back. Idempotent; a no-op if the fast ones were never registered. */
export function unregisterFastWasmKernels(): void {
  if (!stock || !fastWasmKernelsRegistered()) return;
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel(stock.batchMatMul);
  if (stock.fusedMatMul) {
    tf.unregisterKernel('_FusedMatMul', 'wasm');
    tf.registerKernel(stock.fusedMatMul);
  }
  if (stockIdentity) {
    tf.unregisterKernel('Identity', 'wasm');
    tf.registerKernel(stockIdentity);
  }
  if (stockSlice) {
    tf.unregisterKernel('Slice', 'wasm');
    tf.registerKernel(stockSlice);
  }
}
