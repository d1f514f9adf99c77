/**
 * Number formats for collective traffic (training.gradientWire): float32 values travel as 16-bit bf16 or f16 and
 * are summed in float32 on arrival. Everything here runs once per element on the wire, so no loop allocates.
 *
 *   bf16: float32's sign and 8-bit exponent, 7 mantissa bits (8 significant). Same range as float32 (≈ 1.2e-38 to
 *         3.4e38), relative rounding error ≤ 2^-8 ≈ 0.39%. Encoding is float32 rounded to its upper half.
 *   f16:  IEEE binary16: 5-bit exponent, 10 mantissa bits (11 significant), relative error ≤ 2^-11 ≈ 0.049%, but
 *         normal numbers span only 6.1e-5 (2^-14) to 65504; below that subnormals step by 2^-24 ≈ 6e-8 (losing
 *         precision as values shrink: 1e-6 is off by 1.3%), anything under 2^-25 ≈ 3e-8 becomes 0, and 65520 and
 *         up become ±Inf.
 *
 * Why bf16 is the safer default for gradients: gradient magnitudes of a model's many tensors span decades, and
 * elements of 1e-6 and below are ordinary (rows of rare tokens' embeddings, late in training, after averaging over
 * a large batch); in f16 they lose precision as subnormals or flush to zero, while a loss spike can overflow 65504
 * to Inf (f16 mixed-precision training scales the loss to stay in range; a wire format cannot). bf16 has float32's
 * range, so nothing flushes or overflows that would not in float32; it pays with 3 fewer mantissa bits, noise that
 * averages out over steps.
 *
 * Rounding is to nearest, ties to even (as IEEE conversion), NaN stays NaN (quiet, sign and top payload bits kept),
 * ±Inf and −0 are kept. Decoding goes through 64K-entry lookup tables (256 KiB each, built on first use): one load
 * per element (see `decodeTable` for the measurement).
 */
import type { GradientWire } from '../../protocol/job-spec.ts';
import { outOfRange } from '../errors.ts';

/** The formats that are encoded (float32 travels as itself). */
export type EncodedWire = Exclude<GradientWire, 'f32'>;

/** Bytes one value takes on the wire. */
export const bytesPerElement = (wire: GradientWire): 2 | 4 => (wire === 'f32' ? 4 : 2);

/** dst[i] = wire(src[i]) for i < src.length. */
export function encode(wire: EncodedWire, src: Float32Array, dst: Uint16Array): void {
  checkLengths(src.length, dst.length);
  const bits = u32View(src);
  if (wire === 'bf16') encodeBf16(bits, dst);
  else encodeF16(bits, dst);
}

/** dst[i] = float32(src[i]) for i < src.length: exact, every bf16 and f16 value is a float32. */
export function decode(wire: EncodedWire, src: Uint16Array, dst: Float32Array): void {
  checkLengths(src.length, dst.length);
  const table = decodeTable(wire);
  const n = src.length;
  for (let i = 0; i < n; i++) dst[i] = table[src[i]!]!;
}

/** dst[i] += float32(src[i]) for i < src.length, summed in float32 (no temporary array). */
export function addDecoded(dst: Float32Array, src: Uint16Array, wire: EncodedWire): void {
  checkLengths(src.length, dst.length);
  const table = decodeTable(wire);
  const n = src.length;
  let i = 0;
  // Unrolled by 4 like reduce.ts addInto. A double sum of two float32s rounded to float32 is the float32 sum.
  for (const m = n - (n % 4); i < m; i += 4) {
    dst[i] = dst[i]! + table[src[i]!]!;
    dst[i + 1] = dst[i + 1]! + table[src[i + 1]!]!;
    dst[i + 2] = dst[i + 2]! + table[src[i + 2]!]!;
    dst[i + 3] = dst[i + 3]! + table[src[i + 3]!]!;
  }
  for (; i < n; i++) dst[i] = dst[i]! + table[src[i]!]!;
}

/**
 * Encodes `buf` into `dst` and rounds `buf` in place to what the receivers will decode, so that the sender and
 * every receiver hold bit-identical values (the owner of a chunk does this before its all-gather).
 */
export function encodeAndRound(wire: EncodedWire, buf: Float32Array, dst: Uint16Array): void {
  encode(wire, buf, dst);
  decode(wire, dst, buf);
}

/**
 * `values` encoded into a fresh buffer, as bytes to send (the socket keeps a sent buffer until it is flushed, so
 * these are never reused); with `round`, `values` is also rounded in place to what the receivers will decode.
 */
