/**
 * OpenAI's Chat Completions API (`POST /v1/chat/completions`): the request schema (TypeBox), its parsing into a
 * backend `GenerateRequest` through the model's chat template (chat-templates.ts), and the response and SSE chunk
 * shapes. The same rules as the completions API (openai.ts): unknown fields are refused ("Unrecognized request
 * argument supplied"), known ones we do not implement only at their defaults, errors in OpenAI's body.
 *
 * The prompt is the conversation rendered by the template, ending where the assistant's reply begins; generation
 * stops at the template's end-of-turn tokens (never part of the reply), a stop sequence or max_tokens. Without
 * max_tokens a reply may use the rest of the context, as OpenAI's chat models may.
 */
import { Type, type TSchema } from '@sinclair/typebox';
import { CHAT_ROLES, type ChatMessage, type ChatRole } from '../model/chat-template.ts';
import { GatewayError } from './errors.ts';
import type { GenerateResult, GeneratedToken, InferenceBackend, TokenLogprob } from './inference-backend.ts';
import { backendOf, checkFields, completionBudget, MAX_LOGPROBS, samplingOf, SHARED_FIELDS, usageOf, type ParsedCompletion, type StreamEncoder, type Usage } from './openai.ts';

const nullable = <T extends TSchema>(schema: T, description: string) => Type.Union([schema, Type.Null()], { description });

export const ChatCompletionRequest = Type.Object(
  {
    ...SHARED_FIELDS,
    // Checked message by message in parseMessages, for messages that name the message and field at fault.
    messages: Type.Array(Type.Unknown(), { minItems: 1, description: 'a non-empty array of messages {role, content}' }),
    max_tokens: Type.Optional(nullable(Type.Integer({ minimum: 1 }), 'an integer ≥ 1')),
    max_completion_tokens: Type.Optional(nullable(Type.Integer({ minimum: 1 }), 'an integer ≥ 1')),
    logprobs: Type.Optional(nullable(Type.Boolean(), 'a boolean')),
    top_logprobs: Type.Optional(nullable(Type.Integer({ minimum: 0, maximum: MAX_LOGPROBS }), `an integer between 0 and ${MAX_LOGPROBS}`)),
    response_format: Type.Optional(nullable(Type.Object({ type: Type.String() }, { additionalProperties: true }), 'an object {"type": "text"}')),
  },
  { additionalProperties: false },
);

/** Known parameters this gateway does not implement, and when a value means "not used" (then it is accepted). */
const UNSUPPORTED: Record<string, (value: unknown) => boolean> = {
  presence_penalty: (v) => v === 0,
  frequency_penalty: (v) => v === 0,
  logit_bias: (v) => Object.keys(v as object).length === 0,
  response_format: (v) => (v as { type: string }).type === 'text' && Object.keys(v as object).length === 1,
};

/** A validated chat request: a completion request (the templated prompt) and whether logprobs come in chat's shape. */
export interface ParsedChat extends ParsedCompletion {
  /** `logprobs: true`: each reply token with its log-probability and `top_logprobs` alternatives. */
  logprobs: boolean;
}

/**
 * Checks `body` and renders its messages with the chat template of the model `backendFor` names; throws a
 * GatewayError naming the parameter at fault. Order as OpenAI: shape first, then the model, then what depends on it.
 */
