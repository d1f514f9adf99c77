/**
 * OpenAI's legacy completions API (`POST /v1/completions`): the request schema (TypeBox), its parsing into a
 * backend `GenerateRequest`, and the response and SSE chunk shapes. Follows OpenAI's behaviour where clients can
 * tell the difference: unknown fields are refused ("Unrecognized request argument supplied"), known fields we do
 * not implement (presence_penalty, best_of, …) are accepted at their defaults and refused otherwise, and every
 * error has OpenAI's body `{"error": {"message", "type", "param", "code"}}` (errors.ts).
 */
import { randomInt } from 'node:crypto';
import { Type, type Static, type TObject, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { GatewayError } from './errors.ts';
import type { GenerateRequest, GenerateResult, GeneratedToken, InferenceBackend, TokenEvent, TokenLogprob } from './inference-backend.ts';

/** Most choices one request may ask for (each costs a full generation). */
export const MAX_N = 16;
/** Most top alternatives per token (OpenAI documents 5 for this API; vLLM and newer OpenAI APIs allow 20). */
export const MAX_LOGPROBS = 20;
/** Most stop sequences, as OpenAI. */
export const MAX_STOP = 4;
/** Default max_tokens, as OpenAI. */
export const DEFAULT_MAX_TOKENS = 16;

// Each field says in `description` what it accepts: validation messages are built from these.
const nullable = <T extends TSchema>(schema: T, description: string) => Type.Union([schema, Type.Null()], { description });
const TokenIds = Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1 });

/** The fields /v1/completions and /v1/chat/completions share, with the same meaning and limits. */
export const SHARED_FIELDS = {
  model: Type.String({ minLength: 1, maxLength: 256, description: 'a model name from GET /v1/models' }),
  temperature: Type.Optional(nullable(Type.Number({ minimum: 0, maximum: 2 }), 'a number between 0 and 2')),
  top_p: Type.Optional(nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 }), 'a number greater than 0 and at most 1')),
  stop: Type.Optional(
    Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String({ minLength: 1 }), { maxItems: MAX_STOP }), Type.Null()], {
      description: `a non-empty string or an array of at most ${MAX_STOP} non-empty strings`,
    }),
  ),
  seed: Type.Optional(nullable(Type.Integer({ minimum: -Number.MAX_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER }), 'a safe integer')),
  n: Type.Optional(nullable(Type.Integer({ minimum: 1, maximum: MAX_N }), `an integer between 1 and ${MAX_N}`)),
  stream: Type.Optional(nullable(Type.Boolean(), 'a boolean')),
  stream_options: Type.Optional(
    nullable(Type.Object({ include_usage: Type.Optional(Type.Boolean()) }, { additionalProperties: false }), 'an object {"include_usage": boolean}'),
  ),
  user: Type.Optional(Type.String({ maxLength: 256, description: 'a string of at most 256 characters' })),
  // Accepted at their defaults only (each API's UNSUPPORTED).
  presence_penalty: Type.Optional(nullable(Type.Number({ minimum: -2, maximum: 2 }), 'a number between -2 and 2')),
  frequency_penalty: Type.Optional(nullable(Type.Number({ minimum: -2, maximum: 2 }), 'a number between -2 and 2')),
  logit_bias: Type.Optional(nullable(Type.Record(Type.String(), Type.Number({ minimum: -100, maximum: 100 })), 'an object of token id → bias')),
};

/** The sampling settings both APIs take alike, with OpenAI's defaults. */
export function samplingOf(req: { temperature?: number | null; top_p?: number | null; seed?: number | null; n?: number | null }) {
  return {
    temperature: req.temperature ?? 1,
    topP: req.top_p ?? 1,
    seed: req.seed ?? randomInt(2 ** 31), // always seeded: a logged request can be replayed exactly
    n: req.n ?? 1,
  };
}

