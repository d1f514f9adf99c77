/**
 * The generation routes, POST /v1/completions and POST /v1/chat/completions (server.ts registers them behind its
 * access hook, rate limit and error handler): a deployment is routed, the request parsed (for chat: rendered with
 * the version's chat template), the prompt limit checked, then generated, answered whole or streamed as server-sent
 * events, and measured. A client that disconnects stops its generation (the backend's AbortSignal fires).
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Logger } from '../common/log.ts';
import type { DeploymentManager } from './deployments.ts';
import { errorReply, GatewayError } from './errors.ts';
import type { GenerateResult, InferenceBackend } from './inference-backend.ts';
import type { GatewayMetrics } from './metrics.ts';
import { completionResponse, completionStream, encodeJson, parseCompletionRequest, usageOf, type ParsedCompletion, type StreamEncoder, type Usage } from './openai.ts';
import { chatResponse, chatStream, parseChatRequest, type ParsedChat } from './openai-chat.ts';
import { annotateRequest, inRequestContext } from './tracing.ts';

/** Response header carrying the sampling seed used, so any completion can be reproduced (pass it as `seed`). */
const SEED_HEADER = 'x-meshtrain-seed';

/** Response header naming the deployment version (`model@vN`) that served a request to a deployment. */
const VERSION_HEADER = 'x-meshtrain-version';

/** What the generation routes need from the gateway. */
export interface GenerationContext {
  backends: ReadonlyMap<string, InferenceBackend>;
  deployments: DeploymentManager;
  metrics: GatewayMetrics;
  log: Logger;
  maxPromptTokens: number | undefined;
  /** The gateway's limit on a request's time (--request-timeout-ms); undefined for none. */
  requestTimeoutMs?: number | undefined;
}

/** Request header asking for a shorter timeout than the gateway's, in ms (an integer ≥ 1). */
export const TIMEOUT_HEADER = 'x-meshtrain-timeout-ms';
/** The longest timeout a request or the gateway may set: a day (and below setTimeout's 2³¹ − 1 ms limit). */
export const MAX_TIMEOUT_MS = 24 * 3600 * 1000;

/** The timeout a request runs under: the shorter of its header's and the gateway's, or undefined for none. */
export function requestTimeout(header: string | string[] | undefined, gatewayMs: number | undefined): number | undefined {
  if (header === undefined) return gatewayMs;
  const raw = Array.isArray(header) ? header[0]! : header;
  const ms = /^\d{1,9}$/.test(raw.trim()) ? Number(raw.trim()) : NaN;
  if (!(ms >= 1 && ms <= MAX_TIMEOUT_MS)) {
    throw new GatewayError('GW_ERR_BAD_REQUEST', `The ${TIMEOUT_HEADER} header must be a whole number of milliseconds from 1 to ${MAX_TIMEOUT_MS}, got ${JSON.stringify(raw.slice(0, 40))}.`);
  }
  return gatewayMs === undefined ? ms : Math.min(ms, gatewayMs);
}

