/**
 * The gateway's spans (common/tracing.ts switches tracing on; while it is off these are the API's no-ops):
 *
 * - a SERVER span per HTTP request, named by route (`POST /v1/completions`), a child of the caller's span when the
 *   request carries a W3C `traceparent` header, ended when the response is over (streams included);
 * - a `shadow.mirror` span per mirrored request a shadow version runs (shadow.ts), in a trace of its own — it runs
 *   later, in the background, often long after the request's trace ended — with a link to the request's span.
 *
 * Nothing here waits: spans are handed to the SDK's batch processor, which exports them off the request path.
 */
import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type SpanContext, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ComparisonResult } from './comparison.ts';
import { TRACER_NAME } from '../common/tracing.ts';

/** What inMirrorSpan reads of shadow.ts's MirrorJob (a structural type, so this module imports nothing of shadow.ts). */
interface MirroredRequest {
  requestSpan?: SpanContext | undefined;
  offeredMs: number;
  primary: { choices: readonly unknown[] };
}

const tracer = (): Tracer => trace.getTracer(TRACER_NAME);

/** W3C trace context whatever OTEL_PROPAGATORS says: callers join with the header every tracer speaks. */
const propagator = new W3CTraceContextPropagator();

/** Each request's context (its span in it), from onRequest until the request is gone. */
const requests = new WeakMap<FastifyRequest, Context>();

/**
 * Adds the onRequest hook that starts each request's SERVER span. Register it before any hook that may answer
 * early (access, rate limit), so refused requests get their span too.
 */
export function traceRequests(app: FastifyInstance): void {
  app.addHook('onRequest', (req, reply, done) => {
    const route = req.routeOptions.url;
    const parent = propagator.extract(ROOT_CONTEXT, req.headers, { get: (h, key) => h[key], keys: (h) => Object.keys(h) });
    const span = tracer().startSpan(route ? `${req.method} ${route}` : req.method, {
      kind: SpanKind.SERVER,
      attributes: { 'http.request.method': req.method, 'url.path': req.url.split('?')[0], ...(route ? { 'http.route': route } : {}), 'client.address': req.ip },
    }, parent);
    requests.set(req, trace.setSpan(parent, span));
    // 'close' comes for every response: sent, streamed after hijack(), or cut by the client going away.
    reply.raw.once('close', () => {
      const status = reply.raw.statusCode;
      span.setAttribute('http.response.status_code', status);
      if (!reply.raw.writableFinished) span.setAttribute('meshtrain.client_aborted', true);
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR }).setAttribute('error.type', String(status));
      span.end();
    });
    done();
  });
}

/** Wraps a route handler so that it runs in its request's span context (shadow mirrors find the span there). */
export function inRequestContext<Req extends FastifyRequest, Rep extends FastifyReply, R>(handler: (req: Req, reply: Rep) => R): (req: Req, reply: Rep) => R {
  return (req, reply) => context.with(requests.get(req) ?? context.active(), () => handler(req, reply));
}

/** Adds attributes to the current request's span (a no-op outside one, or while tracing is off). */
export function annotateRequest(attrs: Attributes): void {
  trace.getActiveSpan()?.setAttributes(attrs);
}

/** The span context active now (the request's, inside a handler), to link a later span to; undefined outside any. */
export function activeSpanContext(): SpanContext | undefined {
  const ctx = trace.getSpanContext(context.active());
  return ctx && trace.isSpanContextValid(ctx) ? ctx : undefined;
}

/**
 * Runs one mirror of `version` in a `shadow.mirror` span: a new trace (a root, whatever context the queue happened
 * to run it in), linked to the request span it mirrors; `run` executes inside it.
 */
export function inMirrorSpan<T>(version: string, job: MirroredRequest, run: () => Promise<T>): Promise<T> {
  const span = tracer().startSpan('shadow.mirror', {
    root: true,
    kind: SpanKind.INTERNAL,
    links: job.requestSpan ? [{ context: job.requestSpan }] : [],
    attributes: { 'meshtrain.shadow.version': version, 'meshtrain.shadow.queue_ms': performance.now() - job.offeredMs, 'meshtrain.shadow.choices': job.primary.choices.length },
  }, ROOT_CONTEXT);
  return context.with(trace.setSpan(ROOT_CONTEXT, span), run).finally(() => span.end());
}

/** The comparison of a mirror with its primary, on the mirror's span. */
export function annotateComparison(result: ComparisonResult): void {
  const span = trace.getActiveSpan();
  if (!span) return;
  span.setAttributes({
    'meshtrain.shadow.identical': result.identical,
    'meshtrain.shadow.token_agreement': result.tokenAgreement,
    'meshtrain.shadow.latency_diff_ms': result.latencyDiffMs,
    ...(result.meanLogprobDiff !== null ? { 'meshtrain.shadow.logprob_diff': result.meanLogprobDiff } : {}),
  });
  if (result.error) span.setStatus({ code: SpanStatusCode.ERROR, message: 'the shadow failed' });
}
