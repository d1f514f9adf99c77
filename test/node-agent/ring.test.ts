import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeRing } from '../support/fake-ring.ts';
import { chunkRange } from '../../protocol/partition.ts';

// Values are multiples of 1/64 below 16 in magnitude, so float32 sums of up to 64 ranks are exact whatever the
// order: the ring's result must equal the serial sum bit for bit.
function data(rank: number, length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let x = (seed * 7919 + rank * 104729 + 1) >>> 0;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = ((x >>> 8) % 2001 - 1000) / 64;
  }
  return out;
}

function serialSum(size: number, length: number, seed: number): Float32Array {
  const sum = new Float32Array(length);
  for (let r = 0; r < size; r++) {
    const d = data(r, length, seed);
    for (let i = 0; i < length; i++) sum[i] = sum[i]! + d[i]!;
  }
  return sum;
}

const cases: Array<[size: number, length: number, segmentBytes: number]> = [
  [1, 0, 16], [1, 7, 16], [2, 0, 16], [2, 1, 16], [2, 5, 8], [3, 2, 4], [3, 10, 12], [4, 4, 4],
  [4, 1001, 64], [5, 3, 4], [7, 100, 20], [8, 4096, 1024], [3, 100_003, 4096],
];

for (const [size, length, segmentBytes] of cases) {
  test(`all-reduce on a ring of ${size} with ${length} elements in ${segmentBytes}-byte segments equals the serial sum on every rank`, async () => {
    const { rings } = fakeRing(size, segmentBytes);
    const bufs = rings.map((_, r) => data(r, length, 42));
    await Promise.all(rings.map((ring, r) => ring.allReduce(bufs[r]!)));
    const expected = serialSum(size, length, 42);
    for (const buf of bufs) assert.deepEqual(buf, expected);
  });
}

test('reduce-scatter leaves each rank its own chunk of the sum, for lengths not divisible by the ring size', async () => {
  for (const [size, length] of [[3, 10], [4, 3], [5, 17]] as const) {
    const { rings } = fakeRing(size, 8);
    const bufs = rings.map((_, r) => data(r, length, 7));
    const ranges = await Promise.all(rings.map((ring, r) => ring.reduceScatter(bufs[r]!)));
    const expected = serialSum(size, length, 7);
    ranges.forEach((range, r) => {
      assert.deepEqual(range, chunkRange(length, size, r));
      assert.deepEqual(bufs[r]!.subarray(range.start, range.end), expected.subarray(range.start, range.end));
    });
  }
});

test('all-gather assembles every rank\'s chunk on every rank', async () => {
  const size = 4;
  const length = 23;
  const { rings } = fakeRing(size, 12);
  const full = data(9, length, 3);
  const bufs = rings.map((_, r) => {
    const b = new Float32Array(length).fill(NaN);
    const { start, end } = chunkRange(length, size, r);
    b.set(full.subarray(start, end), start);
    return b;
  });
  await Promise.all(rings.map((ring, r) => ring.allGather(bufs[r]!)));
  for (const b of bufs) assert.deepEqual(b, full);
});

test('broadcast from a non-zero root reaches every rank', async () => {
  const { rings } = fakeRing(5, 8);
  const src = data(1, 50, 11);
  const bufs = rings.map((_, r) => (r === 2 ? src.slice() : new Float32Array(50)));
  await Promise.all(rings.map((ring, r) => ring.broadcast(bufs[r]!, 2)));
  for (const b of bufs) assert.deepEqual(b, src);
});

test('consecutive collectives keep their data apart even when one rank starts late', async () => {
  const size = 3;
  const { rings } = fakeRing(size, 8);
  const a = rings.map((_, r) => data(r, 40, 1));
  const b = rings.map((_, r) => data(r, 40, 2));
  // Ranks 0 and 1 run both collectives back to back; rank 2 starts only after a delay, so messages of the
  // second collective reach it before it has started the first one.
  const early = [0, 1].map(async (r) => {
    await rings[r]!.allReduce(a[r]!);
    await rings[r]!.allReduce(b[r]!);
  });
  await new Promise((res) => setTimeout(res, 20));
  await rings[2]!.allReduce(a[2]!);
  await rings[2]!.allReduce(b[2]!);
  await Promise.all(early);
  for (let r = 0; r < size; r++) {
    assert.deepEqual(a[r], serialSum(size, 40, 1));
    assert.deepEqual(b[r], serialSum(size, 40, 2));
  }
});

test('a collective whose predecessor goes silent fails with AGT_ERR_COLLECTIVE_TIMEOUT instead of hanging', async () => {
  const { rings } = fakeRing(3, 8, 200);
  const bufs = rings.map((_, r) => data(r, 30, 5));
  // Rank 2 never joins: ranks 0 and 1 must time out.
  const results = await Promise.allSettled([rings[0]!.allReduce(bufs[0]!), rings[1]!.allReduce(bufs[1]!)]);
  for (const res of results) {
    assert.equal(res.status, 'rejected');
    assert.equal((res as PromiseRejectedResult).reason.code, 'AGT_ERR_COLLECTIVE_TIMEOUT');
  }
});

test('a segment that does not belong to the running collective is rejected as a protocol error', () => {
  const { rings } = fakeRing(2, 8);
  void rings[0]!.allReduce(new Float32Array(4)).catch(() => {});
  assert.throws(
    () => rings[0]!.receive({ type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 3, count: 1, attach: 4 }, Buffer.alloc(4)),
    { code: 'PRT_ERR_UNEXPECTED' },
  );
  rings[0]!.abort(new Error('test over'));
});

test('stream carries the requested bytes each way', async () => {
  const { rings } = fakeRing(3, 1024);
  await Promise.all(rings.map((ring) => ring.stream(10_000, 10_000)));
});
