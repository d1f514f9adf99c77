/**
 * The GPT backend: serves a registered model version (config.json, model.safetensors, tokenizer.json) through the
 * InferenceBackend contract. Generation runs the prompt through the model once, then one token at a time through
 * the KV cache (model/gpt.ts forwardCached), so a token costs one pass over the new position, not the whole
 * context. Text is released byte-exactly: a token ending inside a multi-byte character adds '' and the next one
 * the whole character; stop sequences are cut by the shared StopSequenceCutter; `<|endoftext|>` ends a choice.
 *
 * Compute runs on the calling thread (wasm or whatever backend `loadBackend` picks), yielding between tokens so
 * aborts are noticed and other requests interleave. Batching requests into one forward pass comes with issue 5.
 */
import * as tf from '@tensorflow/tfjs';
import { GPT, disposeCache, type KVCache } from '../model/gpt.ts';
import { importHf } from '../model/hf-format.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import type {
  GenerateOptions,
  GenerateRequest,
  GenerateResult,
  GeneratedChoice,
  GeneratedToken,
  InferenceBackend,
  ModelInfo,
  TokenLogprob,
} from './inference-backend.ts';
import type { BackendFactory } from './registry-source.ts';
import { logSoftmax, sampleToken, seededRandom, tokenLogprob } from './sampling.ts';
import { StopSequenceCutter } from './stop-sequences.ts';

export class GptBackend implements InferenceBackend {
  readonly info: ModelInfo;
  readonly #model: GPT;
  readonly #tokenizer: Tokenizer;
  readonly #eos: number | undefined;

  constructor(model: GPT, tokenizer: Tokenizer, info: Omit<ModelInfo, 'contextLength' | 'vocabSize'>) {
    this.#model = model;
    this.#tokenizer = tokenizer;
    this.#eos = tokenizer.endOfText;
    this.info = { ...info, contextLength: model.config.nCtx, vocabSize: tokenizer.vocabSize };
  }

  tokenize(text: string): number[] {
    return this.#tokenizer.encode(text);
  }

  detokenize(ids: readonly number[]): string {
    return this.#tokenizer.decode(ids);
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    const tokenString = (id: number) => this.#tokenizer.decode([id]);
    const vocab = this.#tokenizer.vocabSize; // the model may have spare rows beyond the tokenizer's ids: never sample them
    const prompt = this.#prefill(req.promptIds);
    try {
      const promptLogprobs =
        req.echo && req.logprobs !== undefined
          ? req.promptIds.map((id, i) => (i === 0 ? null : tokenLogprob(logSoftmax(prompt.logitsAt(i - 1, vocab)), id, req.logprobs!, tokenString)))
          : null;
      if (promptLogprobs) opts.onPromptLogprobs?.(promptLogprobs);

      const choices: GeneratedChoice[] = [];
      for (let index = 0; index < req.n; index++) {
        choices.push(await this.#choice(req, opts, index, prompt, tokenString));
      }
      return { choices, promptLogprobs };
    } finally {
      disposeCache(prompt.cache);
    }
  }

  async close(): Promise<void> {
    this.#model.dispose();
  }

  /** Runs the prompt once; every choice continues from its cache. */
  #prefill(ids: readonly number[]): { cache: KVCache; logitsAt(position: number, vocab: number): Float32Array } {
    const input = tf.tensor2d([Array.from(ids)], [1, ids.length], 'int32');
    const { logits, cache } = this.#model.forwardCached(input);
    const values = logits.dataSync() as Float32Array; // [1, T, V]
    tf.dispose([input, logits]);
    const V = this.#model.config.vocabSize;
    return { cache, logitsAt: (position, vocab) => values.subarray(position * V, position * V + vocab) };
  }

  async #choice(
    req: GenerateRequest,
    opts: GenerateOptions,
    index: number,
    prompt: { cache: KVCache; logitsAt(position: number, vocab: number): Float32Array },
    tokenString: (id: number) => string,
  ): Promise<GeneratedChoice> {
    const vocab = this.#tokenizer.vocabSize;
    const random = seededRandom(req.seed, index);
    const cutter = new StopSequenceCutter(req.stop);
    const utf8 = new TextDecoder('utf-8', { ignoreBOM: true });
    const tokens: GeneratedToken[] = [];
    const release = (released: GeneratedToken[]) => {
      if (released.length === 0) return;
      tokens.push(...released);
      opts.onToken?.({ choice: index, tokens: released });
    };
    let logits = prompt.logitsAt(req.promptIds.length - 1, vocab);
    let cache: KVCache | undefined; // this choice's own extension of the prompt's cache
    let sampled = 0;
    let endOfText = false;
    try {
      while (sampled < req.maxTokens && !cutter.stopped) {
        await new Promise((r) => setImmediate(r)); // let aborts and other requests in between tokens
        if (opts.signal?.aborted) throw opts.signal.reason ?? new Error('aborted');
        const id = sampleToken(logits, req.temperature, req.topP, random);
        sampled++;
        if (id === this.#eos) {
          endOfText = true;
          break;
        }
        const token: GeneratedToken = { id, text: utf8.decode(this.#tokenizer.tokenBytes(id), { stream: true }) };
        if (req.logprobs !== undefined) token.logprob = tokenLogprob(logSoftmax(logits), id, req.logprobs, tokenString) as TokenLogprob;
        release(cutter.push(token).released);
        if (cutter.stopped || sampled === req.maxTokens) break;
        const input = tf.tensor2d([[id]], [1, 1], 'int32');
        const step = this.#model.forwardCached(input, cache ?? prompt.cache);
        const values = step.logits.dataSync() as Float32Array;
        tf.dispose([input, step.logits]);
        if (cache) disposeCache(cache);
        cache = step.cache;
        logits = values.subarray(0, vocab);
      }
      if (!cutter.stopped) release(cutter.flush());
    } finally {
      if (cache) disposeCache(cache);
    }
    return {
      index,
      tokens,
      text: tokens.map((t) => t.text).join(''),
      finishReason: cutter.stopped || endOfText ? 'stop' : 'length',
      sampledTokens: sampled,
    };
  }
}

/** Builds a GptBackend from a registry version's files (the gateway CLI's BackendFactory). */
export const gptBackendFactory: BackendFactory = async (files, meta) => {
  const loaded = importHf(Object.fromEntries(files));
  const model = new GPT(loaded.config, { flat: loaded.params });
  return new GptBackend(model, loaded.tokenizer, {
    id: meta.name,
    createdS: Math.floor(meta.createdMs / 1000),
    ownedBy: 'meshtrain',
    version: meta.version,
  });
};
