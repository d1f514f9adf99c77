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
import { GPT } from '../../../model/gpt.ts';
import { type GPTConfig } from '../../../model/params.ts';
import { assertSameRun, randomIds, runOn } from '../../support/gpt-oracle.ts';
import { fastMatMulStats, fastWasmKernelsRegistered, registerFastWasmKernels } from '../../../model/kernels/index.ts';

// Four heads and a context of 16 so attention runs batched (B·heads = 12 products) with non-square blocks.
const CONFIG: GPTConfig = { vocabSize: 40, nCtx: 16, nLayer: 2, nHead: 4, nEmbd: 24 };
const [B, T] = [3, 16];

test('with the fast kernels, wasm gives cpu\'s logits, loss and every parameter\'s gradient (rel. 1e-4)', async () => {
  const cpu = await runOn('cpu', CONFIG, 5, B, T);
  registerFastWasmKernels();
  assert.ok(fastWasmKernelsRegistered());
  const before = { ...fastMatMulStats };
  const wasm = await runOn('wasm', CONFIG, 5, B, T);
  assert.ok(fastMatMulStats.fast - before.fast >= 20, `fast kernel calls: ${fastMatMulStats.fast - before.fast}`);
  assert.equal(fastMatMulStats.fallback, before.fallback, 'no product fell back to the stock kernel');
  assertSameRun(wasm, cpu);
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
