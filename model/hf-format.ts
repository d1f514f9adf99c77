/**
 * A model version as Hugging Face files: config.json (GPT2Config), model.safetensors (GPT-2 state dict, Conv1D
 * [in, out] layouts, head tied to wte, metadata {"format":"pt"} which transformers requires) and tokenizer.json.
 * `transformers.GPT2LMHeadModel.from_pretrained(folder)` and `PreTrainedTokenizerFast(tokenizer_file=…)` load
 * what `exportHf` writes; `importHf` reads it back (and accepts state dicts with the `transformer.` prefix that
 * transformers itself saves), refusing anything inconsistent with a clear ModelError.
 */
import { GPT } from './gpt.ts';
import { flatFromStateDict, gptConfig, paramLayout, stateDict, type GPTConfig } from './params.ts';
import { ModelError } from './errors.ts';
import { INT8_METHOD, INT8_WEIGHTS_FILE, readInt8Safetensors, writeInt8Safetensors, type Int8Sizes } from './quantize.ts';
import { flatFromHfStateDict } from './hf-state-dict.ts';
import { readSafetensors, writeSafetensors, type TensorMap } from './safetensors.ts';
import { END_OF_TEXT, Tokenizer } from './tokenizer.ts';

// A type alias, not an interface, so that it is assignable to Record<string, …> (importHf takes any file set).
export type HfFiles = {
  'config.json': Uint8Array;
  'model.safetensors': Uint8Array;
  'tokenizer.json': Uint8Array;
};

/** GPT2Config fields for our architecture: no dropout at inference, GPT-2's tanh GELU, LayerNorm eps 1e-5. */
export function hfConfig(config: GPTConfig, tokenizer: Tokenizer): Record<string, unknown> {
  const eos = tokenizer.endOfText ?? null;
  return {
    model_type: 'gpt2',
    architectures: ['GPT2LMHeadModel'],
    vocab_size: config.vocabSize,
    n_positions: config.nCtx,
    n_ctx: config.nCtx,
    n_embd: config.nEmbd,
    n_layer: config.nLayer,
    n_head: config.nHead,
    n_inner: null,
    activation_function: 'gelu_new',
    layer_norm_epsilon: 1e-5,
    resid_pdrop: 0,
    embd_pdrop: 0,
    attn_pdrop: 0,
    scale_attn_weights: true,
    tie_word_embeddings: true,
    bos_token_id: eos,
    eos_token_id: eos,
  };
}

/** `model` may be a GPT (its parameters are read when `params` is omitted) or just a config and layout with `params`. */
export function exportHf(model: Pick<GPT, 'config' | 'layout'> & { readParams?(): Float32Array }, tokenizer: Tokenizer, params?: Float32Array): HfFiles {
  const flat = params ?? model.readParams?.();
  if (!flat) throw new RangeError('exportHf needs the parameters: pass params or a GPT');
  if (tokenizer.vocabSize > model.config.vocabSize) {
    throw new ModelError('MDL_ERR_MODEL_FILES', `tokenizer has ${tokenizer.vocabSize} ids, the model only ${model.config.vocabSize}`);
  }
  const json = (v: unknown) => Buffer.from(JSON.stringify(v, null, 2));
  return {
    'config.json': json(hfConfig(model.config, tokenizer)),
    'model.safetensors': writeSafetensors(stateDict(flat, model.layout) as TensorMap, { format: 'pt' }),
    'tokenizer.json': json(tokenizer.toJSON()),
  };
}

export interface LoadedModel {
  config: GPTConfig;
  params: Float32Array; // flat, in paramLayout order (dequantized when the files hold INT8 weights)
  tokenizer: Tokenizer;
  /** 'int8' when the weights came from model.int8.safetensors (model/quantize.ts). */
  quantization?: 'int8';
}

/** config.json's entry for an INT8 version (transformers has no loader for it: these folders are for our gateway). */
export const INT8_QUANTIZATION_CONFIG = { quant_method: INT8_METHOD, bits: 8, granularity: 'per-channel', symmetric: true } as const;

/**
 * The INT8 variant of a version's HF files: config.json with `quantization_config`, model.int8.safetensors and
 * tokenizer.json as they were. The input is checked by importHf first; `sizes` are tensor data bytes.
 */
export function quantizeHf(files: Partial<Record<string, Uint8Array>>): { files: Record<string, Uint8Array>; sizes: Int8Sizes } {
  const loaded = importHf(files);
  if (loaded.quantization) throw new ModelError('MDL_ERR_MODEL_FILES', `these files are already quantized (${loaded.quantization})`);
  const { bytes, sizes } = writeInt8Safetensors(stateDict(loaded.params, paramLayout(loaded.config)));
  const config = { ...(JSON.parse(Buffer.from(files['config.json']!).toString('utf8')) as object), quantization_config: INT8_QUANTIZATION_CONFIG };
  return { files: { 'config.json': Buffer.from(JSON.stringify(config, null, 2)), [INT8_WEIGHTS_FILE]: bytes, 'tokenizer.json': files['tokenizer.json']! }, sizes };
}

