import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { initParams, paramLayout, stateDict, type GPTConfig } from '../../model/params.ts';
import { ModelError } from '../../model/errors.ts';
import { AdamW, type F32Tensor } from '../../model/optim.ts';
import { readSafetensors, writeSafetensors } from '../../model/safetensors.ts';
import { allShards, shardLayout, type ShardLayout } from '../../model/shard-layout.ts';
import { mergeShardTensors, shardTensors } from '../../model/checkpoint-reshard.ts';

const SMALL: GPTConfig = { vocabSize: 300, nCtx: 8, nLayer: 4, nHead: 4, nEmbd: 16 };

const CASES: ReadonlyArray<[string, Array<[number, number]>, number]> = [
  ['1 stage × tp 1', [[0, 4]], 1],
  ['2 stages [0,1),[1,4) × tp 2', [[0, 1], [1, 4]], 2],
  ['4 stages × tp 4', [[0, 1], [1, 2], [2, 3], [3, 4]], 4],
  ['2 equal stages × tp 2', [[0, 2], [2, 4]], 2],
];

const layoutsOf = (bounds: Array<[number, number]>, tp: number): ShardLayout[] => allShards(bounds, tp).map((s) => shardLayout(SMALL, s));

/** A full model and AdamW moments after a few steps, as a checkpoint would hold them. */
function fullCheckpoint(): { model: Record<string, F32Tensor>; expAvg: Record<string, F32Tensor>; expAvgSq: Record<string, F32Tensor> } {
  const layout = paramLayout(SMALL);
  const params = initParams(layout, 11);
  const opt = new AdamW(layout.specs);
  for (let step = 1; step <= 3; step++) {
    const grads = Float32Array.from({ length: layout.totalSize }, (_, i) => Math.sin(i * 0.37 + step));
    opt.update(params, grads, 1e-3);
  }
  const { expAvg, expAvgSq } = opt.exportState();
  return { model: stateDict(params, layout), expAvg: { ...expAvg }, expAvgSq: { ...expAvgSq } };
}

const isReshardError = (pattern: RegExp) => (err: unknown) => err instanceof ModelError && err.code === 'MDL_ERR_RESHARD' && pattern.test(err.message);

