/**
 * The GPT model (model/gpt.ts) on the wasm backend with the fast matmul kernels registered gives the cpu backend's
 * logits, loss and every parameter's gradient — the end-to-end check that the kernel swap changes speed, not
 * results — and the step's matmuls really go through the fast kernel.
 * Run: node --import tsx --test test/model/kernels/gpt-fast-kernels.test.ts
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT, flattenGrads, type GPTConfig } from '../../../model/gpt.ts';
import { fastMatMulStats, fastWasmKernelsRegistered, registerFastWasmKernels } from '../../../model/kernels/index.ts';

// Four heads and a context of 16 so attention runs batched (B·heads = 12 products) with non-square blocks.
const CONFIG: GPTConfig = { vocabSize: 40, nCtx: 16, nLayer: 2, nHead: 4, nEmbd: 24 };
const [B, T] = [3, 16];

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x >>> 8) % vocab;
  }
  return out;
}

interface Run { logits: Float32Array; loss: number; grads: Float32Array; names: string[]; offsets: number[] }

async function run(backend: 'cpu' | 'wasm'): Promise<Run> {
  assert.ok(await tf.setBackend(backend), `${backend} initialises`);
  const model = new GPT(CONFIG, { seed: 5 });
  const ids = tf.tensor2d(randomIds(B * T, CONFIG.vocabSize, 1), [B, T], 'int32');
  const targets = tf.tensor2d(randomIds(B * T, CONFIG.vocabSize, 2), [B, T], 'int32');
  const logits = model.forward(ids);
  const { loss, grads } = model.lossAndGrads(ids, targets);
  const out: Run = {
    logits: logits.dataSync() as Float32Array,
    loss: loss.dataSync()[0]!,
    grads: flattenGrads(grads, model.layout),
    names: model.layout.specs.map((s) => s.name),
    offsets: model.layout.specs.map((s) => s.offset),
  };
  tf.dispose([ids, targets, logits, loss, ...grads.values()]);
  model.dispose();
  return out;
}

/** max |a − b| relative to max |b|. */
function relDiff(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

test('with the fast kernels, wasm gives cpu\'s logits, loss and every parameter\'s gradient (rel. 1e-4)', async () => {
  const cpu = await run('cpu');
  registerFastWasmKernels();
  assert.ok(fastWasmKernelsRegistered());
  const before = { ...fastMatMulStats };
  const wasm = await run('wasm');
  assert.ok(fastMatMulStats.fast - before.fast >= 20, `fast kernel calls: ${fastMatMulStats.fast - before.fast}`);
  assert.equal(fastMatMulStats.fallback, before.fallback, 'no product fell back to the stock kernel');
  assert.ok(relDiff(wasm.logits, cpu.logits) < 1e-4, `logits rel diff ${relDiff(wasm.logits, cpu.logits)}`);
  assert.ok(Math.abs(wasm.loss - cpu.loss) / cpu.loss < 1e-4, `loss ${wasm.loss} vs ${cpu.loss}`);
  for (const [i, name] of cpu.names.entries()) {
    const end = cpu.offsets[i + 1] ?? cpu.grads.length;
    const g = wasm.grads.subarray(cpu.offsets[i], end);
    const ref = cpu.grads.subarray(cpu.offsets[i], end);
    assert.ok(relDiff(g, ref) < 1e-4, `${name}: gradient rel diff ${relDiff(g, ref)}`);
  }
});

test('a forward and backward pass with the fast kernels leaves no tensor or wasm buffer behind', async () => {
  registerFastWasmKernels();
  await tf.setBackend('wasm');
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const model = new GPT(CONFIG, { seed: 9 });
  const ids = tf.tensor2d(randomIds(B * T, CONFIG.vocabSize, 3), [B, T], 'int32');
  const targets = tf.tensor2d(randomIds(B * T, CONFIG.vocabSize, 4), [B, T], 'int32');
  const step = () => {
    const { loss, grads } = model.lossAndGrads(ids, targets);
    loss.dataSync();
    tf.dispose([loss, ...grads.values()]);
  };
  step(); // first call may create lasting state (none expected, but measure from a steady state)
  const tensors = tf.memory().numTensors;
  const buffers = backend.numDataIds();
  step();
  step();
  assert.equal(tf.memory().numTensors, tensors);
  assert.equal(backend.numDataIds(), buffers);
  tf.dispose([ids, targets]);
  model.dispose();
});
