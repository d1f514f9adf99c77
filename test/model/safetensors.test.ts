/**
 * model/safetensors.ts against the format: byte-exact files from the reference implementation's own tests
 * (huggingface/safetensors, safetensors/src/tensor.rs), round trips of every dtype, and one refusal per way a
 * file can be wrong.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../model/half-float.ts';
import {
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
  type Tensor,
  type TensorMap,
} from '../../model/safetensors.ts';
import { ModelError } from '../../model/errors.ts';

/** A file from a header (object or raw JSON text, padded with spaces to 8 bytes) and a data buffer. */
function file(header: object | string, data: Uint8Array | number = 0): Buffer {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, 0x20);
  json.copy(padded);
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(padded.length));
  return Buffer.concat([n, padded, typeof data === 'number' ? Buffer.alloc(data) : data]);
}

function refuses(buf: Uint8Array, message: RegExp): void {
  assert.throws(() => readSafetensors(buf), (err: unknown) => {
    assert.ok(err instanceof ModelError, `expected a ModelError, got ${String(err)}`);
    assert.equal(err.code, 'MDL_ERR_SAFETENSORS');
    assert.match(err.message, message);
    return true;
  });
}

const f32Bytes = (...xs: number[]) => Buffer.from(new Float32Array(xs).buffer);

