/**
 * The inference gateway's HTTP server: a fastify plugin (`gatewayPlugin`) and `createGateway`, which wraps it in
 * its own fastify instance. OpenAI-compatible, so the official clients work against it unchanged.
 *
 *   POST /v1/completions     OpenAI legacy completions (openai.ts; the handler is generation.ts); `stream: true` answers with SSE
 *   POST /v1/chat/completions  OpenAI chat completions (openai-chat.ts): the messages rendered with the version's chat
 *                            template (chat-templates.ts), otherwise as completions (routing, batching, limits, streams)
 *   GET  /v1/models          the served models, OpenAI's list shape
 *   GET  /v1/models/:model   one of them
 *   GET  /healthz            liveness and the served models (no key)
 *   GET  /readyz             readiness (no key): 200 once the models are loaded, 503 while the gateway still waits for
 *                            them (--wait-for-models; why goes to the log, not to anonymous callers) or drains
 *   GET  /metrics            Prometheus exposition (no key)
 *   GET  /admin/status       served models and safety settings (admin key; admin.ts)
 *   /admin/deployments/…     named deployments: A/B arms, switches, rollback, audit (admin key; deployments.ts)
 *
 * A `model` naming a deployment is routed to one of its versions (sticky A/B split) before anything else; the
 * response's `x-meshtrain-version` header says which `model@vN` served it.
 *
 * Every request passes one onRequest hook, in this order: draining for shutdown → 503; access (auth.ts): with API
 * keys configured every /v1 route needs `Authorization: Bearer <key>`, /admin needs the admin key → 401/403; rate
 * limit per client (rate-limit.ts) on /v1 → 429 with Retry-After. A client that disconnects stops its generation
 * (the backend's AbortSignal fires). Errors have OpenAI's body (errors.ts).
 */
import type { ServerResponse } from 'node:http';
import { DEFAULT_CONNECTION_LIMITS, limitServer, type ConnectionLimits } from '../common/conn-limits.ts';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyPluginAsync } from 'fastify';
import type { Logger } from '../common/log.ts';
import { logRequest, requestLogging } from '../common/request-log.ts';
import type { ServerTls } from '../common/tls.ts';
import { adminPlugin } from './admin.ts';
import { bearerToken, decideAccess, KeyRing, routeClassOf } from './auth.ts';
import { batchSettings, type BatchSettings } from './batch-scheduler.ts';
import { errorReply, GatewayError } from './errors.ts';
import { generationRoutes, MAX_TIMEOUT_MS } from './generation.ts';
import { versionLabel } from './deployment-spec.ts';
import { DeploymentManager, type DeploymentHooks, type VersionResolver } from './deployments.ts';
import { PriorityGate } from './priority-gate.ts';
import { createGatewayMetrics, type GatewayMetrics } from './metrics.ts';
import { RateLimiter, type RateLimit } from './rate-limit.ts';
import { traceRequests } from './tracing.ts';
import type { InferenceBackend } from './inference-backend.ts';

/** JSON request bodies: a prompt as token ids is ~10 bytes a token, so 1 MiB leaves room for ~100k tokens. */
export const DEFAULT_BODY_LIMIT = 1024 * 1024;

/** How long close() lets running requests (streams included) finish before it cuts them. */
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;

export interface GatewayOptions {
  /** Served models by the name clients pass as `model`. */
  backends: ReadonlyMap<string, InferenceBackend>;
  /** When set (one key or several), /v1 routes need `Authorization: Bearer <one of them>`. */
  apiKey?: string | readonly string[];
  /** The key for /admin routes; without one they are refused (403), never open. Must differ from every API key. */
  adminKey?: string;
  /** Requests per client on /v1 routes (per API key, or per IP without keys); absent = no limit. */
  rateLimit?: RateLimit;
  /** Prompts longer than this are refused (400) even where the model's context would take them. */
  maxPromptTokens?: number;
  /** A generation request that has not finished this many ms after it arrived is stopped (504); absent = none. A request's x-meshtrain-timeout-ms header may ask for less. */
  requestTimeoutMs?: number;
  /**
   * True once shutdown has begun: new requests get 503. createGateway passes its own, true from the moment close()
   * is called; without it, from fastify's preClose hook (a few ticks after app.close()).
   */
  draining?: () => boolean;
  log: Logger;
  /** Where the plugin records its metrics and what /metrics exposes (default: a registry of its own). */
  metrics?: GatewayMetrics;
  /** Named deployments (A/B arms, rollback); default: none, and PUTs fail to resolve any version. */
  deployments?: DeploymentManager;
  /** Whether the gateway can answer yet (GET /readyz: 200, else 503); default: always. */
  ready?: () => boolean;
}