/** The GPTConfig of a parsed config.json (GPT2Config), checked: only our architecture is accepted. */
export function configFromHf(json: unknown): GPTConfig {
  const raw = json as Record<string, unknown>;
  const bad = (why: string) => new ModelError('MDL_ERR_MODEL_FILES', `config.json: ${why}`);
  if (raw === null || typeof raw !== 'object') throw bad('not an object');
  if (raw.model_type !== 'gpt2') throw bad(`model_type is ${JSON.stringify(raw.model_type)}, only "gpt2" is supported`);
  if (raw.activation_function !== undefined && raw.activation_function !== 'gelu_new') {
    throw bad(`activation_function ${JSON.stringify(raw.activation_function)} is not supported (gelu_new)`);
  }
  if (raw.n_inner !== undefined && raw.n_inner !== null && raw.n_inner !== 4 * Number(raw.n_embd)) throw bad('n_inner must be 4·n_embd');
  try {
    return gptConfig({ vocabSize: raw.vocab_size as number, nCtx: raw.n_positions as number, nLayer: raw.n_layer as number, nHead: raw.n_head as number, nEmbd: raw.n_embd as number });
  } catch (err) {
    throw bad((err as Error).message);
  }
}

/** Parses and checks the three files; building the tf model (`new GPT(config, { flat: params })`) is the caller's. */
export function importHf(files: Partial<Record<string, Uint8Array>>): LoadedModel {
  const need = (name: keyof HfFiles): Uint8Array => {
    const f = files[name];
    if (!f) throw new ModelError('MDL_ERR_MODEL_FILES', `model files lack ${name}`);
    return f;
  };
  const parse = (name: keyof HfFiles): unknown => {
    try {
      return JSON.parse(Buffer.from(need(name)).toString('utf8'));
    } catch (err) {
      throw new ModelError('MDL_ERR_MODEL_FILES', `${name} is not valid JSON: ${(err as Error).message}`, { cause: err });
    }
  };
  const rawConfig = parse('config.json') as Record<string, unknown>;
  const config = configFromHf(rawConfig);
  // A version holds either float32 weights or INT8 ones (model/quantize.ts), never both.
  const int8 = files[INT8_WEIGHTS_FILE];
  if (int8 && files['model.safetensors']) throw new ModelError('MDL_ERR_MODEL_FILES', `model files hold both model.safetensors and ${INT8_WEIGHTS_FILE}`);
  const quant = rawConfig.quantization_config as { quant_method?: unknown } | undefined;
  const bad = (why: string) => new ModelError('MDL_ERR_MODEL_FILES', `config.json: ${why}`);
  if (int8 && quant?.quant_method !== INT8_METHOD) throw bad(`${INT8_WEIGHTS_FILE} needs quantization_config.quant_method "${INT8_METHOD}"`);
  if (!int8 && quant !== undefined) throw bad(`quantization_config ${JSON.stringify(quant).slice(0, 80)} is not supported without ${INT8_WEIGHTS_FILE}`);
  const weightsFile = int8 ? INT8_WEIGHTS_FILE : 'model.safetensors';
  let params: Float32Array;
  if (int8) {
    const unprefixed: TensorMap = {};
    for (const [name, t] of Object.entries(readInt8Safetensors(int8))) unprefixed[name.replace(/^transformer\./, '')] = t;
    try {
      params = flatFromStateDict(unprefixed, paramLayout(config));
    } catch (err) {
      throw new ModelError('MDL_ERR_MODEL_FILES', `${weightsFile} does not fit config.json: ${(err as Error).message}`, { cause: err });
    }
  } else {
    // Published GPT-2 files: a `transformer.` prefix, F16/BF16, mask buffers, a tied lm_head (hf-state-dict.ts).
    params = flatFromHfStateDict(readSafetensors(need('model.safetensors')).tensors, config, weightsFile);
  }
  const tokenizer = Tokenizer.fromJSON(parse('tokenizer.json'));
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new ModelError('MDL_ERR_MODEL_FILES', `tokenizer.json has ${tokenizer.vocabSize} ids, config.json vocab_size ${config.vocabSize}`);
  }
  return { config, params, tokenizer, ...(int8 ? { quantization: 'int8' as const } : {}) };
}

export { END_OF_TEXT };