describe('writing matches the reference byte for byte', () => {
  test('one F32 tensor of shape [2] is the length, the padded compact header and the little-endian floats', () => {
    const out = writeSafetensors({ w: { dtype: 'F32', shape: [2], data: new Float32Array([1, -2]) } });
    const json = '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'; // 54 bytes, padded with two spaces to 56
    const expected = Buffer.concat([
      Buffer.from([56, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(json + '  ', 'ascii'),
      Buffer.from([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0]), // 1.0f, -2.0f
    ]);
    assert.equal(json.length, 54);
    assert.deepEqual(out, expected);
  });

  test('the reference test_serialization file ("attn.0", F32 [1, 2, 3]) is reproduced exactly', () => {
    const out = writeSafetensors({ 'attn.0': { dtype: 'F32', shape: [1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) } });
    // prettier-ignore
    const expected = [
      64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
      116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
      58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
      101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
      0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
    ];
    assert.deepEqual([...out], expected);
  });

  test('the reference test_serialization_forced_alignement file pads the header with spaces to 8 bytes', () => {
    const out = writeSafetensors({ attn0: { dtype: 'F32', shape: [1, 1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) } });
    // prettier-ignore
    const expected = [
      72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
      121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
      91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
      115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
      32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
      160, 64,
    ];
    assert.deepEqual([...out], expected);
  });

  test('the reference test_empty files (no tensors, with and without metadata) are reproduced exactly', () => {
    assert.deepEqual([...writeSafetensors({})], [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    // prettier-ignore
    const withMetadata = [
      40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
      95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
      116, 34, 125, 125, 32, 32, 32, 32, 32,
    ];
    assert.deepEqual([...writeSafetensors({}, { framework: 'pt' })], withMetadata);
  });

  test('tensors are laid out by dtype, widest first, then by name, whatever the key order given', () => {
    const t = (dtype: 'F32' | 'U8' | 'I64' | 'F16', n: number): Tensor =>
      dtype === 'I64' ? { dtype, shape: [n], data: new BigInt64Array(n) } : dtype === 'F32' ? { dtype, shape: [n], data: new Float32Array(n) } : dtype === 'F16' ? { dtype, shape: [n], data: new Uint16Array(n) } : { dtype, shape: [n], data: new Uint8Array(n) };
    const a = writeSafetensors({ z: t('U8', 3), b: t('F32', 2), a: t('F32', 1), m: t('F16', 1), i: t('I64', 1) });
    const b = writeSafetensors({ i: t('I64', 1), m: t('F16', 1), a: t('F32', 1), b: t('F32', 2), z: t('U8', 3) });
    assert.deepEqual(a, b);
    const order = [...readSafetensorsHeader(a).tensors].map(([name, info]) => `${name}@${info.dataOffsets[0]}`);
    assert.deepEqual(order, ['i@0', 'a@8', 'b@12', 'm@20', 'z@22']);
  });

  test('tensor names that look like integers keep their place in the header', () => {
    const out = writeSafetensors({ '10': { dtype: 'U8', shape: [1], data: new Uint8Array([1]) }, '9': { dtype: 'U8', shape: [1], data: new Uint8Array([2]) }, a: { dtype: 'U8', shape: [0], data: new Uint8Array(0) } });
    const json = out.subarray(8, 8 + Number(out.readBigUInt64LE(0))).toString().trimEnd();
    assert.equal(json, '{"10":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"9":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"a":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}}');
  });
});

describe('round trips', () => {
  const every: TensorMap = {
    f64: { dtype: 'F64', shape: [2, 2], data: new Float64Array([Math.PI, -0, Infinity, 1e-300]) },
    f32: { dtype: 'F32', shape: [5], data: new Float32Array([1.5, -0, NaN, -Infinity, 3.4e38]) },
    f16: { dtype: 'F16', shape: [3], data: new Uint16Array([0x3c00, 0x7bff, 0x8001]) },
    bf16: { dtype: 'BF16', shape: [1, 2], data: new Uint16Array([0x3f80, 0xff80]) },
    i64: { dtype: 'I64', shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]) },
    i32: { dtype: 'I32', shape: [3], data: new Int32Array([-(2 ** 31), 0, 2 ** 31 - 1]) },
    i16: { dtype: 'I16', shape: [2], data: new Int16Array([-32768, 32767]) },
    i8: { dtype: 'I8', shape: [3], data: new Int8Array([-128, 0, 127]) },
    u64: { dtype: 'U64', shape: [1], data: new BigUint64Array([2n ** 64n - 1n]) },
    u32: { dtype: 'U32', shape: [1], data: new Uint32Array([2 ** 32 - 1]) },
    u16: { dtype: 'U16', shape: [1], data: new Uint16Array([65535]) },
    u8: { dtype: 'U8', shape: [3], data: new Uint8Array([0, 128, 255]) },
    bool: { dtype: 'BOOL', shape: [2], data: new Uint8Array([1, 0]) },
    scalar: { dtype: 'F32', shape: [], data: new Float32Array([42]) },
  };

  test('every supported dtype comes back with its dtype, shape and exact values', () => {
    const back = readSafetensors(writeSafetensors(every));
    assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(every).sort());
    for (const [name, t] of Object.entries(every)) {
      const got = back.tensors[name]!;
      assert.equal(got.dtype, t.dtype, name);
      assert.deepEqual(got.shape, t.shape, name);
      assert.equal(got.data.constructor, t.data.constructor, name);
      assert.deepEqual(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength), Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength), name);
    }
    assert.ok(Object.is((back.tensors.f32!.data as Float32Array)[1], -0));
    assert.deepEqual(back.metadata, {});
  });

  test('zero-size tensors keep their shape and take no bytes, wherever they fall', () => {
    const tensors: TensorMap = {
      empty: { dtype: 'F32', shape: [0], data: new Float32Array(0) },
      wide: { dtype: 'I32', shape: [2, 0, 3], data: new Int32Array(0) },
      one: { dtype: 'F32', shape: [1], data: new Float32Array([7]) },
      zz: { dtype: 'U8', shape: [0, 0], data: new Uint8Array(0) },
    };
    const buf = writeSafetensors(tensors);
    const back = readSafetensors(buf);
    assert.deepEqual(back.tensors.wide!.shape, [2, 0, 3]);
    assert.equal(back.tensors.wide!.data.length, 0);
    assert.deepEqual([...(back.tensors.one!.data as Float32Array)], [7]);
    assert.equal(back.tensors.zz!.data.length, 0);
    assert.deepEqual(readSafetensors(writeSafetensors({ only: { dtype: 'F64', shape: [0, 5], data: new Float64Array(0) } })).tensors.only!.shape, [0, 5]);
  });

  test('metadata comes back as written, with keys in byte order in the header', () => {
    const metadata = { format: 'pt', 'über': 'ü ☃ "quoted"\n', '10': 'ten', empty: '' };
    const buf = writeSafetensors({ x: { dtype: 'U8', shape: [1], data: new Uint8Array([9]) } }, metadata);
    assert.deepEqual(readSafetensors(buf).metadata, metadata);
    const json = buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString();
    assert.ok(json.startsWith('{"__metadata__":{"10":"ten","empty":"","format":"pt","über":'), json);
  });

  test('tensors read from an aligned buffer are views into it, not copies', () => {
    const buf = writeSafetensors({ w: { dtype: 'F32', shape: [3], data: new Float32Array([1, 2, 3]) }, b: { dtype: 'U8', shape: [3], data: new Uint8Array(3) }, d: { dtype: 'F64', shape: [1], data: new Float64Array([2]) } });
    const back = readSafetensors(buf);
    for (const t of Object.values(back.tensors)) assert.equal(t.data.buffer, buf.buffer);
    (back.tensors.w!.data as Float32Array)[0] = 10;
    assert.equal(readSafetensors(buf).tensors.w!.data[0], 10);
  });

  test('tensors read from a misaligned buffer are copied and keep their values', () => {
    const bytes = writeSafetensors({ w: { dtype: 'F32', shape: [3], data: new Float32Array([1, 2, 3]) } });
    const shifted = new Uint8Array(bytes.length + 1).subarray(1);
    shifted.set(bytes);
    const back = readSafetensors(shifted);
    assert.notEqual(back.tensors.w!.data.buffer, shifted.buffer);
    assert.deepEqual([...(back.tensors.w!.data as Float32Array)], [1, 2, 3]);
  });

  test('a header with leading and trailing JSON whitespace and tensors in any key order is read', () => {
    // The reference reads both (test_whitespace_leading_padded_header); order in the JSON does not matter, offsets do.
    const data = Buffer.concat([f32Bytes(5), Buffer.from([1, 2])]);
    const buf = file('\t\n {"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"a":{"data_offsets":[0,4],"shape":[],"dtype":"F32"}} \r\n', data);
    const back = readSafetensors(buf);
    assert.deepEqual(Object.keys(back.tensors), ['a', 'b']);
    assert.deepEqual([...back.tensors.b!.data], [1, 2]);
  });

  test('a tensor named __proto__ is kept as data', () => {
    const buf = file('{"__proto__":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', Buffer.from([3]));
    const back = readSafetensors(buf);
    assert.ok(Object.hasOwn(back.tensors, '__proto__'));
    assert.equal(Object.getPrototypeOf(back.tensors), Object.prototype);
  });
});

