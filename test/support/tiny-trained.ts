/**
 * A small GPT trained for real, in-process, on the demo corpus (d 64, 2 layers, vocabulary 512 from the committed
 * tokenizer fixture, context 32), and held-out batches from a speech it never saw: for tests that need a model whose
 * predictions mean something (quantization, serving), not random weights. Runs on the current tf backend.
 */
import { readFileSync } from 'node:fs';
import { GPT } from '../../model/gpt.ts';
import { type GPTConfig } from '../../model/params.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { AdamW, lrAt } from '../../model/optim.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import { createTrainState, tokenBatch, trainStep, type TokenBatch } from '../../model/train-step.ts';

export const TINY_TRAINED_CONFIG: GPTConfig = { vocabSize: 512, nCtx: 32, nLayer: 2, nHead: 4, nEmbd: 64 };
const T = 32;

export interface TinyTrained {
  config: GPTConfig;
  flat: Float32Array;
  tokenizer: Tokenizer;
  heldOut: TokenBatch[];
  losses: number[];
}

/** `steps` AdamW steps of `batch` × 32 tokens (speeches 200–203), then 4 held-out batches of speech 220. */
export async function trainTiny(steps: number, batch = 8): Promise<TinyTrained> {
  const tokenizer = Tokenizer.fromJSON(JSON.parse(readFileSync(new URL('../model/fixtures/tokenizer-512.json', import.meta.url), 'utf8')));
  const docs = loadDemoCorpus().documents;
  const train = tokenizer.encode(docs.slice(200, 204).join('\n'));
  const held = tokenizer.encode(docs[220]!);
  const rowsAt = (src: number[], start: number): TokenBatch => {
    const rows = new Int32Array(batch * (T + 1));
    for (let r = 0; r < batch; r++) rows.set(src.slice(start + r * T, start + r * T + T + 1), r * (T + 1));
    return tokenBatch(rows, batch, T);
  };
  const model = new GPT(TINY_TRAINED_CONFIG, { seed: 1 });
  try {
    const state = createTrainState(model, new AdamW(model.layout.specs, { weightDecay: 0.1 }));
    const span = batch * T, losses: number[] = [];
    for (let s = 0; s < steps; s++) {
      const lr = lrAt(s, { maxLr: 1e-2, minLr: 1e-3, warmupSteps: 5, decaySteps: steps });
      losses.push((await trainStep(state, [rowsAt(train, (s * span * 7) % (train.length - span - 1))], { lr, gradClip: 1 })).loss);
    }
    const heldOut = [0, 1, 2, 3].map((i) => rowsAt(held, i * span));
    return { config: TINY_TRAINED_CONFIG, flat: state.params, tokenizer, heldOut, losses };
  } finally {
    model.dispose();
  }
}
