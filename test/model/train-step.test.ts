import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT } from '../../model/gpt.ts';
import { type GPTConfig } from '../../model/params.ts';
import { AdamW, lrAt } from '../../model/optim.ts';
import { createTrainState, tokenBatch, trainStep, type TokenBatch, type TrainState } from '../../model/train-step.ts';

// Runs on wasm, the agents' default backend.
const TINY: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };
const T = 8;

function trainer(seed = 1): TrainState {
  const model = new GPT(TINY, { seed });
  return createTrainState(model, new AdamW(model.layout.specs, { weightDecay: 0.1 }));
}

/** Rows [from, to) of a deterministic random token stream, as a micro-batch of next-token targets. */
function rows(from: number, to: number, seed: number): TokenBatch {
  const n = to - from;
  const ids = new Int32Array(n * T), targets = new Int32Array(n * T);
  for (let r = 0; r < n; r++) {
    let x = (seed * 7919 + (from + r) * 104729 + 1) >>> 0;
    const seq: number[] = [];
    for (let i = 0; i <= T; i++) {
      x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
      seq.push((x >>> 8) % TINY.vocabSize);
    }
    ids.set(seq.slice(0, T), r * T);
    targets.set(seq.slice(1), r * T);
  }
  return { ids, targets, batch: n, seq: T };
}

/**
 * max |a − b| / max |b|. Per-element relative error is not meaningful after an AdamW step: directions with an exact
 * zero gradient (the key bias: softmax ignores a shift common to all keys) carry float32 noise of ~1e-12, which
 * Adam turns into moves of lr·|g|/eps that differ between equally valid summation orders.
 */
