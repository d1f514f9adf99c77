/**
 * Errors the gateway raises. Each has a stable code (to be documented in README.md § Error codes like the other
 * packages'), the HTTP status it maps to, and the `type` and `code` of the OpenAI-shaped error body clients see:
 * `{"error": {"message", "type", "param", "code"}}`. OpenAI clients branch on `type` and `code`, so those follow
 * OpenAI's own values where one exists.
 */
import { defineErrors } from '../protocol/define-errors.ts';
import type { FastifyError } from 'fastify';

export class GatewayError extends defineErrors('GW_ERR_', {
  /** The request body or a parameter is invalid (missing prompt, value out of range, unknown field); `param` names it. */
  GW_ERR_BAD_REQUEST: { status: 400, type: 'invalid_request_error', openaiCode: null },
  /** The prompt, or the prompt plus max_tokens, does not fit in the model's context; the message gives the numbers. */
  GW_ERR_CONTEXT_LENGTH: { status: 400, type: 'invalid_request_error', openaiCode: 'context_length_exceeded' },
  /** The prompt has more tokens than the gateway's --max-prompt-tokens (below the model's context); the message gives both. */
  GW_ERR_PROMPT_TOO_LONG: { status: 400, type: 'invalid_request_error', openaiCode: 'context_length_exceeded' },
  /** A parameter this gateway does not implement (e.g. presence_penalty) was set to a non-default value. */
  GW_ERR_UNSUPPORTED: { status: 400, type: 'invalid_request_error', openaiCode: 'unsupported_parameter' },
  /** An API key is configured and the request has none or a wrong one (Authorization: Bearer <key>). */
  GW_ERR_UNAUTHORIZED: { status: 401, type: 'invalid_request_error', openaiCode: 'invalid_api_key' },
  /** An admin route was called with an API key: it is valid for /v1 routes only. */
  GW_ERR_FORBIDDEN: { status: 403, type: 'invalid_request_error', openaiCode: 'insufficient_permissions' },
  /** An admin route was called but no admin key is configured: admin routes are closed, never open. */
  GW_ERR_ADMIN_DISABLED: { status: 403, type: 'invalid_request_error', openaiCode: 'admin_disabled' },
  /**
   * A chat request for a model with no chat template: not trained here with SFT or DPO, and no chat_template in its
   * tokenizer_config.json. The message says what to do instead (as OpenAI's "not a chat model" error: code null).
   */
  GW_ERR_NO_CHAT_TEMPLATE: { status: 400, type: 'invalid_request_error', openaiCode: null },
  /** The requested model is not served by this gateway. */
  GW_ERR_MODEL_NOT_FOUND: { status: 404, type: 'invalid_request_error', openaiCode: 'model_not_found' },
  /** No such route. */
  GW_ERR_NOT_FOUND: { status: 404, type: 'invalid_request_error', openaiCode: 'not_found' },
  /** The request body is larger than the gateway's body limit. */
  GW_ERR_PAYLOAD_TOO_LARGE: { status: 413, type: 'invalid_request_error', openaiCode: 'payload_too_large' },
  /** The client (API key, or IP without keys) is over its rate limit; `Retry-After` says when to try again. As OpenAI. */
  GW_ERR_RATE_LIMITED: { status: 429, type: 'requests', openaiCode: 'rate_limit_exceeded' },
  /** Something failed inside the gateway or the model backend; the client sees a generic message, the log the detail. */
  GW_ERR_INTERNAL: { status: 500, type: 'server_error', openaiCode: null },
  /** The model's queue is full (--max-queue sequences waiting): refused at once instead of waiting; `Retry-After` says when the queue should have room. */
  GW_ERR_OVERLOADED: { status: 503, type: 'server_error', openaiCode: 'overloaded' },
  /** The request's timeout (the x-meshtrain-timeout-ms header, or --request-timeout-ms) passed before it finished; its generation was stopped. */
  GW_ERR_TIMEOUT: { status: 504, type: 'server_error', openaiCode: 'timeout' },
  /** The gateway is draining for shutdown: it finishes running requests and takes no new ones (retry elsewhere). */
  GW_ERR_SHUTTING_DOWN: { status: 503, type: 'server_error', openaiCode: 'server_shutting_down' },
  /** The model registry (folder or coordinator API) is unreachable, malformed, or lacks the model or version asked for. */
  GW_ERR_REGISTRY: { status: 502, type: 'server_error', openaiCode: null },
  /** A model file does not match the sha256 or size its manifest records; it is refused, never served. */
  GW_ERR_CHECKSUM: { status: 502, type: 'server_error', openaiCode: null },
  /** No backend factory can turn a registry model into an InferenceBackend (the real model backend is not wired in). */
  GW_ERR_NO_BACKEND: { status: 500, type: 'server_error', openaiCode: null },
  /** A deployment PUT (or start-up file entry) is invalid, or one of its versions does not exist or fails to load. */
  GW_ERR_BAD_DEPLOYMENT: { status: 400, type: 'invalid_request_error', openaiCode: null },
  /** No deployment has this name (admin deployment routes). */
  GW_ERR_DEPLOYMENT_NOT_FOUND: { status: 404, type: 'invalid_request_error', openaiCode: 'not_found' },
  /** A rollback was asked for but the deployment has had only one primary: there is nothing to go back to. */
  GW_ERR_NO_ROLLBACK: { status: 409, type: 'invalid_request_error', openaiCode: null },
  /** `gateway deploy` / `gateway rollback`: the gateway was unreachable or refused the change; the message has its answer. */
  GW_ERR_ADMIN_CALL: { status: 502, type: 'server_error', openaiCode: null },
  /** A command-line option is missing or invalid. */
  GW_ERR_BAD_ARGS: { status: 400, type: 'invalid_request_error', openaiCode: null },
}) {
  declare readonly statusCode: number;
  /** The request parameter at fault (OpenAI's `param`), when there is one. */
  readonly param: string | null;
  /** Seconds the client should wait before retrying (the Retry-After header), for refusals that pass. */
  readonly retryAfterS: number | undefined;

  constructor(code: GatewayErrorCode, message: string, options?: { cause?: unknown; param?: string; retryAfterS?: number }) {
    super(code, message, options);
    this.param = options?.param ?? null;
    this.retryAfterS = options?.retryAfterS;
  }

  /** The OpenAI-shaped body for this error. Server-side errors never leak their message (but PUBLIC_MESSAGES). */
  toBody(): OpenAIErrorBody {
    const def = GatewayError.codes[this.code];
    const message = this.statusCode >= 500 && !PUBLIC_MESSAGES.has(this.code) ? 'The server had an error while processing your request. Retry, or contact the operator if it persists.' : this.message;
    return { error: { message, type: def.type, param: this.param, code: def.openaiCode } };
  }
}

