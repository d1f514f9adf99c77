import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT, disposeCache, type KVCache } from '../../model/gpt.ts';
import { registerFastWasmKernels } from '../../model/kernels/index.ts';
import { relDiff } from '../support/gpt-oracle.ts';

const config = { vocabSize: 40, nCtx: 12, nLayer: 2, nHead: 2, nEmbd: 16 };

for (const backend of ['cpu', 'wasm'] as const) {
  test(`on ${backend}, a prompt then one token at a time through the KV cache gives the logits of the full forward pass`, async () => {
    if (backend === 'wasm') registerFastWasmKernels();
    await tf.setBackend(backend);
    const model = new GPT(config, { seed: 3 });
    const seq = [5, 1, 39, 7, 7, 22, 0, 13, 2, 30];
    const before = tf.memory().numTensors;

    const full = model.forward(tf.tensor2d([seq], [1, seq.length], 'int32'));
    const expected = full.dataSync() as Float32Array; // [1, T, V]
    full.dispose();

    let cache: KVCache | undefined;
    const got = new Float32Array(expected.length);
    const prompt = 4;
    const first = model.forwardCached(tf.tensor2d([seq.slice(0, prompt)], [1, prompt], 'int32'));
    got.set(first.logits.dataSync() as Float32Array, 0);
    first.logits.dispose();
    cache = first.cache;
    for (let i = prompt; i < seq.length; i++) {
      const step = model.forwardCached(tf.tensor2d([[seq[i]!]], [1, 1], 'int32'), cache);
      got.set(step.logits.dataSync() as Float32Array, i * config.vocabSize);
      step.logits.dispose();
      disposeCache(cache);
      cache = step.cache;
    }
    assert.equal(cache.length, seq.length);
    disposeCache(cache);
    assert.ok(relDiff(got, expected) < 1e-4, `max relative difference ${relDiff(got, expected)}`);
    // Only the ids tensors made inline above may remain: they are not the cache's business.
    assert.ok(tf.memory().numTensors - before <= seq.length - prompt + 2, `tensors left: ${tf.memory().numTensors - before}`);
    model.dispose();
  });
}

test('the cache refuses to run past the context length', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(config, { seed: 1 });
  const { logits, cache } = model.forwardCached(tf.tensor2d([Array(12).fill(1)], [1, 12], 'int32'));
  logits.dispose();
  assert.throws(() => model.forwardCached(tf.tensor2d([[1]], [1, 1], 'int32'), cache), /exceed nCtx 12/);
  disposeCache(cache);
  model.dispose();
});
