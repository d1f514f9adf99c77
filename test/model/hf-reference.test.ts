/**
 * The exported model.safetensors read by an independent implementation of Hugging Face's GPT2LMHeadModel forward
 * pass (modeling_gpt2.py's formulas, in plain float64 JavaScript: Conv1D as x·W + b, c_attn split into q, k, v
 * along the last axis, heads as contiguous slices, gelu_new, LayerNorm eps from config.json, lm_head tied to
 * wte) gives the same logits as our tfjs model. PyTorch cannot be installed here, so this is the stand-in for
 * loading the file in transformers: it checks the layouts and conventions a loader depends on, from the files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { exportHf } from '../../model/hf-format.ts';
import { readSafetensors } from '../../model/safetensors.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';

type Mat = Float64Array; // row-major

function referenceLogits(files: ReturnType<typeof exportHf>, ids: number[]): Float64Array {
  const cfg = JSON.parse(Buffer.from(files['config.json']).toString()) as Record<string, number>;
  const { tensors } = readSafetensors(files['model.safetensors']);
  const W = (name: string) => Float64Array.from(tensors[name]!.data as Float32Array);
  const d = cfg.n_embd!, H = cfg.n_head!, hs = d / H, T = ids.length, V = cfg.vocab_size!, eps = cfg.layer_norm_epsilon!;
  const conv1d = (x: Mat, rows: number, inF: number, w: Mat, b: Mat, outF: number): Mat => {
    const y = new Float64Array(rows * outF);
    for (let r = 0; r < rows; r++) for (let o = 0; o < outF; o++) {
      let s = b[o]!;
      for (let i = 0; i < inF; i++) s += x[r * inF + i]! * w[i * outF + o]!;
      y[r * outF + o] = s;
    }
    return y;
  };
  const layerNorm = (x: Mat, g: Mat, b: Mat): Mat => {
    const y = new Float64Array(x.length);
    for (let r = 0; r < T; r++) {
      let mean = 0;
      for (let i = 0; i < d; i++) mean += x[r * d + i]!;
      mean /= d;
      let v = 0;
      for (let i = 0; i < d; i++) v += (x[r * d + i]! - mean) ** 2;
      v /= d;
      for (let i = 0; i < d; i++) y[r * d + i] = ((x[r * d + i]! - mean) / Math.sqrt(v + eps)) * g[i]! + b[i]!;
    }
    return y;
  };
  const geluNew = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  const wte = W('wte.weight'), wpe = W('wpe.weight');
  let h = new Float64Array(T * d);
  for (let t = 0; t < T; t++) for (let i = 0; i < d; i++) h[t * d + i] = wte[ids[t]! * d + i]! + wpe[t * d + i]!;
  for (let l = 0; l < cfg.n_layer!; l++) {
    const p = `h.${l}.`;
    const a = layerNorm(h, W(p + 'ln_1.weight'), W(p + 'ln_1.bias'));
    const qkv = conv1d(a, T, d, W(p + 'attn.c_attn.weight'), W(p + 'attn.c_attn.bias'), 3 * d); // [T, 3d] = q | k | v
    const merged = new Float64Array(T * d);
    for (let head = 0; head < H; head++) {
      for (let t = 0; t < T; t++) {
        const scores: number[] = [];
        for (let u = 0; u <= t; u++) {
          let s = 0;
          for (let j = 0; j < hs; j++) s += qkv[t * 3 * d + head * hs + j]! * qkv[u * 3 * d + d + head * hs + j]!;
          scores.push(s / Math.sqrt(hs));
        }
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const z = e.reduce((x, y) => x + y, 0);
        for (let j = 0; j < hs; j++) {
          let s = 0;
          for (let u = 0; u <= t; u++) s += (e[u]! / z) * qkv[u * 3 * d + 2 * d + head * hs + j]!;
          merged[t * d + head * hs + j] = s;
        }
      }
    }
    const attn = conv1d(merged, T, d, W(p + 'attn.c_proj.weight'), W(p + 'attn.c_proj.bias'), d);
    h = h.map((x, i) => x + attn[i]!);
    const m2 = layerNorm(h, W(p + 'ln_2.weight'), W(p + 'ln_2.bias'));
    const fc = conv1d(m2, T, d, W(p + 'mlp.c_fc.weight'), W(p + 'mlp.c_fc.bias'), 4 * d).map(geluNew);
    const proj = conv1d(fc, T, 4 * d, W(p + 'mlp.c_proj.weight'), W(p + 'mlp.c_proj.bias'), d);
    h = h.map((x, i) => x + proj[i]!);
  }
  const f = layerNorm(h, W('ln_f.weight'), W('ln_f.bias'));
  const logits = new Float64Array(T * V);
  for (let t = 0; t < T; t++) for (let v = 0; v < V; v++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += f[t * d + i]! * wte[v * d + i]!; // lm_head tied to wte
    logits[t * V + v] = s;
  }
  return logits;
}

test("the exported files, read the way transformers' GPT2LMHeadModel reads them, give our model's logits", async () => {
  await tf.setBackend('cpu');
  const tokenizer = await trainBpe([loadDemoCorpus().documents[3]!], { vocabSize: 300 });
  const model = new GPT({ vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 4, nEmbd: 32 }, { seed: 5 });
  // Perturb LayerNorm and biases away from their 1/0 init, so a swapped or skipped parameter would show.
  const params = model.readParams();
  for (let i = 0; i < params.length; i++) params[i] = params[i]! + 0.05 * Math.sin(i * 0.37);
  model.writeParams(params);
  const files = exportHf(model, tokenizer, params);
  const ids = tokenizer.encode('The Union is strong and the people are free').slice(0, 16);
  const ours = model.forward(tf.tensor2d([ids], [1, ids.length], 'int32'));
  const got = ours.dataSync() as Float32Array;
  ours.dispose();
  const want = referenceLogits(files, ids);
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
  assert.ok(worst < 1e-4, `max |logit difference| ${worst}`);
  model.dispose();
});
