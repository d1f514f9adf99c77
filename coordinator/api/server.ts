/**
 * The coordinator process: fastify for the HTTP API, /healthz and /metrics; the agent WebSocket endpoint
 * (/ws/agent) on the same port; SQLite state and the artifact store under --data.
 *
 * API (JSON; every /api route needs `Authorization: Bearer <cluster token>` or the dashboard's session cookie):
 *   GET    /                             the dashboard (coordinator/dashboard/routes.ts; static, no data without a session)
 *   GET    /healthz                      liveness and node counts (no auth)
 *   GET    /metrics                      Prometheus exposition (no auth)
 *   POST   /api/login                    {token}: a session cookie for the dashboard (no auth)
 *   POST   /api/logout                   ends the session (no auth)
 *   GET    /api/session                  {authenticated} (no auth)
 *   GET    /api/events                   the live feed, server-sent events (live-stream.ts)
 *   GET    /api/nodes                    every known agent: status, capabilities, heartbeat age
 *   GET    /api/nodes/:id                one agent with its recent status events
 *   POST   /api/nodes/:id/revoke         revoke an agent's credential: disconnected, never admitted under that id again
 *   GET    /api/groups                   ring groups
 *   POST   /api/groups                   form a ring {size?|nodes?, segmentBytes?}
 *   POST   /api/groups/:id/runs          run a collective {op, elements, seed?, root?, repeats?, verify?, returnResult?}
 *   DELETE /api/groups/:id               release a ring
 *   POST   /api/selfcheck                form a ring of the agents and check every collective {agents?, elements?, segmentBytes?}
 *   POST   /api/jobs                     submit a training job (job-spec.ts); 400 names every bad field
 *   GET    /api/jobs                     jobs, newest first
 *   GET    /api/jobs/:id                 one job with its metrics history and checkpoints
 *   GET    /api/jobs/:id/live            the job as it runs: layout and who holds what, per-rank step breakdown, links, straggler
 *   GET    /api/jobs/:id/plan            the layout the planner chose, the candidates it weighed, predicted vs measured step time
 *   POST   /api/jobs/:id/replan          {parallel}: change the layout; a running job resumes from its last checkpoint under it
 *   POST   /api/jobs/:id/cancel          cancel a job that has not finished
 *   PUT    /api/artifacts/:sha256        store bytes under their sha256 (checked); agents upload checkpoints so
 *   GET    /api/artifacts/:sha256        fetch stored bytes (dataset shards, checkpoints, model files)
 *   HEAD   /api/artifacts/:sha256        does it exist, and its size
 *   GET    /api/models                   registered models with their version counts
 *   GET    /api/models/:name/versions    every version: files with sha256, lineage (job, spec, metrics)
 *   GET    /api/models/:name/versions/:v one version ('latest' works)
 *   GET    /api/models/:name/versions/:v/lineage   the version and its parents back to the first: job, data digests, code version, metrics
 *   GET    /api/runs…, /api/sweeps…      experiment tracking and hyper-parameter sweeps (coordinator/api/runs.ts)
 *   GET    /api/models/:name/versions/:v/files/:file   a file of a version, checked against its sha256
 *   POST   /api/models/:name/versions/:v/quantize      {scheme?: "int8"}: register its INT8 variant as a new version (201)
 *   POST   /api/models/:name/versions/:v/merge         fold a LoRA adapter version into its base: a new full version (201)
 *   POST   /api/models/:name/import      {files: {name: sha256}, source?}: register uploaded HF GPT-2 files as a new version (201)
 *   POST   /api/gateways                 a gateway announces itself {name, url, adminKey} (coordinator/cluster/gateways.ts)
 *   GET    /api/gateways                 the gateways that announced themselves
 *   GET    /api/gateways/:gw/deployments[/:name[/comparison]]       relayed to the gateway's /admin API
 *   POST   /api/gateways/:gw/deployments/:name/promote|rollback     relayed likewise
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyError } from 'fastify';
import type { Logger } from '../../common/log.ts';
import { logRequest, requestLogging } from '../../common/request-log.ts';
import { loadServerTls, type ServerTls } from '../../common/tls.ts';
import { decideAccess, stalePublicRoutes } from './access.ts';
import { AgentHub, sha256Hex } from '../cluster/agent-hub.ts';
import { limitServer } from '../../common/conn-limits.ts';
import { FormGroupBody, MAX_RETURNED_ELEMENTS, RunBody, SelfcheckBody } from './schemas.ts';
import { ArtifactStore } from '../store/artifact-store.ts';
import type { CoordinatorConfig } from '../config.ts';
import { CoordinatorError } from '../errors.ts';
import { GroupManager } from '../cluster/groups.ts';
import { validateJobSpec } from '../../protocol/job-spec.ts';
import { pinVersionRefs } from '../jobs/stage-inputs.ts';
import { FINAL_STATES, SqliteJobStore, type JobStore } from '../store/job-store.ts';
import { JobRunner } from '../jobs/runner.ts';
import { bindJobMetrics, createMetrics } from '../metrics.ts';
import { dashboardRoutes } from '../dashboard/routes.ts';
import { EventBus } from '../events.ts';
import { announcementProblems, GatewayDirectory } from '../cluster/gateways.ts';
import { LiveStreams, MAX_STREAMS } from './live-stream.ts';
import { clearedSessionCookie, sessionCookie, sessionIdOf, SessionStore } from './sessions.ts';
import { planReport } from '../jobs/plan-report.ts';
import { ModelRegistry } from '../registry/registry.ts';
import { parseQuantizeBody, quantizeVersion } from '../registry/quantize.ts';
import { importVersion, parseImportBody } from '../registry/import.ts';
import { mergeAdapter } from '../registry/adapters.ts';
import { runSelfcheck } from '../cluster/selfcheck.ts';
import { SqliteStateStore, type StateStore } from '../store/state-store.ts';
import { formatCodeVersion, readCodeVersion } from '../code-version.ts';
import { lineageChain } from '../tracking/lineage.ts';
import { SqliteRunStore, type RunStore } from '../store/run-store.ts';
import { runsApi } from './runs.ts';
import { SqliteSweepStore } from '../store/sweep-store.ts';
import { SweepRunner } from '../tracking/sweeps.ts';

/**
 * Segment size for ring collectives. Measured with `npm run bench -- allreduce` (4 agents, 64 MB, 2 cores):
 * 4 MiB segments reach busbw/link ≈ 0.85–0.94, 1 MiB ≈ 0.78: with more agents than cores every message costs
 * a context switch, so fewer, larger messages win; above 4 MiB ws's receive buffers get costly (ARCHITECTURE.md).
 */
