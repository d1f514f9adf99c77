/**
 * npx tsx --test test/node-agent/ring-wire.test.ts
 *
 * Ring collectives with a compressed wire (bf16, f16): every rank must end bit-identical, within the rounding
 * bound of the exact sum, having sent half the bytes of float32; segments in the wrong format or of the wrong size
 * are refused. In-memory links (test/support/fake-ring.ts) for most, real sockets for one.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fakeRing, type FakeLink } from '../support/fake-ring.ts';
import { chunkRange } from '../../protocol/partition.ts';
import { parsePeerMessage } from '../../protocol/peer.ts';
import type { GradientWire } from '../../protocol/job-spec.ts';
import { decode, encode, type EncodedWire } from '../../node-agent/collectives/wire.ts';
import { silentLogger } from '../../common/log.ts';
import { Group } from '../../node-agent/group.ts';
import { MAX_ENCODED_SEGMENT } from '../../node-agent/collectives/ring.ts';
import { PeerServer } from '../../node-agent/peer-server.ts';

/** Unit roundoff: the largest relative error of one rounding to the format. */
const UNIT: Record<EncodedWire, number> = { bf16: 2 ** -8, f16: 2 ** -11 };
/** Absolute error of one rounding near zero (f16's subnormal step is 2^-24; half of it). */
const FLOOR: Record<EncodedWire, number> = { bf16: 0, f16: 2 ** -25 };

/** Gradient-like values: random sign, magnitudes from 1e-7 to 10 (f16's subnormals included). */
function data(rank: number, length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let x = (seed * 7919 + rank * 104729 + 1) >>> 0;
  const next = () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  for (let i = 0; i < length; i++) out[i] = (next() < 0.5 ? -1 : 1) * 10 ** (next() * 8 - 7);
  return out;
}

const bits = (f: Float32Array) => new Uint32Array(f.buffer, f.byteOffset, f.length);

/** Counts what each link carries: payload bytes, and the `wire` of every ring.data. */
function countBytes(links: FakeLink[]): { bytes: number[]; wires: Set<string> } {
  const bytes = links.map(() => 0);
  const wires = new Set<string>();
  links.forEach((link, i) => {
    const send = link.send.bind(link);
    link.send = (msg, payload) => {
      bytes[i]! += payload.byteLength;
      if (msg.type === 'ring.data') wires.add(msg.wire ?? 'f32');
      send(msg, payload);
    };
  });
  return { bytes, wires };
}

/**
 * Each value crosses at most n roundings to the wire (n − 1 encodes of partial sums on the way, the owner's final
 * rounding), each off by at most u · |partial sum| ≤ u · Σ|x| (plus f16's absolute floor), and n − 1 float32 adds.
 */
function assertWithinBound(wire: EncodedWire, n: number, inputs: Float32Array[], got: Float32Array): void {
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    let exact = 0, abs = 0;
    for (const x of inputs) {
      exact += x[i]!;
      abs += Math.abs(x[i]!);
    }
    const bound = n * (UNIT[wire] * 1.01 + 2 ** -23) * abs + n * FLOOR[wire];
    const err = Math.abs(got[i]! - exact);
    assert.ok(err <= bound, `element ${i}: ${got[i]} vs exact ${exact}, error ${err} > bound ${bound}`);
    if (abs > 0) worst = Math.max(worst, err / abs);
  }
  assert.ok(worst > 0 || got.length < 4, 'a compressed wire that changes nothing is suspicious');
}

/** Whether every value is exactly representable in the wire format (the owner's rounding happened). */
function representable(wire: EncodedWire, f: Float32Array): boolean {
  const enc = new Uint16Array(f.length);
  encode(wire, f, enc);
  const back = new Float32Array(f.length);
  decode(wire, enc, back);
  return bits(back).every((b, i) => b === bits(f)[i]);
}

const cases: Array<[size: number, length: number, segmentBytes: number]> = [
  [2, 1, 16], [2, 2, 8], [2, 7, 8], [3, 1, 16], [3, 2, 4], [3, 10, 12], [3, 1001, 64], [4, 3, 8], [4, 4, 4], [4, 4099, 256],
];