const noVersions: VersionResolver = async (model, version) => {
  throw new GatewayError('GW_ERR_REGISTRY', `this gateway has no version resolver: cannot load ${model}@v${version}`);
};

export const gatewayPlugin: FastifyPluginAsync<GatewayOptions> = async (app, opts) => {
  const { backends, log } = opts;
  const metrics = opts.metrics ?? createGatewayMetrics();
  const apiKeys = apiKeyList(opts.apiKey);
  if (opts.adminKey !== undefined && apiKeys.includes(opts.adminKey)) throw new GatewayError('GW_ERR_BAD_ARGS', 'the admin key must differ from every API key');
  const keys = new KeyRing(apiKeys, opts.adminKey || undefined);
  const limiter = opts.rateLimit ? new RateLimiter(opts.rateLimit) : undefined;
  const { maxPromptTokens } = opts;
  // Set by app.close(): from then on requests get 503 while the running ones finish (createGateway's close()).
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  const draining = () => closing || (opts.draining?.() ?? false);
  const deployments = opts.deployments ?? new DeploymentManager({ resolve: noVersions, reserved: (name) => backends.has(name) });

  app.setErrorHandler((err: FastifyError | GatewayError, req, reply) => {
    const { status, body } = errorReply(err, req.routeOptions.bodyLimit);
    if (err instanceof GatewayError && err.retryAfterS !== undefined) reply.header('retry-after', String(err.retryAfterS));
    if (status >= 500 && !(err instanceof GatewayError && (err.code === 'GW_ERR_OVERLOADED' || err.code === 'GW_ERR_TIMEOUT'))) {
      log.error(`${req.method} ${req.url}: ${(err as Error).stack ?? String(err)}`);
    }
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const err = new GatewayError('GW_ERR_NOT_FOUND', `Unknown request URL: ${req.method} ${req.url.split('?')[0]}.`);
    return reply.code(err.statusCode).send(err.toBody());
  });

  traceRequests(app); // first, so that requests refused below get their span too
  app.addHook('onRequest', async (req, reply) => {
    if (draining()) {
      const err = new GatewayError('GW_ERR_SHUTTING_DOWN', 'The server is shutting down and takes no new requests; retry on another instance.');
      return reply.code(err.statusCode).header('connection', 'close').send(err.toBody());
    }
    const route = routeClassOf(req);
    const { key, clientId } = keys.match(bearerToken(req.headers.authorization));
    const access = decideAccess(route, key, keys.configured);
    if (!access.allow) throw new GatewayError(access.code, access.message);
    if (limiter && route === 'inference') {
      const waitMs = limiter.take(clientId ?? `ip:${req.ip}`);
      if (waitMs > 0) {
        metrics.rateLimited.inc();
        const retryAfterS = Math.ceil(waitMs / 1000);
        throw new GatewayError('GW_ERR_RATE_LIMITED', `Rate limit reached: ${limiter.limit.rps} requests per second (burst ${limiter.limit.burst}) per client. Retry after ${retryAfterS} s.`, { retryAfterS });
      }
    }
  });

  await app.register(adminPlugin, {
    prefix: '/admin',
    backends,
    status: () => ({
      config: { apiKeys: keys.apiKeyCount, maxBodyBytes: app.initialConfig.bodyLimit ?? DEFAULT_BODY_LIMIT, maxPromptTokens: maxPromptTokens ?? null, rateLimit: limiter?.limit ?? null },
      draining: draining(),
    }),
    deployments,
    who: (req) => keys.match(bearerToken(req.headers.authorization)).clientId?.replace(/^key:/, 'admin:') ?? 'unknown',
  });

  const modelCard = (b: InferenceBackend, id = b.info.id) => ({
    id, object: 'model' as const, created: b.info.createdS, owned_by: b.info.ownedBy,
    ...(b.info.quantization ? { quantization: b.info.quantization } : {}), // an INT8 registry version (weights stored INT8)
    ...(b.info.adapter ? { adapter: b.info.adapter } : {}), // a LoRA adapter served on its base
  });
  const deploymentCards = () => deployments.list().flatMap((d) => {
    const b = deployments.primaryBackend(d.name);
    return b ? [modelCard(b, d.name)] : [];
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [...[...backends.values()].map((b) => modelCard(b)), ...deploymentCards()].sort((a, b) => a.id.localeCompare(b.id)) }));
  app.get<{ Params: { model: string } }>('/v1/models/:model', async (req) => {
    const backend = backends.get(req.params.model);
    const deployed = deployments.primaryBackend(req.params.model);
    if (backend) return modelCard(backend);
    if (deployed) return modelCard(deployed, req.params.model);
    throw new GatewayError('GW_ERR_MODEL_NOT_FOUND', `The model '${req.params.model}' does not exist.`, { param: 'model' });
  });
  app.get('/healthz', async () => ({
    status: 'ok',
    uptimeSeconds: Math.round(process.uptime()),
    models: [...backends.values()].map((b) => ({ id: b.info.id, version: b.info.version ?? null, contextLength: b.info.contextLength })),
  }));
  // Readiness, for load balancers and Kubernetes: live (/healthz) is not the same as able to answer (models loaded).
  // It names nothing (models, deployments, registry paths): anyone may ask it.
  app.get('/readyz', async (_req, reply) => ((opts.ready?.() ?? true) ? { status: 'ready' } : reply.code(503).send({ status: 'waiting' })));
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));

  generationRoutes(app, { backends, deployments, metrics, log, maxPromptTokens, requestTimeoutMs: opts.requestTimeoutMs });
};