export type GatewayErrorCode = GatewayError['code'];

/** Server-side codes whose message is safe and useful to show clients (others may hold paths or internals). */
const PUBLIC_MESSAGES: ReadonlySet<GatewayErrorCode> = new Set(['GW_ERR_SHUTTING_DOWN', 'GW_ERR_OVERLOADED', 'GW_ERR_TIMEOUT']);

/** The body of every error response, exactly OpenAI's shape. */
export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** Any error → OpenAI's body and a status. Fastify's own 4xx (bad JSON, body too large) keep their status. */
export function errorReply(err: Error, bodyLimit?: number): { status: number; body: OpenAIErrorBody } {
  if (err instanceof GatewayError) return { status: err.statusCode, body: err.toBody() };
  const fe = err as FastifyError;
  if (fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    const gw = new GatewayError('GW_ERR_PAYLOAD_TOO_LARGE', `The request body is too large${bodyLimit ? `: the limit is ${bodyLimit} bytes` : ''}.`);
    return { status: gw.statusCode, body: gw.toBody() };
  }
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return { status: fe.statusCode, body: { error: { message: fe.message, type: 'invalid_request_error', param: null, code: null } } };
  }
  return { status: 500, body: new GatewayError('GW_ERR_INTERNAL', 'internal error').toBody() };
}