export function encodedBytes(wire: EncodedWire, values: Float32Array, round: boolean): Uint8Array {
  const out = new Uint16Array(values.length);
  if (round) encodeAndRound(wire, values, out);
  else encode(wire, values, out);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** A Uint16Array over `bytes`, without copying when its offset is 2-byte aligned (the usual case); else a copy. */
export function uint16View(bytes: Uint8Array): Uint16Array {
  if (bytes.byteLength % 2 !== 0) throw outOfRange(`payload of ${bytes.byteLength} bytes is not whole 16-bit values`);
  if (bytes.byteOffset % 2 === 0) return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  const copy = new Uint16Array(bytes.byteLength / 2);
  new Uint8Array(copy.buffer).set(bytes);
  return copy;
}

function encodeBf16(bits: Uint32Array, dst: Uint16Array): void {
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    if ((x & 0x7fffffff) > 0x7f800000) {
      dst[i] = (x >>> 16) | 0x0040; // NaN: keep it quiet, and NaN even if its payload lived in the low half
    } else {
      // Round to nearest even on the low 16 bits; a carry into the exponent is correct (up to ±Inf at the top).
      dst[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
    }
  }
}

// Thresholds on |x|'s float32 bits.
const F32_INF = 0x7f800000;
const F16_OVERFLOW = 0x477ff000; // 65520: halfway from 65504 (f16 max) to 65536, which rounds (to even) up to Inf

/**
 * Per float32 exponent e (0–255), how to make the f16 of a finite |x| below 65520: keep its 24-bit significand
 * (implicit 1 included) shifted right by `shift[e]` with round-to-nearest-even, and add `base[e]`.
 *   normal f16 (e ≥ 113, |x| ≥ 2^-14): shift 13 leaves 1024–2048; base (e − 113) << 10 makes the exponent field
 *     e − 112 (a carry to 2048 correctly bumps the exponent, mantissa 0)
 *   subnormal (e ≤ 112): shift 126 − e (the value in steps of 2^-24, 0–1024; 1024 is the smallest normal), base 0;
 *     capped at 30, which leaves 0 for everything under 2^-25 (float32 subnormals and zero included)
 * Tables instead of branches: on mixed magnitudes a loop branching on normal/subnormal mispredicted and took 10 ms
 * per 1M values; this one takes about 5 ms (bf16's encoding, one add and shift, about 2 ms).
 */
const F16_SHIFT = new Uint8Array(256);
const F16_BASE = new Uint16Array(256);
const F16_BIAS = new Uint32Array(256); // half a step, less one: 2^(shift − 1) − 1
for (let e = 0; e < 256; e++) {
  const shift = e >= 113 ? 13 : Math.min(126 - e, 30);
  F16_SHIFT[e] = shift;
  F16_BASE[e] = e >= 113 ? Math.min(e - 113, 31) << 10 : 0;
  F16_BIAS[e] = 2 ** (shift - 1) - 1;
}

function encodeF16(bits: Uint32Array, dst: Uint16Array): void {
  const shifts = F16_SHIFT, bases = F16_BASE, biases = F16_BIAS;
  const n = bits.length;
  for (let i = 0; i < n; i++) {
    const x = bits[i]!;
    const a = x & 0x7fffffff;
    let h: number;
    if (a >= F16_OVERFLOW) {
      h = a > F32_INF ? 0x7e00 | ((a >>> 13) & 0x3ff) : 0x7c00; // NaN (quiet, top payload bits) or ±Inf
    } else {
      const e = a >>> 23;
      const s = shifts[e]!;
      const sig = (a & 0x7fffff) | 0x800000;
      h = bases[e]! + ((sig + biases[e]! + ((sig >>> s) & 1)) >>> s); // + half − 1 + lsb: ties go to even
    }
    dst[i] = ((x >>> 16) & 0x8000) | h;
  }
}

let bf16Table: Float32Array | null = null;
let f16Table: Float32Array | null = null;

/**
 * float32 value of every 16-bit pattern. A table load beats the arithmetic for f16: decoding 1M values of mixed
 * magnitudes took 1.7 ms with the table and 45 ms with a branchy arithmetic loop (Node 20, x86-64, 2 cores);
 * for bf16 the table is on par with writing `h << 16` through a Uint32Array (1.6 vs 1.3 ms), and one path is simpler.
 */
function decodeTable(wire: EncodedWire): Float32Array {
  if (wire === 'bf16') return (bf16Table ??= buildTable((h) => h << 16));
  return (f16Table ??= buildTable(f16Bits));
}

function buildTable(bitsOf: (h: number) => number): Float32Array {
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) bits[h] = bitsOf(h);
  return table;
}

/** float32 bits of the f16 with bits `h`. */
function f16Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0; // ±Inf, NaN (payload kept)
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0; // ±0
  // Subnormal: mant · 2^-24, normalised for float32 (exact).
  let e = 113; // float32 biased exponent of 2^-14
  let m = mant;
  while ((m & 0x400) === 0) {
    m <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

function u32View(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

function checkLengths(src: number, dst: number): void {
  if (dst < src) throw outOfRange(`wire conversion of ${src} values into room for ${dst}`);
}