export const DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024;

export interface Coordinator {
  app: FastifyInstance;
  hub: AgentHub;
  groups: GroupManager;
  store: StateStore;
  jobs: JobStore;
  registry: ModelRegistry;
  artifacts: ArtifactStore;
  /** Each job's code version and dataset (experiment tracking). */
  runs: RunStore;
  /** Set when this start generated the cluster token (so the CLI can print it once). */
  generatedToken: string | undefined;
  /** Every registered HTTP route as "METHOD pattern" (HEAD routes included), complete once the app is ready. */
  routes(): string[];
  listen(): Promise<{ port: number; host: string }>;
  close(): Promise<void>;
}

export function createCoordinator(cfg: Readonly<CoordinatorConfig>, log: Logger): Coordinator {
  try {
    mkdirSync(cfg.dataDir, { recursive: true });
  } catch (err) {
    throw new CoordinatorError('CRD_ERR_STORAGE', `cannot create data folder ${cfg.dataDir}: ${(err as Error).message}`, { cause: err });
  }
  const store = new SqliteStateStore(join(cfg.dataDir, 'state.db'));
  const artifacts = new ArtifactStore(join(cfg.dataDir, 'artifacts'));
  const jobs = new SqliteJobStore(store.database);
  const registry = new ModelRegistry(join(cfg.dataDir, 'registry'), store.database);
  const runs = new SqliteRunStore(store.database);
  const codeVersion = formatCodeVersion(readCodeVersion()); // once: what this process runs, recorded with every job

  let clusterId = store.getMeta('cluster_id');
  if (!clusterId) {
    clusterId = `c-${randomBytes(6).toString('hex')}`;
    store.setMeta('cluster_id', clusterId);
  }
  let generatedToken: string | undefined;
  if (cfg.token) store.setMeta('token_sha256', sha256Hex(cfg.token));
  else if (!store.getMeta('token_sha256')) {
    generatedToken = randomBytes(24).toString('base64url');
    store.setMeta('token_sha256', sha256Hex(generatedToken));
  }
  const tokenHash = store.getMeta('token_sha256')!;

  const metrics = createMetrics();
  const bus = new EventBus((err, name) => log.warn(`a '${name}' event listener failed: ${(err as Error)?.stack ?? String(err)}`));
  bindJobMetrics(metrics, bus); // training figures on /metrics, from the bus
  const hub = new AgentHub({ store, config: cfg, tokenHash, clusterId, log: log.child('agents'), metrics });
  const groups = new GroupManager(hub, cfg, log.child('groups'), metrics);
  const runner = new JobRunner({
    jobs,
    hub,
    groups,
    artifacts,
    registry,
    runs,
    dataDir: cfg.dataDir,
    segmentBytes: DEFAULT_SEGMENT_BYTES,
    log: log.child('jobs'),
    bus,
    stepTimeoutMs: cfg.stepTimeoutMs,
    backend: cfg.backend,
  });
  const gateways = new GatewayDirectory();
  const sessions = new SessionStore();
  const nodeViews = () => {
    const roles = runner.roles(), slow = runner.stragglers();
    return hub.views().map((n) => ({ ...n, role: roles.get(n.id) ?? null, straggler: slow.has(n.id) }));
  };
  const jobSummaries = () => jobs.list().map(({ spec, plan: _plan, ...summary }) => ({ ...summary, totalSteps: spec.training.steps }));
  const streams = new LiveStreams(bus, {
    nodes: nodeViews,
    jobs: jobSummaries,
    live: (id) => runner.live(id),
    models: () => registry.models(),
    gateways: () => gateways.list(),
  });

  // HTTPS and WSS on one port when a certificate is configured; the agent endpoint rides the same server's upgrades.
  let https: ServerTls | null = null;
  if (cfg.tlsCert !== undefined && cfg.tlsKey !== undefined) {
    try {
      https = loadServerTls(cfg.tlsCert, cfg.tlsKey);
    } catch (err) {
      throw new CoordinatorError('CRD_ERR_BAD_ARGS', (err as Error).message, { cause: err });
    }
  }
  // The https option only changes the server class; routes, hooks and upgrades are the same, so the instance keeps
  // the plain type.
  const app = Fastify({
    ...requestLogging(log), // one line per request: method, matched route, status, ms (common/request-log.ts)
    https,
    bodyLimit: 1024 * 1024, // JSON bodies; artifact uploads are streams and not buffered
    ajv: { customOptions: { allErrors: true, removeAdditional: false, coerceTypes: false } },
  }) as unknown as FastifyInstance;
  app.addHook('onResponse', logRequest);

  app.setErrorHandler((err: FastifyError | CoordinatorError, req, reply) => {
    if (err instanceof CoordinatorError) {
      return reply.code(err.statusCode).send({ error: { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) } });
    }
    if ((err as FastifyError).validation) {
      const details = (err as FastifyError).validation!.map((v) => `${v.instancePath || '/'} ${v.message ?? 'is invalid'}${v.params && 'additionalProperty' in v.params ? ` '${String(v.params.additionalProperty)}'` : ''}`);
      return reply.code(400).send({ error: { code: 'CRD_ERR_BAD_REQUEST', message: `invalid request: ${details.join('; ')}`, details } });
    }
    const status = (err as FastifyError).statusCode ?? 500;
    if (status >= 500) log.error(`${req.method} ${req.url}: ${(err as Error).stack}`);
    return reply.code(status).send({ error: { code: status >= 500 ? 'CRD_ERR_INTERNAL' : 'CRD_ERR_BAD_REQUEST', message: (err as Error).message } });
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({ error: { code: 'CRD_ERR_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` } }),
  );

  const tokenBytes = Buffer.from(tokenHash, 'hex');
  const isClusterToken = (presented: unknown) =>
    typeof presented === 'string' && presented.length > 0 && presented.length <= 1024 && timingSafeEqual(Buffer.from(sha256Hex(presented), 'hex'), tokenBytes);
  // Every route, as "METHOD pattern", for the public-list check below and for tests that try each one as a stranger.
  const routeTable = new Set<string>();
  app.addHook('onRoute', (r) => {
    for (const method of [r.method].flat()) routeTable.add(`${method} ${r.url}`);
  });
  app.addHook('onReady', async () => {
    const stale = stalePublicRoutes(routeTable);
    if (stale.length) throw new CoordinatorError('CRD_ERR_INTERNAL', `PUBLIC_ROUTES names routes that do not exist: ${stale.map((r) => `${r.method} ${r.url}`).join(', ')}`);
  });
  // Access is decided on the route the router matched (access.ts), so no spelling of a URL reaches a route around it.
  app.addHook('onRequest', async (req) => {
    const header = req.headers.authorization;
    const decision = decideAccess({
      method: req.method,
      routeUrl: req.routeOptions.url,
      hasAuthorization: header !== undefined,
      clusterToken: header !== undefined && header.startsWith('Bearer ') && isClusterToken(header.slice(7)),
      session: header === undefined && sessions.touch(sessionIdOf(req.headers.cookie)),
      requestedWith: [req.headers['x-requested-with']].flat()[0],
    });
    if (!decision.allow) throw new CoordinatorError(decision.code, decision.message);
  });

  app.register(dashboardRoutes);
  app.post('/api/login', async (req, reply) => {
    const body = req.body as { token?: unknown } | undefined;
    if (!isClusterToken(body?.token)) throw new CoordinatorError('CRD_ERR_UNAUTHORIZED', 'wrong cluster token: use the token `coordinator start` printed');
    return reply.header('set-cookie', sessionCookie(sessions.create(), req.protocol === 'https')).send({ ok: true });
  });
  app.post('/api/logout', async (req, reply) => {
    sessions.end(sessionIdOf(req.headers.cookie));
    return reply.header('set-cookie', clearedSessionCookie).send({ ok: true });
  });
  app.get('/api/session', async (req) => ({ authenticated: sessions.touch(sessionIdOf(req.headers.cookie)) }));
  app.get('/api/events', async (_req, reply) => {
    if (streams.size >= MAX_STREAMS) throw new CoordinatorError('CRD_ERR_CONFLICT', `already ${MAX_STREAMS} live streams open; close a dashboard tab`);
    reply.hijack();
    streams.serve(reply.raw);
  });

  app.get('/healthz', async () => {
    const nodes = hub.views();
    return {
      status: 'ok',
      clusterId,
      uptimeSeconds: Math.round(process.uptime()),
      nodes: Object.fromEntries((['alive', 'dead', 'left', 'revoked'] as const).map((s) => [s, nodes.filter((n) => n.status === s).length])),
    };
  });
  app.get('/metrics', async (_req, reply) => reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()));

  app.get('/api/nodes', async () => ({ nodes: nodeViews() }));
  app.get<{ Params: { id: string } }>('/api/nodes/:id', async (req) => {
    const node = nodeViews().find((n) => n.id === req.params.id);
    if (!node) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no node ${req.params.id}`);
    return { node, events: store.nodeEvents(node.id, 50) };
  });
  app.post<{ Params: { id: string } }>('/api/nodes/:id/revoke', async (req) => {
    if (!hub.revoke(req.params.id)) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no node ${req.params.id}`);
    bus.emit('node', { nodeId: req.params.id });
    return { node: nodeViews().find((n) => n.id === req.params.id) };
  });

  app.get('/api/groups', async () => ({ groups: groups.list() }));
  app.post<{ Body: FormGroupBody }>('/api/groups', { schema: { body: FormGroupBody } }, async (req, reply) => {
    if (req.body.size !== undefined && req.body.nodes !== undefined) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'give size or nodes, not both', { details: ['/size and /nodes are exclusive'] });
    }
    const info = await groups.form({
      ...(req.body.size !== undefined ? { size: req.body.size } : {}),
      ...(req.body.nodes ? { nodeIds: req.body.nodes } : {}),
      segmentBytes: req.body.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
    });
    return reply.code(201).send(info);
  });
  app.post<{ Params: { id: string }; Body: RunBody }>('/api/groups/:id/runs', { schema: { body: RunBody } }, async (req) => {
    const b = req.body;
    if (b.returnResult && b.elements > MAX_RETURNED_ELEMENTS) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `returnResult is limited to ${MAX_RETURNED_ELEMENTS} elements`, { details: [`/elements must be ≤ ${MAX_RETURNED_ELEMENTS} with returnResult`] });
    }
    return groups.run(req.params.id, {
      op: b.op,
      elements: b.elements,
      seed: b.seed ?? 1,
      ...(b.root !== undefined ? { root: b.root } : {}),
      repeats: b.repeats ?? 1,
      verify: b.verify ?? false,
      returnResult: b.returnResult ?? false,
    });
  });
  app.delete<{ Params: { id: string } }>('/api/groups/:id', async (req) => {
    groups.get(req.params.id);
    groups.release(req.params.id);
    return { released: req.params.id };
  });
  app.post<{ Body: SelfcheckBody }>('/api/selfcheck', { schema: { body: SelfcheckBody } }, async (req) => {
    const report = await runSelfcheck(groups, {
      ...(req.body.agents !== undefined ? { agents: req.body.agents } : {}),
      ...(req.body.elements ? { elements: req.body.elements } : {}),
      segmentBytes: req.body.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
    }, (line) => log.info(`selfcheck: ${line}`));
    runner.observeSelfcheck(report); // the planner plans from the link bandwidth just measured
    return report;
  });

  /** Every job enters here: POST /api/jobs and each sweep trial (coordinator/tracking/sweeps.ts). */
  const submitJob = (raw: unknown) => {
    const res = validateJobSpec(raw);
    if (!res.ok) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid job spec: ${res.errors.join('; ')}`, { details: res.errors });
    const job = jobs.create(pinVersionRefs(res.spec, registry), Date.now()); // "chat" → "chat@4": what it trains from never moves
    runs.create(job.id, codeVersion);
    log.info(`job ${job.id} (${job.name}) submitted`);
    bus.emit('job', { jobId: job.id, state: job.state });
    queueMicrotask(() => void runner.tick()); // after the caller's transaction (a sweep records its trial with the job)
    return job;
  };
  const sweeps = new SweepRunner({
    sweeps: new SqliteSweepStore(store.database),
    jobs,
    submitJob,
    cancelJob: (id, reason) => runner.cancel(id, reason),
    bus,
    log: log.child('sweeps'),
  });
  app.post('/api/jobs', async (req, reply) => reply.code(201).send(submitJob(req.body)));
  app.register(runsApi({ jobs, runs, registry, sweeps }));
  app.get('/api/jobs', async () => ({ jobs: jobSummaries() }));
  app.get<{ Params: { id: string } }>('/api/jobs/:id/live', async (req) => {
    const live = runner.live(req.params.id);
    if (!live) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${req.params.id}`);
    return live;
  });
  app.get<{ Params: { id: string } }>('/api/jobs/:id/plan', async (req) => {
    const job = jobs.get(req.params.id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${req.params.id}`);
    return planReport(job, jobs.metrics(job.id));
  });
  app.get<{ Params: { id: string }; Querystring: { after?: string } }>('/api/jobs/:id', async (req) => {
    const job = jobs.get(req.params.id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${req.params.id}`);
    const after = Number(req.query.after ?? -1);
    const { plan: _plan, ...rest } = job; // the plan has its own endpoint (it lists every candidate)
    return { job: rest, metrics: jobs.metrics(job.id, Number.isFinite(after) ? after : -1), checkpoints: jobs.checkpoints(job.id) };
  });
  app.post<{ Params: { id: string }; Body: { parallel?: unknown } }>('/api/jobs/:id/replan', async (req) => {
    const body = req.body as { parallel?: unknown } | undefined;
    if (!body || typeof body !== 'object' || body.parallel === undefined) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'send {"parallel": "auto" | {"data": d, "pipeline": p, "tensor": t}}', { details: ['/parallel is required'] });
    }
    const { plan: _plan, ...job } = runner.replan(req.params.id, body.parallel);
    return job;
  });
  app.post<{ Params: { id: string } }>('/api/jobs/:id/cancel', async (req) => {
    const job = jobs.get(req.params.id);
    if (!job) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no job ${req.params.id}`);
    if (FINAL_STATES.has(job.state)) throw new CoordinatorError('CRD_ERR_CONFLICT', `job ${job.id} already ${job.state}`);
    runner.cancel(job.id, 'cancelled by request');
    return jobs.get(job.id);
  });

  // Artifacts travel as raw bytes, streamed to and from disk: no JSON, no body-size limit beyond the disk's.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  app.put<{ Params: { digest: string } }>('/api/artifacts/:digest', async (req, reply) => {
    const expected = req.params.digest;
    artifacts.pathOf(expected); // validates the digest's form before reading a byte
    if (req.headers['content-type'] !== 'application/octet-stream') {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'send artifacts as Content-Type: application/octet-stream');
    }
    const { digest, bytes } = await artifacts.putStream(req.body as Readable, expected);
    return reply.code(201).send({ digest, bytes });
  });
  app.route<{ Params: { digest: string } }>({
    method: ['GET', 'HEAD'],
    url: '/api/artifacts/:digest',
    handler: async (req, reply) => {
      const size = artifacts.sizeOf(req.params.digest);
      if (size === undefined) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no artifact ${req.params.digest}`);
      reply.header('content-length', size).type('application/octet-stream');
      if (req.method === 'HEAD') return reply.send();
      return reply.send(artifacts.createReadStream(req.params.digest));
    },
  });

  app.get('/api/models', async () => ({ models: registry.models() }));
  app.get<{ Params: { name: string } }>('/api/models/:name/versions', async (req) => {
    const versions = registry.versions(req.params.name);
    if (versions.length === 0) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${req.params.name}`);
    return { name: req.params.name, versions };
  });
  const versionOf = (name: string, v: string): number => {
    if (v === 'latest') {
      const latest = registry.models().find((m) => m.name === name)?.latest;
      if (latest === undefined) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${name}`);
      return latest;
    }
    const n = Number(v.replace(/^v/, ''));
    if (!Number.isInteger(n) || n < 1) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `version '${v.slice(0, 20)}' is not a positive integer or 'latest'`);
    return n;
  };
  app.get<{ Params: { name: string; v: string } }>('/api/models/:name/versions/:v', async (req) =>
    registry.get(req.params.name, versionOf(req.params.name, req.params.v)),
  );
  app.get<{ Params: { name: string; v: string } }>('/api/models/:name/versions/:v/lineage', async (req) => {
    const version = versionOf(req.params.name, req.params.v);
    return { name: req.params.name, version, ...lineageChain(registry, req.params.name, version) };
  });
  app.get<{ Params: { name: string; v: string; file: string } }>('/api/models/:name/versions/:v/files/:file', async (req, reply) => {
    const bytes = registry.readFile(req.params.name, versionOf(req.params.name, req.params.v), req.params.file);
    return reply.type(req.params.file.endsWith('.json') ? 'application/json' : 'application/octet-stream').send(bytes);
  });
  app.post<{ Params: { name: string; v: string } }>('/api/models/:name/versions/:v/quantize', async (req, reply) => {
    const { scheme } = parseQuantizeBody(req.body);
    const created = await quantizeVersion(registry, req.params.name, versionOf(req.params.name, req.params.v), scheme);
    log.info(`model ${created.name} v${created.version}: ${scheme} variant of v${created.lineage.parent?.version}`);
    return reply.code(201).send(created);
  });
  app.post<{ Params: { name: string } }>('/api/models/:name/import', async (req, reply) => {
    const created = await importVersion(registry, artifacts, req.params.name, parseImportBody(req.body));
    const imported = created.lineage.imported as { source?: string };
    log.info(`model ${created.name} v${created.version}: imported${imported.source ? ` from ${imported.source}` : ''}`);
    bus.emit('model', { name: created.name, version: created.version });
    return reply.code(201).send(created);
  });
  app.post<{ Params: { name: string; v: string } }>('/api/models/:name/versions/:v/merge', async (req, reply) => {
    const created = await mergeAdapter(registry, req.params.name, versionOf(req.params.name, req.params.v));
    log.info(`model ${created.name} v${created.version}: adapter v${created.lineage.parent?.version} merged into its base`);
    return reply.code(201).send(created);
  });

  app.post('/api/gateways', async (req, reply) => {
    if (!req.headers.authorization) throw new CoordinatorError('CRD_ERR_FORBIDDEN', 'gateways announce themselves with the cluster token, not a dashboard session');
    const problems = announcementProblems(req.body);
    if (problems.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid gateway announcement: ${problems.join('; ')}`, { details: problems });
    const a = req.body as { name: string; url: string; adminKey: string };
    if (gateways.announce(a)) {
      log.info(`gateway ${a.name} at ${a.url} announced itself`);
      bus.emit('gateway', { name: a.name });
    }
    return reply.code(201).send({ ok: true });
  });
  app.get('/api/gateways', async () => ({ gateways: gateways.list() }));
  type Relayed = { Params: { gw: string; name?: string } };
  const deploymentPath = (name: string | undefined, tail = '') => `/deployments${name === undefined ? '' : `/${encodeURIComponent(name)}`}${tail}`;
  for (const tail of ['', '/:name', '/:name/comparison']) {
    app.get<Relayed>(`/api/gateways/:gw/deployments${tail}`, async (req, reply) => {
      const r = await gateways.relay(req.params.gw, 'GET', deploymentPath(req.params.name, tail.endsWith('/comparison') ? '/comparison' : ''));
      return reply.code(r.status).send(r.body);
    });
  }
  for (const action of ['promote', 'rollback'] as const) {
    app.post<Relayed>(`/api/gateways/:gw/deployments/:name/${action}`, async (req, reply) => {
      const r = await gateways.relay(req.params.gw, 'POST', deploymentPath(req.params.name, `/${action}`), req.body ?? {});
      if (r.status < 300) bus.emit('gateway', { name: req.params.gw });
      return reply.code(r.status).send(r.body);
    });
  }

  // Slow-loris and flood guards (common/conn-limits.ts); the hub caps agents that have not said hello yet.
  limitServer(app.server as import('node:http').Server, cfg);
  app.server.on('upgrade', (req, socket, head) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/ws/agent') hub.handleUpgrade(req, socket, head);
    else {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    }
  });

  let closed = false;
  return {
    app,
    hub,
    groups,
    store,
    jobs,
    registry,
    artifacts,
    runs,
    generatedToken,
    routes: () => [...routeTable].sort(),
    async listen() {
      await app.listen({ host: cfg.host, port: cfg.port });
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr ? addr.port : cfg.port;
      return { port, host: cfg.host };
    },
    async close() {
      if (closed) return;
      closed = true;
      streams.close();
      sweeps.close();
      runner.close();
      hub.close();
      await app.close();
      store.close();
    },
  };
}
