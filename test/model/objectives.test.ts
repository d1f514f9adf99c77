import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { objectiveLoss, rowLogprobs, type Objective } from '../../model/objectives.ts';

const B = 4, T = 5, V = 7;

function randomLogits(seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: B * T * V }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 4 - 2);
}
const targets = Int32Array.from({ length: B * T }, (_, i) => (i * 3) % V);
const loss = (logits: Float32Array, o?: Objective, rows = B, tg = targets) =>
  tf.tidy(() => objectiveLoss(tf.tensor2d(logits, [rows * T, V]), tg, rows, T, o).dataSync()[0]!);

test('the weighted LM loss with every weight 1 equals the plain mean cross-entropy', () => {
  const logits = randomLogits(1);
  assert.ok(Math.abs(loss(logits, { kind: 'lm', weights: new Float32Array(B * T).fill(1) }) - loss(logits)) < 1e-6);
});

test('every objective is a mean over examples: the loss of a batch is the mean of the losses of its halves', () => {
  const logits = randomLogits(2);
  const weights = Float32Array.from({ length: B * T }, (_, i) => (i % T >= (Math.floor(i / T) % 3) ? 1 : 0)); // rows learn different numbers of tokens
  const half = (k: number) => ({ logits: logits.subarray(k * 2 * T * V, (k + 1) * 2 * T * V), w: weights.subarray(k * 2 * T, (k + 1) * 2 * T), tg: targets.subarray(k * 2 * T, (k + 1) * 2 * T) });
  const refLogp = Float32Array.from([-3, -4, -2.5, -6]);
  const teacher = randomLogits(9);
  const cases: Array<[string, (w: Float32Array, r: Float32Array, t: Float32Array) => Objective]> = [
    ['lm', (w) => ({ kind: 'lm', weights: w })],
    ['dpo', (w, r) => ({ kind: 'dpo', weights: w, refLogp: r, beta: 0.3 })],
    ['dpo+rpo', (w, r) => ({ kind: 'dpo', weights: w, refLogp: r, beta: 0.3, rpoAlpha: 0.7 })],
    ['distill', (w, _r, t) => ({ kind: 'distill', weights: w, teacherLogits: t, temperature: 2, alpha: 0.4 })],
  ];
  for (const [name, make] of cases) {
    const whole = loss(logits, make(weights, refLogp, teacher));
    const parts = [0, 1].map((k) => {
      const h = half(k);
      return loss(h.logits, make(h.w, refLogp.subarray(k * 2, k * 2 + 2), teacher.subarray(k * 2 * T * V, (k + 1) * 2 * T * V)), 2, h.tg);
    });
    assert.ok(Math.abs(whole - (parts[0]! + parts[1]!) / 2) < 1e-5, `${name}: ${whole} vs halves ${parts}`);
  }
});

test('DPO loss is ln 2 when the policy is the reference, and falls when the chosen reply gains probability', () => {
  const logits = randomLogits(3);
  const weights = new Float32Array(B * T).fill(1);
  const ref = tf.tidy(() => rowLogprobs(tf.tensor2d(logits, [B * T, V]), targets, weights, B, T).dataSync() as Float32Array);
  const dpo = (l: Float32Array) => loss(l, { kind: 'dpo', weights, refLogp: ref, beta: 0.5 });
  assert.ok(Math.abs(dpo(logits) - Math.LN2) < 1e-6);
  const better = logits.slice(); // raise the logit of every chosen row's (rows 0 and 2) targets
  for (const row of [0, 2]) for (let t = 0; t < T; t++) better[(row * T + t) * V + targets[row * T + t]!]! += 1;
  assert.ok(dpo(better) < Math.LN2 - 0.05, `${dpo(better)}`);
});

test('RPO adds rpoAlpha × the chosen replies\' mean per-token NLL to the DPO loss, and nothing at rpoAlpha 0', () => {
  const logits = randomLogits(5);
  const weights = Float32Array.from({ length: B * T }, (_, i) => (i % T >= 2 ? 1 : 0));
  const refLogp = Float32Array.from([-3, -4, -2.5, -6]);
  const dpo = loss(logits, { kind: 'dpo', weights, refLogp, beta: 0.3 });
  assert.equal(loss(logits, { kind: 'dpo', weights, refLogp, beta: 0.3, rpoAlpha: 0 }), dpo);
  // The chosen rows (0 and 2) alone through the weighted LM loss: their mean per-token NLL.
  const rows = (r: number) => ({ l: logits.subarray(r * T * V, (r + 1) * T * V), w: weights.subarray(r * T, (r + 1) * T), tg: targets.subarray(r * T, (r + 1) * T) });
  const chosenNll = [0, 2].map((r) => loss(rows(r).l, { kind: 'lm', weights: rows(r).w }, 1, rows(r).tg)).reduce((a, b) => a + b) / 2;
  const rpo = loss(logits, { kind: 'dpo', weights, refLogp, beta: 0.3, rpoAlpha: 0.5 });
  assert.ok(Math.abs(rpo - (dpo + 0.5 * chosenNll)) < 1e-5, `${rpo} vs ${dpo} + 0.5 × ${chosenNll}`);
});

test('distillation towards a teacher that equals the student is only the hard-label part', () => {
  const logits = randomLogits(4);
  const pureKl = loss(logits, { kind: 'distill', teacherLogits: logits, temperature: 2, alpha: 1 });
  assert.ok(Math.abs(pureKl) < 1e-6, `KL(p‖p) = ${pureKl}`);
  const mixed = loss(logits, { kind: 'distill', teacherLogits: logits, temperature: 2, alpha: 0.25 });
  assert.ok(Math.abs(mixed - 0.75 * loss(logits)) < 1e-5);
});

test('objectives refuse inputs that do not fit the micro-batch', () => {
  const logits = randomLogits(5);
  assert.throws(() => loss(logits, { kind: 'lm', weights: new Float32Array(3) }), /weights has 3 values/);
  assert.throws(() => loss(logits, { kind: 'dpo', weights: new Float32Array(B * T), refLogp: new Float32Array(2), beta: 1 }), /one per row/);
  assert.throws(() => loss(logits.subarray(0, 3 * T * V), { kind: 'dpo', weights: new Float32Array(3 * T), refLogp: new Float32Array(3), beta: 1 }, 3, targets.subarray(0, 3 * T)), /pairs/);
  assert.throws(() => loss(logits, { kind: 'distill', teacherLogits: new Float32Array(5), temperature: 1, alpha: 0.5 }), /teacherLogits/);
});