for (const wire of ['bf16', 'f16'] as const) {
  for (const [size, length, segmentBytes] of cases) {
    test(`all-reduce in ${wire} on a ring of ${size} with ${length} elements in ${segmentBytes}-byte segments is bit-identical on every rank, near the exact sum, at half the bytes`, async () => {
      const inputs = Array.from({ length: size }, (_, r) => data(r, length, 42));
      const runWith = async (w: GradientWire) => {
        const { rings, links } = fakeRing(size, segmentBytes);
        const counted = countBytes(links);
        const bufs = inputs.map((x) => x.slice());
        await Promise.all(rings.map((ring, r) => ring.allReduce(bufs[r]!, { wire: w })));
        return { bufs, ...counted };
      };
      const f32 = await runWith('f32');
      const enc = await runWith(wire);
      for (let r = 1; r < size; r++) assert.deepEqual(bits(enc.bufs[r]!), bits(enc.bufs[0]!), `rank ${r} equals rank 0 bit for bit`);
      assert.ok(representable(wire, enc.bufs[0]!), `the result is made of ${wire} values`);
      assertWithinBound(wire, size, inputs, enc.bufs[0]!);
      assert.deepEqual(enc.bytes, f32.bytes.map((b) => b / 2), 'every link carried half the bytes');
      assert.deepEqual([...enc.wires], [wire]);
      assert.deepEqual([...f32.wires], ['f32']);
    });
  }

  test(`${wire} segments hold at most MAX_ENCODED_SEGMENT values whatever segmentBytes, so no conversion on the agent's thread runs long`, async () => {
    const length = 2 * MAX_ENCODED_SEGMENT + 12_345;
    const inputs = Array.from({ length: 2 }, (_, r) => data(r, length, 5));
    const { rings, links } = fakeRing(2, 64 * 1024 * 1024); // one f32 segment would carry a whole chunk
    let largest = 0;
    for (const link of links) {
      const send = link.send.bind(link);
      link.send = (msg, payload) => {
        if (msg.type === 'ring.data') largest = Math.max(largest, msg.count);
        send(msg, payload);
      };
    }
    const bufs = inputs.map((x) => x.slice());
    await Promise.all(rings.map((ring, r) => ring.allReduce(bufs[r]!, { wire })));
    assert.equal(largest, MAX_ENCODED_SEGMENT, 'the chunks were cut at the cap');
    assert.deepEqual(bits(bufs[1]!), bits(bufs[0]!), 'both ranks agree bit for bit');
    assertWithinBound(wire, 2, inputs, bufs[0]!);
  });

  test(`reduce-scatter in ${wire} leaves each rank the float32 sum of its chunk, within the bound, at half the bytes`, async () => {
    for (const [size, length] of [[2, 5], [3, 10], [4, 3], [4, 1001]] as const) {
      const inputs = Array.from({ length: size }, (_, r) => data(r, length, 7));
      const { rings, links } = fakeRing(size, 16);
      const { bytes } = countBytes(links);
      const bufs = inputs.map((x) => x.slice());
      const ranges = await Promise.all(rings.map((ring, r) => ring.reduceScatter(bufs[r]!, { wire })));
      ranges.forEach((range, r) => {
        assert.deepEqual(range, chunkRange(length, size, r));
        const mine = inputs.map((x) => x.subarray(range.start, range.end));
        assertWithinBound(wire, size, mine, bufs[r]!.subarray(range.start, range.end));
        // What each rank sent: n − 1 chunks, all but its own, at 2 bytes a value.
        assert.equal(bytes[r], (length - (range.end - range.start)) * 2, `rank ${r}'s bytes`);
      });
    }
  });

  test(`all-gather in ${wire} rounds each owner's chunk in place, so every rank ends with the same ${wire} values`, async () => {
    const size = 3, length = 23;
    const { rings, links } = fakeRing(size, 12);
    const { bytes } = countBytes(links);
    const full = data(9, length, 3);
    const bufs = rings.map((_, r) => {
      const b = new Float32Array(length).fill(NaN);
      const { start, end } = chunkRange(length, size, r);
      b.set(full.subarray(start, end), start);
      return b;
    });
    await Promise.all(rings.map((ring, r) => ring.allGather(bufs[r]!, { wire })));
    const expected = new Float32Array(length);
    const enc = new Uint16Array(length);
    encode(wire, full, enc);
    decode(wire, enc, expected);
    for (const b of bufs) assert.deepEqual(bits(b), bits(expected));
    assert.equal(bytes.reduce((a, b) => a + b), (size - 1) * length * 2);
  });
}

test('float32 collectives still send views of the caller\'s buffer, without a wire field', async () => {
  const { rings, links } = fakeRing(3, 16);
  const bufs = rings.map((_, r) => data(r, 50, 1));
  const sent: Array<{ payload: Uint8Array; wire: unknown; owner: number }> = [];
  links.forEach((link, i) => {
    const send = link.send.bind(link);
    link.send = (msg, payload) => {
      sent.push({ payload, wire: (msg as { wire?: unknown }).wire, owner: i });
      send(msg, payload);
    };
  });
  await Promise.all(rings.map((ring, r) => ring.allReduce(bufs[r]!, { wire: 'f32' })));
  assert.ok(sent.length > 0);
  for (const s of sent) {
    assert.equal(s.wire, undefined);
    assert.equal(s.payload.buffer, bufs[s.owner]!.buffer, 'a view, not a copy');
  }
});