/** API keys from one key, a list, or comma-separated lists of them; empty entries dropped. */
export function apiKeyList(keys: string | readonly string[] | undefined): string[] {
  const all = (typeof keys === 'string' ? [keys] : keys ?? []).flatMap((k) => k.split(',')).map((k) => k.trim());
  return [...new Set(all.filter((k) => k !== ''))];
}

export interface Gateway {
  app: FastifyInstance;
  metrics: GatewayMetrics;
  listen(opts: { port: number; host?: string }): Promise<{ port: number; host: string }>;
  /** Serves one more model, batched and measured as those given at creation (a model that arrived after start). */
  addBackend(name: string, backend: InferenceBackend): void;
  /**
   * Drains, then closes every backend: no new connections, 503 for new requests on open ones, running requests
   * (streams included) finish for up to `drainTimeoutMs` and are then cut.
   */
  close(): Promise<void>;
}

export interface CreateGatewayOptions {
  /** Served models by name; `addBackend` adds to this same map (so a caller's `reserved` check sees them too). */
  backends: Map<string, InferenceBackend>;
  apiKey?: string | readonly string[];
  adminKey?: string;
  rateLimit?: RateLimit;
  maxPromptTokens?: number;
  requestTimeoutMs?: number;
  log: Logger;
  bodyLimit?: number; // bytes; larger bodies get 413 (default DEFAULT_BODY_LIMIT)
  drainTimeoutMs?: number; // close() lets running requests finish this long, then cuts them (default DEFAULT_DRAIN_TIMEOUT_MS)
  /** Headers timeout (slow-loris guard) and socket cap of the port (common/conn-limits.ts); defaults for any left out. */
  limits?: Partial<Pick<ConnectionLimits, 'headersTimeoutMs' | 'maxConnections'>>;
  /**
   * Dynamic batching of every backend that batches (`configureBatching`): max sequences per forward pass and how
   * long an idle backend waits for more. Settings left out keep the backend's own (defaults 16 and 2 ms).
   */
  batching?: Partial<BatchSettings>;
  /** Named deployments (deployments.ts), already holding any start-up file's; closed with the gateway. */
  deployments?: DeploymentManager;
  /** Serve HTTPS with this certificate and key (--tls-cert/--tls-key; common/tls.ts loadServerTls). */
  https?: ServerTls;
  /** Whether the gateway can answer yet (GET /readyz: 200, else 503); default: always. */
  ready?: () => boolean;
}

