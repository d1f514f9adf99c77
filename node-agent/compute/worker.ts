/**
 * The compute worker: runs TensorFlow.js off the agent's main thread, so heartbeats and peer traffic keep
 * flowing while a step computes (wasm compute blocks its thread). Started through worker-boot.mjs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadBackend, measureMatmulGflops, type BackendChoice } from './backend.ts';

const { backend } = workerData as { backend: BackendChoice };
try {
  const loaded = await loadBackend(backend);
  const matmulGflops = await measureMatmulGflops(loaded.tf);
  parentPort!.postMessage({ ok: true, backend: loaded.name, matmulGflops, passedOver: loaded.passedOver, ...(loaded.gpu ? { gpu: loaded.gpu } : {}) });
  loaded.release();
} catch (err) {
  parentPort!.postMessage({ ok: false, error: (err as Error).message });
}
