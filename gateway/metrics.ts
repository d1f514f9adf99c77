/**
 * Prometheus metrics of the gateway (GET /metrics). One registry per gateway, so tests can run several in one
 * process. `model` is a served model's name or "unknown" (never the client's raw string: that would let clients
 * create unbounded label values); `status` is the HTTP status, 499 when the client went away first; `route` is the
 * generation route (/v1/completions or /v1/chat/completions): both are measured alike.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export interface GatewayMetrics {
  registry: Registry;
  requestSeconds: Histogram<'model' | 'status' | 'route'>;
  inFlight: Gauge<'model'>;
  promptTokens: Counter<'model'>;
  generatedTokens: Counter<'model'>;
  clientAborts: Counter<'model'>;
  batchSize: Histogram<'model'>;
  rateLimited: Counter;
  deploymentExposures: Counter<'deployment' | 'version'>;
  deploymentSeconds: Histogram<'deployment' | 'version' | 'status' | 'route'>;
  queueDepth: Gauge<'model'>;
  queueWait: Histogram<'model'>;
  shadowQueueDepth: Gauge<'deployment' | 'version'>;
  shadowComparisons: Counter<'deployment' | 'version' | 'outcome'>;
  shadowDropped: Counter<'deployment' | 'version' | 'reason'>;
  shadowAgreement: Gauge<'deployment' | 'version'>;
  shadowDivergence: Gauge<'deployment' | 'version'>;
  shadowLogprobDiff: Gauge<'deployment' | 'version'>;
  shadowLatencyDiff: Gauge<'deployment' | 'version'>;
  rolloutDecisions: Counter<'deployment' | 'version' | 'decision'>;
  promotions: Counter<'deployment' | 'trigger'>;
  rollbacks: Counter<'deployment' | 'trigger'>;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export function createGatewayMetrics(): GatewayMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'meshtrain_gateway_' });
  return {
    registry,
    requestSeconds: new Histogram({
      name: 'meshtrain_gateway_request_duration_seconds',
      help: 'Wall time of a generation request from arrival to the last byte (streams: until [DONE]), by model, HTTP status and route (/v1/completions or /v1/chat/completions).',
      labelNames: ['model', 'status', 'route'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    inFlight: new Gauge({ name: 'meshtrain_gateway_requests_in_flight', help: 'Generation requests (completions and chat) being generated now, by model.', labelNames: ['model'], registers: [registry] }),
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
    deploymentSeconds: new Histogram({
      name: 'meshtrain_gateway_deployment_request_duration_seconds',
      help: 'Wall time of a generation request to a deployment, by deployment, the version (model@vN) that served it, HTTP status and route.',
      labelNames: ['deployment', 'version', 'status', 'route'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'meshtrain_gateway_queue_depth',
      help: 'Sequences (request choices) waiting for a row in a batching backend, after the latest admission, by model (a served name or model@vN).',
      labelNames: ['model'],
      registers: [registry],
    }),
    queueWait: new Histogram({
      name: 'meshtrain_gateway_queue_wait_seconds',
      help: 'Time a generation request waited for its first row in a batching backend (from submit to admission), by model.',
      labelNames: ['model'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    shadowQueueDepth: new Gauge({
      name: 'meshtrain_gateway_shadow_queue_depth',
      help: 'Mirrored requests waiting to run on a shadow version, by deployment and shadow version.',
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    shadowComparisons: new Counter({
      name: 'meshtrain_gateway_shadow_comparisons_total',
      help: 'Mirrored requests compared with the primary, by deployment, shadow version and outcome (identical, different, error: the shadow failed).',
      labelNames: ['deployment', 'version', 'outcome'],
      registers: [registry],
    }),
    shadowDropped: new Counter({
      name: 'meshtrain_gateway_shadow_dropped_total',
      help: 'Mirrors not run, by deployment, shadow version and reason (queue-full: no spare capacity; stale: waited too long; closed: the deployment changed).',
      labelNames: ['deployment', 'version', 'reason'],
      registers: [registry],
    }),
    shadowAgreement: new Gauge({
      name: 'meshtrain_gateway_shadow_token_agreement_ratio',
      help: "Mean share of token positions where the shadow's answer equals the primary's, over the requests compared so far.",
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    shadowDivergence: new Gauge({
      name: 'meshtrain_gateway_shadow_divergence_ratio',
      help: '1 − the mean token agreement of a shadow with the primary (what the rollback guard judges).',
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    shadowLogprobDiff: new Gauge({
      name: 'meshtrain_gateway_shadow_logprob_diff_nats',
      help: "Mean per-token log-probability of the primary's tokens under the shadow minus under the primary (teacher-forced; ≈ −KL, 0 = the same model).",
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    shadowLatencyDiff: new Gauge({
      name: 'meshtrain_gateway_shadow_latency_diff_seconds',
      help: 'Mean generation time of the shadow minus the primary for the same requests (positive: the shadow is slower).',
      labelNames: ['deployment', 'version'],
      registers: [registry],
    }),
    rolloutDecisions: new Counter({
      name: 'meshtrain_gateway_rollout_decisions_total',
      help: "Sequential-test decisions reached on a shadow version: promote or reject (counted once per shadow's test).",
      labelNames: ['deployment', 'version', 'decision'],
      registers: [registry],
    }),
    promotions: new Counter({
      name: 'meshtrain_gateway_promotions_total',
      help: 'Changes of a deployment\'s primary other than rollbacks, by trigger (manual: an operator; auto: the rollout\'s test).',
      labelNames: ['deployment', 'trigger'],
      registers: [registry],
    }),
    rollbacks: new Counter({
      name: 'meshtrain_gateway_rollbacks_total',
      help: 'Rollbacks of a deployment to its previous primary, by trigger (manual: an operator; auto: the guard).',
      labelNames: ['deployment', 'trigger'],
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
