/**
 * The coordinator process: fastify for the HTTP API, /healthz and /metrics; the agent WebSocket endpoint
 * (/ws/agent) on the same port; SQLite state and the artifact store under --data. This file wires the stores,
 * runners and directories together, builds the fastify app with the one access hook and error handler every route
 * goes through, and registers the routes: one fastify plugin per resource, each handed what it needs
 * (routes/context.ts). Each plugin's header lists its routes:
 *
 *   routes/monitoring.ts    GET /healthz, GET /metrics (no auth)
 *   routes/auth.ts          POST /api/login, POST /api/logout, GET /api/session (no auth): dashboard sessions
 *   routes/events.ts        GET /api/events: the live feed, server-sent events (live-stream.ts)
 *   routes/nodes.ts         /api/nodes…: the agents, one agent's events, revoking one
 *   routes/groups.ts        /api/groups…, POST /api/selfcheck: ring groups, collectives, the self-check
 *   routes/jobs.ts          /api/jobs…: submit, list, live view, plan, replan, cancel
 *   routes/runs.ts          /api/runs…, /api/sweeps…: experiment tracking and hyper-parameter sweeps
 *   routes/artifacts.ts     PUT|GET|HEAD /api/artifacts/:sha256: content-addressed bytes, streamed
 *   routes/models.ts        /api/models…: the registry, lineage, quantize, import, adapter merge
 *   routes/gateways.ts      /api/gateways…: gateway announcements and the deployment calls relayed to them
 *   ../dashboard/routes.ts  GET /, /dashboard/…: the dashboard's static files (no data without a session)
 *
 * Two WebSocket endpoints ride the same port's upgrades (access.ts UPGRADE_ROUTES): /ws/agent, the agents' control
 * channel (cluster/agent-hub.ts), and /ws/relay, peer links to agents nobody can dial (cluster/relay.ts).
 *
 * Every route needs `Authorization: Bearer <cluster token>` or the dashboard's session cookie unless access.ts
 * lists it as public. Plugins are registered without a prefix, so the pattern a request is matched to
 * (`routeOptions.url`, what access.ts decides on) is exactly the URL its plugin wrote. Request bodies and query
 * strings are checked by the schemas in schemas.ts; a failure is a 400 CRD_ERR_BAD_REQUEST naming each problem.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import Fastify, { type FastifyInstance, type FastifyError, type FastifyPluginAsync, type FastifyReply } from 'fastify';
import type { Logger } from '../../common/log.ts';
import { logRequest, requestLogging } from '../../common/request-log.ts';
import { loadServerTls, type ServerTls } from '../../common/tls.ts';
import { decideAccess, stalePublicRoutes } from './access.ts';
import { AgentHub, sha256Hex } from '../cluster/agent-hub.ts';
import { limitServer } from '../../common/conn-limits.ts';
import { ArtifactStore } from '../store/artifact-store.ts';
import type { CoordinatorConfig } from '../config.ts';
import { CoordinatorError } from '../errors.ts';
import { GroupManager } from '../cluster/groups.ts';
import { CoordinatorRelay, RELAY_PATH } from '../cluster/relay.ts';
import { SqliteJobStore, type JobStore } from '../store/job-store.ts';
import { JobRunner } from '../jobs/runner.ts';
import { bindJobMetrics, createMetrics } from '../metrics.ts';
import { dashboardRoutes } from '../dashboard/routes.ts';
import { EventBus } from '../events.ts';
import { GatewayDirectory } from '../cluster/gateways.ts';
import { LiveStreams } from './live-stream.ts';
import { sessionIdOf, SessionStore } from './sessions.ts';
import { ModelRegistry } from '../registry/registry.ts';
import { SqliteStateStore, type StateStore } from '../store/state-store.ts';
import { formatCodeVersion, readCodeVersion } from '../code-version.ts';
import { SqliteRunStore, type RunStore } from '../store/run-store.ts';
import { SqliteSweepStore } from '../store/sweep-store.ts';
import { SweepRunner } from '../tracking/sweeps.ts';
import { jobSummaries, nodeViews } from './views.ts';
import type { ApiContext } from './routes/context.ts';
import { artifactRoutes } from './routes/artifacts.ts';
import { authRoutes } from './routes/auth.ts';
import { eventRoutes } from './routes/events.ts';
import { gatewayRoutes } from './routes/gateways.ts';
import { groupRoutes } from './routes/groups.ts';
import { jobRoutes, jobSubmitter } from './routes/jobs.ts';
import { modelRoutes } from './routes/models.ts';
import { monitoringRoutes } from './routes/monitoring.ts';
import { nodeRoutes } from './routes/nodes.ts';
import { runsRoutes } from './routes/runs.ts';

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
  const relay = new CoordinatorRelay({ targets: hub, ticketGroup: (ticket, to) => groups.ticketGroup(ticket, to), log: log.child('relay'), metrics });
  // Agent relays (groups.ts picks them) report what they carried; the nodes API shows it as the coordinator's own.
  hub.onAgentMessage((nodeId, msg) => {
    if (msg.type !== 'relay.stats') return;
    const name = hub.views().find((n) => n.id === nodeId)?.name ?? nodeId;
    relay.reportAgentRelay(name, msg.links.filter((l) => groups.isAgentRelayOf(nodeId, l.nodeId)));
  });
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
  const nodes = () => nodeViews(hub, runner, relay);
  const jobList = () => jobSummaries(jobs);
  const streams = new LiveStreams(bus, {
    nodes,
    jobs: jobList,
    live: (id) => runner.live(id),
    models: () => registry.models(),
    gateways: () => gateways.list(),
  });
  const submitJob = jobSubmitter({ jobs, runs, registry, runner, bus, log, codeVersion }); // POST /api/jobs and each sweep trial
  const sweeps = new SweepRunner({
    sweeps: new SqliteSweepStore(store.database),
    jobs,
    submitJob,
    cancelJob: (id, reason) => runner.cancel(id, reason),
    bus,
    log: log.child('sweeps'),
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

  // Every error body has one shape: {error: {code, message, details?}}.
  const sendError = (reply: FastifyReply, status: number, code: CoordinatorError['code'], message: string, details?: string[]) =>
    reply.code(status).send({ error: { code, message, ...(details ? { details } : {}) } });
  app.setErrorHandler((err: FastifyError | CoordinatorError, req, reply) => {
    if (err instanceof CoordinatorError) return sendError(reply, err.statusCode, err.code, err.message, err.details);
    if ((err as FastifyError).validation) {
      const details = (err as FastifyError).validation!.map((v) => `${v.instancePath || '/'} ${v.message ?? 'is invalid'}${v.params && 'additionalProperty' in v.params ? ` '${String(v.params.additionalProperty)}'` : ''}${v.params && Array.isArray(v.params.allowedValues) ? ` (${v.params.allowedValues.join(', ')})` : ''}`);
      return sendError(reply, 400, 'CRD_ERR_BAD_REQUEST', `invalid request: ${details.join('; ')}`, details);
    }
    const status = (err as FastifyError).statusCode ?? 500;
    if (status >= 500) log.error(`${req.method} ${req.url}: ${(err as Error).stack}`);
    return sendError(reply, status, status >= 500 ? 'CRD_ERR_INTERNAL' : 'CRD_ERR_BAD_REQUEST', (err as Error).message);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, 'CRD_ERR_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`));

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

  // Artifact uploads arrive as raw bytes, streamed to disk (routes/artifacts.ts). The parser is the root's, not the
  // artifact plugin's: registered inside it, it would not reach other plugins, and a raw body sent to a JSON route
  // would become a 415 instead of that route's 400.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  const ctx: ApiContext = {
    log, clusterId, store, hub, groups, jobs, runner, runs, sweeps, registry, artifacts, gateways, sessions, streams, bus, metrics,
    segmentBytes: DEFAULT_SEGMENT_BYTES, isClusterToken, nodeViews: nodes, jobSummaries: jobList, submitJob,
  };
  const plugins: FastifyPluginAsync<ApiContext>[] = [
    monitoringRoutes, authRoutes, eventRoutes, nodeRoutes, groupRoutes, jobRoutes, runsRoutes, artifactRoutes, modelRoutes, gatewayRoutes,
  ];
  app.register(dashboardRoutes);
  for (const plugin of plugins) app.register(plugin, ctx); // no prefix (see the header)

  // Slow-loris and flood guards (common/conn-limits.ts); the hub caps agents that have not said hello yet.
  limitServer(app.server as import('node:http').Server, cfg);
  app.server.on('upgrade', (req, socket, head) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/ws/agent') hub.handleUpgrade(req, socket, head);
    else if (path === RELAY_PATH) relay.handleUpgrade(req, socket, head);
    else {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    }
  });

  let closed = false;
  return {
    app, hub, groups, store, jobs, registry, artifacts, runs, generatedToken,
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
      relay.close();
      hub.close();
      await app.close();
      store.close();
    },
  };
}