export function generationRoutes(app: FastifyInstance, { backends, deployments, metrics, log, maxPromptTokens, requestTimeoutMs }: GenerationContext): void {
  /**
   * One handler for both generation routes: a deployment is routed, the request parsed (for chat: rendered with the
   * version's chat template), the prompt limit checked, then generated, answered whole or streamed, and measured.
   */
  const serve = <P extends ParsedCompletion>(route: GenerationRoute<P>) => inRequestContext(async (req, reply) => {
    const started = performance.now();
    const { model: named, user } = (req.body ?? {}) as { model?: unknown; user?: unknown };
    // A deployment is routed here, once: the request stays on this version whatever switches happen meanwhile.
    const routed = typeof named === 'string' && !backends.has(named)
      ? deployments.route(named, (header) => {
        const value = req.headers[header];
        const key = Array.isArray(value) ? value[0] : value;
        return key || (typeof user === 'string' ? user : undefined);
      })
      : undefined;
    let model = typeof named === 'string' && (backends.has(named) || routed) ? named : 'unknown';
    let status = 200;
    try {
      const { parsed, backend } = route.parse(req.body, (name) => (routed ? routed.backend : backends.get(name)));
      if (routed) {
        metrics.deploymentExposures.inc({ deployment: model, version: routed.version });
        reply.header(VERSION_HEADER, routed.version);
      } else model = backend.info.id;
      const promptTokens = parsed.generate.promptIds.length;
      if (maxPromptTokens !== undefined && promptTokens > maxPromptTokens) {
        throw new GatewayError('GW_ERR_PROMPT_TOO_LONG', `The prompt is ${promptTokens} tokens; this server accepts at most ${maxPromptTokens} prompt tokens (--max-prompt-tokens).`, { param: route.promptParam });
      }
      const timeoutMs = requestTimeout(req.headers[TIMEOUT_HEADER], requestTimeoutMs);
      // A full queue refuses now (503 and Retry-After), before a stream's headers go out.
      const refused = backend.refusal?.(parsed.generate);
      if (refused) throw refused;
      metrics.inFlight.inc({ model });
      try {
        // The client going away (socket closed before the answer ended) stops generation, as does the timeout.
        const abort = new AbortController();
        const onClose = () => {
          if (!reply.raw.writableFinished) abort.abort(new ClientGone());
        };
        reply.raw.on('close', onClose);
        const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
          abort.abort(new GatewayError('GW_ERR_TIMEOUT', `The request did not finish within its timeout of ${timeoutMs} ms; its generation was stopped.`));
        }, Math.max(0, timeoutMs - (performance.now() - started)));
        try {
          const head = { id: `${route.idPrefix}-${randomBytes(12).toString('hex')}`, created: Math.floor(Date.now() / 1000) };
          // The seed actually used (chosen here when the request had none): with it the same request replays exactly.
          reply.header(SEED_HEADER, String(parsed.generate.seed));
          log.debug(`${head.id} ${model}: ${parsed.generate.promptIds.length} prompt tokens, max_tokens ${parsed.generate.maxTokens}, n ${parsed.generate.n}, seed ${parsed.generate.seed}${parsed.stream ? ', stream' : ''}`);
          if (parsed.stream) {
            status = await stream(reply, route.stream(head, parsed, backend), parsed, backend, abort.signal, log, metrics, model, { route: route.path, headers: routed ? { [VERSION_HEADER]: routed.version } : {} });
            return;
          }
          const result = await backend.generate(parsed.generate, { signal: abort.signal });
          const body = route.respond(head, parsed, backend, result);
          countTokens(metrics, model, body);
          return reply.type('application/json; charset=utf-8').send(encodeJson(body));
        } finally {
          clearTimeout(timer);
          reply.raw.off('close', onClose);
        }
      } finally {
        metrics.inFlight.dec({ model });
      }
    } catch (err) {
      if (err instanceof ClientGone) {
        status = 499;
        metrics.clientAborts.inc({ model });
        log.debug(`POST ${route.path} (${model}): client went away; generation stopped`);
        if (!reply.sent) reply.hijack(); // nothing to send to
        return reply;
      }
      status = errorReply(err as Error).status;
      throw err;
    } finally {
      const seconds = (performance.now() - started) / 1000;
      metrics.requestSeconds.observe({ model, status: String(status), route: route.path }, seconds);
      if (routed) metrics.deploymentSeconds.observe({ deployment: model, version: routed.version, status: String(status), route: route.path }, seconds);
      annotateRequest({ 'gen_ai.operation.name': route.operation, 'gen_ai.request.model': model, ...(routed ? { 'meshtrain.deployment': model, 'meshtrain.version': routed.version } : {}) });
    }
  });
  app.post('/v1/completions', serve(COMPLETIONS));
  app.post('/v1/chat/completions', serve(CHAT_COMPLETIONS));
}

