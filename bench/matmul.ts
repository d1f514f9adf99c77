/**
 * npm run bench -- matmul [--layers 2] [--vocab 512] [--rounds 3] [--min-ms 300] [--no-gpt] [--backend wasm|webgpu|…]
 *
 * The wasm backend's stock BatchMatMul kernel vs the fast one from model/kernels, side by side in one process (the
 * kernel is swapped with registerFastWasmKernels / unregisterFastWasmKernels between measurements, interleaved
 * over --rounds so that load changing on the machine hits both alike; each figure is the best time seen).
 * On another backend (--backend webgpu: Dawn, a hardware GPU; webgpu-software: llvmpipe) the same shapes run on
 * that backend's own kernels: `stock` and `fast` are then the same kernel measured alike (fast_kernels false:
 * model/kernels/ replaces none there yet), and every time includes reading the product back (a GPU sync).
 *
 * Shapes are every matmul of one GPT training step for the reference config (d_model 128, 4 heads, ctx 64,
 * batch 16 → 1024 rows, 64 attention batches of 64×32): forward and the two gradient products of each (tfjs'
 * MatMul gradient: C=A·B → dA=dC·Bᵀ, dB=Aᵀ·dC; C=A·Bᵀ → dA=dC·B, dB=dCᵀ·A), plus the tied embedding/LM head at
 * --vocab. `count` is how often a shape occurs per step with --layers blocks; the `step` totals weight by it.
 * `peak` is a 1024³ product (batch 1, no transpose: the one case the stock kernel already sends to XNNPACK).
 *
 * Keys: shapes[] {name, a, b, transposeA, transposeB, count, stock_ms, fast_ms, stock_gflops, fast_gflops,
 * speedup}; step {stock_ms, fast_ms, stock_gflops, fast_gflops, speedup} (matmuls only, not the whole step);
 * peak_gflops (fast) and peak_stock_gflops; fast_over_peak (step fast_gflops / peak_gflops); gpt_step {stock_ms,
 * fast_ms, speedup, stock_tokens_per_s, fast_tokens_per_s}: one whole forward+backward (model/gpt.ts lossAndGrads,
 * no optimizer) of the reference config, best of --rounds (skip with --no-gpt); backend and adapter (what actually
 * ran: the GPU's vendor and description on WebGPU, else "cpu"); fast_kernels; seconds.
 */
import { adapterName } from '../protocol/gpu.ts';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../model/gpt.ts';
import { registerFastWasmKernels, unregisterFastWasmKernels } from '../model/kernels/index.ts';
import { BACKENDS, loadBackend, type BackendChoice } from '../model/compute/backend.ts';
import { isBackendChoice } from '../protocol/backends.ts';

interface Shape {
  name: string;
  a: number[];
  b: number[];
  transposeA: boolean;
  transposeB: boolean;
  count: number;
}

function flops(s: Shape): number {
  const ra = s.a.length;
  const rb = s.b.length;
  const m = s.transposeA ? s.a[ra - 1]! : s.a[ra - 2]!;
  const k = s.transposeA ? s.a[ra - 2]! : s.a[ra - 1]!;
  const n = s.transposeB ? s.b[rb - 2]! : s.b[rb - 1]!;
  const batch = s.a.slice(0, -2).reduce((x, y) => x * y, 1);
  return 2 * batch * m * k * n;
}

/** C = A·B (or A·Bᵀ) and the two products of its gradient, as tfjs computes them. */
function withGrads(name: string, a: number[], b: number[], transposeB: boolean, count: number): Shape[] {
  const ra = a.length;
  const m = a[ra - 2]!;
  const k = a[ra - 1]!;
  const n = transposeB ? b[b.length - 2]! : b[b.length - 1]!;
  const batch = a.slice(0, -2);
  const dC = [...batch, m, n];
  if (!transposeB) {
    return [
      { name, a, b, transposeA: false, transposeB: false, count },
      { name: `${name} dA=dC·Bᵀ`, a: dC, b, transposeA: false, transposeB: true, count },
      { name: `${name} dB=Aᵀ·dC`, a, b: dC, transposeA: true, transposeB: false, count },
    ];
  }
  return [
    { name: `${name} (A·Bᵀ)`, a, b, transposeA: false, transposeB: true, count },
    { name: `${name} dA=dC·B`, a: dC, b, transposeA: false, transposeB: false, count },
    { name: `${name} dB=dCᵀ·A`, a: dC, b: a, transposeA: true, transposeB: false, count },
  ];
}

