/**
 * What this machine can do, measured on join so the coordinator plans from facts: backend, cores, memory and
 * float32 matmul GFLOP/s. The measurement runs in a worker thread (compute/worker.ts).
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism, freemem, platform, arch, totalmem } from 'node:os';
import type { CapabilitiesInfo } from '../protocol/control.ts';
import { AgentError } from './errors.ts';
import { prepareBackendEnv, terminateComputeWorker, type BackendChoice } from '../model/compute/backend.ts';
import type { GpuInfo } from '../model/compute/webgpu.ts';

/** `note` hears what the backend choice passed over and why (`auto`: a load error is shown, never swallowed). */
export async function measureCapabilities(backend: BackendChoice, note: (line: string) => void = () => {}): Promise<CapabilitiesInfo> {
  prepareBackendEnv(backend);
  type Measured = { backend: string; matmulGflops: number; probeMs: number[]; passedOver: string[]; gpu?: GpuInfo };
  const measured = await new Promise<Measured>((resolve, reject) => {
    const worker = new Worker(new URL('../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./compute/worker.ts', import.meta.url).href, backend },
    });
    worker.once('message', (m: Measured & { ok: boolean; error?: string }) => {
      void terminateComputeWorker(worker, backend);
      if (m.ok) resolve(m);
      else reject(new AgentError('AGT_ERR_BACKEND', `backend '${backend}' failed: ${m.error}`));
    });
    worker.once('error', (err) => reject(new AgentError('AGT_ERR_BACKEND', `compute worker failed: ${err.message}`, { cause: err })));
  });
  for (const why of measured.passedOver) note(`backend ${backend} chose ${measured.backend}, passing over ${why}`);
  return {
    backend: measured.backend,
    cores: availableParallelism(),
    memoryBytes: totalmem(),
    freeMemoryBytes: freemem(),
    matmulGflops: Math.round(measured.matmulGflops * 100) / 100,
    platform: `${platform()}-${arch()}`,
    nodeVersion: process.version,
    probeMs: measured.probeMs,
    ...(measured.gpu ? { gpu: measured.gpu } : {}),
  };
}