/** What differs between the generation routes: parsing, the whole response, and the stream's chunks. */
interface GenerationRoute<P extends ParsedCompletion> {
  path: string;
  /** OpenTelemetry's gen_ai.operation.name. */
  operation: 'text_completion' | 'chat';
  /** Response ids are `<idPrefix>-<hex>`, as OpenAI's. */
  idPrefix: string;
  /** The request parameter a too-long prompt is blamed on. */
  promptParam: string;
  parse(body: unknown, backendFor: (model: string) => InferenceBackend | undefined): { parsed: P; backend: InferenceBackend };
  respond(head: { id: string; created: number }, parsed: P, backend: InferenceBackend, result: GenerateResult): { usage?: Usage | null };
  stream(head: { id: string; created: number }, parsed: P, backend: InferenceBackend): StreamEncoder;
}

const COMPLETIONS: GenerationRoute<ParsedCompletion> = {
  path: '/v1/completions',
  operation: 'text_completion',
  idPrefix: 'cmpl',
  promptParam: 'prompt',
  parse: parseCompletionRequest,
  respond: completionResponse,
  stream: completionStream,
};

const CHAT_COMPLETIONS: GenerationRoute<ParsedChat> = {
  path: '/v1/chat/completions',
  operation: 'chat',
  idPrefix: 'chatcmpl',
  promptParam: 'messages',
  parse: parseChatRequest,
  respond: chatResponse,
  stream: chatStream,
};

/** The reason an aborted generation rejects with when its client disconnected. */
class ClientGone extends Error {
  constructor() {
    super('the client closed the connection');
  }
}

function countTokens(metrics: GatewayMetrics, model: string, body: { usage?: Usage | null }): void {
  metrics.promptTokens.inc({ model }, body.usage?.prompt_tokens ?? 0);
  metrics.generatedTokens.inc({ model }, body.usage?.completion_tokens ?? 0);
  annotateRequest({ 'gen_ai.usage.input_tokens': body.usage?.prompt_tokens ?? 0, 'gen_ai.usage.output_tokens': body.usage?.completion_tokens ?? 0 });
}

/**
 * Streams a response as server-sent events: the encoder's chunks as `data: {chunk}` when they are due, then
 * `data: [DONE]`. Returns the status to record. Errors after the headers went out become an error event.
 */
async function stream(
  reply: FastifyReply,
  encoder: StreamEncoder,
  parsed: ParsedCompletion,
  backend: InferenceBackend,
  signal: AbortSignal,
  log: Logger,
  metrics: GatewayMetrics,
  model: string,
  opts: { route: string; headers: Record<string, string> },
): Promise<number> {
  reply.hijack();
  const res: ServerResponse = reply.raw;
  res.writeHead(200, { ...opts.headers, [SEED_HEADER]: String(parsed.generate.seed), 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  const send = (data: unknown) => {
    if (!res.destroyed) res.write(`data: ${typeof data === 'string' ? data : encodeJson(data)}\n\n`);
  };
  const sendAll = (chunks: unknown[]) => chunks.forEach(send);
  try {
    sendAll(encoder.begin());
    const { promptLogprobs } = encoder;
    const result = await backend.generate(parsed.generate, {
      signal,
      onPromptLogprobs: promptLogprobs ? (p) => sendAll(promptLogprobs(p)) : undefined,
      onToken: (e) => sendAll(encoder.token(e)),
    });
    const usage = usageOf(parsed, result);
    sendAll(encoder.end(result, usage));
    countTokens(metrics, model, { usage });
    send('[DONE]');
    return 200;
  } catch (err) {
    if (err instanceof ClientGone) throw err;
    const { status, body } = errorReply(err as Error);
    if (status >= 500) log.error(`POST ${opts.route} (stream, ${parsed.model}): ${(err as Error).stack ?? String(err)}`);
    send(body);
    send('[DONE]');
    return status;
  } finally {
    res.end();
  }
}
