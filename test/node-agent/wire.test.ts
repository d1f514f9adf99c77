/**
 * npx tsx --test test/node-agent/wire.test.ts
 *
 * node-agent/collectives/wire.ts against a slow reference: every 16-bit pattern decoded with Math.pow arithmetic,
 * and float32 → 16 bits by searching the sorted table of representable values for the nearest one (ties to the
 * even pattern, the pattern after the largest finite value standing for the overflow threshold, i.e. Inf).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addDecoded, bytesPerElement, decode, encode, encodeAndRound, uint16View, type EncodedWire } from '../../node-agent/collectives/wire.ts';

interface Format {
  expBits: number;
  mantBits: number;
}
const FORMATS: Record<EncodedWire, Format> = { bf16: { expBits: 8, mantBits: 7 }, f16: { expBits: 5, mantBits: 10 } };
const WIRES = ['bf16', 'f16'] as const;

/** The value of a 16-bit pattern, from the format's definition. */
function refValue(wire: EncodedWire, h: number): number {
  const { expBits, mantBits } = FORMATS[wire];
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> mantBits) & ((1 << expBits) - 1);
  const mant = h & ((1 << mantBits) - 1);
  const bias = (1 << (expBits - 1)) - 1;
  if (exp === (1 << expBits) - 1) return mant ? NaN : sign * Infinity;
  if (exp === 0) return sign * mant * Math.pow(2, 1 - bias - mantBits);
  return sign * (1 + mant / Math.pow(2, mantBits)) * Math.pow(2, exp - bias);
}

/** The pattern just past the largest finite one is Inf; for rounding it stands at 2^(emax+1). */
function infPattern(wire: EncodedWire): number {
  return wire === 'bf16' ? 0x7f80 : 0x7c00;
}
function magnitudeOf(wire: EncodedWire, p: number): number {
  const { expBits } = FORMATS[wire];
  return p === infPattern(wire) ? Math.pow(2, (1 << (expBits - 1))) : refValue(wire, p);
}

/** Round-to-nearest-even of a (non-NaN) number to a 16-bit pattern, by search. */
function refEncode(wire: EncodedWire, v: number): number {
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  const inf = infPattern(wire);
  if (a >= magnitudeOf(wire, inf)) return sign | inf;
  let lo = 0, hi = inf; // magnitudeOf(lo) ≤ a < magnitudeOf(hi)
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (magnitudeOf(wire, mid) <= a) lo = mid;
    else hi = mid;
  }
  const below = a - magnitudeOf(wire, lo), above = magnitudeOf(wire, hi) - a;
  const p = below < above ? lo : above < below ? hi : lo % 2 === 0 ? lo : hi;
  return sign | p;
}

function bitsOf(f: Float32Array): Uint32Array {
  return new Uint32Array(f.buffer, f.byteOffset, f.length);
}

function randomFloats(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  const bits = bitsOf(out);
  let x = seed >>> 0;
  const next = () => (x = (Math.imul(x, 1664525) + 1013904223) >>> 0);
  for (let i = 0; i < n; i++) {
    if (i % 2 === 0) bits[i] = next(); // any bit pattern: every exponent, subnormals, NaN and Inf included
    else out[i] = (next() & 1 ? -1 : 1) * Math.pow(10, (next() / 2 ** 32) * 24 - 14) * (1 + next() / 2 ** 32); // 1e-14 … 2e10
  }
  return out;
}

for (const wire of WIRES) {
  test(`${wire}: every 16-bit pattern decodes to its defined value and encodes back to itself`, () => {
    const all = Uint16Array.from({ length: 65536 }, (_, h) => h);
    const decoded = new Float32Array(65536);
    decode(wire, all, decoded);
    const again = new Uint16Array(65536);
    encode(wire, decoded, again);
    for (let h = 0; h < 65536; h++) {
      const ref = refValue(wire, h);
      if (Number.isNaN(ref)) {
        assert.ok(Number.isNaN(decoded[h]), `pattern ${h.toString(16)} decodes to NaN`);
        assert.ok(Number.isNaN(refValue(wire, again[h]!)), `NaN ${h.toString(16)} stays NaN`);
        assert.equal(again[h]! & 0x8000, h & 0x8000, 'the sign of a NaN is kept');
      } else {
        assert.ok(Object.is(decoded[h], ref), `pattern ${h.toString(16)}: ${decoded[h]} vs ${ref}`);
        assert.equal(again[h], h, `pattern ${h.toString(16)} round-trips`);
      }
    }
  });

  test(`${wire}: encoding random float32s of every magnitude matches round-to-nearest-even by search`, () => {
    const src = randomFloats(40_000, wire === 'bf16' ? 7 : 11);
    const got = new Uint16Array(src.length);
    encode(wire, src, got);
    for (let i = 0; i < src.length; i++) {
      const v = src[i]!;
      if (Number.isNaN(v)) assert.ok(Number.isNaN(refValue(wire, got[i]!)), `NaN at ${i} stays NaN`);
      else assert.equal(got[i], refEncode(wire, v), `${v} (bits ${bitsOf(src)[i]!.toString(16)})`);
    }
  });

  test(`${wire}: encodeAndRound leaves what decode gives, and addDecoded equals a float32 add of it`, () => {
    const src = randomFloats(10_000, 3);
    const rounded = src.slice();
    const enc = new Uint16Array(src.length);
    encodeAndRound(wire, rounded, enc);
    const decoded = new Float32Array(src.length);
    decode(wire, enc, decoded);
    assert.deepEqual(bitsOf(rounded), bitsOf(decoded));
    const acc = Float32Array.from({ length: src.length }, (_, i) => (i % 7) - 3.25);
    const expected = Float32Array.from(acc, (a, i) => Math.fround(a + decoded[i]!));
    addDecoded(acc, enc, wire);
    assert.deepEqual(bitsOf(acc), bitsOf(expected));
  });
}

