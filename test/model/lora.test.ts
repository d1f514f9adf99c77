/** LoRA adapters: spec checks, layout and init, unmerged = merged, PEFT files, sharding, adapter-only training. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { mergeShardTensors, shardTensors } from '../../model/checkpoint-reshard.ts';
import { ModelError } from '../../model/errors.ts';
import { GPT } from '../../model/gpt.ts';
import { flatFromStateDict, initParams, paramLayout, stateDict, type GPTConfig } from '../../model/params.ts';
import { adapterFiles, readAdapter } from '../../model/lora-files.ts';
import { attachLora, loraLayout, loraShardLayout, loraSpec, mergeLora, partialSumGrads, trainableFraction, type LoraSpec } from '../../model/lora.ts';
import { AdamW } from '../../model/optim.ts';
import { readSafetensors, writeSafetensors } from '../../model/safetensors.ts';
import { allShards } from '../../model/shard-layout.ts';
import { randomIds } from '../support/gpt-oracle.ts';

const TINY: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };
const ALL: LoraSpec = { rank: 4, alpha: 8, dropout: 0.05, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] };

const code = (c: string, pattern: RegExp) => (err: unknown) => err instanceof ModelError && err.code === c && pattern.test(err.message);

/** An adapter flat with every value random (B too), as after some training. */
function trainedAdapter(config: GPTConfig, spec: LoraSpec, seed: number): Float32Array {
  const layout = loraLayout(config, spec);
  const flat = new Float32Array(layout.totalSize);
  let x = seed;
  for (let i = 0; i < flat.length; i++) flat[i] = (((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32) - 0.5) * 0.2;
  return flat;
}

function logits(model: GPT, ids: Int32Array, B: number, T: number): Float32Array {
  return tf.tidy(() => model.forward(tf.tensor2d(ids, [B, T], 'int32')).dataSync() as Float32Array);
}

const maxAbsDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);

test('loraSpec accepts a good spec in canonical order and rejects each bad field by name', () => {
  assert.deepEqual(loraSpec({ rank: 2, alpha: 4, dropout: 0, targets: ['mlp.c_fc', 'attn.c_attn'] }).targets, ['attn.c_attn', 'mlp.c_fc']);
  const bad: Array<[unknown, RegExp]> = [
    [{ ...ALL, rank: 0 }, /rank must be an integer ≥ 1/],
    [{ ...ALL, rank: 1.5 }, /rank/],
    [{ ...ALL, alpha: 0 }, /alpha must be a finite number > 0/],
    [{ ...ALL, dropout: 1 }, /dropout must be a number in \[0, 1\)/],
    [{ ...ALL, targets: [] }, /targets must be a non-empty array/],
    [{ ...ALL, targets: ['attn.c_attn', 'attn.c_attn'] }, /targets must be unique/],
    [{ ...ALL, targets: ['lm_head'] }, /target "lm_head" is not one of/],
    [{ ...ALL, bias: 'all' }, /unknown field "bias"/],
  ];
  for (const [spec, pattern] of bad) assert.throws(() => loraSpec(spec), code('MDL_ERR_LORA_SPEC', pattern), JSON.stringify(spec));
  assert.throws(() => loraSpec({ ...ALL, rank: 17 }, TINY), code('MDL_ERR_LORA_SPEC', /rank 17 exceeds min\(in, out\) = 16 of attn.c_attn/));
});

test('the adapter layout has A [in, r] and B [r, out] per block and target, and is under 5 % of the model at rank 4', () => {
  const config = { vocabSize: 2048, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 64 };
  const layout = loraLayout(config, ALL);
  assert.deepEqual(layout.specs.slice(0, 4).map((s) => [s.name, [...s.shape]]), [
    ['h.0.attn.c_attn.lora_A', [64, 4]], ['h.0.attn.c_attn.lora_B', [4, 192]],
    ['h.0.attn.c_proj.lora_A', [64, 4]], ['h.0.attn.c_proj.lora_B', [4, 64]],
  ]);
  assert.equal(layout.specs.length, 2 * 4 * 2);
  const fraction = trainableFraction(config, ALL);
  const pct = (c: GPTConfig, s: LoraSpec) => `${loraLayout(c, s).totalSize} / ${paramLayout(c).totalSize} = ${(trainableFraction(c, s) * 100).toFixed(2)} %`;
  console.log(`trainable fraction, rank 4, d 64, 2 layers, 4 targets, vocab 2048: ${pct(config, ALL)}; vocab 258: ${pct({ ...config, vocabSize: 258 }, ALL)}`);
  const gpt2 = { vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 };
  console.log(`GPT-2 small: rank 8 on all 4 targets ${pct(gpt2, { ...ALL, rank: 8 })}; rank 8 on attn.c_attn ${pct(gpt2, { ...ALL, rank: 8, targets: ['attn.c_attn'] })}`);
  assert.ok(fraction < 0.05, String(fraction));
  const init = initParams(layout, 7);
  const a = layout.specs[0]!;
  const A = init.subarray(a.offset, a.offset + a.size);
  assert.ok(A.every((x) => Math.abs(x) <= 1 / 8) && A.some((x) => x !== 0), 'A ~ U(−1/√in, 1/√in)');
  assert.ok(layout.specs.filter((s) => s.name.endsWith('lora_B')).every((s) => init.subarray(s.offset, s.offset + s.size).every((x) => x === 0)), 'B = 0');
  assert.deepEqual(initParams(layout, 7), init, 'deterministic from the seed');
});

