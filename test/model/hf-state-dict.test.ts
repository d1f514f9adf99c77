/**
 * Published GPT-2 state dicts into our flat parameters (model/hf-state-dict.ts): the transformer. prefix, F16 and
 * BF16 weights, the causal-mask buffers and a tied lm_head are accepted; anything that disagrees with the config is
 * refused with MDL_ERR_MODEL_FILES naming the first tensor that does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gptConfig, initParams, paramLayout, stateDict } from '../../model/params.ts';
import { flatFromHfStateDict } from '../../model/hf-state-dict.ts';
import { readSafetensors, writeSafetensors, type Tensor, type TensorMap } from '../../model/safetensors.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../model/half-float.ts';

const config = gptConfig({ vocabSize: 50, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 8 });
const layout = paramLayout(config);
const flat = initParams(layout, 3);
const f32Dict = (): TensorMap => ({ ...stateDict(flat, layout) }) as TensorMap;

/** The same dict as transformers saves it: prefixed, with mask buffers and the tied head, in `dtype`. */
function published(dtype: 'F32' | 'F16' | 'BF16'): TensorMap {
  const conv = (t: Tensor): Tensor => {
    if (dtype === 'F32' || t.dtype !== 'F32') return t;
    const bits = Uint16Array.from(t.data as Float32Array, dtype === 'F16' ? f32ToF16Bits : f32ToBf16Bits);
    return { dtype, shape: t.shape, data: bits } as Tensor;
  };
  const out: TensorMap = {};
  for (const [k, t] of Object.entries(f32Dict())) out[`transformer.${k}`] = conv(t);
  for (let l = 0; l < config.nLayer; l++) {
    out[`transformer.h.${l}.attn.bias`] = { dtype: 'F32', shape: [1, 1, 8, 8], data: new Float32Array(64).fill(1) };
    out[`transformer.h.${l}.attn.masked_bias`] = { dtype: 'F32', shape: [], data: new Float32Array([-1e4]) };
  }
  out['lm_head.weight'] = out['transformer.wte.weight']!;
  return out;
}

const refused = (dict: TensorMap, re: RegExp) =>
  assert.throws(() => flatFromHfStateDict(dict, config), (err: Error & { code?: string }) => err.code === 'MDL_ERR_MODEL_FILES' && re.test(err.message), re.source);

test('a published F32 state dict (prefix, mask buffers, tied lm_head) gives exactly our parameters, also through the file format', () => {
  assert.deepEqual(flatFromHfStateDict(published('F32'), config), flat);
  const viaFile = readSafetensors(writeSafetensors(published('F32'), { format: 'pt' })).tensors;
  assert.deepEqual(flatFromHfStateDict(viaFile, config), flat);
});

test('F16 and BF16 weights are widened exactly to the values they hold', () => {
  for (const [dtype, round] of [['F16', (x: number) => f16BitsToF32(f32ToF16Bits(x))], ['BF16', (x: number) => bf16BitsToF32(f32ToBf16Bits(x))]] as const) {
    const got = flatFromHfStateDict(readSafetensors(writeSafetensors(published(dtype))).tensors, config);
    const want = Float32Array.from(flat, round);
    assert.deepEqual(got, want, dtype);
    assert.notDeepEqual(got, flat, `${dtype} rounding is visible, so the conversion really ran`);
  }
});

test('each disagreement is refused naming the first tensor that disagrees', () => {
  const without = (name: string) => Object.fromEntries(Object.entries(published('F32')).filter(([k]) => k !== name));
  refused(without('transformer.h.1.mlp.c_fc.bias'), /lacks h\.1\.mlp\.c_fc\.bias \[32\], which config\.json implies/);
  const transposed = published('F32');
  const w = transposed['transformer.h.0.attn.c_attn.weight']!;
  transposed['transformer.h.0.attn.c_attn.weight'] = { ...w, shape: [24, 8] } as Tensor;
  refused(transposed, /h\.0\.attn\.c_attn\.weight has shape \[24, 8\], config\.json implies \[8, 24\].*Conv1D/);
  const ints = published('F32');
  ints['transformer.ln_f.bias'] = { dtype: 'I32', shape: [8], data: new Int32Array(8) };
  refused(ints, /ln_f\.bias is I32; weights must be F32, F16 or BF16/);
  refused({ ...published('F32'), 'transformer.h.2.ln_1.weight': { dtype: 'F32', shape: [8], data: new Float32Array(8) } }, /holds h\.2\.ln_1\.weight \[8\], which is no tensor/);
  refused({ ...published('F32'), 'transformer.h.0.attn.bias': { dtype: 'F32', shape: [1, 1, 4, 4], data: new Float32Array(16) } }, /h\.0\.attn\.bias \(the causal-mask buffer\) has shape \[1, 1, 4, 4\]/);
  const untied = published('F32');
  const head = Float32Array.from((untied['lm_head.weight']!.data as Float32Array));
  head[17] = head[17]! + 1;
  untied['lm_head.weight'] = { dtype: 'F32', shape: [50, 8], data: head };
  refused(untied, /lm_head\.weight differs from wte\.weight \(first at element 17\): an untied output head is not supported/);
  refused({ ...published('F32'), 'wte.weight': published('F32')['transformer.wte.weight']! }, /holds wte\.weight twice/);
});