export function createGateway(opts: CreateGatewayOptions): Gateway {
  for (const [name, backend] of opts.backends) {
    if (name !== backend.info.id) throw new GatewayError('GW_ERR_BAD_ARGS', `backend registered as '${name}' reports model id '${backend.info.id}'`);
  }
  if (opts.batching) batchSettings(opts.batching); // refuse bad settings before anything starts
  const metrics = createGatewayMetrics();
  // One gate for every backend: shadow mirrors (background) run only while no client request waits or runs.
  const gate = new PriorityGate();
  const prepare = (backend: InferenceBackend, name: string) => backend.configureBatching?.({
    ...opts.batching,
    gate,
    onBatch: (size) => metrics.batchSize.observe({ model: name }, size),
    onQueue: (waiting) => metrics.queueDepth.set({ model: name }, waiting),
    onAdmit: (waitMs) => metrics.queueWait.observe({ model: name }, waitMs / 1000),
  });
  for (const [name, backend] of opts.backends) prepare(backend, name);
  if (opts.maxPromptTokens !== undefined && !(Number.isInteger(opts.maxPromptTokens) && opts.maxPromptTokens >= 1)) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `maxPromptTokens must be an integer ≥ 1, got ${opts.maxPromptTokens}`);
  }
  if (opts.adminKey !== undefined && apiKeyList(opts.apiKey).includes(opts.adminKey)) throw new GatewayError('GW_ERR_BAD_ARGS', 'the admin key must differ from every API key');
  if (opts.rateLimit) new RateLimiter(opts.rateLimit); // refuse a bad limit before anything starts
  // return503OnClosing off: fastify's own 503 body is not OpenAI's; the plugin's hook answers during the drain.
  // The https option only changes the server class; the instance keeps the plain type (as in coordinator/api/server.ts).
  const app = Fastify({ ...requestLogging(opts.log), https: opts.https ?? null, bodyLimit: opts.bodyLimit ?? DEFAULT_BODY_LIMIT, return503OnClosing: false }) as unknown as FastifyInstance;
  app.addHook('onResponse', logRequest); // one line per request: method, matched route, status, ms
  const { backends, apiKey, adminKey, rateLimit, maxPromptTokens, requestTimeoutMs, log } = opts;
  if (requestTimeoutMs !== undefined && !(Number.isInteger(requestTimeoutMs) && requestTimeoutMs >= 1 && requestTimeoutMs <= MAX_TIMEOUT_MS)) {
    throw new GatewayError('GW_ERR_BAD_ARGS', `requestTimeoutMs must be an integer in [1, ${MAX_TIMEOUT_MS}], got ${requestTimeoutMs}`);
  }
  limitServer(app.server as import('node:http').Server, { ...DEFAULT_CONNECTION_LIMITS, ...opts.limits });
  const deployments = opts.deployments ?? new DeploymentManager({ resolve: noVersions, reserved: (name) => backends.has(name) });
  deployments.setHooks(deploymentHooks(metrics, prepare, log));
  for (const d of deployments?.list() ?? []) {
    if (backends.has(d.name)) throw new GatewayError('GW_ERR_BAD_ARGS', `deployment '${d.name}' has the name of a served model; give it a name of its own`);
  }
  let closed = false;
  void app.register(gatewayPlugin, { backends, apiKey, adminKey, rateLimit, maxPromptTokens, requestTimeoutMs, log, metrics, draining: () => closed, deployments, ...(opts.ready ? { ready: opts.ready } : {}) });
  // Requests whose response has not ended. Shutdown waits for these only: kept-alive or just-opened connections
  // that carry no request would otherwise hold server.close() until the client drops them.
  let running = 0;
  app.server.on('request', (_req, res: ServerResponse) => {
    running++;
    res.once('close', () => running--);
  });
  return {
    app,
    metrics,
    addBackend(name, backend) {
      if (closed) throw new GatewayError('GW_ERR_SHUTTING_DOWN', `the gateway is closing: ${name} was not added`);
      if (name !== backend.info.id) throw new GatewayError('GW_ERR_BAD_ARGS', `backend registered as '${name}' reports model id '${backend.info.id}'`);
      if (backends.has(name) || deployments.list().some((d) => d.name === name)) throw new GatewayError('GW_ERR_BAD_ARGS', `'${name}' is served already`);
      prepare(backend, name);
      backends.set(name, backend);
    },
    async listen({ port, host = '127.0.0.1' }) {
      await app.listen({ port, host });
      const addr = app.server.address();
      return { port: typeof addr === 'object' && addr ? addr.port : port, host };
    },
    async close() {
      if (closed) return;
      closed = true;
      const graceEnds = Date.now() + (opts.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS);
      const sweep = setInterval(() => {
        if (running === 0 || Date.now() > graceEnds) app.server.closeAllConnections();
      }, 20);
      try {
        await app.close();
      } finally {
        clearInterval(sweep);
      }
      await deployments.close();
      await Promise.all([...opts.backends.values()].map((b) => b.close?.()));
    },
  };
}

