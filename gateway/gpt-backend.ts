/**
 * The GPT backend: serves a registered model version (config.json, model.safetensors, tokenizer.json) through the
 * InferenceBackend contract. Concurrent requests are batched (batch-scheduler.ts): every choice is a sequence,
 * prompts are prefilled once, then all running sequences advance together, one decode forward over a batched KV
 * cache (batched-gpt.ts) per token, so a token costs one pass over its new position, not the whole context, and
 * sixteen sequences cost little more than one. Text is released byte-exactly: a token ending inside a multi-byte
 * character adds '' and the next one the whole character; stop sequences are cut by the shared
 * StopSequenceCutter; `<|endoftext|>` ends a choice, and so do a chat template's end-of-turn tokens.
 *
 * Compute runs on the calling thread (wasm or whatever backend `loadBackend` picks), yielding between iterations so
 * new requests join the batch and aborts are noticed.
 */
import type { BackendChoice } from '../model/compute/backend.ts';
import type { GPT } from '../model/gpt.ts';
import { importHf } from '../model/hf-format.ts';
import { readAdapter } from '../model/lora-files.ts';
import type { LoraSpec } from '../model/lora.ts';
import { ADAPTER_CONFIG_FILE } from '../protocol/model-version.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { BatchScheduler, batchSettings, type BatchEngine, type BatchSettings } from './batch-scheduler.ts';
import type { GptBatchEngine } from './batched-gpt.ts';
import { PagedGptEngine, servingEngine } from './paged-gpt.ts';
import { WorkerEngine } from './worker-engine.ts';
import { GatewayError } from './errors.ts';
import { chatTemplateFor } from './chat-templates.ts';
import type { BatchingConfig, ChatTemplate, GenerateOptions, GenerateRequest, GenerateResult, InferenceBackend, ModelInfo } from './inference-backend.ts';
import type { BackendFactory } from './registry-source.ts';

export interface GptBackendOptions extends Partial<BatchSettings> {
  /** Called with the sequences in each decode forward (metrics). */
  onBatch?: (size: number) => void;
  /** The version's chat template (chat-templates.ts chatTemplateFor); without one chat requests get 400. */
  chat?: ChatTemplate;
  /**
   * Where the KV cache lives: 'paged' (blocks, SIMD attention: paged-gpt.ts), 'tensor' (tfjs tensors:
   * batched-gpt.ts). Default: paged where the compute backend keeps tensors in this process (wasm, cpu), tensor
   * elsewhere (WebGPU).
   */
  engine?: 'paged' | 'tensor';
}

export class GptBackend implements InferenceBackend {
  readonly info: ModelInfo;
  readonly chat?: ChatTemplate;
  readonly #model: GPT | undefined; // in this thread; undefined when a worker holds it
  readonly #tokenizer: Tokenizer;
  readonly #scheduler: BatchScheduler<unknown>;
  readonly #engine: GptBatchEngine | PagedGptEngine | WorkerEngine;

  /**
   * Serves `model` on this thread (tests, tools), or the model a WorkerEngine runs on its own thread (what
   * gptBackendFactory builds for the gateway). The backend owns either from now on: close() frees it.
   */
  constructor(model: GPT | WorkerEngine, tokenizer: Tokenizer, info: Omit<ModelInfo, 'contextLength' | 'vocabSize'>, options: GptBackendOptions = {}) {
    this.#model = model instanceof WorkerEngine ? undefined : model;
    this.#tokenizer = tokenizer;
    this.info = { ...info, contextLength: model.config.nCtx, vocabSize: tokenizer.vocabSize };
    const { onBatch, chat, engine, ...settings } = options;
    if (chat) this.chat = chat;
    const text = {
      vocabSize: tokenizer.vocabSize, // the model may have spare rows beyond the tokenizer's ids: never sample them
      endOfText: tokenizer.endOfText,
      tokenBytes: (id: number) => tokenizer.tokenBytes(id),
      tokenString: (id: number) => tokenizer.decode([id]),
    };
    const served = model instanceof WorkerEngine ? model : servingEngine(model, engine);
    this.#engine = served;
    this.#scheduler = new BatchScheduler(served as BatchEngine<unknown>, text, batchSettings(settings), onBatch);
  }

