/**
 * protocol/partition.ts: how a buffer is cut into one chunk per rank, and each chunk into
 * pipelined segments. Properties over many (length, size, segment) triples, with a fixed fast-check seed, plus
 * a few hand-picked edge cases.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { chunkRange, mod, segmentCount, segments, type Range } from '../../protocol/partition.ts';

const SEED = 0x9a27;

function chunks(length: number, size: number): Range[] {
  return Array.from({ length: size }, (_, i) => chunkRange(length, size, i));
}

/** Asserts that `parts` cover [start, end) exactly, in order, with no gaps or overlaps. */
function assertTiles(parts: Range[], start: number, end: number, what: string): void {
  let at = start;
  for (const [i, p] of parts.entries()) {
    assert.equal(p.start, at, `${what}: part ${i} starts where the previous one ended`);
    assert.ok(p.end >= p.start, `${what}: part ${i} is not negative`);
    assert.ok(Number.isInteger(p.start) && Number.isInteger(p.end), `${what}: part ${i} has integer bounds`);
    at = p.end;
  }
  assert.equal(at, end, `${what}: the parts end at ${end}`);
}

describe('chunkRange', () => {
  test('chunks tile [0, length) exactly, in rank order, and their sizes differ by at most one', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 28 }), fc.integer({ min: 1, max: 1024 }), (length, size) => {
        const cs = chunks(length, size);
        assertTiles(cs, 0, length, `length ${length}, size ${size}`);
        const sizes = cs.map((c) => c.end - c.start);
        assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `sizes ${Math.min(...sizes)}..${Math.max(...sizes)}`);
        assert.equal(Math.min(...sizes), Math.floor(length / size));
      }),
      { seed: SEED, numRuns: 500 },
    );
  });

  test('small lengths and ring sizes, exhaustively, tile exactly', () => {
    for (let size = 1; size <= 12; size++) {
      for (let length = 0; length <= 50; length++) {
        const cs = chunks(length, size);
        assertTiles(cs, 0, length, `length ${length}, size ${size}`);
        const sizes = cs.map((c) => c.end - c.start);
        assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1);
      }
    }
  });

  test('a length below the ring size leaves some chunks empty but still tiles', () => {
    const cs = chunks(2, 5);
    assertTiles(cs, 0, 2, 'length 2, size 5');
    assert.equal(cs.filter((c) => c.end === c.start).length, 3);
  });

  test('a length of 0 gives only empty chunks', () => {
    assert.deepEqual(chunks(0, 3), [
      { start: 0, end: 0 },
      { start: 0, end: 0 },
      { start: 0, end: 0 },
    ]);
  });

  test('a ring of one gets the whole buffer', () => {
    assert.deepEqual(chunkRange(1_000_003, 1, 0), { start: 0, end: 1_000_003 });
  });

  test('the self-check lengths cut as expected for a ring of three', () => {
    assert.deepEqual(chunks(1_000_003, 3), [
      { start: 0, end: 333_334 },
      { start: 333_334, end: 666_668 },
      { start: 666_668, end: 1_000_003 },
    ]);
    assert.deepEqual(chunks(4 * 2 ** 20, 4).map((c) => c.end - c.start), [2 ** 20, 2 ** 20, 2 ** 20, 2 ** 20]);
  });
});

describe('segments', () => {
  // A limit, and a range of up to ~2000 segments of it (so a limit of 1 does not mean millions of segments).
  const rangeAndLimit = fc
    .tuple(fc.integer({ min: 1, max: 2 ** 20 }), fc.integer({ min: 0, max: 2 ** 28 }), fc.double({ min: 0, max: 2000, noNaN: true }))
    .map(([limit, start, segs]): [Range, number] => [{ start, end: start + Math.floor(segs * limit) }, limit]);

  test('segments tile their range in order and none is longer than the limit', () => {
    fc.assert(
      fc.property(rangeAndLimit, ([r, limit]) => {
        const segs = segments(r, limit);
        assertTiles(segs, r.start, r.end, `[${r.start}, ${r.end}) by ${limit}`);
        for (const s of segs) {
          assert.ok(s.end - s.start <= limit, `segment of ${s.end - s.start} > ${limit}`);
          assert.ok(s.end > s.start, 'no empty segment');
        }
        // Every segment but the last is full.
        for (const s of segs.slice(0, -1)) assert.equal(s.end - s.start, limit);
        assert.equal(segs.length, segmentCount(r, limit));
      }),
      { seed: SEED + 1, numRuns: 300 },
    );
  });

  test('chunks of a buffer cut into segments tile the whole buffer', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200_000 }), fc.integer({ min: 1, max: 64 }), fc.integer({ min: 16, max: 70_000 }), (length, size, limit) => {
        const all = chunks(length, size).flatMap((c) => segments(c, limit));
        assertTiles(all, 0, length, `length ${length}, size ${size}, segments of ${limit}`);
        for (const s of all) assert.ok(s.end - s.start <= limit);
      }),
      { seed: SEED + 2, numRuns: 300 },
    );
  });

  test('an empty range has no segments', () => {
    assert.deepEqual(segments({ start: 7, end: 7 }, 4), []);
    assert.equal(segmentCount({ start: 7, end: 7 }, 4), 0);
  });

  test('a range shorter than the limit is one segment', () => {
    assert.deepEqual(segments({ start: 10, end: 13 }, 100), [{ start: 10, end: 13 }]);
  });

  test('a range of exactly k limits is k full segments', () => {
    assert.deepEqual(segments({ start: 0, end: 12 }, 4), [
      { start: 0, end: 4 },
      { start: 4, end: 8 },
      { start: 8, end: 12 },
    ]);
  });
});

describe('mod', () => {
  test('is always in [0, n), also for negative numbers', () => {
    assert.equal(mod(-1, 4), 3);
    assert.equal(mod(-4, 4), 0);
    assert.equal(mod(5, 4), 1);
    fc.assert(
      fc.property(fc.integer({ min: -1e9, max: 1e9 }), fc.integer({ min: 1, max: 65536 }), (a, n) => {
        const m = mod(a, n);
        assert.ok(m >= 0 && m < n && Number.isInteger((a - m) / n));
      }),
      { seed: SEED + 3, numRuns: 300 },
    );
  });
});
