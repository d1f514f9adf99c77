import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { GPT } from '../../model/gpt.ts';
import { exportHf, importHf } from '../../model/hf-format.ts';
import { trainBpe } from '../../model/tokenizer.ts';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { readSafetensors, writeSafetensors } from '../../model/safetensors.ts';

const tokenizer = await trainBpe([loadDemoCorpus().documents[0]!], { vocabSize: 300 });
const config = { vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 };

test('exported files import back to the same config, weights and tokenizer', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(config, { seed: 9 });
  const files = exportHf(model, tokenizer);
  const cfg = JSON.parse(Buffer.from(files['config.json']).toString());
  assert.equal(cfg.model_type, 'gpt2');
  assert.equal(cfg.activation_function, 'gelu_new');
  assert.equal(cfg.eos_token_id, tokenizer.endOfText);
  assert.equal(readSafetensors(files['model.safetensors']).metadata?.format, 'pt', 'transformers refuses files without it');
  const back = importHf(files);
  assert.deepEqual(back.config, config);
  assert.deepEqual(back.params, model.readParams());
  assert.deepEqual(back.tokenizer.encode('The Congress of the United States'), tokenizer.encode('The Congress of the United States'));
  model.dispose();
});

test('a state dict saved by transformers, with its transformer. prefix and lm_head, imports too', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(config, { seed: 2 });
  const files = exportHf(model, tokenizer);
  const { tensors } = readSafetensors(files['model.safetensors']);
  const prefixed = Object.fromEntries(Object.entries(tensors).map(([k, v]) => [`transformer.${k}`, v]));
  const back = importHf({ ...files, 'model.safetensors': writeSafetensors(prefixed, { format: 'pt' }) });
  assert.deepEqual(back.params, model.readParams());
  model.dispose();
});

test('inconsistent or broken files are refused with MDL_ERR_MODEL_FILES naming the problem', async () => {
  await tf.setBackend('cpu');
  const model = new GPT(config, { seed: 1 });
  const files = exportHf(model, tokenizer);
  const cfg = JSON.parse(Buffer.from(files['config.json']).toString());
  const withConfig = (patch: object) => ({ ...files, 'config.json': Buffer.from(JSON.stringify({ ...cfg, ...patch })) });
  const cases: Array<[string, Partial<Record<string, Uint8Array>>, RegExp]> = [
    ['no weights', { 'config.json': files['config.json'], 'tokenizer.json': files['tokenizer.json'] }, /lack model.safetensors/],
    ['another architecture', withConfig({ model_type: 'llama' }), /only "gpt2"/],
    ['a width the weights do not have', withConfig({ n_embd: 32 }), /wte.weight has shape \[300, 16\], config.json implies \[300, 32\]/],
    ['heads that do not divide the width', withConfig({ n_head: 3 }), /multiple of nHead/],
    ['a vocabulary smaller than the tokenizer', withConfig({ vocab_size: 280 }), /wte.weight has shape \[300, 16\], config.json implies \[280, 16\]|tokenizer.json has 300 ids/],
    ['config that is not JSON', { ...files, 'config.json': Buffer.from('{nope') }, /config.json is not valid JSON/],
  ];
  for (const [what, bad, re] of cases) {
    assert.throws(() => importHf(bad), (err: Error & { code?: string }) => err.code === 'MDL_ERR_MODEL_FILES' && re.test(err.message), what);
  }
  model.dispose();
});
