/**
 * A zero-copy `Identity` for the wasm backend.
 *
 * Why: under a gradient tape, tfjs-core saves every tensor a gradient needs by cloning it (engine.ts
 * `saveTensorsForBackwardMode` → `clone` → the `Identity` kernel), and the stock wasm `Identity` copies the bytes.
 * So every matmul's weight, every LayerNorm's scale and every activation a backward pass reads was duplicated on
 * the wasm heap for as long as the tape lived: measured on GPT-2-small (124 M parameters, one micro-batch of
 * 1 × 256 tokens) 540 copies, 1.23 GB of the 4 GB that wasm32 can address, enough to run out of memory.
 *
 * How: as tfjs' cpu backend does, the output shares the input's buffer and the backend's reference count goes up;
 * the buffer is freed when the last tensor on it is disposed. Tensors are immutable in tfjs (a variable's
 * `assign` swaps its buffer, it never writes into one), so sharing is safe.
 */
import type { KernelConfig, KernelFunc, TensorInfo } from '@tensorflow/tfjs';

interface RefCounting {
  incRef(dataId: object): void;
}

export const zeroCopyIdentity: KernelFunc = ({ inputs, backend }) => {
  const x = inputs.x as TensorInfo;
  (backend as unknown as RefCounting).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
};

/** Registered in place of the stock kernel by registerFastWasmKernels (model/kernels/index.ts). */
export function zeroCopyIdentityConfig(stock: KernelConfig): KernelConfig {
  return { kernelName: stock.kernelName, backendName: 'wasm', kernelFunc: zeroCopyIdentity, ...(stock.setupFunc ? { setupFunc: stock.setupFunc } : {}) };
}