  /** Which KV cache serves this model, and (paged) how much memory its pool holds and how many blocks are in use. */
  get kvCache(): { engine: 'paged'; bytes: number; blocksInUse: number } | { engine: 'tensor' } {
    const e = this.#engine;
    if (e instanceof PagedGptEngine) return { engine: 'paged', bytes: e.cacheBytes, blocksInUse: e.blocksInUse };
    if (e instanceof WorkerEngine && e.kind === 'paged') return { engine: 'paged', bytes: e.stats.cacheBytes ?? 0, blocksInUse: e.stats.blocksInUse ?? 0 }; // as of its last step
    return { engine: 'tensor' };
  }

  /** The compute backend the model runs on, when it runs in a worker (the worker chose it). */
  get computeBackend(): string | undefined {
    return this.#engine instanceof WorkerEngine ? this.#engine.computeBackend : undefined;
  }

  /** The batch settings in force. */
  get batching(): BatchSettings {
    return this.#scheduler.settings;
  }

  tokenize(text: string): number[] {
    return this.#tokenizer.encode(text);
  }

  detokenize(ids: readonly number[]): string {
    return this.#tokenizer.decode(ids);
  }

  generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    // The gateway checked this; a caller that did not must not fail the batch it would have joined.
    const { length } = req.promptIds;
    if (length === 0 || length + req.maxTokens > this.info.contextLength) {
      return Promise.reject(new GatewayError('GW_ERR_CONTEXT_LENGTH', `${length} prompt tokens + max_tokens ${req.maxTokens} do not fit in the context of ${this.info.contextLength} (and the prompt must not be empty)`));
    }
    return this.#scheduler.submit(req, opts);
  }

  configureBatching(config: BatchingConfig): void {
    const { onBatch, onQueue, onAdmit, gate, ...settings } = config;
    this.#scheduler.configure(batchSettings(settings, this.#scheduler.settings), { onBatch, onQueue, onAdmit, gate });
  }

  refusal(req: GenerateRequest, opts: GenerateOptions = {}): Error | undefined {
    return this.#scheduler.refusal(req.n, opts.priority);
  }

  async close(): Promise<void> {
    await this.#scheduler.close();
    if (this.#engine instanceof WorkerEngine) return this.#engine.close();
    this.#engine.dispose();
    this.#model!.dispose();
  }
}

/**
 * Builds a GptBackend from a registry version's files (the gateway CLI's BackendFactory): the weights go to the
 * gateway's compute thread for `options.backend` (default: MESHTRAIN_BACKEND, else auto; worker-engine.ts), which
 * runs the forward passes of every version on that backend; tokenizing, scheduling and sampling stay on the
 * calling thread.
 */
export const gptBackendFactory: BackendFactory = async (files, meta, options = {}) => {
  if (files.has(ADAPTER_CONFIG_FILE) && !meta.base) {
    throw new GatewayError('GW_ERR_REGISTRY', `${meta.name} v${meta.version} is a LoRA adapter: load it through withAdapterBases (adapter-source.ts) so its base comes with it`);
  }
  const loaded = importHf(Object.fromEntries(files));
  let adapter: { base: string; rank: number } | undefined;
  let lora: { spec: LoraSpec; flat: Float32Array } | undefined;
  if (meta.base) {
    lora = readAdapter(Object.fromEntries(files), loaded.config); // served unmerged: the base's weights stay as loaded
    adapter = { base: `${meta.base.name}@v${meta.base.version}`, rank: lora.spec.rank };
  }
  // The template it was trained with (an SFT/DPO version, or one a quantized/merged version inherits), else its
  // tokenizer_config.json's (an imported model); else one that answers chat requests with a 400 saying why.
  const chat = chatTemplateFor({ files, training: meta.training ?? meta.lineage, label: `${meta.name} v${meta.version}` }, loaded.tokenizer);
  const backend = options.backend ?? 'auto'; // the CLI resolves --backend / MESHTRAIN_BACKEND (gateway/options.ts)
  const model = await WorkerEngine.start({ backend, config: loaded.config, params: loaded.params, ...(lora ? { adapter: { spec: lora.spec, flat: lora.flat } } : {}) });
  return new GptBackend(model, loaded.tokenizer, {
    id: meta.name,
    createdS: Math.floor(meta.createdMs / 1000),
    ownedBy: 'meshtrain',
    version: meta.version,
    ...(loaded.quantization ? { quantization: loaded.quantization } : {}), // dequantized by importHf: served in float32
    ...(adapter ? { adapter } : {}),
  }, { chat });
};
