import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT } from '../../model/gpt.ts';
import { flatFromStateDict, flattenGrads, gptConfig, initParams, paramLayout, stateDict, unflatten, type GPTConfig } from '../../model/params.ts';

import { randomIds } from '../support/gpt-oracle.ts';

const TINY: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };

test('parameter names and shapes follow GPT-2 state-dict layout and order', () => {
  const layout = paramLayout(gptConfig(TINY));
  const block = (l: number): Array<[string, number[]]> => [
    [`h.${l}.ln_1.weight`, [16]], [`h.${l}.ln_1.bias`, [16]],
    [`h.${l}.attn.c_attn.weight`, [16, 48]], [`h.${l}.attn.c_attn.bias`, [48]],
    [`h.${l}.attn.c_proj.weight`, [16, 16]], [`h.${l}.attn.c_proj.bias`, [16]],
    [`h.${l}.ln_2.weight`, [16]], [`h.${l}.ln_2.bias`, [16]],
    [`h.${l}.mlp.c_fc.weight`, [16, 64]], [`h.${l}.mlp.c_fc.bias`, [64]],
    [`h.${l}.mlp.c_proj.weight`, [64, 16]], [`h.${l}.mlp.c_proj.bias`, [16]],
  ];
  const expected: Array<[string, number[]]> = [
    ['wte.weight', [32, 16]], ['wpe.weight', [8, 16]], ...block(0), ...block(1), ['ln_f.weight', [16]], ['ln_f.bias', [16]],
  ];
  assert.deepEqual(layout.specs.map((s) => [s.name, [...s.shape]]), expected);
  let offset = 0;
  for (const s of layout.specs) {
    assert.equal(s.offset, offset, s.name);
    assert.equal(s.decay, s.shape.length === 2, s.name);
    offset += s.size;
  }
  assert.equal(layout.totalSize, offset);
});

test('the GPT-2 small config has the 124,439,808 parameters of the released checkpoint', () => {
  const layout = paramLayout(gptConfig({ vocabSize: 50257, nCtx: 1024, nLayer: 12, nHead: 12, nEmbd: 768 }));
  assert.equal(layout.totalSize, 124_439_808);
});

test('gptConfig rejects unknown keys, non-integers and a width that heads do not divide, and freezes', () => {
  assert.throws(() => gptConfig({ ...TINY, nLayers: 2 } as GPTConfig), /unknown key nLayers/);
  assert.throws(() => gptConfig({ ...TINY, nEmbd: 15 }), /multiple of nHead/);
  assert.throws(() => gptConfig({ ...TINY, vocabSize: 0 }), /vocabSize must be a positive integer/);
  assert.throws(() => gptConfig({ ...TINY, nCtx: 2.5 }), /nCtx must be a positive integer/);
  assert.ok(Object.isFrozen(gptConfig(TINY)));
});

test('initialisation is deterministic per seed and follows GPT-2 statistics', () => {
  const layout = paramLayout(gptConfig({ vocabSize: 512, nCtx: 64, nLayer: 4, nHead: 4, nEmbd: 64 }));
  const a = initParams(layout, 7);
  assert.deepEqual(initParams(layout, 7), a);
  assert.notDeepEqual(initParams(layout, 8), a);
  const p = unflatten(a, layout);
  const std = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0) / x.length);
  const mean = (x: Float32Array) => x.reduce((s, v) => s + v, 0) / x.length;
  for (const name of ['wte.weight', 'wpe.weight', 'h.0.attn.c_attn.weight', 'h.3.mlp.c_fc.weight']) {
    assert.ok(Math.abs(std(p.get(name)!) - 0.02) < 0.001, `${name} std ${std(p.get(name)!)}`);
    assert.ok(Math.abs(mean(p.get(name)!)) < 0.001, `${name} mean`);
  }
  const projStd = 0.02 / Math.sqrt(8);
  for (const name of ['h.0.attn.c_proj.weight', 'h.2.mlp.c_proj.weight']) {
    assert.ok(Math.abs(std(p.get(name)!) - projStd) < projStd * 0.05, `${name} std ${std(p.get(name)!)}`);
  }
  assert.ok(p.get('h.1.ln_2.weight')!.every((v) => v === 1));
  assert.ok(p.get('ln_f.bias')!.every((v) => v === 0));
  assert.ok(p.get('h.1.attn.c_attn.bias')!.every((v) => v === 0));
});

test('readParams returns what the model was built from, and writeParams round-trips', async () => {
  await tf.setBackend('wasm');
  const model = new GPT(TINY, { seed: 3 });
  const flat = initParams(model.layout, 3);
  assert.deepEqual(model.readParams(), flat);
  const other = initParams(model.layout, 4);
  model.writeParams(other);
  assert.deepEqual(model.readParams(), other);
  assert.equal(model.params.get('h.1.mlp.c_fc.weight')!.shape.join(), '16,64');
  model.dispose();
});

