/**
 * The boundary between the gateway's HTTP layer and a model that generates text. The gateway validates and
 * normalises an OpenAI request into a `GenerateRequest` (defaults filled in, a seed always chosen, prompt already
 * token ids that fit the context), calls `generate`, and shapes the result into OpenAI's response or SSE chunks.
 * Everything model-specific — tokenizer, forward pass, KV cache, batching — lives behind this interface.
 *
 * Implementations: `FakeBackend` (fake-backend.ts, a deterministic character-level toy for tests and `--fake`) and
 * `GptBackend` (gpt-backend.ts), built from a registry version by a `BackendFactory` (registry-source.ts). `sampling.ts` and
 * `stop-sequences.ts` hold the pieces every backend needs so they all behave the same: seeded sampling with
 * temperature and top-p, log-probabilities with top-k alternatives, and stop-sequence cutting that is safe to stream.
 */
import type { ChatMessage } from '../model/chat-template.ts';
import type { PriorityGate } from './priority-gate.ts';

/** What the gateway needs to know about a served model. */
export interface ModelInfo {
  /** The name clients pass as `model`. */
  id: string;
  /** Maximum tokens of prompt plus completion (GPT's n_ctx). */
  contextLength: number;
  vocabSize: number;
  /** Unix seconds the model version was created (OpenAI's `created` in /v1/models). */
  createdS: number;
  /** OpenAI's `owned_by`. */
  ownedBy: string;
  /** Registry version this backend serves, when it came from the registry. */
  version?: number;
  /**
   * 'int8' when the version's weights are stored INT8 (model.int8.safetensors). Weight-only: they are dequantized at
   * load and computed in float32, so this saves disk and transfer, not memory or time. Shown in /v1/models.
   */
  quantization?: 'int8';
  /** A LoRA adapter version served unmerged on its base (adapter-source.ts): `base` is "name@vN". Shown in /v1/models. */
  adapter?: { base: string; rank: number };
}

export interface GenerateRequest {
  /** Prompt token ids: 1 ≤ length ≤ contextLength, each in [0, vocabSize). */
  promptIds: readonly number[];
  /**
   * Tokens to sample per choice, ≥ 0 (0 only with echo: score the prompt). promptIds.length + maxTokens ≤
   * contextLength; the gateway has checked.
   */
  maxTokens: number;
  /** Divides the logits before sampling; 0 means greedy (argmax, ties to the lowest id). */
  temperature: number;
  /** Nucleus sampling: sample only among the most likely tokens whose probabilities sum to ≥ topP; (0, 1]. */
  topP: number;
  /** Up to 4 non-empty strings; generation of a choice ends when its text contains one, which is cut off. */
  stop: readonly string[];
  /** Seeds the sampler; the same request with the same seed must give the same output. Choice i derives its own stream. */
  seed: number;
  /** Independent choices to generate from the same prompt, ≥ 1. */
  n: number;
  /**
   * When set, return each sampled token's log-probability and this many top alternatives (0–20). Log-probabilities
   * are the model's (log-softmax of the raw logits), not of the tempered or top-p-truncated sampling distribution.
   */
  logprobs: number | undefined;
  /** Return the prompt's log-probabilities too (only used with logprobs; the gateway prepends the prompt text itself). */
  echo: boolean;
  /**
   * Token ids that end a choice as the model's `<|endoftext|>` does (finish_reason 'stop', never part of the text,
   * counted in sampledTokens): a chat template's end-of-turn tokens. Absent = none beyond end-of-text.
   */
  stopTokenIds?: readonly number[];
}

/** An alternative token and its log-probability. */
export interface TopLogprob {
  token: string;
  logprob: number;
  /** The token's raw bytes, when the backend knows them (a byte-level token may be part of a UTF-8 character). */
  bytes?: number[];
}

/** A token's log-probability and the top alternatives at its position, most likely first. */
export interface TokenLogprob {
  /** The token as a string (its own text; a byte-level backend may show partial UTF-8 however it likes). */
  token: string;
  logprob: number;
  /** The token's raw bytes, when the backend knows them. */
  bytes?: number[];
  /** The `logprobs` most likely tokens, most likely first, plus the chosen token when it is not among them. */
  top: TopLogprob[];
}

/** One generated token as it is released to the client. */
export interface GeneratedToken {
  id: number;
  /**
   * The text this token adds to the completion. Concatenated over a choice's tokens it equals the choice's text:
   * a token that ends inside a multi-byte character adds '' and the next adds the whole character; the token that
   * runs into a stop sequence adds only what precedes it.
   */
  text: string;
  /** Present when the request asked for logprobs. */
  logprob?: TokenLogprob;
}

/** Streamed to `onToken` as soon as text of a choice is safe to show (no longer possibly part of a stop sequence). */
export interface TokenEvent {
  choice: number;
  tokens: GeneratedToken[];
}

