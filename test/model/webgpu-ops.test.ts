/**
 * Each op of a GPT training step on WebGPU (Dawn on llvmpipe) against the same op on wasm (with model/kernels/'s
 * fast kernels, as agents run it): the forward value and the gradient of a weighted sum of it with respect to
 * every input. Tolerance: max |webgpu − wasm| ≤ 2e-5 × max |wasm| (float32 has 24 bits; the two backends sum in
 * different orders and use different exp/tanh, a few ulps of the largest value), 1e-6 absolute for exact ops.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { loadBackend, type LoadedBackend } from '../../model/compute/backend.ts';
import { gelu, layerNorm } from '../../model/gpt.ts';
import { objectiveLoss } from '../../model/objectives.ts';
import { lmHead } from '../../model/lm-head.ts';

const TOL = 2e-5;
let gpu: LoadedBackend;
before(async () => {
  await loadBackend('wasm'); // registers wasm and its fast kernels in this process
  gpu = await loadBackend('webgpu-software');
});
after(() => gpu?.release());

function random(shape: number[], seed: number, scale = 1): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 48271) % 2147483647;
    out[i] = (x / 2147483647 - 0.5) * 2 * scale;
  }
  return out;
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-30;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return worst / scale;
}

interface Op {
  name: string;
  /** Where the reference runs, when not on wasm: wasm has no UnsortedSegmentSum (the gather's gradient), which is
   * why the trainer scatter-adds the embeddings' gradient itself (model/stage-model.ts); cpu is its reference. */
  reference?: 'cpu';
  inputs: Array<{ shape: number[]; scale?: number }>;
  f: (...xs: tf.Tensor[]) => tf.Tensor;
}

/** The op's value and ∂(Σ w·value)/∂input for every input, on `backend`. */
async function run(backend: string, op: Op): Promise<Float32Array[]> {
  tf.setBackend(backend);
  const xs = op.inputs.map((inp, i) => tf.tensor(random(inp.shape, 17 + 31 * i, inp.scale ?? 1), inp.shape));
  try {
    const y = op.f(...xs);
    const w = tf.tensor(random(y.shape, 99), y.shape);
    const grads = tf.grads((...a: tf.Tensor[]) => op.f(...a).mul(w).sum())(xs);
    const out = [y, ...grads];
    const values = await Promise.all(out.map(async (t) => Float32Array.from((await t.data()) as Float32Array)));
    tf.dispose([...out, w]);
    return values;
  } finally {
    tf.dispose(xs);
  }
}

const B = 2, T = 16, d = 48, nh = 4, hs = d / nh, V = 211;
const ln = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => layerNorm(x as tf.Tensor2D, (n) => (n.endsWith('weight') ? g : b), 'ln');
const mask = () => tf.linalg.bandPart(tf.ones([T, T]), -1, 0).sub(1).mul(1e9);
const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 5) % V);

const OPS: Op[] = [
  { name: 'matMul [B·T, d]·[d, 3d]', inputs: [{ shape: [B * T, d] }, { shape: [d, 3 * d] }], f: (a, b) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D) },
  { name: 'matMul transposed (x·Wᵀ, the tied head)', inputs: [{ shape: [B * T, d] }, { shape: [V, d] }], f: (a, b) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, false, true) },
  { name: 'matMul transposed (Aᵀ·B, a weight gradient)', inputs: [{ shape: [B * T, d] }, { shape: [B * T, 4 * d] }], f: (a, b) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D, true, false) },
  { name: 'batched matMul q·kᵀ [B·nh, T, hs]', inputs: [{ shape: [B * nh, T, hs] }, { shape: [B * nh, T, hs] }], f: (q, k) => tf.matMul(q as tf.Tensor3D, k as tf.Tensor3D, false, true) },
  { name: 'batched matMul att·v', inputs: [{ shape: [B * nh, T, T] }, { shape: [B * nh, T, hs] }], f: (a, v) => tf.matMul(a as tf.Tensor3D, v as tf.Tensor3D) },
  { name: 'masked attention softmax', inputs: [{ shape: [B * nh, T, T], scale: 4 }], f: (s) => tf.softmax(s.add(mask())) },
  { name: 'LayerNorm', inputs: [{ shape: [B * T, d], scale: 3 }, { shape: [d] }, { shape: [d] }], f: ln },
  { name: 'GELU (tanh)', inputs: [{ shape: [B * T, 4 * d], scale: 4 }], f: (x) => gelu(x as tf.Tensor2D) },
  { name: 'head split and merge (reshape, transpose)', inputs: [{ shape: [B * T, d] }], f: (x) => x.reshape([B, T, nh, hs]).transpose([0, 2, 1, 3]).reshape([B * nh, T, hs]) },
  { name: 'embedding gather (gradient: scatter-add into the table)', reference: 'cpu', inputs: [{ shape: [V, d] }], f: (wte) => tf.gather(wte, tf.tensor1d(targets, 'int32')) },
  { name: 'cross-entropy over the vocabulary', inputs: [{ shape: [B * T, V], scale: 6 }], f: (z) => objectiveLoss(z as tf.Tensor2D, targets, B, T) },
];

