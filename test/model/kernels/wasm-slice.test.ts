/**
 * The wasm Slice that reads its input on the heap (model/kernels/wasm-slice.ts) against the `cpu` backend: ranks
 * 1–5, contiguous and strided slices, float32 and int32 and bool, empty slices, and slices taken right after the
 * heap grew (the input view must be taken after the output's allocation).
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerFastWasmKernels } from '../../../model/kernels/index.ts';
import { heapSlice } from '../../../model/kernels/wasm-slice.ts';

before(async () => {
  await tf.setBackend('cpu');
  assert.ok(await tf.setBackend('wasm'), 'the wasm backend failed to initialise');
  await tf.ready();
  registerFastWasmKernels();
  assert.equal(tf.getKernel('Slice', 'wasm')?.kernelFunc, heapSlice, 'the heap Slice is registered');
});

function onCpu<T>(f: () => T): T {
  const was = tf.getBackend();
  tf.setBackend('cpu');
  try {
    return f();
  } finally {
    tf.setBackend(was);
  }
}

const cases: Array<{ shape: number[]; begin: number[]; size: number[] }> = [
  { shape: [10], begin: [3], size: [4] },
  { shape: [7, 5], begin: [2, 0], size: [3, 5] }, // whole rows: contiguous
  { shape: [7, 5], begin: [1, 1], size: [4, 3] }, // a block: strided
  { shape: [7, 5], begin: [0, 4], size: [7, 1] },
  { shape: [3, 4, 6], begin: [1, 0, 2], size: [2, 4, 3] },
  { shape: [2, 3, 4, 5], begin: [0, 1, 1, 0], size: [2, 2, 3, 5] },
  { shape: [2, 2, 3, 4, 5], begin: [1, 0, 1, 2, 1], size: [1, 2, 2, 2, 3] },
  { shape: [4, 4], begin: [1, 1], size: [0, 2] }, // empty
  { shape: [4, 4], begin: [1, 1], size: [-1, -1] }, // -1: to the end
];

for (const dtype of ['float32', 'int32', 'bool'] as const) {
  test(`Slice on wasm equals the cpu backend's (${dtype})`, () => {
    for (const { shape, begin, size } of cases) {
      const n = shape.reduce((a, b) => a * b, 1);
      const values: number[] | boolean[] = dtype === 'bool' ? Array.from({ length: n }, (_, i) => i % 3 === 0) : Array.from({ length: n }, (_, i) => (dtype === 'int32' ? i * 7 - 20 : i * 0.5 - 3.25));
      const expected = onCpu(() => tf.tidy(() => tf.tensor(values, shape, dtype).slice(begin, size).arraySync()));
      const before = tf.memory().numTensors;
      const got = tf.tidy(() => tf.tensor(values, shape, dtype).slice(begin, size).arraySync());
      assert.deepEqual(got, expected, `${dtype} ${JSON.stringify({ shape, begin, size })}`);
      assert.equal(tf.memory().numTensors, before);
    }
  });
}

test('a slice whose output allocation grows the wasm heap still reads its input correctly', () => {
  const heap = () => (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.buffer.byteLength;
  const rows = 2048, cols = 256;
  const x = tf.tensor2d(Float32Array.from({ length: rows * cols }, (_, i) => i % 1013), [rows, cols]);
  // Fill the heap's headroom so the next allocation has to grow it.
  const ballast: tf.Tensor[] = [];
  const start = heap();
  let grew = false;
  for (let i = 0; i < 64 && !grew; i++) {
    const size = heap();
    const out = x.slice([1, 0], [rows - 1, cols]);
    grew = heap() !== size;
    const got = out.dataSync() as Float32Array;
    for (let j = 0; j < got.length; j += 997) assert.equal(got[j], (j + cols) % 1013, `element ${j} after ${i} slices`);
    ballast.push(out);
  }
  assert.ok(grew && heap() > start, 'the heap grew during one of the slices');
  for (const t of [x, ...ballast]) t.dispose();
});
