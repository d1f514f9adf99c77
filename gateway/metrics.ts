/**
 * Prometheus metrics of the gateway (GET /metrics). One registry per gateway, so tests can run several in one
 * process. `model` is a served model's name or "unknown" (never the client's raw string: that would let clients
 * create unbounded label values); `status` is the HTTP status, 499 when the client went away first.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface GatewayMetrics {
  registry: Registry;
  requestSeconds: Histogram<'model' | 'status'>;
  inFlight: Gauge<'model'>;
  promptTokens: Counter<'model'>;
  generatedTokens: Counter<'model'>;
  clientAborts: Counter<'model'>;
  batchSize: Histogram<'model'>;
  rateLimited: Counter;
  deploymentExposures: Counter<'deployment' | 'version'>;
}

export function createGatewayMetrics(): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'meshtrain_gateway_' });
  return {
    registry,
    requestSeconds: new Histogram({
      name: 'meshtrain_gateway_request_duration_seconds',
      help: 'Wall time of a /v1/completions request from arrival to the last byte (streams: until [DONE]), by model and HTTP status.',
      labelNames: ['model', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: [registry],
    }),
    inFlight: new Gauge({ name: 'meshtrain_gateway_requests_in_flight', help: 'Completion requests being generated now, by model.', labelNames: ['model'], registers: [registry] }),
    promptTokens: new Counter({ name: 'meshtrain_gateway_prompt_tokens_total', help: 'Prompt tokens of completed requests, by model.', labelNames: ['model'], registers: [registry] }),
    generatedTokens: new Counter({
      name: 'meshtrain_gateway_generated_tokens_total',
      help: 'Tokens sampled for completed requests (all choices), by model.',
      labelNames: ['model'],
      registers: [registry],
    }),
    clientAborts: new Counter({
      name: 'meshtrain_gateway_client_aborts_total',
      help: 'Requests whose client disconnected before the answer was complete; their generation was stopped.',
      labelNames: ['model'],
      registers: [registry],
    }),
    // No label: the limit is per client and clients are keys, which must never reach metrics; refused before the
    // body is read, so there is no model to name either.
    rateLimited: new Counter({
      name: 'meshtrain_gateway_rate_limited_total',
      help: 'Requests refused with 429 because their client (API key, or IP without keys) was over --rate-limit.',
      registers: [registry],
    }),
    // Labels are admin-configured deployment names and their `model@vN` arms, never client strings.
    deploymentExposures: new Counter({
      name: 'meshtrain_gateway_deployment_exposures_total',
      help: 'Requests a deployment routed to each of its versions (primary and A/B arms), counted when generation starts.',
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: 'meshtrain_gateway_batch_size',
      help: 'Sequences (request choices) in each decode forward pass of a batching backend, one observation per generation step, by model.',
      labelNames: ['model'],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers: [registry],
    }),
  };
}
