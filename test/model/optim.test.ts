import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AdamW, clipGradNorm, globalNorm, lrAt, type OptimSegment } from '../../model/optim.ts';
import { chunkRange } from '../../protocol/partition.ts';

// two segments: a 2-D weight that decays and a bias that does not
const SEGMENTS: OptimSegment[] = [
  { name: 'w', shape: [1, 2], offset: 0, size: 2, decay: true },
  { name: 'b', shape: [1], offset: 2, size: 1, decay: false },
];

const close = (actual: number, expected: number, tol: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected}`);

test('AdamW matches values worked out by hand for two steps, decaying the weight but not the bias', () => {
  const opt = new AdamW(SEGMENTS, { beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 });
  const p = new Float32Array([1, -2, 1]);
  opt.update(p, new Float32Array([0.5, 0.5, 0.5]), 0.1);
  // step 1: m = 0.05, v = 0.0125, m̂ = 0.5, v̂ = 0.25 → Adam moves by lr·sign(g) = 0.1;
  // the weights first shrink by (1 − lr·wd) = 0.99, the bias does not
  close(p[0]!, 1 * 0.99 - 0.1, 1e-6, 'w[0] after step 1');
  close(p[1]!, -2 * 0.99 - 0.1, 1e-6, 'w[1] after step 1');
  close(p[2]!, 1 - 0.1, 1e-6, 'b after step 1');
  opt.update(p, new Float32Array([-0.25, -0.25, -0.25]), 0.1);
  // step 2: m = 0.9·0.05 − 0.1·0.25 = 0.02, v = 0.95·0.0125 + 0.05·0.0625 = 0.015,
  // m̂ = 0.02/0.19, v̂ = 0.015/0.0975 → move = 0.1·m̂/√v̂ = 0.0268369…
  const move = (0.1 * (0.02 / 0.19)) / Math.sqrt(0.015 / 0.0975);
  close(move, 0.0268369, 1e-7, 'hand value of the step-2 move');
  close(p[0]!, (1 * 0.99 - 0.1) * 0.99 - move, 1e-6, 'w[0] after step 2');
  close(p[2]!, 1 - 0.1 - move, 1e-6, 'b after step 2');
  assert.equal(opt.step, 2);
});

test('AdamW agrees with the textbook bias-corrected form over many random steps', () => {
  const cfg = { beta1: 0.8, beta2: 0.99, eps: 1e-6, weightDecay: 0.05 };
  const opt = new AdamW(SEGMENTS, cfg);
  const p = new Float32Array([0.3, -0.7, 0.1]);
  const ref = Array.from(p), m = [0, 0, 0], v = [0, 0, 0];
  let seed = 1;
  const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5;
  for (let t = 1; t <= 20; t++) {
    const g = [rand(), rand(), rand()].map((x) => Math.fround(x));
    const lr = 0.01 * t;
    opt.update(p, new Float32Array(g), lr);
    for (let i = 0; i < 3; i++) {
      if (SEGMENTS[i === 2 ? 1 : 0]!.decay) ref[i] = ref[i]! - lr * cfg.weightDecay * ref[i]!;
      m[i] = cfg.beta1 * m[i]! + (1 - cfg.beta1) * g[i]!;
      v[i] = cfg.beta2 * v[i]! + (1 - cfg.beta2) * g[i]! ** 2;
      const mHat = m[i]! / (1 - cfg.beta1 ** t), vHat = v[i]! / (1 - cfg.beta2 ** t);
      ref[i] = ref[i]! - (lr * mHat) / (Math.sqrt(vHat) + cfg.eps);
    }
  }
  for (let i = 0; i < 3; i++) close(p[i]!, ref[i]!, 1e-5, `param ${i}`);
});

test('exported optimizer state keys the moments by parameter, as checkpoint.ts stores them, and resumes identically', () => {
  const a = new AdamW(SEGMENTS);
  const pa = new Float32Array([1, 2, 3]);
  a.update(pa, new Float32Array([0.1, -0.2, 0.3]), 0.01);
  a.update(pa, new Float32Array([0.2, 0.1, -0.1]), 0.01);
  const state = a.exportState();
  assert.equal(state.step, 2);
  assert.deepEqual(Object.keys(state.expAvg), ['w', 'b']);
  assert.deepEqual(Object.keys(state.expAvgSq), ['w', 'b']);
  assert.equal(state.expAvg.w!.dtype, 'F32');
  assert.deepEqual(state.expAvgSq.w!.shape, [1, 2]);
  const b = new AdamW(SEGMENTS);
  b.importState(state);
  const pb = pa.slice();
  const g = new Float32Array([0.3, 0.3, -0.3]);
  a.update(pa, g, 0.01);
  b.update(pb, g, 0.01);
  assert.deepEqual(pb, pa);
  assert.equal(b.step, 3);
  const { b: _dropped, ...withoutB } = state.expAvgSq;
  assert.throws(() => b.importState({ ...state, expAvgSq: withoutB }), /lacks exp_avg_sq\.b/);
  assert.throws(() => b.importState({ ...state, expAvg: { ...state.expAvg, c: state.expAvg.b! } }), /exp_avg\.c, which is no parameter/);
  assert.throws(() => b.importState({ ...state, expAvg: { ...state.expAvg, w: { dtype: 'F32', shape: [2, 1], data: new Float32Array(2) } } }), /shape \[2,1\], expected \[1,2\]/);
  assert.throws(() => new AdamW(SEGMENTS, { beta2: 1 }), /beta2 must be in \[0, 1\)/);
});

test('the learning rate warms up linearly, then decays by a cosine to minLr and stays there', () => {
  const s = { maxLr: 6e-4, minLr: 6e-5, warmupSteps: 10, decaySteps: 110 };
  close(lrAt(0, s), 6e-4 / 11, 1e-12, 'first warmup step');
  close(lrAt(9, s), (6e-4 * 10) / 11, 1e-12, 'last warmup step');
  close(lrAt(10, s), 6e-4, 1e-12, 'end of warmup is the peak');
  close(lrAt(60, s), 6e-5 + 0.5 * (6e-4 - 6e-5), 1e-12, 'halfway through decay');
  close(lrAt(110, s), 6e-5, 1e-12, 'end of decay');
  close(lrAt(5000, s), 6e-5, 1e-12, 'after decay');
  for (let t = 0; t < 10; t++) assert.ok(lrAt(t + 1, s) > lrAt(t, s), `warmup rises at ${t}`);
  for (let t = 10; t < 110; t++) assert.ok(lrAt(t + 1, s) < lrAt(t, s), `decay falls at ${t}`);
});

test('clipping scales the gradient to the maximum norm only when it is exceeded, and returns the norm before', () => {
  const g = new Float32Array([3, 4]);
  assert.equal(clipGradNorm(g, 10), 5);
  assert.deepEqual(g, new Float32Array([3, 4]));
  assert.equal(clipGradNorm(g, 0), 5); // 0 disables
  assert.deepEqual(g, new Float32Array([3, 4]));
  assert.equal(clipGradNorm(g, 1), 5);
  close(g[0]!, 0.6, 1e-6, 'clipped x');
  close(g[1]!, 0.8, 1e-6, 'clipped y');
  close(globalNorm(g), 1, 1e-6, 'norm after clipping');
});

// ---------------------------------------------------------------------------------------------------- ZeRO-1 ranges

// decaying weights and non-decaying biases of odd sizes, so that chunk boundaries fall inside segments
const ZERO_SEGMENTS: OptimSegment[] = [
  { name: 'w1', shape: [3, 5], offset: 0, size: 15, decay: true },
  { name: 'b1', shape: [5], offset: 15, size: 5, decay: false },
  { name: 'w2', shape: [4, 4], offset: 20, size: 16, decay: true },
  { name: 'b2', shape: [7], offset: 36, size: 7, decay: false },
];
const ZERO_SIZE = 43;

/** Deterministic pseudo-random float32 values in [-0.5, 0.5). */
function noise(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5);
}

for (const n of [1, 2, 3, 5, 8, 43, 64]) {
  test(`a buffer cut into ${n} chunks, each updated by its own ranged AdamW, ends bit-identical to one full AdamW`, () => {
    const cfg = { weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
    const full = new AdamW(ZERO_SEGMENTS, cfg);
    const ranged = Array.from({ length: n }, (_, i) => new AdamW(ZERO_SEGMENTS, cfg, { range: chunkRange(ZERO_SIZE, n, i) }));
    const pFull = noise(ZERO_SIZE, 1), pRanged = pFull.slice();
    for (let step = 1; step <= 6; step++) {
      const g = noise(ZERO_SIZE, 100 + step), lr = 1e-2 / step;
      full.update(pFull, g, lr);
      for (const opt of ranged) opt.update(pRanged, g, lr);
    }
    assert.deepEqual(pRanged, pFull);
    const whole = full.exportFlat();
    const parts = ranged.map((o) => o.exportFlat());
    assert.deepEqual(Float32Array.from(parts.flatMap((p) => [...p.expAvg])), whole.expAvg);
    assert.deepEqual(Float32Array.from(parts.flatMap((p) => [...p.expAvgSq])), whole.expAvgSq);
    assert.ok(parts.every((p) => p.step === 6));
  });
}

test('chunk boundaries of the ZeRO test fall inside segments, not only between them', () => {
  const cuts = [1, 2].map((i) => chunkRange(ZERO_SIZE, 3, i).start); // 14 and 28
  const inside = (at: number) => ZERO_SEGMENTS.some((s) => at > s.offset && at < s.offset + s.size);
  assert.ok(cuts.every(inside), `cuts ${cuts}`);
});

test('a ranged AdamW resumes identically from exportFlat/importFlat and leaves elements outside its range alone', () => {
  const range = chunkRange(ZERO_SIZE, 3, 1);
  const a = new AdamW(ZERO_SEGMENTS, {}, { range });
  assert.deepEqual(a.range, { start: 14, end: 28 });
  const pa = noise(ZERO_SIZE, 2);
  const before = pa.slice();
  a.update(pa, noise(ZERO_SIZE, 3), 1e-2);
  a.update(pa, noise(ZERO_SIZE, 4), 1e-2);
  assert.deepEqual(pa.subarray(0, 14), before.subarray(0, 14));
  assert.deepEqual(pa.subarray(28), before.subarray(28));
  const saved = a.exportFlat();
  assert.equal(saved.expAvg.length, 14);
  saved.expAvg[0] = 99; // a copy: changing it leaves the optimizer alone
  assert.notEqual(a.exportFlat().expAvg[0], 99);
  const b = new AdamW(ZERO_SEGMENTS, {}, { range });
  b.importFlat(a.exportFlat());
  const pb = pa.slice();
  const g = noise(ZERO_SIZE, 5);
  a.update(pa, g, 1e-2);
  b.update(pb, g, 1e-2);
  assert.deepEqual(pb, pa);
  assert.equal(b.step, 3);
  assert.deepEqual(b.exportFlat(), a.exportFlat());
});

test('a ranged AdamW refuses per-parameter state, moments of the wrong length and ranges outside the buffer', () => {
  const a = new AdamW(ZERO_SEGMENTS, {}, { range: { start: 10, end: 20 } });
  assert.throws(() => a.exportState(), (e: unknown) => e instanceof RangeError && /exportState needs the whole buffer, but this optimizer holds \[10, 20\) of 43/.test(e.message));
  const whole = new AdamW(ZERO_SEGMENTS).exportState();
  assert.throws(() => a.importState(whole), /importState needs the whole buffer/);
  const ok = a.exportFlat();
  assert.throws(() => a.importFlat({ ...ok, expAvgSq: new Float32Array(9) }), /expAvgSq has 9 elements, the range \[10, 20\) has 10/);
  assert.throws(() => a.importFlat({ ...ok, step: -1 }), /step must be a non-negative integer/);
  assert.throws(() => new AdamW(ZERO_SEGMENTS, {}, { range: { start: 5, end: 44 } }), /0 ≤ start ≤ end ≤ 43/);
  assert.throws(() => new AdamW(ZERO_SEGMENTS, {}, { range: { start: 6, end: 5 } }), /got \[6, 5\)/);
  const p = new Float32Array(ZERO_SIZE);
  assert.throws(() => a.update(p.subarray(10, 20), p.subarray(10, 20), 1e-3), /expects 43 elements/);
  assert.deepEqual(new AdamW(ZERO_SEGMENTS).range, { start: 0, end: 43 }); // the default is the whole buffer
});