export function parseChatRequest(body: unknown, backendFor: (model: string) => InferenceBackend | undefined): { parsed: ParsedChat; backend: InferenceBackend } {
  const req = checkFields(body, ChatCompletionRequest, UNSUPPORTED);
  const messages = parseMessages(req.messages);
  if (req.top_logprobs != null && req.logprobs !== true) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.", { param: 'top_logprobs' });
  }
  if (req.max_tokens != null && req.max_completion_tokens != null && req.max_tokens !== req.max_completion_tokens) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', `'max_tokens' (${req.max_tokens}) and 'max_completion_tokens' (${req.max_completion_tokens}) disagree; send one of them.`, { param: 'max_completion_tokens' });
  }

  const backend = backendOf(req.model, backendFor);
  const template = backend.chat;
  if (!template) {
    throw new GatewayError('GW_ERR_NO_CHAT_TEMPLATE', `The model '${req.model}' has no chat template, so it is not supported in the v1/chat/completions endpoint. Use v1/completions with a prompt you format yourself.`, { param: 'model' });
  }
  const { contextLength, vocabSize } = backend.info;
  const promptIds = template.render(messages);
  if (promptIds.length === 0) throw new GatewayError('GW_ERR_BAD_REQUEST', "The model's chat template rendered these messages as an empty prompt.", { param: 'messages' });
  const badId = promptIds.find((id) => id >= vocabSize);
  if (badId !== undefined) throw new GatewayError('GW_ERR_BAD_REQUEST', `The chat template produced token id ${badId}, outside the model's vocabulary of ${vocabSize} tokens.`, { param: 'messages' });
  const maxParam = req.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = completionBudget(promptIds.length, req.max_completion_tokens ?? req.max_tokens ?? undefined, contextLength, maxParam);
  const stop = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  const logprobs = req.logprobs ?? false;
  return {
    backend,
    parsed: {
      model: req.model,
      promptText: '',
      stream: req.stream ?? false,
      includeUsage: req.stream_options?.include_usage ?? false,
      logprobs,
      generate: {
        promptIds,
        maxTokens,
        ...samplingOf(req),
        stop,
        logprobs: logprobs ? (req.top_logprobs ?? 0) : undefined,
        echo: false,
        stopTokenIds: template.endOfTurn,
      },
    },
  };
}

/** Roles a request may use, and the content parts we read (text only). */
const ROLES: readonly string[] = CHAT_ROLES;

/** `messages` → the template's messages: each {role, content}, content a string or text parts (joined with '\n', as vLLM). */
export function parseMessages(raw: readonly unknown[]): ChatMessage[] {
  return raw.map((m, i): ChatMessage => {
    const at = `messages[${i}]`;
    const bad = (message: string) => new GatewayError('GW_ERR_BAD_REQUEST', message, { param: at });
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(`Invalid value for '${at}': expected an object {role, content}.`);
    const { role, content, ...rest } = m as Record<string, unknown>;
    if (!ROLES.includes(role as string)) {
      throw bad(`Invalid value for '${at}.role': expected one of ${ROLES.join(', ')}, got ${JSON.stringify(role)?.slice(0, 40)}; tool and function messages are not supported here.`);
    }
    const extra = Object.keys(rest)[0];
    if (extra !== undefined) throw new GatewayError('GW_ERR_UNSUPPORTED', `'${at}.${extra.slice(0, 40)}' is not supported by this server: messages have a role and a content only.`, { param: at });
    return { role: role as ChatRole, content: messageText(content, at) };
  });
}

function messageText(content: unknown, at: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content) || content.length === 0) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', `Invalid value for '${at}.content': expected a string or a non-empty array of text parts {"type": "text", "text": …}.`, { param: at });
  }
  return content.map((part, j) => {
    const p = part as { type?: unknown; text?: unknown } | null;
    if (p?.type !== 'text') {
      throw new GatewayError('GW_ERR_UNSUPPORTED', `'${at}.content[${j}]' is a ${JSON.stringify(p?.type)?.slice(0, 40)} part; this server reads text parts only.`, { param: at });
    }
    if (typeof p.text !== 'string' || Object.keys(p).length !== 2) {
      throw new GatewayError('GW_ERR_BAD_REQUEST', `Invalid value for '${at}.content[${j}]': expected {"type": "text", "text": string}.`, { param: at });
    }
    return p.text;
  }).join('\n');
}

// ---- responses ----------------------------------------------------------------------------------------------

/** One alternative in chat logprobs: the token, its log-probability and its bytes (UTF-8 of a whole token). */
export interface ChatTopLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
}