export const CompletionRequest = Type.Object(
  {
    ...SHARED_FIELDS,
    prompt: Type.Union([Type.String(), TokenIds, Type.Array(Type.String()), Type.Array(TokenIds)], {
      description: 'a string, an array of token ids, or an array holding one of those',
    }),
    max_tokens: Type.Optional(nullable(Type.Integer({ minimum: 0 }), 'an integer ≥ 1 (0 only with echo)')),
    logprobs: Type.Optional(nullable(Type.Integer({ minimum: 0, maximum: MAX_LOGPROBS }), `an integer between 0 and ${MAX_LOGPROBS}`)),
    echo: Type.Optional(nullable(Type.Boolean(), 'a boolean')),
    // Accepted at their defaults only (see UNSUPPORTED below).
    best_of: Type.Optional(nullable(Type.Integer({ minimum: 1, maximum: MAX_N }), `an integer between 1 and ${MAX_N}`)),
    suffix: Type.Optional(nullable(Type.String(), 'a string')),
  },
  { additionalProperties: false },
);
export type CompletionRequest = Static<typeof CompletionRequest>;

/** Known parameters this gateway does not implement, and when a value means "not used" (then it is accepted). */
const UNSUPPORTED: Record<string, (value: unknown, body: CompletionRequest) => boolean> = {
  presence_penalty: (v) => v === 0,
  frequency_penalty: (v) => v === 0,
  best_of: (v, body) => v === 1 || v === (body.n ?? 1), // best_of = n returns all n: the same as not using it
  logit_bias: (v) => Object.keys(v as object).length === 0,
  suffix: (v) => v === '',
};

/** A validated request, ready for the backend, with what the response needs besides. */
export interface ParsedCompletion {
  model: string;
  generate: GenerateRequest;
  /** The prompt as text (echo puts it in front of the completion). */
  promptText: string;
  stream: boolean;
  includeUsage: boolean;
}

const fmt = (v: unknown) => {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
};

/**
 * Checks `body` against the schema and turns it into a backend request for the model `backendFor` names; throws a
 * GatewayError naming the parameter at fault. Order as OpenAI: shape first, then the model, then what depends on it.
 */
export function parseCompletionRequest(body: unknown, backendFor: (model: string) => InferenceBackend | undefined): { parsed: ParsedCompletion; backend: InferenceBackend } {
  const req = checkFields(body, CompletionRequest, UNSUPPORTED);
  const backend = backendOf(req.model, backendFor);
  const { contextLength, vocabSize } = backend.info;

  const promptIds = promptToIds(req.prompt, backend);
  if (promptIds.length === 0) throw new GatewayError('GW_ERR_BAD_REQUEST', 'The prompt is empty; give at least one token.', { param: 'prompt' });
  if (promptIds.length > contextLength) {
    throw new GatewayError('GW_ERR_CONTEXT_LENGTH', `The prompt is ${promptIds.length} tokens, longer than the model's context of ${contextLength} tokens.`, { param: 'prompt' });
  }
  const badId = promptIds.find((id) => id >= vocabSize);
  if (badId !== undefined) throw new GatewayError('GW_ERR_BAD_REQUEST', `Token id ${badId} in the prompt is outside the model's vocabulary of ${vocabSize} tokens.`, { param: 'prompt' });

  const echo = req.echo ?? false;
  const maxTokens = req.max_tokens ?? DEFAULT_MAX_TOKENS;
  if (maxTokens === 0 && !echo) throw new GatewayError('GW_ERR_BAD_REQUEST', "Invalid value for 'max_tokens': expected an integer ≥ 1 (0 only with echo), got 0.", { param: 'max_tokens' });
  completionBudget(promptIds.length, maxTokens, contextLength, 'max_tokens');
  const stop = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  return {
    backend,
    parsed: {
      model: req.model,
      promptText: backend.detokenize(promptIds),
      stream: req.stream ?? false,
      includeUsage: req.stream_options?.include_usage ?? false,
      generate: {
        promptIds,
        maxTokens,
        ...samplingOf(req),
        stop,
        logprobs: req.logprobs ?? undefined,
        echo,
      },
    },
  };
}

