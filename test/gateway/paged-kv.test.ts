/** The paged KV cache (gateway/paged-kv.ts) and its SIMD attention kernel (gateway/paged-attention.wat). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { BLOCK, PagedKv, type KvSequence } from '../../gateway/paged-kv.ts';
import { seededRandom } from '../../common/random.ts';
// @ts-expect-error: a plain .mjs script without type declarations
import { assemble } from '../../scripts/build-wasm.mjs';

const shape = { nLayer: 2, nHead: 3, nEmbd: 24, nCtx: 80 }; // head size 8
const d = shape.nEmbd, hs = d / shape.nHead;

function randoms(n: number, seed: number): Float32Array {
  const r = seededRandom(seed, 0);
  return Float32Array.from({ length: n }, () => 2 * r() - 1);
}

/** Writes `len` random positions into both layers of `seq`; returns what was written: [layer] → {k, v} [len, d]. */
function fill(kv: PagedKv, seq: KvSequence, len: number, seed: number): Array<{ k: Float32Array; v: Float32Array }> {
  kv.reserve(seq, len);
  const layers = [0, 1].map((l) => ({ k: randoms(len * d, seed * 10 + l), v: randoms(len * d, seed * 10 + l + 5) }));
  layers.forEach(({ k, v }, l) => kv.write(seq, l, seq.length, len, k, 0, v, 0, d));
  seq.length += len;
  return layers;
}

/** softmax(q·kᵀ/√hs)·v per head, in float64. */
function reference(q: Float32Array, k: Float32Array, v: Float32Array, len: number): Float64Array {
  const y = new Float64Array(d);
  for (let h = 0; h < shape.nHead; h++) {
    const s = Array.from({ length: len }, (_, j) => {
      let a = 0;
      for (let i = 0; i < hs; i++) a += q[h * hs + i]! * k[j * d + h * hs + i]!;
      return a / Math.sqrt(hs);
    });
    const max = Math.max(...s);
    const e = s.map((x) => Math.exp(x - max));
    const sum = e.reduce((a, b) => a + b, 0);
    for (let j = 0; j < len; j++) for (let i = 0; i < hs; i++) y[h * hs + i]! += (e[j]! / sum) * v[j * d + h * hs + i]!;
  }
  return y;
}

test('the committed paged-attention.wasm is what paged-attention.wat assembles to', async () => {
  const built: Buffer = await assemble('gateway/paged-attention.wat');
  assert.ok(built.equals(readFileSync(new URL('../../gateway/paged-attention.wasm', import.meta.url))), 'run node scripts/build-wasm.mjs');
});

test('attention over 1 to 5 blocks of cached positions equals softmax(q·kᵀ/√hs)·v per head, for every layer', () => {
  const kv = new PagedKv(shape);
  for (const len of [1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5, shape.nCtx]) {
    const seq = kv.sequence();
    const layers = fill(kv, seq, len, len);
    for (const [l, { k, v }] of layers.entries()) {
      const q = randoms(d, 1000 + len + l);
      const y = new Float32Array(d + 3).fill(7);
      kv.attend(seq, l, len, q, 0, y, 3);
      const want = reference(q, k, v, len);
      assert.equal(y[0], 7, 'writes start at yAt');
      for (let i = 0; i < d; i++) assert.ok(Math.abs(y[3 + i]! - want[i]!) <= 1e-6, `len ${len}, layer ${l}, element ${i}: ${y[3 + i]} vs ${want[i]}`);
      const prefix = kv.read(seq, l, len);
      assert.deepEqual(prefix.k, k);
      assert.deepEqual(prefix.v, v);
    }
    kv.release(seq);
  }
  assert.equal(kv.blocksInUse, 0);
});

test('forks share blocks until they write: a partly filled block is copied once, the prompt stays as it was, and releasing frees everything', () => {
  const kv = new PagedKv(shape);
  const prompt = kv.sequence();
  const written = fill(kv, prompt, BLOCK + 5, 1); // two blocks, the second partly filled
  assert.equal(kv.blocksInUse, 2);
  const a = kv.fork(prompt), b = kv.fork(prompt);
  assert.equal(kv.blocksInUse, 2, 'forking copies nothing');
  const one = new Float32Array(d).fill(1), two = new Float32Array(d).fill(2);
  kv.reserve(a, 1);
  kv.write(a, 0, a.length, 1, one, 0, one, 0, d);
  a.length++;
  assert.equal(kv.blocksInUse, 3, 'a copied the shared partly filled block, not the full one');
  assert.equal(a.blocks[0], prompt.blocks[0]);
  assert.notEqual(a.blocks[1], prompt.blocks[1]);
  kv.reserve(b, 1);
  kv.write(b, 0, b.length, 1, two, 0, two, 0, d);
  b.length++;
  assert.deepEqual(kv.read(prompt, 0, prompt.length).k, written[0]!.k, 'the prompt is unchanged');
  assert.deepEqual(kv.read(a, 0, a.length).k.subarray(prompt.length * d), one);
  assert.deepEqual(kv.read(b, 0, b.length).k.subarray(prompt.length * d), two);
  assert.deepEqual(kv.read(b, 1, prompt.length).v, written[1]!.v, 'a fork reads the prompt\'s positions');
  kv.release(prompt);
  kv.release(a);
  assert.ok(kv.blocksInUse >= 2, 'b still holds its blocks');
  kv.release(b);
  assert.equal(kv.blocksInUse, 0);
});

test('the pool grows as sequences need blocks, keeps what was written across growth, and reuses freed blocks', () => {
  const kv = new PagedKv(shape);
  const sequences = Array.from({ length: 40 }, () => kv.sequence());
  const written = sequences.map((s, i) => fill(kv, s, 2 * BLOCK, i + 1));
  const bytes = kv.bytes;
  assert.ok(bytes >= 80 * 2 * BLOCK * d * 4 * shape.nLayer, `pool of ${bytes} bytes holds 80 blocks`);
  sequences.forEach((s, i) => assert.deepEqual(kv.read(s, 1, 2 * BLOCK).v, written[i]![1]!.v, `sequence ${i} after growth`));
  for (const s of sequences) kv.release(s);
  const again = kv.sequence();
  fill(kv, again, 2 * BLOCK, 99);
  assert.equal(kv.bytes, bytes, 'freed blocks are reused before the pool grows');
});

test('a sequence cannot grow past the context, and a head size the kernel cannot take is refused up front', () => {
  const kv = new PagedKv(shape);
  const seq = kv.sequence();
  fill(kv, seq, shape.nCtx, 3);
  assert.throws(() => kv.reserve(seq, 1), /needs 81 positions, more than the context of 80/);
  assert.equal(PagedKv.supports({ nHead: 4, nEmbd: 24 }), false, 'head size 6');
  assert.equal(PagedKv.supports({ nHead: 12, nEmbd: 768 }), true, 'GPT-2');
  assert.throws(() => new PagedKv({ ...shape, nHead: 4 }), /head size 6 is not a multiple of 4/);
});