for (const op of OPS) {
  test(`${op.name}: WebGPU equals ${op.reference ?? 'wasm'}, value and gradients`, async () => {
    const wasm = await run(op.reference ?? 'wasm', op), web = await run('webgpu', op);
    assert.equal(web.length, op.inputs.length + 1);
    const labels = ['value', ...op.inputs.map((_, i) => `∂/∂input ${i}`)];
    web.forEach((got, i) => {
      assert.equal(got.length, wasm[i]!.length, labels[i]);
      assert.ok(wasm[i]!.some((v) => v !== 0), `${labels[i]} is not all zeros (the comparison means something)`);
      const rel = maxRel(got, wasm[i]!);
      assert.ok(rel <= TOL, `${op.name} ${labels[i]}: ${rel.toExponential(2)} of its largest value apart (tolerance ${TOL})`);
    });
  });
}

test('the chunked LM head on WebGPU (on the device: online log-sum-exp, ∂L/∂z there) gives wasm\'s loss, ∂L/∂h and ∂L/∂W', async () => {
  const N = 24, d = 16, V = 301;
  const coeff = Float64Array.from({ length: N }, (_, i) => (i % 3 === 0 ? 0 : (1 + (i % 5)) / (3 * N))); // weighted rows, some unweighted
  const tgt = Int32Array.from({ length: N }, (_, i) => (i * 53 + 11) % V);
  const run = async (backend: string) => {
    tf.setBackend(backend);
    const h = tf.tensor2d(random([N, d], 3, 2), [N, d]), W = tf.tensor2d(random([V, d], 4), [V, d]);
    const dW = new Float32Array(V * d);
    try {
      // 7 chunks of 48 rows (the last shorter): the online log-sum-exp must carry across chunks
      const r = await lmHead(h, W, tgt, coeff, { upstream: 0.5, chunkElements: 48 * d, addWeightGrad: (row0, v) => dW.set(v, row0 * d) });
      return { loss: r.loss, dh: r.dh!, dW };
    } finally {
      tf.dispose([h, W]);
    }
  };
  const wasm = await run('wasm'), web = await run('webgpu');
  assert.ok(Math.abs(web.loss - wasm.loss) <= 1e-5 * Math.abs(wasm.loss), `loss ${web.loss} vs ${wasm.loss}`);
  assert.ok(maxRel(web.dh, wasm.dh) <= TOL, `∂L/∂h ${maxRel(web.dh, wasm.dh)} apart`);
  assert.ok(maxRel(web.dW, wasm.dW) <= TOL, `∂L/∂W ${maxRel(web.dW, wasm.dW)} apart`);
  assert.ok(wasm.dW.some((v) => v !== 0) && wasm.dh.some((v) => v !== 0));
});

test('a StageModel on WebGPU sums its gradients on the device and writes them once, at the flush', async () => {
  tf.setBackend('webgpu');
  const { StageModel } = await import('../../model/stage-model.ts');
  const { initShardParams, shardLayout } = await import('../../model/shard-layout.ts');
  const { gptConfig } = await import('../../model/params.ts');
  const config = gptConfig({ vocabSize: 61, nCtx: 8, nLayer: 1, nHead: 2, nEmbd: 16 });
  const layout = shardLayout(config, { stage: 0, stages: 1, firstLayer: 0, endLayer: 1, tpRank: 0, tpSize: 1 });
  const stage = new StageModel(config, layout, initShardParams(config, layout, 3));
  const ids = Int32Array.from({ length: 8 }, (_, i) => (i * 7 + 1) % 61), targets = Int32Array.from({ length: 8 }, (_, i) => (i * 5 + 2) % 61);
  try {
    const once = new Float32Array(layout.totalSize);
    await stage.backward({ ids }, 1, 8, { targets, scale: 1 }, once); // flushed at once (the default)
    const twice = new Float32Array(layout.totalSize);
    await stage.backward({ ids }, 1, 8, { targets, scale: 1 }, twice, undefined, { flush: false });
    await stage.backward({ ids }, 1, 8, { targets, scale: 1 }, twice, undefined, { flush: false });
    const fc = layout.byName.get('h.0.mlp.c_fc.weight')!;
    assert.ok(twice.subarray(fc.offset, fc.offset + fc.size).every((v) => v === 0), 'nothing of a block\'s gradient before the flush');
    await stage.flushGrads(twice);
    const doubled = once.map((v) => 2 * v);
    assert.ok(maxRel(twice, doubled) <= 1e-6, `two micro-batches summed on the device: ${maxRel(twice, doubled)} from twice one`);
    stage.discardGrads();
  } finally {
    stage.dispose();
  }
});
