/**
 * The join-time measurement, in a worker thread (compute blocks its thread, and the agent's main thread must keep
 * its connections): loads the backend, then, holding the machine's measuring lock (host-lock.ts), the best float32
 * matmul rate and the compute probe (probe.ts). Started through common/worker-boot.mjs by capabilities.ts.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { loadBackend, measureMatmulGflops, type BackendChoice } from '../../model/compute/backend.ts';
import { hostLock } from './host-lock.ts';

const { backend } = workerData as { backend: BackendChoice };
try {
  const loaded = await loadBackend(backend);
  const { runProbe } = await import('./probe.ts'); // after the backend: its modules see the same tf
  const release = await hostLock(); // one agent of this machine measures at a time (host-lock.ts)
  let matmulGflops: number, probeMs: number[];
  try {
    matmulGflops = await measureMatmulGflops(loaded.tf);
    probeMs = await runProbe();
  } finally {
    await release();
  }
  parentPort!.postMessage({ ok: true, backend: loaded.name, matmulGflops, probeMs, passedOver: loaded.passedOver, ...(loaded.gpu ? { gpu: loaded.gpu } : {}) });
  // No loaded.release(): main terminates this worker (one WebGPU worker at a time, model/compute/backend.ts); destroying the
  // device here raced Dawn's buffer unmapping into a fatal native error now and then.
} catch (err) {
  parentPort!.postMessage({ ok: false, error: (err as Error).message });
}
