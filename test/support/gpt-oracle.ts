/**
 * Shared by the model tests that use the cpu backend as the oracle: deterministic token ids, one forward and
 * backward pass captured as plain arrays, and the comparisons between two such runs.
 */
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { GPT } from '../../model/gpt.ts';
import { flattenGrads, type GPTConfig } from '../../model/params.ts';

/** `n` token ids in [0, vocab) from a seeded LCG. */
export function randomIds(n: number, vocab: number, seed: number): Int32Array {
  const out = new Int32Array(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out[i] = (x >>> 8) % vocab;
  }
  return out;
}

export interface Run {
  logits: Float32Array;
  loss: number;
  grads: Float32Array; // flat, in layout order
  names: string[];
  offsets: number[];
}

/** Logits, loss and gradients of a model with `seed` on `backend`, for ids/targets of shape [B, T]. */
export async function runOn(backend: string, config: GPTConfig, seed: number, B: number, T: number): Promise<Run> {
  assert.ok(await tf.setBackend(backend), `${backend} initialises`);
  const model = new GPT(config, { seed });
  const ids = tf.tensor2d(randomIds(B * T, config.vocabSize, 1), [B, T], 'int32');
  const targets = tf.tensor2d(randomIds(B * T, config.vocabSize, 2), [B, T], 'int32');
  const logits = model.forward(ids);
  const { loss, grads } = model.lossAndGrads(ids, targets);
  const out: Run = {
    logits: logits.dataSync() as Float32Array,
    loss: loss.dataSync()[0]!,
    grads: flattenGrads(grads, model.layout),
    names: model.layout.specs.map((s) => s.name),
    offsets: model.layout.specs.map((s) => s.offset),
  };
  tf.dispose([ids, targets, logits, loss, ...grads.values()]);
  model.dispose();
  return out;
}

/** max |a − b| relative to max |b|: robust to entries near zero. */
export function relDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / Math.max(scale, 1e-30);
}

/** Asserts that `got` gives `want`'s logits, loss and every parameter's gradient to relative `tol`. */
export function assertSameRun(got: Run, want: Run, tol = 1e-4): void {
  assert.ok(relDiff(got.logits, want.logits) < tol, `logits rel diff ${relDiff(got.logits, want.logits)}`);
  assert.ok(Math.abs(got.loss - want.loss) / want.loss < tol, `loss ${got.loss} vs ${want.loss}`);
  for (const [i, name] of want.names.entries()) {
    const end = want.offsets[i + 1] ?? want.grads.length;
    const g = got.grads.subarray(want.offsets[i], end);
    const ref = want.grads.subarray(want.offsets[i], end);
    assert.ok(relDiff(g, ref) < tol, `${name}: gradient rel diff ${relDiff(g, ref)}`);
  }
}