export interface GeneratedChoice {
  index: number;
  /** The released tokens: what the text is made of (tokens wholly inside a cut-off stop sequence are not here). */
  tokens: GeneratedToken[];
  /** The completion text, stop sequence excluded (the prompt is not included, even with echo). */
  text: string;
  /** 'stop': a stop sequence (or the model's end-of-text token) ended it; 'length': maxTokens was reached. */
  finishReason: 'stop' | 'length';
  /** Tokens actually sampled, the cut-off stop sequence's tokens included (OpenAI bills these: usage.completion_tokens). */
  sampledTokens: number;
}

export interface GenerateResult {
  choices: GeneratedChoice[];
  /**
   * With echo and logprobs: one entry per prompt token, `null` for the first (nothing predicts it). Otherwise null.
   */
  promptLogprobs: Array<TokenLogprob | null> | null;
  /**
   * Batching backends: ms from the request's first admission to a batch until its end, not counting time parked
   * behind foreground work (what the model itself took, for comparing a shadow's speed with the primary's).
   */
  serviceMs?: number;
}

export interface GenerateOptions {
  /** Aborted when the client goes away: stop computing and reject with the signal's reason. */
  signal?: AbortSignal;
  /** Called as tokens are released, in order per choice; the concatenated events of a choice equal its result. */
  onToken?: (event: TokenEvent) => void;
  /**
   * With echo and logprobs: called once, before any onToken, with what `promptLogprobs` of the result will hold, so
   * a stream can show the echoed prompt with its log-probabilities first.
   */
  onPromptLogprobs?: (promptLogprobs: Array<TokenLogprob | null>) => void;
  /**
   * 'background' (shadow mirrors): run only when no client request is waiting or running on any backend sharing
   * the gateway's PriorityGate, and after every foreground request of this backend. Default 'foreground'.
   */
  priority?: 'foreground' | 'background';
}

/**
 * The gateway's batching settings, for a backend that batches concurrent requests into one forward pass per
 * generation step (GptBackend). Settings left out keep the backend's own.
 */
export interface BatchingConfig {
  /** Sequences (choices) in one forward pass at most; 1 turns batching off. */
  maxBatchSize?: number;
  /** How long an idle backend waits for more requests before starting a batch that is not full, in ms. */
  maxWaitMs?: number;
  /** Called with the number of sequences in each decode forward pass (the gateway's batch-size histogram). */
  onBatch?: (size: number) => void;
  /** Shared by every backend of the gateway: background work waits while any of them has foreground work. */
  gate?: PriorityGate;
  /** Called with the sequences waiting for a row after each admission (the gateway's queue-depth gauge). */
  onQueue?: (waiting: number) => void;
  /** Called with how long each request waited for its first row, in ms (the gateway's queue-wait histogram). */
  onAdmit?: (waitMs: number) => void;
  /** Sequences that may wait for a row at most; a request beyond it is refused at once (GW_ERR_OVERLOADED). */
  maxQueue?: number;
  /** Prompt tokens run per iteration at most: longer prompts are run in chunks between decode steps. */
  prefillChunk?: number;
}

/**
 * How a model turns a conversation into a prompt (chat-templates.ts builds them): the chat template it was trained
 * with, or one its files declare. `POST /v1/chat/completions` renders the messages with it and stops at `endOfTurn`.
 */
export interface ChatTemplate {
  /** Where the template comes from, for messages and /v1/models: 'meshtrain' (SFT/DPO here) or 'tokenizer_config.json'. */
  readonly source: string;
  /** Token ids that end the assistant's turn: generation stops there (GenerateRequest.stopTokenIds). */
  readonly endOfTurn: readonly number[];
  /**
   * The prompt ids for `messages`, ending where the assistant's reply begins. Throws a GatewayError (400) for a
   * conversation the template refuses, or when the model has no template at all (GW_ERR_NO_CHAT_TEMPLATE).
   */
  render(messages: readonly ChatMessage[]): number[];
}

export interface InferenceBackend {
  readonly info: ModelInfo;
  /** The model's chat template; absent when the backend has none (chat requests then get 400). */
  readonly chat?: ChatTemplate;
  tokenize(text: string): number[];
  detokenize(ids: readonly number[]): string;
  /**
   * Concurrent calls may be served together (batched); each call's output is the same as if it ran alone.
   */
  generate(request: GenerateRequest, options?: GenerateOptions): Promise<GenerateResult>;
  /** Backends that batch take the gateway's settings here (createGateway calls it once, at start). */
  configureBatching?(config: BatchingConfig): void;
  /**
   * Whether `generate` would refuse this request now for a full queue (GW_ERR_OVERLOADED with retryAfterS), checked
   * before a streamed answer's headers go out, so that a refusal is a 503 and not an error event in a 200 stream.
   */
  refusal?(request: GenerateRequest, options?: GenerateOptions): Error | undefined;
  /** Frees weights and workers; the gateway calls it on close. */
  close?(): Promise<void>;
}
