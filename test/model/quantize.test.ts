/** INT8 weight quantization (model/quantize.ts): error bounds, refusals of malformed input, the file, and a trained model's perplexity. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { initParams, paramLayout, stateDict } from '../../model/params.ts';
import { ModelError } from '../../model/errors.ts';
import { dequantizeInt8, int8Axis, quantizeInt8, readInt8Safetensors, writeInt8Safetensors } from '../../model/quantize.ts';
import { readSafetensors, writeSafetensors, type Tensor, type TensorMap } from '../../model/safetensors.ts';
import { measureInt8 } from '../../bench/support/int8-demo.ts';
import { trainTiny } from '../support/tiny-trained.ts';

const CONFIG = { vocabSize: 40, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };
const layout = paramLayout(CONFIG);
const dict = stateDict(initParams(layout, 3), layout);

const refused = (pattern: RegExp) => (err: unknown) => {
  assert.ok(err instanceof ModelError, String(err));
  assert.equal(err.code, 'MDL_ERR_QUANTIZATION');
  assert.match(err.message, pattern);
  return true;
};

test('every 2-D tensor becomes I8 with a broadcastable per-channel scale; 1-D tensors stay F32', () => {
  const { tensors } = quantizeInt8(dict);
  for (const s of layout.specs) {
    const t = tensors[s.name]!;
    if (s.shape.length === 1) {
      assert.equal(t.dtype, 'F32', s.name);
      assert.equal(tensors[`${s.name}.scale`], undefined);
      continue;
    }
    assert.equal(t.dtype, 'I8', s.name);
    const [rows, cols] = s.shape as [number, number];
    const want = int8Axis(s.name, s.shape) === 'rows' ? [rows, 1] : [1, cols];
    assert.deepEqual(tensors[`${s.name}.scale`]!.shape, want, s.name);
  }
  assert.deepEqual(tensors['wte.weight.scale']!.shape, [CONFIG.vocabSize, 1], 'the tied embedding/head is scaled per row');
  assert.deepEqual(tensors['h.0.mlp.c_fc.weight.scale']!.shape, [1, 4 * CONFIG.nEmbd], 'Conv1D [in, out] is scaled per output column');
});

test('dequantized weights are within half a scale of the originals, channel by channel, and every channel uses ±127', () => {
  const { tensors } = quantizeInt8(dict);
  const back = dequantizeInt8(tensors);
  for (const s of layout.specs) {
    const w = dict[s.name]!.data, w2 = back[s.name]!.data;
    if (s.shape.length === 1) {
      assert.deepEqual(w2, w);
      continue;
    }
    const cols = s.shape[1]!, scale = tensors[`${s.name}.scale`]!.data as Float32Array, q = tensors[s.name]!.data as Int8Array;
    const perRow = scale.length === s.shape[0] && int8Axis(s.name, s.shape) === 'rows';
    const peak = new Int32Array(scale.length);
    for (let i = 0; i < w.length; i++) {
      const c = perRow ? Math.floor(i / cols) : i % cols;
      assert.ok(Math.abs(w[i]! - w2[i]!) <= (scale[c]! / 2) * (1 + 1e-6), `${s.name}[${i}]: |${w[i]} − ${w2[i]}| > ${scale[c]! / 2}`);
      peak[c] = Math.max(peak[c]!, Math.abs(q[i]!));
    }
    assert.ok(peak.every((p) => p === 127), `${s.name}: each channel's largest weight maps to ±127`);
  }
});

test('an all-zero channel quantizes to zeros with a finite scale, and non-F32 or non-finite input is refused', () => {
  const w = new Float32Array([0, 1, 0, -2, 0, 0.5]); // [3, 2]: column 0 is all zero
  const { tensors } = quantizeInt8({ 'h.0.attn.c_proj.weight': { dtype: 'F32', shape: [3, 2], data: w } });
  assert.deepEqual([...(tensors['h.0.attn.c_proj.weight.scale']!.data as Float32Array)], [1, Math.fround(2 / 127)]);
  assert.deepEqual([...dequantizeInt8(tensors)['h.0.attn.c_proj.weight']!.data].filter((_, i) => i % 2 === 0), [0, 0, 0]);
  assert.throws(() => quantizeInt8({ x: { dtype: 'F32', shape: [2, 2], data: new Float32Array([1, NaN, 0, 0]) } }), refused(/x\[1\] is NaN/));
  assert.throws(() => quantizeInt8({ x: { dtype: 'F16', shape: [1], data: new Uint16Array(1) } }), refused(/only F32/));
  assert.throws(() => quantizeInt8({ x: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } }), refused(/holds 3 values/));
  assert.throws(() => quantizeInt8({ 'x.scale': { dtype: 'F32', shape: [1], data: new Float32Array(1) } }), refused(/reserved/));
});

test('dequantizing refuses an I8 tensor without its scale, a stray scale, a scale of the wrong shape, and NaN, infinite or non-positive scales', () => {
  const good = quantizeInt8({ 'h.0.mlp.c_fc.weight': { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, -2, 3, 4, 5, -6]) } }).tensors;
  const w = good['h.0.mlp.c_fc.weight']!, s = good['h.0.mlp.c_fc.weight.scale']!;
  const f32 = (shape: number[], values: number[]): Tensor => ({ dtype: 'F32', shape, data: new Float32Array(values) });
  const cases: Array<[TensorMap, RegExp]> = [
    [{ 'h.0.mlp.c_fc.weight': w }, /has no h\.0\.mlp\.c_fc\.weight\.scale/],
    [{ 'h.0.mlp.c_fc.weight.scale': s }, /is a scale but h\.0\.mlp\.c_fc\.weight is missing/],
    [{ a: f32([1], [1]), 'a.scale': f32([1], [1]) }, /is a scale but a is F32, not I8/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': f32([3], [1, 1, 1]) }, /must be \[2, 1\] \(per row\) or \[1, 3\]/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': f32([1, 2], [1, 1]) }, /has shape \[1,2\]/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': f32([1, 3], [1, NaN, 1]) }, /scale\[1\] is NaN/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': f32([1, 3], [Infinity, 1, 1]) }, /scale\[0\] is Infinity/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': f32([1, 3], [1, 1, -0.5]) }, /finite and positive/],
    [{ 'h.0.mlp.c_fc.weight': w, 'h.0.mlp.c_fc.weight.scale': { dtype: 'F16', shape: [1, 3], data: new Uint16Array(3) } }, /is F16, expected F32/],
    [{ v: { dtype: 'I8', shape: [3], data: new Int8Array(3) }, 'v.scale': f32([1], [1]) }, /only 2-D tensors/],
    [{ u: { dtype: 'I32', shape: [1], data: new Int32Array(1) } }, /I32; quantized weights hold only I8 and F32/],
  ];
  for (const [tensors, pattern] of cases) assert.throws(() => dequantizeInt8(tensors), refused(pattern));
  assert.deepEqual([...dequantizeInt8(good)['h.0.mlp.c_fc.weight']!.data].map((x) => Math.round(x)), [1, -2, 3, 4, 5, -6]);
});

test('model.int8.safetensors round-trips I8 tensors byte for byte and refuses a file without its quantization metadata', () => {
  const { bytes, sizes } = writeInt8Safetensors(dict);
  const { tensors, metadata } = readSafetensors(bytes);
  assert.equal(metadata.quantization, 'meshtrain-int8');
  const direct = quantizeInt8(dict).tensors;
  assert.deepEqual(Object.keys(tensors).sort(), Object.keys(direct).sort());
  for (const [name, t] of Object.entries(direct)) {
    assert.equal(tensors[name]!.dtype, t.dtype, name);
    assert.deepEqual([...tensors[name]!.data as Int8Array | Float32Array], [...t.data as Int8Array | Float32Array], name);
  }
  assert.deepEqual(readInt8Safetensors(bytes), dequantizeInt8(direct));
  const dataBytes = Object.values(direct).reduce((n, t) => n + t.data.byteLength, 0);
  assert.equal(sizes.int8Bytes, dataBytes);
  assert.equal(sizes.f32Bytes, layout.totalSize * 4);
  assert.throws(() => readInt8Safetensors(writeSafetensors(direct, { format: 'pt' })), refused(/metadata says quantization null/));
});

test('a model trained on the demo corpus keeps its held-out perplexity within 2 % through INT8, with weights ≥ 3.5× smaller', async () => {
  await tf.setBackend('wasm');
  const trained = await trainTiny(40);
  assert.ok(trained.losses.at(-1)! < trained.losses[0]! - 0.5, `training lowered the loss: ${trained.losses[0]} → ${trained.losses.at(-1)}`);
  const m = await measureInt8(trained);
  console.log(`# int8: ppl ${m.ppl_f32.toFixed(3)} → ${m.ppl_int8.toFixed(3)} (change ${(m.int8_ppl_change * 100).toFixed(4)} %), size ratio ${m.int8_size_ratio.toFixed(4)} (${(1 / m.int8_size_ratio).toFixed(3)}×), file ratio ${m.int8_file_ratio.toFixed(4)}`);
  assert.ok(m.ppl_f32 < 400, `the model learned something: held-out perplexity ${m.ppl_f32} (uniform: 512)`);
  assert.ok(m.int8_ppl_change < 0.02, `perplexity changed by ${(m.int8_ppl_change * 100).toFixed(3)} %`);
  assert.ok(m.int8_ppl_change > 0, 'the quantized weights differ from the originals');
  assert.ok(1 / m.int8_size_ratio >= 3.5, `weights shrink ${(1 / m.int8_size_ratio).toFixed(3)}×`);
});