/** Deployment events → metrics and the log. */
function deploymentHooks(metrics: GatewayMetrics, prepare: (backend: InferenceBackend, name: string) => void, log: Logger): DeploymentHooks {
  return {
    prepare,
    onCompared(deployment, version, result, snap) {
      const labels = { deployment, version };
      metrics.shadowComparisons.inc({ ...labels, outcome: result.error ? 'error' : result.identical ? 'identical' : 'different' });
      if (snap.meanTokenAgreement !== null) metrics.shadowAgreement.set(labels, snap.meanTokenAgreement);
      if (snap.divergence !== null) metrics.shadowDivergence.set(labels, snap.divergence);
      if (snap.meanLogprobDiff !== null) metrics.shadowLogprobDiff.set(labels, snap.meanLogprobDiff);
      if (snap.meanLatencyDiffMs !== null) metrics.shadowLatencyDiff.set(labels, snap.meanLatencyDiffMs / 1000);
    },
    onDropped: (deployment, version, reason) => metrics.shadowDropped.inc({ deployment, version, reason }),
    onQueue: (deployment, version, depth) => metrics.shadowQueueDepth.set({ deployment, version }, depth),
    onDecision(deployment, version, state) {
      const decision = state.decision === 'accept-h1' ? 'promote' : 'reject';
      metrics.rolloutDecisions.inc({ deployment, version, decision });
      log.info(`deployment ${deployment}: shadow ${version}: ${decision} (${state.successes}/${state.n} successes, llr ${state.llr.toFixed(2)})`);
    },
    onAudit(entry) {
      const newPrimary = entry.old !== null && versionLabel(entry.old.primary) !== versionLabel(entry.new.primary);
      if (entry.action === 'rollback' || entry.action === 'auto-rollback') metrics.rollbacks.inc({ deployment: entry.deployment, trigger: entry.action === 'rollback' ? 'manual' : 'auto' });
      else if (newPrimary) metrics.promotions.inc({ deployment: entry.deployment, trigger: entry.action === 'auto-promote' ? 'auto' : 'manual' });
      const level = entry.action.startsWith('auto') ? 'warn' : 'info';
      log[level](`deployment ${entry.deployment}: ${entry.action} by ${entry.who}: ${versionLabel(entry.new.primary)} is the primary (${entry.reason})`);
    },
  };
}