describe('reading refuses a bad file and says why', () => {
  const good = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  test('a file shorter than the 8-byte length prefix', () => refuses(Buffer.from([1, 0, 0]), /3 bytes, too short/));

  test('a header length beyond the end of the file', () => {
    const buf = file(good, 8);
    buf.writeBigUInt64LE(1000n);
    refuses(buf, /header length 1000 runs past the end of the file \(72 bytes\)/);
  });

  test('a header length above the 100 MB limit', () => {
    const buf = file(good, 8);
    buf.writeBigUInt64LE(2n ** 63n);
    refuses(buf, /header length 9223372036854775808 is above the format's 100000000-byte limit/);
  });

  test('a header that is not UTF-8', () => {
    refuses(Buffer.concat([Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0xff])]), /not valid UTF-8/);
  });

  test('a header that is not JSON', () => refuses(file('{"w": {'), /not valid JSON/));

  test('a header that is JSON but not an object', () => refuses(file('[1, 2]'), /not a JSON object/));

  test('an unknown dtype, naming the tensor', () => refuses(file({ w: { dtype: 'F9', shape: [2], data_offsets: [0, 8] } }, 8), /tensor "w": unknown dtype "F9"/));

  test('a dtype of the format that this module does not support', () => {
    refuses(file({ q: { dtype: 'F8_E4M3', shape: [8], data_offsets: [0, 8] } }, 8), /tensor "q": dtype F8_E4M3 is not supported here/);
  });

  test('a shape that disagrees with the byte length of its offsets', () => {
    refuses(file({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, 8), /tensor "w": shape \[3\] of F32 needs 12 bytes but data_offsets \[0, 8\) span 8/);
  });

  test('a shape that is not a list of non-negative integers', () => {
    refuses(file({ w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, 8), /tensor "w": shape must be an array of non-negative integers/);
    refuses(file({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } }, 8), /tensor "w": shape must be/);
  });

  test('offsets that end before they begin', () => {
    refuses(file({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 0] } }, 8), /tensor "w": data_offsets \[8, 0\) end before they begin/);
  });

  test('offsets past the end of the data buffer', () => {
    refuses(file({ w: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, 8), /tensor "w": data_offsets \[8, 24\) run past the end of the data buffer \(8 bytes\)/);
  });

  test('a truncated file, cut inside its last tensor', () => {
    const whole = writeSafetensors({ a: { dtype: 'F32', shape: [4], data: new Float32Array(4) }, b: { dtype: 'F32', shape: [4], data: new Float32Array(4) } });
    refuses(whole.subarray(0, whole.length - 3), /tensor "b": data_offsets \[16, 32\) run past the end of the data buffer \(29 bytes\): the file is truncated/);
  });

  test('two tensors whose bytes overlap', () => {
    refuses(file({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8), /tensor "b" at data_offsets \[4, 8\) overlaps tensor "a", which ends at 8/);
  });

  test('bytes that belong to no tensor (a hole)', () => {
    refuses(file({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } }, 12), /bytes \[4, 8\) of the data buffer belong to no tensor \(a hole before tensor "b"\)/);
    refuses(file({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, 8), /bytes \[0, 4\) of the data buffer belong to no tensor/);
  });

  test('trailing bytes after the last tensor', () => {
    refuses(Buffer.concat([writeSafetensors({ a: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } }), Buffer.from('polyglot')]), /8 trailing bytes after the last tensor/);
  });

  test('a tensor name that appears twice', () => {
    refuses(file('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', 2), /tensor "w" appears twice in the header/);
    refuses(file('{"__metadata__":{},"__metadata__":{}}'), /__metadata__ appears twice/);
  });

  test('a key that appears twice inside a tensor entry or the metadata', () => {
    refuses(file('{"w":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}', 1), /tensor "w": key "dtype" appears twice/);
    refuses(file('{"__metadata__":{"a":"1","b":"[\\"x\\",{}]","a":"2"}}'), /__metadata__: key "a" appears twice/);
  });

  test('metadata that is not a map of strings', () => {
    refuses(file({ __metadata__: { step: 3 } }), /__metadata__ must be a map of strings: "step" holds 3/);
    refuses(file({ __metadata__: ['x'] }), /__metadata__ must be a map of strings/);
  });

  test('a tensor entry with a missing or an unknown field', () => {
    refuses(file({ w: { dtype: 'U8', shape: [1] } }, 1), /tensor "w": missing field "data_offsets"/);
    refuses(file({ w: { dtype: 'U8', shape: [1], data_offsets: [0, 1], offsets: [0, 1] } }, 1), /tensor "w": unknown field "offsets"/);
    refuses(file({ w: [1, 2] }, 1), /tensor "w": entry is not an object/);
  });
});

