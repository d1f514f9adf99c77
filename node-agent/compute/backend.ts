/**
 * Picks and initialises the TensorFlow.js backend. `auto` prefers @tensorflow/tfjs-node-gpu, then
 * @tensorflow/tfjs-node (optional: they cannot be installed where their libtensorflow download is blocked),
 * then wasm (SIMD), which always works. `cpu` is the plain-JS reference backend.
 */
export const BACKENDS = ['auto', 'wasm', 'cpu', 'tensorflow', 'tensorflow-gpu'] as const;
export type BackendChoice = (typeof BACKENDS)[number];

export type Tf = typeof import('@tensorflow/tfjs');

export interface LoadedBackend {
  tf: Tf;
  name: string; // what the agent reports: wasm, cpu, tensorflow, tensorflow-gpu
}

async function tryImport(specifier: string): Promise<Tf | null> {
  try {
    return (await import(specifier)) as Tf;
  } catch {
    return null;
  }
}

export async function loadBackend(choice: BackendChoice): Promise<LoadedBackend> {
  if (choice === 'auto' || choice === 'tensorflow-gpu') {
    const tf = await tryImport('@tensorflow/tfjs-node-gpu');
    if (tf) return { tf, name: 'tensorflow-gpu' };
    if (choice === 'tensorflow-gpu') throw new Error('@tensorflow/tfjs-node-gpu is not installed; install it or use --backend wasm');
  }
  if (choice === 'auto' || choice === 'tensorflow') {
    const tf = await tryImport('@tensorflow/tfjs-node');
    if (tf) return { tf, name: 'tensorflow' };
    if (choice === 'tensorflow') throw new Error('@tensorflow/tfjs-node is not installed; install it or use --backend wasm');
  }
  const tf = await import('@tensorflow/tfjs');
  if (choice === 'cpu') {
    await tf.setBackend('cpu');
  } else {
    await import('@tensorflow/tfjs-backend-wasm');
    // Stock wasm BatchMatMul runs transposed and batched products (every gradient, all of attention) in a plain
    // loop at ~2 GFLOP/s; these route them through XNNPACK (~20). Each thread has its own kernel registry.
    (await import('../../model/kernels/index.ts')).registerFastWasmKernels();
    if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend failed to initialise');
  }
  await tf.ready();
  return { tf, name: tf.getBackend() };
}

/** Best-of-N float32 matmul throughput, in GFLOP/s (2·n³ FLOPs per n×n·n×n product). */
export function measureMatmulGflops(tf: Tf, n = 512, reps = 5): number {
  const a = tf.randomNormal([n, n]);
  const b = tf.randomNormal([n, n]);
  let best = Infinity;
  for (let i = 0; i <= reps; i++) {
    const start = performance.now();
    const c = tf.matMul(a, b);
    c.dataSync(); // forces the work (and a device sync on GPU backends)
    const ms = performance.now() - start;
    c.dispose();
    if (i > 0) best = Math.min(best, ms); // the first run pays for compilation/warm-up
  }
  a.dispose();
  b.dispose();
  return (2 * n ** 3) / (best * 1e6);
}