describe('refusing segments that do not fit the collective', () => {
  test('a ring.data whose bytes are not count × 2 for a 16-bit wire is refused at once', () => {
    const { rings } = fakeRing(2, 8);
    for (const [count, bytes] of [[2, 8], [2, 2], [1, 4]] as const) {
      assert.throws(
        () => rings[0]!.receive({ type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 0, count, wire: 'bf16', attach: bytes }, Buffer.alloc(bytes)),
        { code: 'PRT_ERR_UNEXPECTED' },
      );
    }
  });

  test('a segment in another wire format than the running collective\'s is a protocol error', () => {
    for (const [mine, theirs] of [['bf16', 'f16'], ['bf16', undefined], ['f32', 'bf16'], [undefined, 'f16']] as const) {
      const { rings } = fakeRing(2, 8);
      void rings[0]!.allReduce(new Float32Array(2), mine ? { wire: mine } : undefined).catch(() => {});
      const bytes = theirs ? 2 : 4;
      assert.throws(
        () => rings[0]!.receive({ type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 1, count: 1, ...(theirs ? { wire: theirs } : {}), attach: bytes }, Buffer.alloc(bytes)),
        (err: Error & { code?: string }) => err.code === 'PRT_ERR_UNEXPECTED' && /wire/.test(err.message),
        `${mine ?? 'no option'} collective, ${theirs ?? 'f32'} segment`,
      );
      rings[0]!.abort(new Error('test over'));
    }
  });

  test('ranks that disagree on the wire fail the collective instead of summing garbage', async () => {
    const { rings } = fakeRing(2, 8, 300);
    const results = await Promise.allSettled([
      rings[0]!.allReduce(data(0, 10, 1), { wire: 'bf16' }),
      rings[1]!.allReduce(data(1, 10, 1), { wire: 'f16' }),
    ]);
    assert.ok(results.every((r) => r.status === 'rejected'));
    assert.ok(results.some((r) => (r as PromiseRejectedResult).reason.code === 'PRT_ERR_UNEXPECTED'));
  });

  test('the peer protocol accepts wire bf16 and f16 on ring.data and nothing else', () => {
    const base = { type: 'ring.data', seq: 1, phase: 0, hop: 0, offset: 0, count: 2, attach: 4 };
    for (const wire of ['bf16', 'f16']) assert.equal((parsePeerMessage({ ...base, wire }) as { wire?: string }).wire, wire);
    assert.equal('wire' in parsePeerMessage({ ...base, attach: 8 }), false);
    for (const wire of ['f32', 'fp8', '', 16]) assert.throws(() => parsePeerMessage({ ...base, wire }), { code: 'PRT_ERR_INVALID' });
  });
});

describe('a compressed all-reduce over real sockets', () => {
  const size = 3;
  const servers: PeerServer[] = [];
  const groups: Group[] = [];

  before(async () => {
    for (let rank = 0; rank < size; rank++) {
      servers.push(await PeerServer.listen({
        host: '127.0.0.1', port: 0, log: silentLogger, helloTimeoutMs: 2000,
        findGroup: async (id) => (groups[rank]?.id === id ? groups[rank] : undefined),
      }));
    }
    for (let rank = 0; rank < size; rank++) {
      groups.push(new Group({
        type: 'group.assign', groupId: 'g-wire', token: 'ring-wire-test-token', rank, size, segmentBytes: 4096,
        peers: servers.map((s, r) => ({ rank: r, nodeId: `n${r}`, address: `ws://127.0.0.1:${s.port}` })),
      }, { log: silentLogger, connectTimeoutMs: 5000, collectiveIdleTimeoutMs: 5000 }));
    }
    await Promise.all(groups.map((g) => g.link()));
  });

  after(async () => {
    for (const g of groups) g.release();
    await Promise.all(servers.map((s) => s.close()));
  });

  test('bf16 and f16 all-reduces and an f32 one in turn: identical on every rank, the f32 one exact', async () => {
    const length = 10_007; // several 4 KiB segments, not divisible by 3
    const inputs = Array.from({ length: size }, (_, r) => data(r, length, 5));
    for (const wire of ['bf16', 'f16', 'f32'] as const) {
      const bufs = inputs.map((x) => x.slice());
      await Promise.all(groups.map((g, r) => g.ring.allReduce(bufs[r]!, { wire })));
      for (let r = 1; r < size; r++) assert.deepEqual(bits(bufs[r]!), bits(bufs[0]!), `${wire}: rank ${r} equals rank 0`);
      if (wire === 'f32') {
        // float32 adds in the ring's order: within n − 1 roundings of the exact sum
        for (let i = 0; i < length; i++) {
          const exact = inputs.reduce((a, x) => a + x[i]!, 0), abs = inputs.reduce((a, x) => a + Math.abs(x[i]!), 0);
          if (Math.abs(bufs[0]![i]! - exact) > size * 2 ** -24 * abs) assert.fail(`f32 element ${i}: ${bufs[0]![i]} vs ${exact}`);
        }
      } else assertWithinBound(wire, size, inputs, bufs[0]!);
    }
  });
});
