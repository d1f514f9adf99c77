/**
 * Picks and initialises the TensorFlow.js backend. `auto` prefers @tensorflow/tfjs-node-gpu, then
 * @tensorflow/tfjs-node (optional: they cannot be installed where their libtensorflow download is blocked), then
 * wasm (SIMD), which always works; what it passed over, and why, is in `passedOver`. `cpu` is the plain-JS
 * reference backend.
 *
 * WebGPU (Dawn: Vulkan, Metal or D3D12; compute/webgpu.ts): `webgpu` asks for a GPU adapter and fails saying why
 * there is none; `auto` tries it first and takes it only for a hardware adapter; `webgpu-software` runs it on Mesa's
 * llvmpipe (no GPU needed: how the suite checks the GPU path). What computes on it reads tensors asynchronously
 * (model/tensor-values.ts): tfjs' WebGPU backend cannot dataSync() in Node (it needs OffscreenCanvas).
 */
import type { Worker } from 'node:worker_threads';
import { loadWebGpu, prepareSoftwareGpuEnv, vulkanLoader, WebGpuUnavailable, type GpuInfo } from './webgpu.ts';

import { BACKENDS, type BackendChoice } from '../../protocol/backends.ts';

export { BACKENDS, type BackendChoice };

export type Tf = typeof import('@tensorflow/tfjs');

let gpuTeardown: Promise<unknown> = Promise.resolve();

/**
 * Stops a worker thread that computes on `choice`. Dawn crashes the process (SIGSEGV) when two threads holding
 * its instances are torn down at the same moment, as ranks finishing together do, so WebGPU workers are stopped one
 * at a time (a thread that releases its device and returns does not exit at all: Dawn keeps its loop alive).
 */
export function terminateComputeWorker(worker: Worker, choice: BackendChoice): Promise<unknown> {
  if (choice !== 'webgpu' && choice !== 'webgpu-software' && choice !== 'auto') return worker.terminate();
  const done = gpuTeardown.then(() => worker.terminate());
  gpuTeardown = done.catch(() => {});
  return done;
}

/** Sets what a backend needs in the process's environment; call it on the main thread before starting a worker that loads `choice`. */
export function prepareBackendEnv(choice: BackendChoice): void {
  if (choice === 'webgpu-software') prepareSoftwareGpuEnv();
}

export interface LoadedBackend {
  tf: Tf;
  name: string; // what the agent reports: webgpu, wasm, cpu, tensorflow, tensorflow-gpu
  /** The GPU, on webgpu. */
  gpu?: GpuInfo;
  /** What `auto` tried before this one and why it was not taken (empty otherwise). */
  passedOver: string[];
  /** Releases what the backend holds outside the JS heap (the WebGPU device), so the process can exit. */
  release(): void;
}

async function tryImport(specifier: string): Promise<{ tf: Tf } | { error: string }> {
  try {
    return { tf: (await import(specifier)) as Tf };
  } catch (err) {
    return { error: (err as Error).message.split('\n')[0]! };
  }
}

export async function loadBackend(choice: BackendChoice): Promise<LoadedBackend> {
  const passedOver: string[] = [];
  const none = () => {};
  const webgpu = async (software: boolean): Promise<LoadedBackend> => {
    const tf = await import('@tensorflow/tfjs');
    const gpu = await loadWebGpu(tf, { software });
    await tf.ready();
    return { tf, name: 'webgpu', gpu: gpu.info, passedOver, release: gpu.release };
  };
  if (choice === 'webgpu' || choice === 'webgpu-software') {
    try {
      return await webgpu(choice === 'webgpu-software');
    } catch (err) {
      if (err instanceof WebGpuUnavailable) throw new Error(`--backend ${choice}: ${err.message}`);
      throw err;
    }
  }
  if (choice === 'auto' && vulkanLoader() === null) {
    passedOver.push('webgpu: no Vulkan loader (libvulkan.so.1) on this machine: install the GPU driver\'s Vulkan ICD and libvulkan1');
  } else if (choice === 'auto') {
    try {
      return await webgpu(false);
    } catch (err) {
      passedOver.push(`webgpu: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  if (choice === 'auto' || choice === 'tensorflow-gpu') {
    const r = await tryImport('@tensorflow/tfjs-node-gpu');
    if ('tf' in r) return { tf: r.tf, name: 'tensorflow-gpu', passedOver, release: none };
    if (choice === 'tensorflow-gpu') throw new Error('@tensorflow/tfjs-node-gpu is not installed; install it or use --backend wasm');
    passedOver.push(`tensorflow-gpu: ${r.error}`);
  }
  if (choice === 'auto' || choice === 'tensorflow') {
    const r = await tryImport('@tensorflow/tfjs-node');
    if ('tf' in r) return { tf: r.tf, name: 'tensorflow', passedOver, release: none };
    if (choice === 'tensorflow') throw new Error('@tensorflow/tfjs-node is not installed; install it or use --backend wasm');
    passedOver.push(`tensorflow: ${r.error}`);
  }
  const tf = await import('@tensorflow/tfjs');
  if (choice === 'cpu') {
    await tf.setBackend('cpu');
  } else {
    await import('@tensorflow/tfjs-backend-wasm');
    // Stock wasm BatchMatMul runs transposed and batched products (every gradient, all of attention) in a plain
    // loop at ~2 GFLOP/s; these route them through XNNPACK (~20). Each thread has its own kernel registry.
    (await import('../kernels/index.ts')).registerFastWasmKernels();
    if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend failed to initialise');
  }
  await tf.ready();
  return { tf, name: tf.getBackend(), passedOver, release: none };
}

/**
 * Best-of-N float32 matmul throughput, in GFLOP/s (2·n³ FLOPs per n×n·n×n product), timed until the product's
 * data reaches the CPU (data(), which every backend has; WebGPU's cannot dataSync in Node).
 */
export async function measureMatmulGflops(tf: Tf, n = 512, reps = 5): Promise<number> {
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  let best = Infinity;
  for (let i = 0; i <= reps; i++) {
    const start = performance.now();
    const c = tf.matMul(a, b);
    await c.data(); // forces the work (and a device sync on GPU backends)
    const ms = performance.now() - start;
    c.dispose();
    if (i > 0) best = Math.min(best, ms); // the first run pays for compilation/warm-up
  }
  a.dispose();
  b.dispose();
  return (2 * n ** 3) / (best * 1e6);
}
