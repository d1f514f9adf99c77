import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT, flattenGrads, type GPTConfig } from '../../model/gpt.ts';

// The cpu backend is the oracle: the wasm backend (the default for agents) must agree with it for the same params.

const TINY: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };
const [B, T] = [4, 8];

function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x >>> 8) % vocab;
  }
  return out;
}

interface Run { logits: Float32Array; loss: number; grads: Float32Array; layoutNames: string[]; offsets: number[] }

async function run(backend: string): Promise<Run> {
  assert.ok(await tf.setBackend(backend), `${backend} initialises`);
  const model = new GPT(TINY, { seed: 17 });
  const ids = tf.tensor2d(randomIds(B * T, 32, 1), [B, T], 'int32');
  const targets = tf.tensor2d(randomIds(B * T, 32, 2), [B, T], 'int32');
  const logitsT = model.forward(ids);
  const { loss, grads } = model.lossAndGrads(ids, targets);
  const out: Run = {
    logits: logitsT.dataSync() as Float32Array,
    loss: loss.dataSync()[0]!,
    grads: flattenGrads(grads, model.layout),
    layoutNames: model.layout.specs.map((s) => s.name),
    offsets: model.layout.specs.map((s) => s.offset),
  };
  tf.dispose([ids, targets, logitsT, loss, ...grads.values()]);
  model.dispose();
  return out;
}

/** max |a − b| relative to max |b|: robust to entries near zero. */
function relDiff(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

test('the wasm backend gives the cpu backend\'s logits, loss and every parameter\'s gradient (rel. 1e-4)', async () => {
  const cpu = await run('cpu');
  const wasm = await run('wasm');
  assert.equal(tf.getBackend(), 'wasm');
  assert.ok(relDiff(wasm.logits, cpu.logits) < 1e-4, `logits rel diff ${relDiff(wasm.logits, cpu.logits)}`);
  assert.ok(Math.abs(wasm.loss - cpu.loss) / cpu.loss < 1e-4, `loss ${wasm.loss} vs ${cpu.loss}`);
  for (const [i, name] of cpu.layoutNames.entries()) {
    const end = cpu.offsets[i + 1] ?? cpu.grads.length;
    const g = wasm.grads.subarray(cpu.offsets[i], end), ref = cpu.grads.subarray(cpu.offsets[i], end);
    assert.ok(relDiff(g, ref) < 1e-4, `${name}: gradient rel diff ${relDiff(g, ref)}`);
  }
});