export interface ChatTokenLogprob extends ChatTopLogprob {
  /** The `top_logprobs` most likely tokens at this position, most likely first. */
  top_logprobs: ChatTopLogprob[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[];
}

export interface ChatChoice {
  index: number;
  message: { role: 'assistant'; content: string; refusal: null };
  logprobs: ChatLogprobs | null;
  finish_reason: 'stop' | 'length';
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: ChatChoice[];
  usage: Usage;
}

export interface ChatChunkChoice {
  index: number;
  /** The first chunk of a choice carries the role; the ones after it the text; the last is empty. */
  delta: { role?: 'assistant'; content?: string };
  logprobs: ChatLogprobs | null;
  finish_reason: 'stop' | 'length' | null;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: ChatChunkChoice[];
  /** With stream_options.include_usage: null on every chunk but the last, which has no choices. */
  usage?: Usage | null;
}

const bytesOf = (t: { token: string; bytes?: number[] }) => t.bytes ?? Array.from(Buffer.from(t.token, 'utf8'));

/** One token in chat's shape: exactly `k` alternatives (the completions API adds the chosen token; chat does not). */
function chatLogprob(lp: TokenLogprob, k: number): ChatTokenLogprob {
  let top = lp.top;
  if (top.length > k) {
    // The chosen token was added because it is not among the k most likely: take it out again.
    const at = top.findLastIndex((t) => t.token === lp.token && t.logprob === lp.logprob);
    top = top.filter((_, i) => i !== (at >= 0 ? at : top.length - 1));
  }
  return { token: lp.token, logprob: lp.logprob, bytes: bytesOf(lp), top_logprobs: top.slice(0, k).map((t) => ({ token: t.token, logprob: t.logprob, bytes: bytesOf(t) })) };
}

function logprobsOf(tokens: readonly GeneratedToken[], parsed: ParsedChat): ChatLogprobs | null {
  if (!parsed.logprobs) return null;
  const k = parsed.generate.logprobs ?? 0;
  return { content: tokens.flatMap((t) => (t.logprob ? [chatLogprob(t.logprob, k)] : [])) };
}

/** The whole (non-streamed) response. */
export function chatResponse(head: { id: string; created: number }, parsed: ParsedChat, _backend: InferenceBackend, result: GenerateResult): ChatCompletion {
  const choices = result.choices.map((c): ChatChoice => ({
    index: c.index,
    message: { role: 'assistant', content: c.text, refusal: null },
    logprobs: logprobsOf(c.tokens, parsed),
    finish_reason: c.finishReason,
  }));
  return { id: head.id, object: 'chat.completion', created: head.created, model: parsed.model, choices, usage: usageOf(parsed, result) };
}

/**
 * Chat as server-sent events, as OpenAI streams it: per choice a first chunk with `delta: {role: "assistant",
 * content: ""}`, then one chunk per released batch of tokens (`delta: {content}`, with logprobs when asked), then
 * one with `delta: {}` and the finish_reason; with include_usage every chunk has `usage: null` and a last chunk
 * with no choices carries the usage.
 */
export function chatStream(head: { id: string; created: number }, parsed: ParsedChat): StreamEncoder {
  const chunk = (choice: ChatChunkChoice | null): ChatCompletionChunk => ({
    id: head.id,
    object: 'chat.completion.chunk',
    created: head.created,
    model: parsed.model,
    choices: choice ? [choice] : [],
    ...(parsed.includeUsage ? { usage: null } : {}),
  });
  return {
    begin: () => Array.from({ length: parsed.generate.n }, (_, index) => chunk({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null })),
    token: (e) => [chunk({ index: e.choice, delta: { content: e.tokens.map((t) => t.text).join('') }, logprobs: logprobsOf(e.tokens, parsed), finish_reason: null })],
    end: (result, usage) => [
      ...result.choices.map((c) => chunk({ index: c.index, delta: {}, logprobs: null, finish_reason: c.finishReason })),
      ...(parsed.includeUsage ? [{ ...chunk(null), usage }] : []),
    ],
  };
}
