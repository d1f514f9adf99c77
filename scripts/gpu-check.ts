/**
 * The Node half of scripts/gpu-check.sh: brings tfjs up on WebGPU (model/compute/webgpu.ts), measures the
 * best float32 matmul there, then GPT-2-small's training step as an agent runs it (bench/train-step.ts --model
 * gpt2-small: model FLOP/s and its ratio to the backend's matmul peak). `--software` uses Mesa's llvmpipe (a check
 * of the path, not of a GPU: its 128 MiB binding limit cannot hold GPT-2's wte, and the step says so).
 * Prints one JSON object as its last line; exits 1 when there is no usable GPU, saying why.
 */
import { loadBackend, measureMatmulGflops, type LoadedBackend } from '../model/compute/backend.ts';

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
loaded.release();

// GPT-2-small's training step, unsplit, as one agent's trainer runs it.
let step: Record<string, unknown>;
try {
  const { default: trainStep } = await import('../bench/train-step.ts');
  const r = (await trainStep(['--backend', software ? 'webgpu-software' : 'webgpu', '--model', 'gpt2-small'])) as Record<string, unknown>;
  step = { step_ms: r.step_ms, tokens_per_s: r.tokens_per_s, model_gflops: r.model_gflops, matmul_peak_gflops: r.matmul_peak_gflops, ratio: r.ratio, batch: 2, seq: 1024 };
  console.log(`gpu-check: GPT-2-small training step (2 × 1024 tokens): ${r.step_ms} ms, ${r.tokens_per_s} tokens/s, ${r.model_gflops} model GFLOP/s = ${r.ratio} of the ${r.matmul_peak_gflops} GFLOP/s matmul peak (target ≥ 0.5)`);
} catch (err) {
  step = { refused: (err as Error).message };
  console.log(`gpu-check: GPT-2-small training step: not run: ${(err as Error).message}`);
}
console.log(JSON.stringify({ ok: true, adapter: gpu, matmul_gflops: peaks, peak_gflops: Math.max(...Object.values(peaks)), gpt2_small_step: step }));