describe('resharding checkpoint tensors', () => {
  const ckpt = fullCheckpoint();

  for (const [what, bounds, tp] of CASES) {
    test(`full weights cut into shards and merged back are bit-identical for ${what}`, () => {
      const parts = layoutsOf(bounds, tp).map((layout) => ({ layout, tensors: shardTensors(ckpt.model, layout) }));
      const merged = mergeShardTensors(SMALL, parts);
      assert.deepEqual(Object.keys(merged), paramLayout(SMALL).specs.map((s) => s.name));
      assert.deepEqual(merged, ckpt.model);
    });

    test(`optimizer moments cut into shards and merged back are bit-identical for ${what}`, () => {
      for (const moments of [ckpt.expAvg, ckpt.expAvgSq]) {
        const parts = layoutsOf(bounds, tp).map((layout) => ({ layout, tensors: shardTensors(moments, layout) }));
        assert.deepEqual(mergeShardTensors(SMALL, parts), moments);
      }
    });
  }

  test('local tensors carry the local shapes of the shard layout', () => {
    const layout = shardLayout(SMALL, { stage: 1, stages: 2, firstLayer: 1, endLayer: 4, tpRank: 1, tpSize: 2 });
    const local = shardTensors(ckpt.model, layout);
    assert.deepEqual(Object.keys(local), layout.specs.map((s) => s.name));
    for (const s of layout.specs) assert.deepEqual([local[s.name]!.shape, local[s.name]!.data.length], [s.shape, s.size], s.name);
    assert.deepEqual(local['h.2.attn.c_attn.weight']!.shape, [16, 24]);
  });

  test('tensors read back from a safetensors file are accepted as input', () => {
    const fromFile = readSafetensors(writeSafetensors(ckpt.model)).tensors;
    const parts = layoutsOf([[0, 2], [2, 4]], 2).map((layout) => ({ layout, tensors: shardTensors(fromFile, layout) }));
    assert.deepEqual(mergeShardTensors(SMALL, parts), ckpt.model);
  });

  test('a missing shard is refused with an error naming a parameter it held', () => {
    const parts = layoutsOf([[0, 1], [1, 4]], 2).map((layout) => ({ layout, tensors: shardTensors(ckpt.model, layout) }));
    const withoutStage1Tp1 = parts.filter((p) => !(p.layout.shard.stage === 1 && p.layout.shard.tpRank === 1));
    assert.throws(() => mergeShardTensors(SMALL, withoutStage1Tp1), isReshardError(/^h\.1\.attn\.c_attn\.weight: 384 of 768 elements are held by no shard \(first at row 0, col 8;/));
    const withoutStage1 = parts.filter((p) => p.layout.shard.stage !== 1);
    assert.throws(() => mergeShardTensors(SMALL, withoutStage1), isReshardError(/^no shard holds h\.1\.ln_1\.weight$/));
  });

  test('TP replicas that disagree are refused with an error naming the parameter and both shards', () => {
    const parts = layoutsOf([[0, 1], [1, 4]], 2).map((layout) => ({ layout, tensors: shardTensors(ckpt.model, layout) }));
    const drifted = parts[3]!.tensors['h.2.ln_2.bias']!; // stage 1 tp 1
    drifted.data[5] = drifted.data[5]! + 1e-6;
    assert.throws(() => mergeShardTensors(SMALL, parts), isReshardError(/^h\.2\.ln_2\.bias differs between stage 1 tp 0 and stage 1 tp 1 at element 5/));
  });

  test('tied wte copies on the first and last stage that disagree are refused', () => {
    const parts = layoutsOf([[0, 2], [2, 4]], 1).map((layout) => ({ layout, tensors: shardTensors(ckpt.model, layout) }));
    const head = parts[1]!.tensors['wte.weight']!;
    head.data[100] = Number.NaN;
    assert.throws(() => mergeShardTensors(SMALL, parts), isReshardError(/^wte\.weight differs between stage 0 tp 0 and stage 1 tp 0 at element 100/));
  });

  test('inputs of the wrong dtype, shape or name are refused with clear errors', () => {
    const layout = shardLayout(SMALL, { stage: 0, stages: 1, firstLayer: 0, endLayer: 4, tpRank: 0, tpSize: 2 });
    const { 'h.3.mlp.c_fc.bias': _gone, ...lacking } = ckpt.model;
    assert.throws(() => shardTensors(lacking, layout), isReshardError(/full tensors lacks h\.3\.mlp\.c_fc\.bias/));
    const f64 = { ...ckpt.model, 'wpe.weight': { dtype: 'F64', shape: [8, 16], data: new Float64Array(128) } };
    assert.throws(() => shardTensors(f64, layout), isReshardError(/wpe\.weight is F64, expected F32/));
    const reshaped = { ...ckpt.model, 'wpe.weight': { ...ckpt.model['wpe.weight']!, shape: [16, 8] } };
    assert.throws(() => shardTensors(reshaped, layout), isReshardError(/wpe\.weight has shape \[16,8\] \(128 elements\), expected \[8,16\]/));
    const local = shardTensors(ckpt.model, layout);
    const wrongLocal = { ...local, 'h.0.mlp.c_fc.weight': { ...local['h.0.mlp.c_fc.weight']!, shape: [16, 64] } };
    assert.throws(() => mergeShardTensors(SMALL, [{ layout, tensors: wrongLocal }]), isReshardError(/stage 0 tp 0: h\.0\.mlp\.c_fc\.weight has shape \[16,64\]/));
    const otherModel = shardLayout({ ...SMALL, nEmbd: 32 }, layout.shard);
    assert.throws(() => mergeShardTensors(SMALL, [{ layout: otherModel, tensors: {} }]), isReshardError(/wte\.weight is a slice of \[300,32\], but the model's is \[300,16\]/));
  });
});
