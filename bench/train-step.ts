/**
 * npm run bench -- train-step [--steps 12] [--backend wasm|webgpu|webgpu-software|…] [--model reference|gpt2-small]
 *                             [--batch B] [--seq T]
 *
 * One agent's training step, run the way the agent's trainer worker runs an unsplit model (loadBackend: wasm with
 * the fast matmul kernels, or WebGPU through Dawn; the whole model as one StageModel shard, its backward into the
 * flat gradient, clip, AdamW, parameter upload), against the backend's own best large matmul in the same run.
 * Models: `reference` (vocab 256, d_model 128, 4 heads, 2 layers, context 64, batch 16) and `gpt2-small` (GPT-2's
 * 124 M parameters: 12 layers, 768 wide, 12 heads, context 1024, vocabulary 50,257; default batch 2 × 1024).
 *   backend, adapter     what actually ran (adapter: the GPU's vendor and description on WebGPU, else "cpu")
 *   tokens_per_s         batch·seq / median step time
 *   model_flops_per_s    (6·params + 12·layers·seq·d_model) FLOPs per token × tokens/s (PaLM's count:
 *                        weights forward+backward, plus attention scores and values)
 *   step_ms              median step (forward, backward, AdamW, parameter upload)
 *   matmul_peak_gflops   best 1024³ float32 matmul on the same backend (the practical ceiling)
 *   ratio                model FLOP/s ÷ matmul peak (target ≥ 0.7 on wasm; ≥ 0.5 on a GPU)
 */
import { adapterName } from '../protocol/gpu.ts';
import * as tf from '@tensorflow/tfjs';
import { intOption, parseCli } from '../common/cli.ts';
import { largestTensorBytes } from '../coordinator/jobs/cost-model.ts';
import { AdamW, clipGradNorm } from '../model/optim.ts';
import { initShardParams, shardLayout } from '../model/shard-layout.ts';
import { StageModel } from '../model/stage-model.ts';
import { BACKENDS, loadBackend, measureMatmulGflops, type BackendChoice } from '../model/compute/backend.ts';
import { isBackendChoice } from '../protocol/backends.ts';

const MODELS = {
  reference: { config: { vocabSize: 256, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 128 }, batch: 16, seq: 64 },
  'gpt2-small': { config: { vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 }, batch: 2, seq: 1024 },
} as const;

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseCli(argv, { steps: { type: 'string' }, backend: { type: 'string' }, model: { type: 'string' }, batch: { type: 'string' }, seq: { type: 'string' } });
  const name = (values.model ?? 'reference') as keyof typeof MODELS;
  if (!(name in MODELS)) throw new Error(`--model must be one of ${Object.keys(MODELS).join(', ')}`);
  const { config } = MODELS[name];
  const big = name !== 'reference';
  const steps = intOption(values.steps, 'steps', big ? 4 : 12, 3, 1000);
  const warmUp = big ? 1 : 2; // the first steps pay for kernel compilation and weight packing
  const B = intOption(values.batch, 'batch', MODELS[name].batch, 1, 1024);
  const T = intOption(values.seq, 'seq', MODELS[name].seq, 1, config.nCtx);
  const choice = (values.backend ?? 'wasm') as BackendChoice;
  if (!isBackendChoice(choice)) throw new Error(`--backend must be one of ${BACKENDS.join(', ')}`);
  const loaded = await loadBackend(choice);
  const adapter = loaded.gpu ? adapterName(loaded.gpu) : 'cpu';
  const largest = largestTensorBytes(config, B, T, { blocks: config.nLayer, first: true, last: true, tensor: 1 });
  if (loaded.gpu && largest > loaded.gpu.maxStorageBufferBindingSize) {
    loaded.release();
    throw new Error(`${name} at batch ${B} × ${T} has a ${(largest / 2 ** 20).toFixed(0)} MiB tensor, over ${adapter}'s binding limit of ` +
      `${(loaded.gpu.maxStorageBufferBindingSize / 2 ** 20).toFixed(0)} MiB (maxStorageBufferBindingSize): this adapter cannot hold it unsplit`);
  }

  const layout = shardLayout(config, { stage: 0, stages: 1, firstLayer: 0, endLayer: config.nLayer, tpRank: 0, tpSize: 1 });
  const flat = initShardParams(config, layout, 1);
  const model = new StageModel(config, layout, flat);
  const optimizer = new AdamW(layout.specs);
  const grads = new Float32Array(layout.totalSize);
  const params = layout.totalSize;
  // Real-looking token streams: a fixed pseudo-random sequence, targets shifted by one.
  let x = 12345;
  const stream = Int32Array.from({ length: B * (T + 1) }, () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 16) % config.vocabSize);
  const ids = new Int32Array(B * T);
  const targets = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    ids.set(stream.subarray(b * (T + 1), b * (T + 1) + T), b * T);
    targets.set(stream.subarray(b * (T + 1) + 1, (b + 1) * (T + 1)), b * T);
  }
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    grads.fill(0);
    const { loss } = await model.backward({ ids }, B, T, { targets, scale: 1 }, grads);
    clipGradNorm(grads, 1);
    optimizer.update(flat, grads, 6e-4);
    model.writeParams(flat);
    const ms = performance.now() - t0;
    if (i >= warmUp) times.push(ms);
    console.error(`step ${i + 1}/${steps}: ${ms.toFixed(1)} ms, loss ${loss!.toFixed(3)}${i < warmUp ? ' (warm-up)' : ''}`);
  }
  const stepMs = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
  const peak = await measureMatmulGflops(loaded.tf, 1024, 5);
  const tokensPerS = (B * T) / (stepMs / 1000);
  const flopsPerToken = 6 * params + 12 * config.nLayer * T * config.nEmbd;
  const modelFlopsPerS = flopsPerToken * tokensPerS;
  model.dispose();
  loaded.release();
  void tf;
  return {
    bench: 'train-step',
    backend: loaded.name,
    adapter,
    model: name,
    config: { ...config, batch: B, seq: T },
    params,
    step_ms: Math.round(stepMs * 10) / 10,
    tokens_per_s: Math.round(tokensPerS),
    model_flops_per_s: Math.round(modelFlopsPerS),
    model_gflops: Math.round(modelFlopsPerS / 1e7) / 100,
    matmul_peak_gflops: Math.round(peak * 100) / 100,
    ratio: Math.round((modelFlopsPerS / 1e9 / peak) * 1000) / 1000,
    target_ratio: loaded.gpu && !loaded.gpu.software ? 0.5 : 0.7,
  };
}