/**
 * The checks every OpenAI request gets, in OpenAI's order: a JSON object, no unknown field ("Unrecognized request
 * argument supplied"), the required ones present, each field valid for its schema (the message built from its
 * `description`), and the unimplemented ones at their defaults. Returns the body, typed.
 */
export function checkFields<S extends TObject>(body: unknown, schema: S, unsupported: Record<string, (value: unknown, body: Static<S>) => boolean>): Static<S> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', 'The request body must be a JSON object.');
  }
  const raw = body as Record<string, unknown>;
  for (const key of Object.keys(raw)) {
    if (!(key in schema.properties)) throw new GatewayError('GW_ERR_BAD_REQUEST', `Unrecognized request argument supplied: ${key}`, { param: key });
  }
  for (const key of schema.required ?? []) {
    if (raw[key] === undefined) throw new GatewayError('GW_ERR_BAD_REQUEST', `Missing required parameter: '${key}'.`, { param: key });
  }
  for (const [key, field] of Object.entries(schema.properties) as Array<[string, TSchema]>) {
    if (raw[key] !== undefined && !Value.Check(field, raw[key])) {
      throw new GatewayError('GW_ERR_BAD_REQUEST', `Invalid value for '${key}': expected ${describe(field)}, got ${fmt(raw[key])}.`, { param: key });
    }
  }
  const req = raw as Static<S>;
  for (const [key, isDefault] of Object.entries(unsupported)) {
    const v = raw[key];
    if (v !== undefined && v !== null && !isDefault(v, req)) {
      throw new GatewayError('GW_ERR_UNSUPPORTED', `'${key}' is not supported by this server; leave it out or at its default (got ${fmt(v)}).`, { param: key });
    }
  }
  return req;
}

/** The backend serving `model`, or 404 model_not_found. */
export function backendOf(model: string, backendFor: (model: string) => InferenceBackend | undefined): InferenceBackend {
  const backend = backendFor(model);
  if (!backend) throw new GatewayError('GW_ERR_MODEL_NOT_FOUND', `The model '${model}' does not exist; GET /v1/models lists the models served here.`, { param: 'model' });
  return backend;
}

/**
 * The largest completion the context leaves room for, checked: `maxTokens` undefined means all of it (the chat
 * default); a prompt that fills the context, or a maxTokens beyond what is left, is a 400 with the numbers.
 */
export function completionBudget(promptTokens: number, maxTokens: number | undefined, contextLength: number, param: string): number {
  if (promptTokens >= contextLength && maxTokens === undefined) {
    throw new GatewayError('GW_ERR_CONTEXT_LENGTH', `The prompt is ${promptTokens} tokens, which leaves no room for a completion in the model's context of ${contextLength} tokens.`, { param: 'messages' });
  }
  const budget = maxTokens ?? contextLength - promptTokens;
  if (promptTokens + budget > contextLength) {
    throw new GatewayError(
      'GW_ERR_CONTEXT_LENGTH',
      `This model's maximum context length is ${contextLength} tokens, however you requested ${promptTokens + budget} tokens (${promptTokens} in your prompt; ${budget} for the completion). Please reduce your prompt or completion length.`,
      { param },
    );
  }
  return budget;
}

function describe(schema: TSchema): string {
  return typeof schema.description === 'string' ? schema.description : 'a valid value';
}

function promptToIds(prompt: CompletionRequest['prompt'], backend: InferenceBackend): number[] {
  if (typeof prompt === 'string') return backend.tokenize(prompt);
  if (prompt.length === 0) return [];
  if (typeof prompt[0] === 'number') return prompt as number[];
  if (prompt.length > 1) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', `Batches of prompts are not supported: send one prompt per request (got ${prompt.length}).`, { param: 'prompt' });
  }
  const only = prompt[0]!;
  return typeof only === 'string' ? backend.tokenize(only) : only;
}