function stepShapes(layers: number, vocab: number): Shape[] {
  const d = 128, heads = 4, ctx = 64, batch = 16;
  const rows = batch * ctx; // 1024
  const hs = d / heads; // 32
  const bh = batch * heads; // 64
  return [
    ...withGrads('qkv [1024,128]×[128,384]', [rows, d], [d, 3 * d], false, layers),
    ...withGrads('attention scores q·kᵀ [64,64,32]×[64,64,32]ᵀ', [bh, ctx, hs], [bh, ctx, hs], true, layers),
    ...withGrads('attention att·v [64,64,64]×[64,64,32]', [bh, ctx, ctx], [bh, ctx, hs], false, layers),
    ...withGrads('attention proj [1024,128]×[128,128]', [rows, d], [d, d], false, layers),
    ...withGrads('mlp up [1024,128]×[128,512]', [rows, d], [d, 4 * d], false, layers),
    ...withGrads('mlp down [1024,512]×[512,128]', [rows, 4 * d], [4 * d, d], false, layers),
    ...withGrads(`embedding one-hot [1024,${vocab}]×[${vocab},128]`, [rows, vocab], [vocab, d], false, 1)
      .filter((s) => !s.name.includes('dA')), // no gradient flows into the one-hot ids
    ...withGrads(`lm head [1024,128]×[${vocab},128]ᵀ`, [rows, d], [vocab, d], true, 1),
  ];
}

/** Best wall time (ms) of `reps` runs, at least one, until `minMs` has been spent; the first run only warms up. */
async function bestMs(run: () => tf.Tensor, minMs: number): Promise<number> {
  const warm = run(); // warm-up: packing, allocation, shader compilation
  await warm.data();
  warm.dispose();
  let best = Infinity;
  const start = performance.now();
  do {
    const t0 = performance.now();
    const y = run();
    await y.data(); // the product on the CPU: on a GPU, the work done
    best = Math.min(best, performance.now() - t0);
    y.dispose();
  } while (performance.now() - start < minMs);
  return best;
}

const round2 = (x: number) => Math.round(x * 100) / 100;