test('a state dict carries every parameter as F32 with its GPT-2 shape and converts back to the same flat buffer', () => {
  const layout = paramLayout(gptConfig(TINY));
  const flat = initParams(layout, 12);
  const dict = stateDict(flat, layout);
  assert.deepEqual(Object.keys(dict), layout.specs.map((s) => s.name));
  assert.deepEqual(dict['h.0.attn.c_attn.weight']!.shape, [16, 48]);
  assert.equal(dict['ln_f.bias']!.dtype, 'F32');
  assert.deepEqual(flatFromStateDict(dict, layout), flat);
  const { 'wpe.weight': _wpe, ...missing } = dict;
  assert.throws(() => flatFromStateDict(missing, layout), /lacks wpe\.weight/);
  const transposed = { ...dict, 'h.1.mlp.c_fc.weight': { ...dict['h.1.mlp.c_fc.weight']!, shape: [64, 16] } };
  assert.throws(() => flatFromStateDict(transposed, layout), /shape \[64,16\], expected \[16,64\]/);
});

test('the loss is the mean token cross-entropy of the logits, near ln(vocab) at initialisation', async () => {
  await tf.setBackend('wasm');
  const model = new GPT(TINY, { seed: 1 });
  const [B, T, V] = [3, 8, 32];
  const idsArr = randomIds(B * T, V, 1), tgtArr = randomIds(B * T, V, 2);
  const ids = tf.tensor2d(idsArr, [B, T], 'int32'), targets = tf.tensor2d(tgtArr, [B, T], 'int32');
  const logits = model.forward(ids);
  assert.deepEqual(logits.shape, [B, T, V]);
  const z = logits.dataSync();
  let nll = 0;
  for (let r = 0; r < B * T; r++) {
    const row = Array.from(z.subarray(r * V, (r + 1) * V));
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0));
    nll += lse - row[tgtArr[r]!]!;
  }
  const loss = model.loss(ids, targets);
  assert.ok(Math.abs(loss.dataSync()[0]! - nll / (B * T)) < 1e-5);
  assert.ok(Math.abs(loss.dataSync()[0]! - Math.log(V)) < 0.3);
  tf.dispose([ids, targets, logits, loss]);
  model.dispose();
});

test('changing the token at position t leaves the logits at positions before t unchanged', async () => {
  for (const backend of ['cpu', 'wasm']) {
    await tf.setBackend(backend);
    const model = new GPT(TINY, { seed: 5 });
    const [B, T, V, t] = [2, 8, 32, 4];
    const a = randomIds(B * T, V, 9);
    const b = a.slice();
    for (let r = 0; r < B; r++) b[r * T + t] = (a[r * T + t]! + 7) % V;
    const la = tf.tidy(() => model.forward(tf.tensor2d(a, [B, T], 'int32')).arraySync());
    const lb = tf.tidy(() => model.forward(tf.tensor2d(b, [B, T], 'int32')).arraySync());
    for (let r = 0; r < B; r++) {
      for (let pos = 0; pos < T; pos++) {
        const diff = Math.max(...la[r]![pos]!.map((v, i) => Math.abs(v - lb[r]![pos]![i]!)));
        if (pos < t) assert.ok(diff <= 1e-6, `${backend}: row ${r} position ${pos} changed by ${diff}`);
        else assert.ok(diff > 1e-4, `${backend}: row ${r} position ${pos} did not see the change`);
      }
    }
    model.dispose();
  }
});

test('gradients match central finite differences on the cpu backend', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(TINY, { seed: 11 });
  const [B, T, V] = [4, 8, 32];
  const ids = tf.tensor2d(randomIds(B * T, V, 21), [B, T], 'int32');
  const targets = tf.tensor2d(randomIds(B * T, V, 22), [B, T], 'int32');
  const { loss, grads } = model.lossAndGrads(ids, targets);
  const flatGrad = flattenGrads(grads, model.layout);
  tf.dispose([loss, ...grads.values()]);
  const base = model.readParams();
  const lossAt = (flat: Float32Array): number => {
    model.writeParams(flat);
    return tf.tidy(() => model.loss(ids, targets).dataSync()[0]!);
  };
  const h = 1e-2;
  let checked = 0;
  for (const spec of model.layout.specs.filter((s) =>
    ['wte.weight', 'wpe.weight', 'h.0.attn.c_attn.weight', 'h.0.ln_1.weight', 'h.1.mlp.c_proj.bias', 'ln_f.bias'].includes(s.name))) {
    // the three entries with the largest gradient: their differences stand well above float32 rounding
    const idx = Array.from({ length: spec.size }, (_, i) => spec.offset + i)
      .sort((x, y) => Math.abs(flatGrad[y]!) - Math.abs(flatGrad[x]!)).slice(0, 3);
    for (const i of idx) {
      const plus = base.slice(), minus = base.slice();
      plus[i] = plus[i]! + h;
      minus[i] = minus[i]! - h;
      const fd = (lossAt(plus) - lossAt(minus)) / (2 * h);
      const g = flatGrad[i]!;
      assert.ok(Math.abs(fd - g) <= 1e-3 + 2e-2 * Math.abs(g), `${spec.name}[${i - spec.offset}]: analytic ${g}, numeric ${fd}`);
      checked++;
    }
  }
  assert.equal(checked, 18);
  tf.dispose([ids, targets]);
  model.dispose();
});
