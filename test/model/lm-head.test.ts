/**
 * The chunked causal-LM head (model/lm-head.ts) against the plain tfjs formulation it replaces (the whole
 * logits, log-softmax and one-hot through a tape), and a stage model using it against GPT's whole-model tape.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { lmCoefficients, lmHead } from '../../model/lm-head.ts';
import { objectiveLoss } from '../../model/objectives.ts';
import { GPT } from '../../model/gpt.ts';
import { flattenGrads, gptConfig } from '../../model/params.ts';
import { StageModel } from '../../model/stage-model.ts';
import { shardLayout } from '../../model/shard-layout.ts';

/** Runs `f` and disposes the tensors it made (tf.tidy, for an async result that is not a tensor container). */
async function tfScope<T>(f: () => Promise<T>): Promise<T> {
  tf.engine().startScope();
  try {
    return await f();
  } finally {
    tf.engine().endScope();
  }
}

function random(n: number, scale: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 48271) % 2147483647;
    a[i] = (x / 2147483647 - 0.5) * scale;
  }
  return a;
}

function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, tol = 2e-5): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  assert.ok(worst <= tol * scale, `${what}: max |Δ| ${worst} > ${tol} × max |expected| ${scale}`);
}

/** The reference: loss, ∂/∂h and ∂/∂W through tfjs ops and a tape (what StageModel did before lm-head.ts). */
function reference(h: Float32Array, W: Float32Array, N: number, V: number, d: number, targets: Int32Array, B: number, T: number, weights: Float32Array | undefined, upstream: number) {
  return tf.tidy(() => {
    const ht = tf.tensor2d(h, [N, d]), Wt = tf.tensor2d(W, [V, d]);
    const r = tf.engine().gradients(() => objectiveLoss(tf.matMul(ht, Wt, false, true) as tf.Tensor2D, targets, B, T, { kind: 'lm', ...(weights ? { weights } : {}) }), [ht, Wt], tf.scalar(upstream));
    return { loss: r.value.dataSync()[0]!, dh: r.grads[0]!.dataSync() as Float32Array, dW: r.grads[1]!.dataSync() as Float32Array };
  });
}

for (const [label, chunkElements, keptBytes] of [['one chunk', 1 << 22, 1 << 26], ['7-row chunks, logits kept', 7 * 12, 1 << 26], ['7-row chunks, logits recomputed', 7 * 12, 0]] as const) {
  for (const weighted of [false, true]) {
    test(`lmHead (${label}${weighted ? ', weighted rows' : ''}) gives the loss and gradients of the whole-logits formulation`, async () => {
      const B = 2, T = 5, N = B * T, V = 53, d = 12;
      const h = random(N * d, 4, 7), W = random(V * d, 1, 11);
      const targets = Int32Array.from({ length: N }, (_, i) => (i * 17 + 3) % V);
      // row 1 carries no weight at all: its tokens must contribute nothing
      const weights = weighted ? Float32Array.from({ length: N }, (_, i) => (i < T ? (i % 2) + 0.5 : 0)) : undefined;
      const upstream = 0.25;
      const ref = reference(h, W, N, V, d, targets, B, T, weights, upstream);
      const dW = new Float32Array(V * d).fill(NaN);
      const seen: number[] = [];
      const got = await tfScope(() => lmHead(tf.tensor2d(h, [N, d]), tf.tensor2d(W, [V, d]), targets, lmCoefficients(B, T, weights), {
        upstream, chunkElements, keptBytes,
        addWeightGrad: (row0, v) => {
          seen.push(row0);
          dW.set(v, row0 * d);
        },
      }));
      assert.ok(Math.abs(got.loss - ref.loss) <= 1e-5 * Math.abs(ref.loss), `loss ${got.loss} vs ${ref.loss}`);
      assertClose(got.dh!, ref.dh, 'dL/dh');
      assertClose(dW, ref.dW, 'dL/dW');
      assert.deepEqual(seen, chunkElements >= V * d ? [0] : Array.from({ length: Math.ceil(V / 7) }, (_, k) => k * 7), 'every row once, in order');
      const evalOnly = await tfScope(() => lmHead(tf.tensor2d(h, [N, d]), tf.tensor2d(W, [V, d]), targets, lmCoefficients(B, T, weights), { chunkElements }));
      assert.equal(evalOnly.loss, got.loss, 'the loss alone is the same number');
      assert.equal(evalOnly.dh, undefined);
    });
  }
}

test('lmHead leaves no tensor behind and refuses targets outside the vocabulary', async () => {
  const h = tf.tensor2d(random(4 * 8, 1, 3), [4, 8]), W = tf.tensor2d(random(10 * 8, 1, 5), [10, 8]);
  const before = tf.memory().numTensors;
  await lmHead(h, W, Int32Array.of(1, 2, 3, 9), lmCoefficients(1, 4), { upstream: 1, chunkElements: 24, keptBytes: 0, addWeightGrad: () => {} });
  assert.equal(tf.memory().numTensors, before);
  await assert.rejects(lmHead(h, W, Int32Array.of(1, 2, 3, 10), lmCoefficients(1, 4)), /target 10 is outside the vocabulary \[0, 10\)/);
  await assert.rejects(lmHead(h, W, Int32Array.of(1, 2, 3), lmCoefficients(1, 4)), /4 hidden states need 4 targets/);
  h.dispose();
  W.dispose();
});

test('a one-stage StageModel back-propagates the loss and gradients of GPT\'s whole-model tape', async () => {
  const config = gptConfig({ vocabSize: 97, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 });
  const gpt = new GPT(config, { seed: 5 });
  const flat = gpt.readParams();
  const layout = shardLayout(config, { stage: 0, stages: 1, firstLayer: 0, endLayer: 2, tpRank: 0, tpSize: 1 });
  assert.equal(layout.totalSize, flat.length);
  const stage = new StageModel(config, layout, flat);
  const B = 2, T = 8;
  const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 31 + 5) % 97);
  const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 13 + 2) % 97);
  const grads = new Float32Array(layout.totalSize);
  const r = await stage.backward({ ids }, B, T, { targets, scale: 1 }, grads);
  const ref = tf.tidy(() => {
    const { loss, grads: g } = gpt.lossAndGrads(tf.tensor2d(ids, [B, T], 'int32'), tf.tensor2d(targets, [B, T], 'int32'));
    return { loss: loss.dataSync()[0]!, grads: flattenGrads(g, gpt.layout) };
  });
  assert.ok(Math.abs(r.loss! - ref.loss) <= 1e-5 * ref.loss, `loss ${r.loss} vs ${ref.loss}`);
  assertClose(grads, ref.grads, 'the flat gradient', 1e-4);
  assert.ok(Math.abs((await stage.loss({ ids }, B, T, targets)) - ref.loss) <= 1e-5 * ref.loss, 'the evaluation loss');
  stage.dispose();
  gpt.dispose();
});