export default async function main(argv: string[]): Promise<object> {
  const { values } = parseArgs({
    args: argv,
    options: {
      layers: { type: 'string', default: '2' },
      vocab: { type: 'string', default: '512' },
      rounds: { type: 'string', default: '3' },
      'min-ms': { type: 'string', default: '300' },
      'no-gpt': { type: 'boolean', default: false },
      backend: { type: 'string', default: 'wasm' },
    },
  });
  const choice = values.backend as BackendChoice;
  if (!isBackendChoice(choice)) throw new Error(`--backend must be one of ${BACKENDS.join(', ')}`);
  const layers = Number(values.layers);
  const vocab = Number(values.vocab);
  const rounds = Number(values.rounds);
  const minMs = Number(values['min-ms']);
  const began = performance.now();

  const loaded = await loadBackend(choice);
  const swaps = loaded.name === 'wasm'; // the stock and the fast kernel exist side by side only on wasm
  const stock = () => swaps && unregisterFastWasmKernels();
  const fast = () => swaps && registerFastWasmKernels();
  const adapter = loaded.gpu ? adapterName(loaded.gpu) : 'cpu';

  const measure = async (s: Shape) => {
    const a = tf.randomNormal(s.a);
    const b = tf.randomNormal(s.b);
    let stockMs = Infinity;
    let fastMs = Infinity;
    try {
      for (let r = 0; r < rounds; r++) {
        stock();
        stockMs = Math.min(stockMs, await bestMs(() => tf.matMul(a, b, s.transposeA, s.transposeB), minMs));
        fast();
        fastMs = Math.min(fastMs, await bestMs(() => tf.matMul(a, b, s.transposeA, s.transposeB), minMs));
      }
    } finally {
      tf.dispose([a, b]);
    }
    return { stockMs, fastMs };
  };

  const results = [];
  let stepStock = 0, stepFast = 0, stepFlops = 0;
  for (const s of stepShapes(layers, vocab)) {
    const f = flops(s);
    const { stockMs, fastMs } = await measure(s);
    const row = {
      name: s.name,
      a: s.a,
      b: s.b,
      transposeA: s.transposeA,
      transposeB: s.transposeB,
      count: s.count,
      stock_ms: round2(stockMs),
      fast_ms: round2(fastMs),
      stock_gflops: round2(f / stockMs / 1e6),
      fast_gflops: round2(f / fastMs / 1e6),
      speedup: round2(stockMs / fastMs),
    };
    console.error(`${s.name}: stock ${row.stock_gflops} GFLOP/s, fast ${row.fast_gflops} GFLOP/s (×${row.speedup})`);
    results.push(row);
    stepStock += s.count * stockMs;
    stepFast += s.count * fastMs;
    stepFlops += s.count * f;
  }

  const peakShape: Shape = { name: 'peak 1024³', a: [1024, 1024], b: [1024, 1024], transposeA: false, transposeB: false, count: 0 };
  const peak = await measure(peakShape);
  const peakFlops = flops(peakShape);
  const peakGflops = peakFlops / peak.fastMs / 1e6;
  console.error(`peak 1024³: stock ${round2(peakFlops / peak.stockMs / 1e6)} GFLOP/s, fast ${round2(peakGflops)} GFLOP/s`);

  let gptStep: object | null = null;
  if (!values['no-gpt']) {
    const [batch, ctx] = [16, 64];
    const model = new GPT({ vocabSize: vocab, nCtx: ctx, nLayer: layers, nHead: 4, nEmbd: 128 }, { seed: 1 });
    const ids = tf.randomUniform([batch, ctx], 0, vocab, 'int32') as tf.Tensor2D;
    const targets = tf.randomUniform([batch, ctx], 0, vocab, 'int32') as tf.Tensor2D;
    const stepMs = async () => {
      let best = Infinity;
      for (let i = 0; i < 3; i++) { // the first run warms up
        const t0 = performance.now();
        const { loss, grads } = model.lossAndGrads(ids, targets);
        await loss.data();
        for (const g of grads.values()) await g.data();
        const ms = performance.now() - t0;
        tf.dispose([loss, ...grads.values()]);
        if (i > 0) best = Math.min(best, ms);
      }
      return best;
    };
    let stockMs = Infinity, fastMs = Infinity;
    for (let r = 0; r < rounds; r++) {
      stock();
      stockMs = Math.min(stockMs, await stepMs());
      fast();
      fastMs = Math.min(fastMs, await stepMs());
    }
    tf.dispose([ids, targets]);
    model.dispose();
    const tokens = batch * ctx;
    gptStep = {
      stock_ms: round2(stockMs),
      fast_ms: round2(fastMs),
      speedup: round2(stockMs / fastMs),
      stock_tokens_per_s: Math.round((tokens / stockMs) * 1000),
      fast_tokens_per_s: Math.round((tokens / fastMs) * 1000),
    };
    console.error(`gpt step: stock ${round2(stockMs)} ms, fast ${round2(fastMs)} ms (×${round2(stockMs / fastMs)})`);
  }
  fast(); // leave the process on the fast kernel
  loaded.release();

  const stepFastGflops = stepFlops / stepFast / 1e6;
  return {
    backend: loaded.name,
    adapter,
    fast_kernels: swaps,
    config: { d_model: 128, heads: 4, ctx: 64, batch: 16, layers, vocab },
    shapes: results,
    step: {
      stock_ms: round2(stepStock),
      fast_ms: round2(stepFast),
      stock_gflops: round2(stepFlops / stepStock / 1e6),
      fast_gflops: round2(stepFastGflops),
      speedup: round2(stepStock / stepFast),
    },
    stock_gflops: round2(stepFlops / stepStock / 1e6),
    fast_gflops: round2(stepFastGflops),
    speedup: round2(stepStock / stepFast),
    peak_gflops: round2(peakGflops),
    peak_stock_gflops: round2(peakFlops / peak.stockMs / 1e6),
    fast_over_peak: round2(stepFastGflops / peakGflops),
    gpt_step: gptStep,
    seconds: round2((performance.now() - began) / 1000),
  };
}