test('ties round to the even pattern, in normal and (f16) subnormal range', () => {
  const cases: Array<[EncodedWire, number, number]> = [
    ['bf16', 1 + 2 ** -8, 1], // halfway between 1 and 1 + 2^-7: 1 is even
    ['bf16', 1 + 3 * 2 ** -8, 1 + 2 ** -6], // halfway between mantissas 1 and 2: 2
    ['bf16', 1 + 2 ** -8 + 2 ** -20, 1 + 2 ** -7], // just above halfway: up
    ['bf16', -(1 + 3 * 2 ** -8), -(1 + 2 ** -6)],
    ['f16', 1 + 2 ** -11, 1],
    ['f16', 1 + 3 * 2 ** -11, 1 + 2 ** -9],
    ['f16', 2 ** -25, 0], // halfway between 0 and the smallest subnormal 2^-24
    ['f16', 3 * 2 ** -25, 2 ** -23], // between subnormals 1 and 2 (×2^-24): 2
    ['f16', 2 ** -25 + 2 ** -40, 2 ** -24],
    ['f16', 1023.5 * 2 ** -24, 2 ** -14], // largest subnormal and smallest normal: the normal (even)
    ['f16', 65519.99, 65504], // just under the overflow threshold
    ['f16', 2047.5 * 2 ** -10 * 2 ** 15, Infinity], // 65520: halfway from 65504 to 2^16, rounds to even: Inf
  ];
  for (const [wire, v, expected] of cases) {
    const enc = new Uint16Array(1);
    encode(wire, Float32Array.of(v), enc);
    const back = new Float32Array(1);
    decode(wire, enc, back);
    assert.equal(back[0], Math.fround(expected), `${wire}(${v})`);
  }
});

test('NaN, ±Inf and −0 survive both formats; f16 overflows to ±Inf and flushes what is under 2^-25 to ±0', () => {
  for (const wire of WIRES) {
    const src = Float32Array.of(NaN, -NaN, Infinity, -Infinity, -0, 0);
    const enc = new Uint16Array(src.length);
    encode(wire, src, enc);
    const back = new Float32Array(src.length);
    decode(wire, enc, back);
    assert.ok(Number.isNaN(back[0]) && Number.isNaN(back[1]));
    assert.deepEqual(Array.from(back.subarray(2)), [Infinity, -Infinity, -0, 0]);
    assert.ok(Object.is(back[4], -0));
  }
  const big = Float32Array.of(65536, -1e6, 3.4e38, 1e-6, -1e-8, 2 ** -26, -(2 ** -30), 1e-40);
  const enc = new Uint16Array(big.length);
  encode('f16', big, enc);
  const back = new Float32Array(big.length);
  decode('f16', enc, back);
  assert.deepEqual(Array.from(back.subarray(0, 3)), [Infinity, -Infinity, Infinity]);
  assert.equal(back[3], 17 * 2 ** -24, '1e-6 is a subnormal: 17 steps of 2^-24, a 1.3% error where bf16 has ≤ 0.4%');
  assert.ok(Object.is(back[4], -0), 'a gradient of −1e-8 is lost in f16 (under 2^-25 ≈ 3e-8)');
  assert.ok(Object.is(back[5], 0) && Object.is(back[6], -0) && Object.is(back[7], 0));
  // bf16 keeps float32's range: the same values stay finite and non-zero.
  encode('bf16', big, enc);
  decode('bf16', enc, back);
  assert.ok([0, 1, 3, 4, 5, 6, 7].every((i) => Number.isFinite(back[i]) && back[i] !== 0));
  // 3.4e38 lies above the halfway point from bf16's largest finite value (≈ 3.3895e38) to 2^128: Inf.
  assert.equal(back[2], Infinity);
});

test('bytesPerElement and uint16View: 2 bytes per value, aligned views without a copy, unaligned ones copied', () => {
  assert.equal(bytesPerElement('f32'), 4);
  assert.equal(bytesPerElement('bf16'), 2);
  assert.equal(bytesPerElement('f16'), 2);
  const bytes = Buffer.from([1, 0, 2, 0, 3, 0, 4]);
  const aligned = uint16View(bytes.subarray(0, 4));
  assert.deepEqual(Array.from(aligned), [1, 2]);
  const odd = new Uint8Array(new ArrayBuffer(8), 1, 4);
  odd.set([5, 0, 6, 0]);
  assert.deepEqual(Array.from(uint16View(odd)), [5, 6]);
  assert.throws(() => uint16View(bytes.subarray(0, 3)), { code: 'AGT_ERR_OUT_OF_RANGE' });
  assert.throws(() => encode('bf16', new Float32Array(3), new Uint16Array(2)), { code: 'AGT_ERR_OUT_OF_RANGE' });
});