describe('writing refuses tensors it cannot store', () => {
  const refusesToWrite = (tensors: TensorMap, message: RegExp, metadata?: Record<string, string>) =>
    assert.throws(() => writeSafetensors(tensors, metadata), (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_SAFETENSORS' && message.test(err.message));

  test('data in the wrong typed array for its dtype', () => {
    refusesToWrite({ w: { dtype: 'F32', shape: [1], data: new Float64Array(1) } as unknown as Tensor }, /tensor "w": dtype F32 needs its data in a Float32Array, got Float64Array/);
  });

  test('data whose length is not the product of the shape', () => {
    refusesToWrite({ w: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }, /tensor "w": shape \[2, 2\] has 4 elements but data has 3/);
  });

  test('an unknown dtype, a bad shape, the reserved name and non-string metadata', () => {
    refusesToWrite({ w: { dtype: 'F8', shape: [1], data: new Uint8Array(1) } as unknown as Tensor }, /tensor "w": unknown dtype "F8"/);
    refusesToWrite({ w: { dtype: 'U8', shape: [-1], data: new Uint8Array(1) } }, /tensor "w": shape must be/);
    refusesToWrite({ __metadata__: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } }, /reserved/);
    refusesToWrite({}, /metadata "n": values must be strings/, { n: 1 } as unknown as Record<string, string>);
  });
});

describe('half-precision conversions', () => {
  test('float32 to float16 rounds to nearest even and handles the edges', () => {
    const cases: Array<[number, number]> = [
      [1, 0x3c00], [-2, 0xc000], [0, 0], [-0, 0x8000], [65504, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00],
      [Infinity, 0x7c00], [-Infinity, 0xfc00], [2 ** -24, 0x0001], [2 ** -25, 0], [3 * 2 ** -26, 0x0001],
      [2 ** -14, 0x0400], [1 / 3, 0x3555], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02],
    ];
    for (const [x, bits] of cases) assert.equal(f32ToF16Bits(x), bits, `f16(${x})`);
    assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
  });

  test('every float16 bit pattern survives float16 → number → float16', () => {
    for (let h = 0; h < 0x10000; h++) {
      const x = f16BitsToF32(h);
      if (Number.isNaN(x)) continue;
      assert.equal(f32ToF16Bits(x), h);
    }
  });

  test('float32 to bfloat16 rounds to nearest even and keeps NaN', () => {
    assert.equal(f32ToBf16Bits(1), 0x3f80);
    assert.equal(f32ToBf16Bits(-2), 0xc000);
    assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80); // a tie rounds to the even mantissa
    assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82);
    assert.ok(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN))));
    for (const b of [0x3f80, 0xc2f7, 0x0001, 0x7f7f, 0xff80]) assert.equal(f32ToBf16Bits(bf16BitsToF32(b)), b);
  });
});
