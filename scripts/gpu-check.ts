/**
 * The Node half of scripts/gpu-check.sh: brings tfjs up on WebGPU (node-agent/compute/webgpu.ts) and measures the
 * best float32 matmul there. `--software` uses Mesa's llvmpipe (a check of the path, not of a GPU).
 * Prints one JSON object as its last line; exits 1 when there is no usable GPU, saying why.
 */
import { loadBackend, measureMatmulGflops, type LoadedBackend } from '../node-agent/compute/backend.ts';

const software = process.argv.includes('--software');
let loaded: LoadedBackend;
try {
  loaded = await loadBackend(software ? 'webgpu-software' : 'webgpu');
} catch (err) {
  console.log(`gpu-check: no usable GPU through WebGPU: ${(err as Error).message}`);
  console.log(JSON.stringify({ ok: false, reason: (err as Error).message }));
  process.exit(1);
}
const { tf, gpu } = loaded;
console.log(`gpu-check: adapter ${gpu!.description || gpu!.vendor} (${gpu!.vendor} ${gpu!.architecture}), Dawn backend ${gpu!.dawnBackend}${gpu!.software ? ', SOFTWARE (not a GPU)' : ''}`);
console.log(`gpu-check: maxBufferSize ${gpu!.maxBufferSize}, maxStorageBufferBindingSize ${gpu!.maxStorageBufferBindingSize}`);

const sizes = software ? [256, 512] : [1024, 2048, 4096];
const peaks: Record<string, number> = {};
for (const n of sizes) {
  peaks[n] = Math.round((await measureMatmulGflops(tf, n, 3)) * 100) / 100;
  console.log(`gpu-check: matmul ${n}³ ${peaks[n]} GFLOP/s`);
}
console.log('gpu-check: GPT-2-small training step: not on WebGPU yet (the trainer reads tensors synchronously; issue 19)');
loaded.release();
console.log(JSON.stringify({ ok: true, adapter: gpu, matmul_gflops: peaks, peak_gflops: Math.max(...Object.values(peaks)), gpt2_small_step: null }));
