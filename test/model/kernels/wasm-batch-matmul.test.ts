/**
 * The fast wasm BatchMatMul/_FusedMatMul kernels (model/kernels) against the plain-JS `cpu` backend as the oracle:
 * every transpose combination, batch sizes 1/2/4/7, broadcast batch dims, ranks 2–4, dims of 1 and non-multiples
 * of 4, fused bias + activation, gradients through tf.grads, and no leaked tensors or wasm buffers.
 * Run: node --import tsx --test test/model/kernels/wasm-batch-matmul.test.ts
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import {
  broadcastBatchIndex,
  fastMatMulStats,
  fastWasmKernelsRegistered,
  registerFastWasmKernels,
  unregisterFastWasmKernels,
} from '../../../model/kernels/index.ts';

before(async () => {
  await tf.setBackend('cpu'); // initialise both, then work on wasm
  assert.ok(await tf.setBackend('wasm'), 'the wasm backend failed to initialise');
  await tf.ready();
  registerFastWasmKernels();
});

/** Deterministic PRNG (mulberry32) so a failing shape reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(20261123);
const randInt = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
function randomArray(shape: number[]): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rand() * 2 - 1;
  return out;
}

interface Input {
  shape: number[];
  values: Float32Array;
}
const input = (shape: number[]): Input => ({ shape, values: randomArray(shape) });

/** Runs `f` on the given backend over fresh tensors of `inputs`; returns every output's shape and values. */
async function runOn(
  backend: 'cpu' | 'wasm',
  inputs: Input[],
  f: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
): Promise<{ shape: number[]; values: Float32Array }[]> {
  await tf.setBackend(backend);
  try {
    return tf.tidy(() => {
      const xs = inputs.map((i) => tf.tensor(i.values, i.shape, 'float32'));
      const ys = f(...xs);
      return (Array.isArray(ys) ? ys : [ys]).map((y) => ({ shape: y.shape, values: y.dataSync() as Float32Array }));
    });
  } finally {
    await tf.setBackend('wasm');
  }
}

function assertClose(got: { shape: number[]; values: Float32Array }, want: { shape: number[]; values: Float32Array }, what: string) {
  assert.deepEqual(got.shape, want.shape, `${what}: shape`);
  let scale = 1;
  for (const v of want.values) scale = Math.max(scale, Math.abs(v));
  let err = 0;
  for (let i = 0; i < want.values.length; i++) err = Math.max(err, Math.abs(got.values[i]! - want.values[i]!));
  assert.ok(Number.isFinite(err) && err <= 1e-4 * scale, `${what}: max abs error ${err} (scale ${scale})`);
}

/** wasm (fast kernels) vs cpu for the same function and inputs. */
async function matchesCpu(inputs: Input[], f: (...xs: tf.Tensor[]) => tf.Tensor | tf.Tensor[], what: string) {
  const want = await runOn('cpu', inputs, f);
  const got = await runOn('wasm', inputs, f);
  assert.equal(got.length, want.length);
  got.forEach((g, i) => assertClose(g, want[i]!, `${what} [output ${i}]`));
}

const shapeOf = (batch: number[], rows: number, cols: number, t: boolean) => [...batch, ...(t ? [cols, rows] : [rows, cols])];
const DIMS = [1, 3, 5, 8, 13, 33]; // 1 and non-multiples of 4 included
const pick = () => DIMS[randInt(0, DIMS.length - 1)]!;

test('batched products match cpu for batch 1, 2, 4 and 7 with every transposeA/transposeB combination', async () => {
  assert.ok(fastWasmKernelsRegistered());
  for (const batch of [1, 2, 4, 7]) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        for (let rep = 0; rep < 2; rep++) {
          const [m, k, n] = [pick(), pick(), pick()];
          const a = input(shapeOf([batch], m, k, tA));
          const b = input(shapeOf([batch], k, n, tB));
          await matchesCpu([a, b], (x, y) => tf.matMul(x as tf.Tensor3D, y as tf.Tensor3D, tA, tB),
            `[${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
        }
      }
    }
  }
});

test('rank-2 products, including vectors as 1-row or 1-column matrices, match cpu with every transpose combination', async () => {
  const cases: [number, number, number][] = [[1, 1, 1], [1, 7, 1], [1, 9, 13], [13, 9, 1], [5, 1, 6], [31, 17, 45], [64, 128, 96]];
  for (const [m, k, n] of cases) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        const a = input(shapeOf([], m, k, tA));
        const b = input(shapeOf([], k, n, tB));
        await matchesCpu([a, b], (x, y) => tf.matMul(x as tf.Tensor2D, y as tf.Tensor2D, tA, tB),
          `[${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
      }
    }
  }
});

test('a batch of activations times shared rank-2 weights ([b,m,k]×[k,n]) matches cpu, transposed or not', async () => {
  for (const [batch, m, k, n] of [[4, 7, 13, 5], [7, 1, 9, 3], [16, 8, 32, 24]] as const) {
    for (const tA of [false, true]) {
      for (const tB of [false, true]) {
        const a = input(shapeOf([batch], m, k, tA));
        const w = input(shapeOf([], k, n, tB));
        await matchesCpu([a, w], (x, y) => tf.matMul(x, y, tA, tB), `[${a.shape}]×[${w.shape}] tA=${tA} tB=${tB}`);
      }
    }
  }
});

test('a batch-1 operand broadcasts against a batched one on either side ([1,m,k]×[b,k,n] and [b,m,k]×[1,k,n])', async () => {
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const [m, k, n] = [5, 6, 7];
      const a1 = input(shapeOf([1], m, k, tA));
      const bB = input(shapeOf([4], k, n, tB));
      await matchesCpu([a1, bB], (x, y) => tf.matMul(x, y, tA, tB), `[${a1.shape}]×[${bB.shape}] tA=${tA} tB=${tB}`);
      const aB = input(shapeOf([3], m, k, tA));
      const b1 = input(shapeOf([1], k, n, tB));
      await matchesCpu([aB, b1], (x, y) => tf.matMul(x, y, tA, tB), `[${aB.shape}]×[${b1.shape}] tA=${tA} tB=${tB}`);
    }
  }
});

