import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import type { GPTConfig } from '../../model/params.ts';
import { assertSameRun, runOn } from '../support/gpt-oracle.ts';

// The cpu backend is the oracle: the wasm backend (the default for agents) must agree with it for the same params.

const TINY: GPTConfig = { vocabSize: 32, nCtx: 8, nLayer: 2, nHead: 2, nEmbd: 16 };

test('the wasm backend gives the cpu backend\'s logits, loss and every parameter\'s gradient (rel. 1e-4)', async () => {
  const cpu = await runOn('cpu', TINY, 17, 4, 8);
  const wasm = await runOn('wasm', TINY, 17, 4, 8);
  assert.equal(tf.getBackend(), 'wasm');
  assertSameRun(wasm, cpu);
});