function maxRel(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

// nanoGPT's learning rate. Adam divides by √v + eps, so a gradient of ~eps (1e-8) carrying float32 noise from a
// different summation order moves by up to ~lr·noise/eps: at lr 1e-2 one such element differed by 2e-5.
const OPTS = { lr: 6e-4, gradClip: 1.0 };

test('training on a short repeating sequence drives the loss down within 50 steps', async () => {
  await tf.setBackend('wasm');
  const state = trainer(2);
  const pattern = [3, 17, 5, 29, 11, 0, 23]; // period 7: each token determines the next
  const batch = (step: number): TokenBatch => {
    const ids = new Int32Array(8 * T), targets = new Int32Array(8 * T);
    for (let r = 0; r < 8; r++) {
      for (let i = 0; i < T; i++) {
        ids[r * T + i] = pattern[(step + r + i) % 7]!;
        targets[r * T + i] = pattern[(step + r + i + 1) % 7]!;
      }
    }
    return { ids, targets, batch: 8, seq: T };
  };
  const schedule = { maxLr: 3e-2, minLr: 1e-3, warmupSteps: 5, decaySteps: 50 };
  const losses: number[] = [];
  for (let step = 0; step < 50; step++) {
    const r = await trainStep(state, [batch(step)], { lr: lrAt(step, schedule), gradClip: 1.0 });
    losses.push(r.loss);
  }
  assert.ok(losses[0]! > 3, `initial loss ${losses[0]}`);
  assert.ok(losses[49]! < 0.2, `loss after 50 steps ${losses[49]} (from ${losses[0]})`);
  state.model.dispose();
});

test('one step on a batch of 8 equals one step on two accumulated micro-batches of 4', async () => {
  await tf.setBackend('wasm');
  const whole = trainer(), split = trainer();
  for (let step = 0; step < 2; step++) {
    const a = await trainStep(whole, [rows(0, 8, step)], OPTS);
    const b = await trainStep(split, [rows(0, 4, step), rows(4, 8, step)], OPTS);
    assert.ok(Math.abs(a.loss - b.loss) / a.loss < 1e-5, `step ${step} loss ${a.loss} vs ${b.loss}`);
    assert.ok(Math.abs(a.gradNorm - b.gradNorm) / a.gradNorm < 1e-5, `step ${step} grad norm ${a.gradNorm} vs ${b.gradNorm}`);
    assert.ok(maxRel(split.grads, whole.grads) < 1e-5, `step ${step} gradients differ by ${maxRel(split.grads, whole.grads)}`);
    assert.ok(maxRel(split.params, whole.params) < 1e-5, `step ${step} params differ by ${maxRel(split.params, whole.params)}`);
  }
  assert.ok(maxRel(split.model.readParams(), split.params) === 0, 'the model holds the updated parameters');
  whole.model.dispose();
  split.model.dispose();
});

test('two data-parallel ranks summing gradients through the hook match one rank on the whole batch', async () => {
  await tf.setBackend('wasm');
  const single = trainer(), ranks = [trainer(), trainer()];
  // in-process all-reduce: waits for both ranks, then gives each the element-wise sum
  let pending: Array<{ flat: Float32Array; done: () => void }> = [];
  const reduceGrads = (flat: Float32Array) => new Promise<void>((done) => {
    pending.push({ flat, done });
    if (pending.length < 2) return;
    const sum = new Float32Array(flat.length);
    for (const p of pending) for (let i = 0; i < sum.length; i++) sum[i] = sum[i]! + p.flat[i]!;
    for (const p of pending) { p.flat.set(sum); p.done(); }
    pending = [];
  });
  for (let step = 0; step < 3; step++) {
    const ref = await trainStep(single, [rows(0, 8, step)], OPTS);
    const [r0, r1] = await Promise.all([
      trainStep(ranks[0]!, [rows(0, 2, step), rows(2, 4, step)], { ...OPTS, worldSize: 2, reduceGrads }),
      trainStep(ranks[1]!, [rows(4, 6, step), rows(6, 8, step)], { ...OPTS, worldSize: 2, reduceGrads }),
    ]);
    assert.ok(Math.abs((r0!.loss + r1!.loss) / 2 - ref.loss) / ref.loss < 1e-5, `step ${step} mean loss`);
    assert.ok(Math.abs(r0!.gradNorm - ref.gradNorm) / ref.gradNorm < 1e-5, `step ${step} grad norm ${r0!.gradNorm} vs ${ref.gradNorm}`);
    assert.deepEqual(ranks[1]!.params, ranks[0]!.params, 'replicas stay bit-identical');
    assert.ok(maxRel(ranks[0]!.grads, single.grads) < 1e-5, `step ${step} gradients differ by ${maxRel(ranks[0]!.grads, single.grads)}`);
    assert.ok(maxRel(ranks[0]!.params, single.params) < 1e-5, `step ${step} params differ by ${maxRel(ranks[0]!.params, single.params)}`);
  }
  for (const s of [single, ...ranks]) s.model.dispose();
});

test('training steps leave no tensors behind', async () => {
  await tf.setBackend('wasm');
  const before = tf.memory().numTensors;
  const state = trainer();
  const afterCreate = tf.memory().numTensors;
  assert.equal(afterCreate - before, state.model.layout.specs.length, 'one tensor per parameter');
  for (let step = 0; step < 5; step++) {
    await trainStep(state, [rows(0, 2, step), rows(2, 4, step)], OPTS);
    assert.equal(tf.memory().numTensors, afterCreate, `after step ${step}`);
  }
  state.model.dispose();
  assert.equal(tf.memory().numTensors, before);
});

test('a step rejects micro-batches of different shapes, tokens outside the vocabulary and a missing hook', async () => {
  await tf.setBackend('wasm');
  const state = trainer();
  await assert.rejects(trainStep(state, [rows(0, 2, 0), rows(0, 3, 0)], OPTS), /micro-batch 1 is \[3, 8\]/);
  const bad = rows(0, 1, 0);
  bad.ids[3] = 32;
  await assert.rejects(trainStep(state, [bad], OPTS), /token 32 outside \[0, 32\)/);
  await assert.rejects(trainStep(state, [rows(0, 1, 0)], { ...OPTS, worldSize: 2 }), /needs a reduceGrads hook/);
  await assert.rejects(trainStep(state, [], OPTS), /at least one micro-batch/);
  state.model.dispose();
});

test('rows of seq + 1 tokens split into inputs and next-token targets', () => {
  const b = tokenBatch(new Int32Array([1, 2, 3, 4, 5, 6, 7, 8]), 2, 3);
  assert.deepEqual([...b.ids], [1, 2, 3, 5, 6, 7]);
  assert.deepEqual([...b.targets], [2, 3, 4, 6, 7, 8]);
  assert.equal(b.batch, 2);
  assert.equal(b.seq, 3);
  assert.throws(() => tokenBatch(new Int32Array(7), 2, 3), /expected 2×4 tokens, got 7/);
});