test('a fresh adapter (B = 0) gives exactly the base logits; after training, merged weights give the attached logits', async () => {
  await tf.setBackend('cpu');
  const base = new GPT(TINY, { seed: 3 });
  const ids = randomIds(2 * 8, TINY.vocabSize, 5);
  const plain = logits(base, ids, 2, 8);
  attachLora(base, ALL, initParams(loraLayout(TINY, ALL), 9));
  assert.deepEqual(logits(base, ids, 2, 8), plain, 'B = 0: bit-identical');

  const adapter = trainedAdapter(TINY, ALL, 11);
  attachLora(base, ALL, adapter);
  const unmerged = logits(base, ids, 2, 8);
  assert.ok(maxAbsDiff(unmerged, plain) > 1e-2, 'the adapter changes the outputs');
  const merged = mergeLora(stateDict(base.readParams(), base.layout), adapter, TINY, loraSpec(ALL));
  const mergedModel = new GPT(TINY, { flat: flatFromStateDict(merged, base.layout) });
  const diff = maxAbsDiff(logits(mergedModel, ids, 2, 8), unmerged);
  assert.ok(diff < 1e-4, `merged vs unmerged logits differ by ${diff}`);

  // forwardCached (generation) sees the adapter too, and detaching gives the base back.
  const { logits: cached, cache } = base.forwardCached(tf.tensor2d(ids, [2, 8], 'int32'));
  assert.ok(maxAbsDiff(cached.dataSync() as Float32Array, unmerged) < 1e-4);
  tf.dispose([cached, ...cache.layers.flatMap((l) => [l.k, l.v])]);
  base.detachAdapter();
  assert.deepEqual(logits(base, ids, 2, 8), plain);
  base.dispose();
  mergedModel.dispose();
});

test('PEFT files round-trip the adapter and store transposed [r, in] / [out, r] tensors with a PEFT config', () => {
  const flat = trainedAdapter(TINY, ALL, 13);
  const files = adapterFiles(TINY, loraSpec(ALL), flat, { name: 'tiny', version: 2 });
  const cfg = JSON.parse(Buffer.from(files['adapter_config.json']).toString());
  assert.deepEqual(cfg, {
    peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, lora_dropout: 0.05, target_modules: ALL.targets,
    fan_in_fan_out: true, bias: 'none', base_model_name_or_path: 'tiny@v2',
  });
  const { tensors } = readSafetensors(files['adapter_model.safetensors']);
  assert.deepEqual(tensors['base_model.model.transformer.h.1.mlp.c_fc.lora_A.weight']!.shape, [4, 16]);
  assert.deepEqual(tensors['base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight']!.shape, [64, 4]);
  const back = readAdapter(files, TINY);
  assert.deepEqual(back.flat, flat);
  assert.deepEqual(back.spec, loraSpec(ALL));
  assert.deepEqual(back.base, { name: 'tiny', version: 2 });
});

test('readAdapter refuses a missing, misshapen, mistyped or extra tensor and a bad config, naming it', () => {
  const files = adapterFiles(TINY, loraSpec(ALL), trainedAdapter(TINY, ALL, 17), { name: 'tiny', version: 1 });
  const { tensors } = readSafetensors(files['adapter_model.safetensors']);
  const A0 = 'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight';
  const withTensors = (t: typeof tensors) => ({ ...files, 'adapter_model.safetensors': writeSafetensors(t) });
  const { [A0]: _gone, ...missing } = tensors;
  assert.throws(() => readAdapter(withTensors(missing), TINY), code('MDL_ERR_ADAPTER_FILES', /lacks .*h\.0\.attn\.c_attn\.lora_A\.weight/));
  assert.throws(() => readAdapter(withTensors({ ...tensors, [A0]: { dtype: 'F32', shape: [16, 4], data: new Float32Array(64) } }), TINY), code('MDL_ERR_ADAPTER_FILES', /has shape \[16,4\], expected \[4, 16\]/));
  assert.throws(() => readAdapter(withTensors({ ...tensors, [A0]: { dtype: 'F64', shape: [4, 16], data: new Float64Array(64) } }), TINY), code('MDL_ERR_ADAPTER_FILES', /is F64, expected F32/));
  assert.throws(() => readAdapter(withTensors({ ...tensors, 'base_model.model.lm_head.lora_A.weight': tensors[A0]! }), TINY), code('MDL_ERR_ADAPTER_FILES', /unexpected tensor base_model\.model\.lm_head/));
  const cfg = (patch: object) => ({ ...files, 'adapter_config.json': Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(files['adapter_config.json']).toString()), ...patch })) });
  assert.throws(() => readAdapter(cfg({ peft_type: 'IA3' }), TINY), code('MDL_ERR_ADAPTER_FILES', /peft_type is "IA3", expected "LORA"/));
  assert.throws(() => readAdapter(cfg({ fan_in_fan_out: false }), TINY), code('MDL_ERR_ADAPTER_FILES', /fan_in_fan_out/));
  assert.throws(() => readAdapter(cfg({ r: 8 }), TINY), code('MDL_ERR_ADAPTER_FILES', /lacks .*lora_A|unexpected tensor|shape/));
  assert.throws(() => readAdapter(cfg({ target_modules: ['c_attn'] }), TINY), code('MDL_ERR_ADAPTER_FILES', /target "c_attn" is not one of/));
  assert.throws(() => readAdapter({ 'adapter_model.safetensors': files['adapter_model.safetensors'] }, TINY), code('MDL_ERR_ADAPTER_FILES', /lack adapter_config\.json/));
});

