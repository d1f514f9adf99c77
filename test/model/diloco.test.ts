/**
 * npx tsx --test test/model/diloco.test.ts
 *
 * DiLoCo's outer step (model/diloco.ts) against steps worked out by hand, Nesterov and plain momentum, over two
 * rounds so that the momentum carries; and the pseudo-gradient and checksum it rests on.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { outerStep, pseudoGradient, weightsChecksum } from '../../model/diloco.ts';

const f32 = (...xs: number[]) => Float32Array.from(xs);
const close = (got: Float32Array, want: number[], what: string) =>
  want.forEach((w, i) => assert.ok(Math.abs(got[i]! - w) <= 1e-6 * Math.max(1, Math.abs(w)), `${what}[${i}]: ${got[i]} vs ${w}`));

test('the pseudo-gradient is the outer weights minus the replica\'s', () => {
  const into = new Float32Array(3);
  pseudoGradient(f32(1, 2, 3), f32(0.5, 2.5, 3), into);
  assert.deepEqual([...into], [0.5, -0.5, 0]);
});

test('a Nesterov outer step averages the summed pseudo-gradients and steps along Δ + μ·m, two rounds by hand', () => {
  const s = { lr: 0.7, momentum: 0.9, nesterov: true };
  const outer = f32(1, -2), m = new Float32Array(2);
  // round 1: replicas moved by Δ₁ = (0.2, 0.4) and (0.4, 0.0): sum (0.6, 0.4), mean Δ = (0.3, 0.2)
  const sum1 = f32(0.6, 0.4);
  outerStep(outer, m, sum1, 2, s);
  close(sum1, [0.3, 0.2], 'mean Δ');
  close(m, [0.3, 0.2], 'm = 0.9·0 + Δ');
  // θ = θ − 0.7·(Δ + 0.9·m) = (1 − 0.7·0.57, −2 − 0.7·0.38) = (0.601, −2.266)
  close(outer, [0.601, -2.266], 'θ after round 1');
  // round 2: mean Δ = (−0.1, 0.05) → m = (0.27 − 0.1, 0.18 + 0.05) = (0.17, 0.23)
  outerStep(outer, m, f32(-0.2, 0.1), 2, s);
  close(m, [0.17, 0.23], 'm after round 2');
  // θ = (0.601 − 0.7·(−0.1 + 0.153), −2.266 − 0.7·(0.05 + 0.207)) = (0.5639, −2.4459)
  close(outer, [0.5639, -2.4459], 'θ after round 2');
});

test('a plain-momentum outer step steps along m, two rounds by hand', () => {
  const s = { lr: 0.5, momentum: 0.8, nesterov: false };
  const outer = f32(2), m = new Float32Array(1);
  outerStep(outer, m, f32(0.9), 3, s); // mean Δ 0.3, m = 0.3, θ = 2 − 0.15
  close(m, [0.3], 'm after round 1');
  close(outer, [1.85], 'θ after round 1');
  outerStep(outer, m, f32(0.3), 3, s); // mean Δ 0.1, m = 0.24 + 0.1 = 0.34, θ = 1.85 − 0.17
  close(m, [0.34], 'm after round 2');
  close(outer, [1.68], 'θ after round 2');
});

test('with one replica, outer lr 1 and no momentum, the outer step lands on the replica\'s own weights', () => {
  const outer = f32(1, 2, 3), replica = f32(0.25, 2.5, -1), delta = new Float32Array(3);
  pseudoGradient(outer, replica, delta);
  outerStep(outer, new Float32Array(3), delta, 1, { lr: 1, momentum: 0, nesterov: false });
  assert.deepEqual([...outer], [...replica]);
});

test('the outer step refuses buffers of different lengths and a replica count below 1', () => {
  const s = { lr: 0.7, momentum: 0.9, nesterov: true };
  assert.throws(() => outerStep(new Float32Array(2), new Float32Array(3), new Float32Array(2), 1, s), /different lengths/);
  assert.throws(() => outerStep(new Float32Array(2), new Float32Array(2), new Float32Array(2), 0, s), /replicas must be a positive integer/);
});

test('the weights checksum tells apart weights that differ in one bit, and agrees on equal ones', () => {
  const a = f32(1, 2, 3), b = f32(1, 2, 3);
  assert.equal(weightsChecksum(a), weightsChecksum(b));
  b[1] = Math.fround(2 + 2 ** -22); // the last mantissa bit of 2
  assert.notEqual(weightsChecksum(a), weightsChecksum(b));
});