// ---- responses ----------------------------------------------------------------------------------------------

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<TopLogprobs | null>;
  /** Where each token starts in the choice's `text` (the echoed prompt included). */
  text_offset: number[];
}

export interface CompletionChoice {
  text: string;
  index: number;
  logprobs: CompletionLogprobs | null;
  finish_reason: 'stop' | 'length' | null;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface CompletionResponse {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: CompletionChoice[];
  usage?: Usage | null;
}

/**
 * One position's `top_logprobs` object, `{token: logprob}`, most likely first. It cannot be a plain object: JS puts
 * integer-like keys ("5", "42") before all others, so a digit token would jump the queue. `encodeJson` writes the
 * entries in order; JSON.stringify (toJSON) still gives the right dictionary, unordered.
 */
export class TopLogprobs {
  readonly entries: ReadonlyArray<readonly [string, number]>;

  constructor(lp: TokenLogprob) {
    const seen = new Set<string>();
    this.entries = lp.top.filter((t) => !seen.has(t.token) && seen.add(t.token)).map((t) => [t.token, t.logprob] as const);
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.entries);
  }
}

/** JSON.stringify for response bodies, keeping TopLogprobs in order (plain objects, arrays and primitives as usual). */
export function encodeJson(value: unknown): string {
  if (value instanceof TopLogprobs) return `{${value.entries.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
  if (Array.isArray(value)) return `[${value.map((v) => (v === undefined ? 'null' : encodeJson(v))).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const fields = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${encodeJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}

const topDict = (lp: TokenLogprob) => new TopLogprobs(lp);

/** Accumulates the logprobs object of one choice across chunks, keeping text offsets into the choice's text. */
export class LogprobsBuilder {
  #offset = 0;

  /** The echoed prompt's part: one entry per prompt token, the first with null log-probabilities. */
  prompt(backend: InferenceBackend, promptIds: readonly number[], promptLogprobs: Array<TokenLogprob | null>): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    promptIds.forEach((id, i) => {
      const lp = promptLogprobs[i] ?? null;
      out.tokens.push(lp?.token ?? backend.detokenize([id]));
      out.token_logprobs.push(lp?.logprob ?? null);
      out.top_logprobs.push(lp ? topDict(lp) : null);
      out.text_offset.push(i === 0 ? 0 : backend.detokenize(promptIds.slice(0, i)).length);
    });
    this.#offset = backend.detokenize(promptIds).length;
    return out;
  }

  /** Offsets continue after everything added before, the prompt's text when it was echoed. */
  skip(text: string): void {
    this.#offset += text.length;
  }

  tokens(tokens: readonly GeneratedToken[]): CompletionLogprobs {
    const out: CompletionLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
    for (const t of tokens) {
      out.tokens.push(t.logprob?.token ?? t.text);
      out.token_logprobs.push(t.logprob?.logprob ?? null);
      out.top_logprobs.push(t.logprob ? topDict(t.logprob) : null);
      out.text_offset.push(this.#offset);
      this.#offset += t.text.length;
    }
    return out;
  }
}

export function concatLogprobs(a: CompletionLogprobs, b: CompletionLogprobs): CompletionLogprobs {
  return {
    tokens: [...a.tokens, ...b.tokens],
    token_logprobs: [...a.token_logprobs, ...b.token_logprobs],
    top_logprobs: [...a.top_logprobs, ...b.top_logprobs],
    text_offset: [...a.text_offset, ...b.text_offset],
  };
}

export function usageOf(parsed: ParsedCompletion, result: Pick<GenerateResult, 'choices'>): Usage {
  const completion = result.choices.reduce((sum, c) => sum + c.sampledTokens, 0);
  return { prompt_tokens: parsed.generate.promptIds.length, completion_tokens: completion, total_tokens: parsed.generate.promptIds.length + completion };
}

/** The whole (non-streamed) response. */
export function completionResponse(head: { id: string; created: number }, parsed: ParsedCompletion, backend: InferenceBackend, result: GenerateResult): CompletionResponse {
  const { echo, logprobs, promptIds } = parsed.generate;
  const choices = result.choices.map((c): CompletionChoice => {
    let lp: CompletionLogprobs | null = null;
    if (logprobs !== undefined) {
      const b = new LogprobsBuilder();
      if (echo) {
        const promptPart = b.prompt(backend, promptIds, result.promptLogprobs ?? []);
        lp = concatLogprobs(promptPart, b.tokens(c.tokens));
      } else lp = b.tokens(c.tokens);
    }
    return { text: (echo ? parsed.promptText : '') + c.text, index: c.index, logprobs: lp, finish_reason: c.finishReason };
  });
  return { id: head.id, object: 'text_completion', created: head.created, model: parsed.model, choices, usage: usageOf(parsed, result) };
}

// ---- streams ------------------------------------------------------------------------------------------------

/**
 * The SSE chunks of one streamed response, by the moment they are due; the server writes each as `data: {chunk}`
 * and adds `data: [DONE]`. One per route (completions here, chat in openai-chat.ts).
 */
export interface StreamEncoder {
  /** Before generation starts. */
  begin(): unknown[];
  /** Present when the route wants the prompt scored first (GenerateOptions.onPromptLogprobs): its chunks. */
  promptLogprobs?: (promptLogprobs: Array<TokenLogprob | null>) => unknown[];
  /** Tokens of one choice as they are released. */
  token(event: TokenEvent): unknown[];
  /** After the last token: each choice's finish, and the usage when asked for. */
  end(result: GenerateResult, usage: Usage): unknown[];
}

/**
 * Completions as server-sent events: a chunk per released batch of tokens (OpenAI's object with `finish_reason:
 * null`), a last chunk per choice with its finish_reason, optionally a usage chunk with no choices. With echo the
 * prompt comes first: once the backend has scored it when logprobs are asked for, else at once.
 */
export function completionStream(head: { id: string; created: number }, parsed: ParsedCompletion, backend: InferenceBackend): StreamEncoder {
  const chunk = (choices: CompletionChoice[]): CompletionResponse => ({ id: head.id, object: 'text_completion', created: head.created, model: parsed.model, choices });
  const { echo, logprobs, n, promptIds } = parsed.generate;
  const builders = Array.from({ length: n }, () => new LogprobsBuilder());
  let echoed = !echo;
  const echoChunks = (promptLogprobs: Array<TokenLogprob | null> | null): unknown[] => {
    if (echoed) return [];
    echoed = true;
    return Array.from({ length: n }, (_, i) => {
      const lp = logprobs === undefined ? null : promptLogprobs ? builders[i]!.prompt(backend, promptIds, promptLogprobs) : (builders[i]!.skip(parsed.promptText), null);
      return chunk([{ text: parsed.promptText, index: i, logprobs: lp, finish_reason: null }]);
    });
  };
  const promptScored = echo && logprobs !== undefined;
  return {
    begin: () => (echo && !promptScored ? echoChunks(null) : []),
    ...(promptScored ? { promptLogprobs: (p: Array<TokenLogprob | null>) => echoChunks(p) } : {}),
    token: (e) => [
      ...echoChunks(null), // a backend that did not call onPromptLogprobs: the prompt still comes first, unscored
      chunk([{ text: e.tokens.map((t) => t.text).join(''), index: e.choice, logprobs: logprobs === undefined ? null : builders[e.choice]!.tokens(e.tokens), finish_reason: null }]),
    ],
    end: (result, usage) => [
      ...echoChunks(result.promptLogprobs), // max_tokens 0 with a backend that did not call onPromptLogprobs
      ...result.choices.map((c) => chunk([{ text: '', index: c.index, logprobs: null, finish_reason: c.finishReason }])),
      ...(parsed.includeUsage ? [{ ...chunk([]), usage }] : []),
    ],
  };
}