test('cutting an adapter over pipeline 2 × tensor 2 and merging the shards reproduces it exactly', () => {
  const config = { ...TINY, nLayer: 4 };
  const spec = loraSpec(ALL);
  const full = loraLayout(config, spec);
  const flat = trainedAdapter(config, spec, 19);
  const tensors = stateDict(flat, full);
  const shards = allShards([[0, 2], [2, 4]], 2);
  const parts = shards.map((s) => {
    const layout = loraShardLayout(config, spec, s);
    return { layout, tensors: shardTensors(tensors, layout) };
  });
  // Column-parallel c_attn: B cut into q|k|v head groups, A whole; row-parallel c_proj: A's rows cut, B whole.
  const s01 = parts[1]!.layout; // stage 0, tp rank 1
  assert.deepEqual(s01.byName.get('h.0.attn.c_attn.lora_B')!.cols, [[8, 16], [24, 32], [40, 48]]);
  assert.equal(s01.byName.get('h.0.attn.c_attn.lora_A')!.tpReplicated, true);
  assert.equal(s01.byName.get('h.0.attn.c_attn.lora_A')!.countsForNorm, false);
  assert.deepEqual(s01.byName.get('h.0.mlp.c_proj.lora_A')!.rows, [32, 64]);
  assert.equal(s01.byName.get('h.0.mlp.c_proj.lora_B')!.tpReplicated, true);
  assert.equal(s01.byName.has('h.2.attn.c_attn.lora_A'), false, 'stage 0 holds blocks 0–1 only');
  assert.deepEqual(partialSumGrads(s01).slice(0, 4), ['h.0.attn.c_attn.lora_A', 'h.0.attn.c_proj.lora_B', 'h.0.mlp.c_fc.lora_A', 'h.0.mlp.c_proj.lora_B']);
  const merged = mergeShardTensors(config, parts, full);
  assert.deepEqual(flatFromStateDict(merged, full), flat);
  assert.throws(() => mergeShardTensors(config, parts.slice(1), full), code('MDL_ERR_RESHARD', /held by no shard/));
});

test('training only the adapter lowers the loss and leaves every base weight bit-identical', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(TINY, { seed: 21 });
  const before = model.readParams();
  const spec = loraSpec({ rank: 4, alpha: 8, dropout: 0, targets: ['attn.c_attn', 'mlp.c_fc'] });
  const layout = loraLayout(TINY, spec);
  const adapter = initParams(layout, 23);
  const optim = new AdamW(layout.specs, { weightDecay: 0 });
  const ids = tf.tensor2d(randomIds(4 * 8, TINY.vocabSize, 29), [4, 8], 'int32');
  const targets = tf.tensor2d(randomIds(4 * 8, TINY.vocabSize, 31), [4, 8], 'int32');
  const losses: number[] = [];
  for (let step = 0; step < 15; step++) {
    attachLora(model, spec, adapter);
    const vars = [...model.adapterVariables.values()];
    const { value, grads } = tf.variableGrads(() => model.loss(ids, targets), vars); // base weights: constants
    losses.push(value.dataSync()[0]!);
    const flatGrads = new Float32Array(layout.totalSize);
    for (const s of layout.specs) flatGrads.set(grads[model.adapterVariables.get(s.name)!.name]!.dataSync() as Float32Array, s.offset);
    tf.dispose([value, ...Object.values(grads)]);
    optim.update(adapter, flatGrads, 1e-2);
  }
  console.log(`adapter-only training loss: ${losses[0]!.toFixed(4)} → ${losses.at(-1)!.toFixed(4)}`);
  assert.ok(losses.at(-1)! < losses[0]! - 0.1, `loss ${losses[0]} → ${losses.at(-1)}`);
  assert.deepEqual(model.readParams(), before, 'the base is frozen');
  tf.dispose([ids, targets]);
  model.dispose();
});