test('rank-4 products (attention-shaped, several batch dims) match cpu', async () => {
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const a = input(shapeOf([2, 3], 9, 5, tA));
      const b = input(shapeOf([2, 3], 5, 11, tB));
      await matchesCpu([a, b], (x, y) => tf.matMul(x, y, tA, tB), `[${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
      const b1 = input(shapeOf([1, 3], 5, 11, tB));
      await matchesCpu([a, b1], (x, y) => tf.matMul(x, y, tA, tB), `[${a.shape}]×[${b1.shape}] tA=${tA} tB=${tB}`);
    }
  }
});

test('batch dims broadcast both ways ([2,1,m,k]×[1,3,k,n]) like the same product on explicitly tiled inputs', async () => {
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const a = input(shapeOf([2, 1], 4, 6, tA));
      const b = input(shapeOf([1, 3], 6, 5, tB));
      const want = await runOn('cpu', [a, b], (x, y) => tf.matMul(x.tile([1, 3, 1, 1]), y.tile([2, 1, 1, 1]), tA, tB));
      const got = await runOn('wasm', [a, b], (x, y) => tf.matMul(x, y, tA, tB));
      assertClose(got[0]!, want[0]!, `[${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
    }
  }
});

test('operands large enough to be transposed by the blocked JS copy (≥ 65536 elements per matrix) match cpu', async () => {
  for (const tA of [false, true]) {
    for (const tB of [false, true]) {
      const a = input(shapeOf([], 300, 257, tA)); // 77100 elements, odd sizes so tiles have ragged edges
      const b = input(shapeOf([], 257, 19, tB));
      await matchesCpu([a, b], (x, y) => tf.matMul(x, y, tA, tB), `[${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
      const a2 = input(shapeOf([2], 9, 1001, tA));
      const b2 = input(shapeOf([2], 1001, 67, tB)); // 67067 elements per batch
      await matchesCpu([a2, b2], (x, y) => tf.matMul(x, y, tA, tB), `[${a2.shape}]×[${b2.shape}] tA=${tA} tB=${tB}`);
    }
  }
});

test('broadcastBatchIndex maps each output batch to the operand batch it reads', () => {
  assert.deepEqual([...broadcastBatchIndex([2, 1], [2, 3])], [0, 0, 0, 1, 1, 1]);
  assert.deepEqual([...broadcastBatchIndex([3], [2, 3])], [0, 1, 2, 0, 1, 2]);
  assert.deepEqual([...broadcastBatchIndex([], [4])], [0, 0, 0, 0]);
  assert.deepEqual([...broadcastBatchIndex([1, 1], [])], [0]);
});

test('fused matMul with bias and relu/relu6/leakyrelu/sigmoid/elu activations matches cpu', async () => {
  for (const activation of ['linear', 'relu', 'relu6', 'leakyrelu', 'sigmoid', 'elu'] as const) {
    for (const [batch, tA, tB] of [[1, false, false], [3, false, true], [2, true, false], [4, true, true]] as const) {
      const [m, k, n] = [pick(), pick(), pick()];
      const a = input(shapeOf([batch], m, k, tA));
      const b = input(shapeOf([batch], k, n, tB));
      const bias = input([n]);
      await matchesCpu([a, b, bias], (x, y, z) =>
        tf.fused.matMul({ a: x as tf.Tensor3D, b: y as tf.Tensor3D, transposeA: tA, transposeB: tB, bias: z, activation, leakyreluAlpha: 0.3 }),
      `fused ${activation} [${a.shape}]×[${b.shape}] tA=${tA} tB=${tB}`);
    }
  }
});

test('a dense layer from tf.layers (fused matMul with bias) gives the cpu result on [batch, seq, d] input', async () => {
  const x = input([3, 5, 12]);
  const kernel = input([12, 7]);
  const bias = input([7]);
  await matchesCpu([x, kernel, bias], (xs, k, b) => {
    const layer = tf.layers.dense({ units: 7, activation: 'relu', weights: [k, b] });
    return layer.apply(xs) as tf.Tensor;
  }, 'dense');
});

test('gradients through matMul in both directions (with transposes and batches) match cpu', async () => {
  const a = input([4, 6, 10]);
  const b = input([4, 10, 7]);
  const w = input([7, 9]);
  const c = input([4, 5, 6]);
  const f = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor, u: tf.Tensor) => {
    const h = tf.matMul(x, y); // [4,6,7]
    // Rank-2 weights as the model applies them (tfjs' own gradient cannot un-broadcast [b,m,k]×[k,n]).
    const g = tf.tanh(tf.matMul(h.reshape([24, 7]), z)).reshape([4, 6, 9]);
    const s = tf.matMul(g, g, false, true); // [4,6,6]
    const t = tf.matMul(u, s, false, false); // [4,5,6]
    const r = tf.matMul(t, x, false, false); // [4,5,10]
    return tf.sum(tf.mul(r, r)).add(tf.sum(tf.matMul(h, h, true, false)));
  };
  await matchesCpu([a, b, w, c], (x, y, z, u) => {
    const grads = tf.grads((p: tf.Tensor, q: tf.Tensor, v: tf.Tensor, s: tf.Tensor) => f(p, q, v, s));
    return grads([x!, y!, z!, u!]);
  }, 'grads');
});

test('a kernel call leaks nothing: tensor count and wasm buffers are unchanged once its output is disposed', async () => {
  await tf.setBackend('wasm');
  const backend = tf.backend() as unknown as { numDataIds(): number };
  const a = tf.randomNormal([3, 8, 6]);
  const b = tf.randomNormal([3, 5, 6]);
  const w = tf.randomNormal([6, 4]);
  const c = tf.randomNormal([3, 5, 8]);
  const bias = tf.randomNormal([4]);
  const calls: [string, () => tf.Tensor][] = [
    ['batched, transposeB', () => tf.matMul(a, b, false, true)],
    ['batched, both transposed (output-transpose route)', () => tf.matMul(a, c, true, true)],
    ['shared rank-2 weights', () => tf.matMul(a, w)],
    ['batched, transposeA', () => tf.matMul(a, a, true, false)],
    ['fused with bias', () => tf.fused.matMul({ a: a as tf.Tensor3D, b: w.expandDims(0) as tf.Tensor3D, bias, activation: 'relu' })],
  ];
  for (const [what, call] of calls) {
    const tensorsBefore = tf.memory().numTensors;
    const buffersBefore = backend.numDataIds();
    const y = tf.tidy(call);
    y.dataSync();
    assert.equal(tf.memory().numTensors, tensorsBefore + 1, `${what}: only the output is new`);
    assert.equal(backend.numDataIds(), buffersBefore + 1, `${what}: only the output's buffer is new`);
    y.dispose();
    assert.equal(tf.memory().numTensors, tensorsBefore, `${what}: tensors`);
    assert.equal(backend.numDataIds(), buffersBefore, `${what}: buffers`);
  }
  tf.dispose([a, b, c, w, bias]);
});

test('float32 products and fused products with a rank-1 bias take the fast route, not the stock kernel', async () => {
  await tf.setBackend('wasm');
  const before = { ...fastMatMulStats };
  tf.tidy(() => {
    const a = tf.randomNormal([4, 6, 5]);
    const b = tf.randomNormal([4, 7, 5]);
    tf.matMul(a, b, false, true).dataSync();
    tf.matMul(a, tf.randomNormal([4, 7, 6]), true, true).dataSync();
    tf.fused.matMul({ a: a.reshape([24, 5]) as tf.Tensor2D, b: tf.ones([5, 3]) as tf.Tensor2D, bias: tf.ones([3]), activation: 'relu' }).dataSync();
  });
  assert.equal(fastMatMulStats.fast - before.fast, 3);
  assert.equal(fastMatMulStats.fallback, before.fallback);
});

test('weights reused under another shape (a reshape shares the buffer) are not served stale packed weights', async () => {
  const w = input([6, 4]);
  const x1 = input([5, 6]);
  const x2 = input([5, 4]);
  // The same buffer as [6,4] then [4,6]: the wasm backend caches packed weights by buffer id, not by shape.
  await matchesCpu([w, x1, x2], (wt, a, b) => [tf.matMul(a, wt), tf.matMul(b, wt.reshape([4, 6])), tf.matMul(a, wt)],
    'reshaped weights');
});

test('registration is idempotent and unregistering restores the stock kernel', async () => {
  await tf.setBackend('wasm');
  registerFastWasmKernels();
  registerFastWasmKernels();
  assert.ok(fastWasmKernelsRegistered());
  unregisterFastWasmKernels();
  assert.equal(fastWasmKernelsRegistered(), false);
  const stockOut = tf.tidy(() => tf.matMul(tf.ones([2, 3, 4]), tf.ones([2, 5, 4]), false, true).arraySync());
  registerFastWasmKernels();
  assert.ok(fastWasmKernelsRegistered());
  const fastOut = tf.tidy(() => tf.matMul(tf.ones([2, 3, 4]), tf.ones([2, 5, 4]), false, true).arraySync());
  assert.deepEqual(fastOut, stockOut);
});
