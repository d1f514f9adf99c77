/**
 * gateway serve --registry DIR|URL [--port 8080] [--host H] [--token T] [--api-key K]... [--admin-key K]
 *               [--model NAME[@vN]]... [--max-batch-size 16] [--max-batch-wait-ms 2] [--max-body-bytes 1048576]
 *               [--max-prompt-tokens N] [--rate-limit RPS [--rate-burst N]] [--drain-timeout-ms 10000]
 *               [--deployments FILE] [--audit-log FILE] [--shadow-queue 64] [--shadow-concurrency 4]
 *               [--shadow-max-age-ms 30000]
 * gateway serve --fake [--model NAME]...      the test backend, no registry (development only)
 * gateway deploy --url URL --admin-key K NAME --primary MODEL@vN [--arm MODEL@vN:W]... [--shadow MODEL@vN[:PCT]]...
 *                [--rollout JSON] [--sticky-header H] --reason TEXT
 * gateway promote --url URL --admin-key K NAME --version MODEL@vN --reason TEXT
 * gateway rollback --url URL --admin-key K NAME --reason TEXT
 * gateway comparison --url URL --admin-key K NAME
 *
 * Entry point of bin/gateway.js, which passes the model backend factory in (`runCli(argv, { backendFactory })`):
 * the gateway itself knows nothing about how a model runs. Exit codes: 0 ok, 1 error, 2 bad arguments.
 */
import { createLogger, type Logger } from '../common/log.ts';
import { intOption, parseCli, UsageError } from '../common/cli.ts';
import { DEFAULT_CONNECTION_LIMITS } from '../common/conn-limits.ts';
import { readFileSync } from 'node:fs';
import { DeploymentManager, loadDeploymentsFile, type VersionResolver } from './deployments.ts';
import { GatewayError } from './errors.ts';
import { FakeBackend } from './fake-backend.ts';
import type { InferenceBackend } from './inference-backend.ts';
import { DEFAULT_BATCH_SETTINGS, MAX_BATCH_SIZE, MAX_BATCH_WAIT_MS } from './batch-scheduler.ts';
import type { RateLimit } from './rate-limit.ts';
import { openRegistry, type BackendFactory } from './registry-source.ts';
import { BACKENDS, isBackendChoice } from '../protocol/backends.ts';
import { withAdapterBases } from './adapter-source.ts';
import { withTrainingLineage } from './training-lineage.ts';
import { DEFAULT_SHADOW_SETTINGS } from './shadow.ts';
import { apiKeyList, createGateway, DEFAULT_BODY_LIMIT, DEFAULT_DRAIN_TIMEOUT_MS } from './server.ts';
import { initTracing } from '../common/tracing.ts';
import { hostname } from 'node:os';
import { localAddressToward, startAnnouncing } from './announce.ts';
import { fetchTrusting, loadServerTls, loadTrust, tlsPairProblems, type ServerTls } from '../common/tls.ts';

export const DEFAULT_PORT = 8080;
export const DEFAULT_HOST = '0.0.0.0';

const HELP = `Usage: gateway serve [options]
       gateway deploy --url URL --admin-key K NAME --primary MODEL@vN [--arm MODEL@vN:WEIGHT]...
                      [--shadow MODEL@vN[:PERCENT]]... [--rollout JSON] --reason TEXT
       gateway promote --url URL --admin-key K NAME --version MODEL@vN --reason TEXT
       gateway rollback --url URL --admin-key K NAME --reason TEXT
       gateway comparison --url URL --admin-key K NAME

The meshtrain inference gateway: serves trained model versions from the coordinator's registry over an
OpenAI-compatible HTTP API (POST /v1/completions and /v1/chat/completions with SSE streaming, GET /v1/models,
/healthz, /metrics).

Options:
  --registry DIR|URL    where model versions come from: the coordinator's registry folder (<data>/registry)
                        or its API (http://HOST:7070); every file is checked against its sha256
  --model NAME[@vN]     serve this model (repeatable; default: every model in the registry), at its latest
                        version or the one given
  --port PORT           HTTP port (default: ${DEFAULT_PORT}; 0 = any free port)
  --host HOST           interface to bind (default: ${DEFAULT_HOST})
  --token TOKEN         cluster token for --registry URL (or MESHTRAIN_TOKEN). With an --admin-key too, the
                        gateway announces itself to that coordinator every 10 s so its dashboard shows the
                        deployments and can promote or roll back (the admin key goes to the coordinator only)
  --name NAME           how the gateway appears on the coordinator's dashboard (default: HOSTNAME-PORT)
  --advertise URL       where the coordinator reaches this gateway (default: http://<our address toward the
                        coordinator>:PORT; https:// with --tls-cert)
  --ca PATH             trust this PEM CA for an https:// --registry coordinator (or set NODE_EXTRA_CA_CERTS)
  --tls-cert PATH       serve HTTPS with this PEM certificate (chain); needs --tls-key
  --tls-key PATH        the PEM private key of --tls-cert
  --api-key KEY         require 'Authorization: Bearer KEY' on /v1 routes; repeatable or comma-separated for
                        several keys, each with its own rate limit (or MESHTRAIN_GATEWAY_API_KEY, comma-separated)
  --admin-key KEY       the key for /admin routes such as GET /admin/status (or MESHTRAIN_GATEWAY_ADMIN_KEY);
                        without one admin routes answer 403; API keys never open them
  --max-body-bytes N    larger request bodies get 413 (default: ${DEFAULT_BODY_LIMIT}, 1 MiB)
  --max-prompt-tokens N longer prompts get 400 (default: each model's context length)
  --rate-limit RPS      per client (API key, or IP when no keys are set): at most RPS requests a second on /v1
                        routes, token bucket; over it, 429 with Retry-After (default: no limit)
  --rate-burst N        requests a client may send at once after being idle (default: RPS rounded up)
  --drain-timeout-ms MS on SIGTERM/SIGINT stop taking requests (503) and let running ones finish for up to MS,
                        then cut them and exit (default: ${DEFAULT_DRAIN_TIMEOUT_MS})
  --headers-timeout-ms MS
                        answer 408 and cut a client that has not sent its request head by then (slow-loris guard;
                        default: ${DEFAULT_CONNECTION_LIMITS.headersTimeoutMs})
  --max-connections N   open sockets beyond which new ones are dropped at once (default: ${DEFAULT_CONNECTION_LIMITS.maxConnections})
  --backend B           compute backend for registry models: auto (a hardware GPU through WebGPU, then
                        tfjs-node(-gpu), then wasm), webgpu, wasm, cpu, … (default: MESHTRAIN_BACKEND or auto)
  --max-batch-size N    dynamic batching: at most N sequences (request choices) share a forward pass per
                        generation step (default: ${DEFAULT_BATCH_SETTINGS.maxBatchSize}; 1 = no batching)
  --max-batch-wait-ms MS
                        an idle model waits up to MS for more requests before starting a batch that is not
                        full (default: ${DEFAULT_BATCH_SETTINGS.maxWaitMs}); running sequences never wait for company
  --fake                TEST/DEVELOPMENT ONLY: serve FakeBackend, a deterministic character-level toy that
                        outputs gibberish, instead of trained models (no --registry; names from --model,
                        default 'fake-char'); for trying the API, clients and dashboards end to end
  --deployments FILE    named deployments to install at start: a JSON array of {name, primary: {model, version},
                        arms?: [{model, version, weight}], shadows?: [{model, version, percent}], stickyHeader?,
                        rollout?} (README: Deployments)
  --audit-log FILE      append every deployment change (who, when, old → new, why) to FILE as JSON lines
  --shadow-queue N      mirrored requests waiting per shadow version; beyond it mirrors are dropped and counted
                        (default: ${DEFAULT_SHADOW_SETTINGS.queueCapacity})
  --shadow-concurrency N
                        mirrors of one shadow version generating at once (default: ${DEFAULT_SHADOW_SETTINGS.concurrency}); they
                        run only while no client request waits or runs
  --shadow-max-age-ms MS
                        a mirror that waited longer is dropped as stale (default: ${DEFAULT_SHADOW_SETTINGS.maxAgeMs})
  -h, --help            show this help

Deployments (deploy, promote, rollback, comparison: the admin API of a running gateway):
  --url URL             the gateway (http://HOST:PORT)
  --primary MODEL@vN    the version serving the traffic the arms leave (1 − Σ arm weights)
  --arm MODEL@vN:W      an A/B arm with weight W in [0, 1] (repeatable; weights sum to ≤ 1)
  --shadow MODEL@vN[:PCT]
                        a shadow version getting copies of PCT% (default 100) of the primary's requests,
                        compared and never returned (repeatable)
  --rollout JSON        the rollout policy: {success?, sprt?, autoPromote?, guard?} (README: Rollouts)
  --version MODEL@vN    promote: the shadow or arm that becomes the primary
  --sticky-header H     header holding the sticky key (default x-meshtrain-key; else the request's user field)
  --reason TEXT         why: recorded in the audit log (required for deploy, promote, rollback)

Examples:
  gateway serve --registry ./cluster/registry --api-key secret
  gateway serve --registry ./cluster/registry --api-key team-a,team-b --admin-key ops --rate-limit 5 --rate-burst 20
  gateway serve --registry http://127.0.0.1:7070 --token <cluster token> --model tiny@v2
  gateway serve --fake --port 8080
  curl localhost:8080/v1/completions -H 'content-type: application/json' \\
       -d '{"model": "fake-char", "prompt": "Hello", "max_tokens": 16}'
`;

export interface CliDeps {
  /** Turns a registry version into a running backend; absent until model/ provides one. */
  backendFactory?: BackendFactory;
  log?: Logger;
  /** Resolves when the server should stop (default: SIGINT or SIGTERM). */
  stopSignal?: Promise<string>;
  out?: (line: string) => void;
  /** Where error messages go (default: stderr). */
  err?: (text: string) => void;
}

export async function runCli(argv: string[], deps: CliDeps = {}): Promise<number> {
  const out = deps.out ?? ((line: string) => process.stdout.write(line + '\n'));
  const errOut = deps.err ?? ((text: string) => process.stderr.write(text));
  try {
    return await main(argv, deps, out);
  } catch (err) {
    if (err instanceof UsageError) {
      errOut(`gateway: ${err.message}\nRun 'gateway --help' for usage.\n`);
      return 2;
    }
    if (err instanceof GatewayError) {
      errOut(`gateway: ${err.code}: ${err.message}\n`);
      return err.code === 'GW_ERR_BAD_ARGS' ? 2 : 1;
    }
    const code = (err as { code?: unknown }).code;
    // Errors with a stable code (a model that fails to load, say) are the user's to fix: the message says how.
    if (typeof code === 'string' && /^[A-Z]+_ERR_/.test(code)) errOut(`gateway: ${code}: ${(err as Error).message}\n`);
    else errOut(`gateway: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

async function main(argv: string[], deps: CliDeps, out: (line: string) => void): Promise<number> {
  const { values: v, positionals } = parseCli(argv, {
    registry: { type: 'string' },
    model: { type: 'string', multiple: true },
    port: { type: 'string' },
    host: { type: 'string' },
    token: { type: 'string' },
    'api-key': { type: 'string', multiple: true },
    'admin-key': { type: 'string' },
    'max-body-bytes': { type: 'string' },
    'max-prompt-tokens': { type: 'string' },
    'rate-limit': { type: 'string' },
    'rate-burst': { type: 'string' },
    'drain-timeout-ms': { type: 'string' },
    'headers-timeout-ms': { type: 'string' },
    'max-connections': { type: 'string' },
    'max-batch-size': { type: 'string' },
    backend: { type: 'string' },
    'max-batch-wait-ms': { type: 'string' },
    fake: { type: 'boolean' },
    deployments: { type: 'string' },
    'audit-log': { type: 'string' },
    name: { type: 'string' },
    advertise: { type: 'string' },
    ca: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    url: { type: 'string' },
    primary: { type: 'string' },
    arm: { type: 'string', multiple: true },
    shadow: { type: 'string', multiple: true },
    rollout: { type: 'string' },
    version: { type: 'string' },
    'shadow-queue': { type: 'string' },
    'shadow-concurrency': { type: 'string' },
    'shadow-max-age-ms': { type: 'string' },
    'sticky-header': { type: 'string' },
    reason: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  });
  const [command, ...rest] = positionals;
  if (v.help || !command) {
    process.stdout.write(HELP);
    return v.help ? 0 : 2;
  }
  if (command === 'deploy' || command === 'rollback' || command === 'promote' || command === 'comparison') return deployCommand(command, rest, v, out);
  if (command !== 'serve') throw new UsageError(`unknown command '${command}'; the commands are serve, deploy, promote, rollback and comparison`);
  if (rest.length) throw new UsageError(`unexpected argument '${rest[0]}'`);
  if (v.fake && v.registry) throw new UsageError('--fake serves the test backend and reads no registry: give --fake or --registry, not both');
  if (!v.fake && !v.registry) throw new UsageError('missing --registry DIR|URL (or --fake for the test backend)');
  const port = intOption(v.port, 'port', DEFAULT_PORT, 0, 65535);
  const host = v.host ?? DEFAULT_HOST;
  let https: ServerTls | undefined, trustingFetch: typeof fetch;
  try {
    const problems = tlsPairProblems(v['tls-cert'], v['tls-key']);
    if (problems.length) throw new Error(problems.join('; '));
    if (v['tls-cert'] !== undefined && v['tls-key'] !== undefined) https = loadServerTls(v['tls-cert'], v['tls-key']);
    trustingFetch = fetchTrusting(v.ca === undefined ? undefined : loadTrust(v.ca));
  } catch (err) {
    throw new GatewayError('GW_ERR_BAD_ARGS', (err as Error).message, { cause: err });
  }
  const apiKeys = apiKeyList(v['api-key'] ?? process.env.MESHTRAIN_GATEWAY_API_KEY);
  const adminKey = (v['admin-key'] ?? process.env.MESHTRAIN_GATEWAY_ADMIN_KEY) || undefined;
  if (adminKey !== undefined && apiKeys.includes(adminKey)) throw new UsageError('--admin-key must differ from every --api-key');
  const bodyLimit = intOption(v['max-body-bytes'], 'max-body-bytes', DEFAULT_BODY_LIMIT, 1);
  const maxPromptTokens = v['max-prompt-tokens'] === undefined ? undefined : intOption(v['max-prompt-tokens'], 'max-prompt-tokens', 0, 1);
  const drainTimeoutMs = intOption(v['drain-timeout-ms'], 'drain-timeout-ms', DEFAULT_DRAIN_TIMEOUT_MS, 0);
  const limits = {
    headersTimeoutMs: intOption(v['headers-timeout-ms'], 'headers-timeout-ms', DEFAULT_CONNECTION_LIMITS.headersTimeoutMs, 1),
    maxConnections: intOption(v['max-connections'], 'max-connections', DEFAULT_CONNECTION_LIMITS.maxConnections, 1),
  };
  const rateLimit = rateLimitOptions(v['rate-limit'], v['rate-burst']);
  const log = deps.log ?? createLogger('gateway');
  const wanted = (v.model ?? []).map(parseModelArg);
  const batching = {
    maxBatchSize: intOption(v['max-batch-size'], 'max-batch-size', DEFAULT_BATCH_SETTINGS.maxBatchSize, 1, MAX_BATCH_SIZE),
    maxWaitMs: intOption(v['max-batch-wait-ms'], 'max-batch-wait-ms', DEFAULT_BATCH_SETTINGS.maxWaitMs, 0, MAX_BATCH_WAIT_MS),
  };

  const backends = new Map<string, InferenceBackend>();
  let resolve: VersionResolver;
  if (v.fake) {
    resolve = async (model) => new FakeBackend({ id: model });
    for (const { name, version } of wanted.length ? wanted : [{ name: 'fake-char', version: undefined }]) {
      if (version !== undefined) throw new UsageError(`--fake has no versions: use --model ${name}`);
      backends.set(name, new FakeBackend({ id: name }));
    }
    log.warn(`serving FakeBackend (${[...backends.keys()].join(', ')}): a deterministic test toy, not a trained model`);
  } else {
    // Adapter versions (LoRA) come with their base's files: the factory serves the base with the adapter attached.
    // A quantized or merged version is served with the chat template its ancestor was trained with.
    const registry = withTrainingLineage(withAdapterBases(openRegistry(v.registry!, { token: v.token ?? process.env.MESHTRAIN_TOKEN, fetch: trustingFetch })));
    const available = await registry.models();
    const chosen = wanted.length ? wanted : available.map((name) => ({ name, version: undefined }));
    if (chosen.length === 0) throw new GatewayError('GW_ERR_REGISTRY', `no models registered in ${v.registry}`);
    for (const { name } of chosen) {
      if (!available.includes(name)) throw new GatewayError('GW_ERR_REGISTRY', `no model '${name}' in ${v.registry}; registered: ${available.join(', ') || 'none'}`);
    }
    const factory = deps.backendFactory;
    const computeBackend = v.backend ?? process.env.MESHTRAIN_BACKEND ?? 'auto';
    if (!isBackendChoice(computeBackend)) throw new UsageError(`--backend must be one of ${BACKENDS.join(', ')}, got '${computeBackend}'`);
    const backend = computeBackend;
    resolve = async (model, version) => {
      if (!factory) throw new GatewayError('GW_ERR_NO_BACKEND', 'this gateway has no model backend to run registry models');
      const { files, meta } = await registry.load(model, version);
      return factory(files, meta, { backend });
    };
    if (!factory) {
      throw new GatewayError(
        'GW_ERR_NO_BACKEND',
        `cannot serve ${chosen.map((c) => c.name).join(', ')}: this gateway has no model backend to run registry models (model/ does not provide a BackendFactory yet). ` +
          'Use --fake to run the gateway with its test backend.',
      );
    }
    for (const { name, version } of chosen) {
      const { files, meta } = await registry.load(name, version);
      if (!meta.verified) log.warn(`model ${name} v${meta.version}: ${meta.source} has no manifest (manifest.json or the coordinator's state.db); its files are NOT checksum-verified`);
      const backend = await factory(files, meta, { backend: computeBackend });
      backends.set(name, backend);
      log.info(`model ${name} v${meta.version} loaded from ${meta.source} (context ${backend.info.contextLength}, vocabulary ${backend.info.vocabSize})`);
    }
  }

  const shadow = {
    queueCapacity: intOption(v['shadow-queue'], 'shadow-queue', DEFAULT_SHADOW_SETTINGS.queueCapacity, 0, 1_000_000),
    concurrency: intOption(v['shadow-concurrency'], 'shadow-concurrency', DEFAULT_SHADOW_SETTINGS.concurrency, 1, 1024),
    maxAgeMs: intOption(v['shadow-max-age-ms'], 'shadow-max-age-ms', DEFAULT_SHADOW_SETTINGS.maxAgeMs, 1),
  };
  const deployments = new DeploymentManager({ resolve, shadow, reserved: (name) => backends.has(name), ...(v['audit-log'] ? { auditLogPath: v['audit-log'] } : {}) });
  if (v.deployments) {
    let text: string;
    try {
      text = readFileSync(v.deployments, 'utf8');
    } catch (err) {
      throw new GatewayError('GW_ERR_BAD_ARGS', `cannot read --deployments ${v.deployments}: ${(err as Error).message}`, { cause: err });
    }
    await loadDeploymentsFile(deployments, text, v.deployments);
    log.info(`deployments from ${v.deployments}: ${deployments.list().map((d) => d.name).join(', ') || 'none'}`);
  }
  const tracing = await initTracing('gateway'); // off unless OTEL_* asks for traces (common/tracing.ts)
  const gateway = createGateway({ backends, apiKey: apiKeys, adminKey, rateLimit, maxPromptTokens, bodyLimit, drainTimeoutMs, limits, log, batching, deployments, ...(https ? { https } : {}) });
  const { port: bound } = await gateway.listen({ port, host });
  // Machine-readable first line: tests and scripts wait for it.
  out(`gateway listening on ${https ? 'https' : 'http'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${bound}`);
  // Reading models from a coordinator's API: tell it where we are, so its dashboard can manage our deployments.
  let stopAnnouncing = () => {};
  if (v.registry && /^https?:\/\//.test(v.registry)) {
    const token = v.token ?? process.env.MESHTRAIN_TOKEN;
    if (!adminKey) log.info('no --admin-key: not announcing this gateway to the coordinator (its dashboard could not manage deployments without one)');
    else if (token) {
      const shownHost = host === '0.0.0.0' || host === '::' ? ((await localAddressToward(v.registry)) ?? '127.0.0.1') : host;
      const url = v.advertise ?? `${https ? 'https' : 'http'}://${shownHost.includes(':') ? `[${shownHost}]` : shownHost}:${bound}`;
      stopAnnouncing = startAnnouncing({ fetch: trustingFetch, coordinatorUrl: v.registry, token, name: v.name ?? `${hostname()}-${bound}`, url, adminKey, log });
    }
  }
  // Keys are never logged, not even in part: only how many there are.
  if (apiKeys.length) log.info(`API key required on /v1 routes (${apiKeys.length} key${apiKeys.length > 1 ? 's' : ''} accepted)`);
  else if (host !== '127.0.0.1' && host !== 'localhost' && host !== '::1') log.warn(`no --api-key: anyone who can reach ${host}:${bound} can use the models`);

  const sig = await (deps.stopSignal ??
    new Promise<string>((resolve) => {
      process.once('SIGINT', () => resolve('SIGINT'));
      process.once('SIGTERM', () => resolve('SIGTERM'));
    }));
  log.info(`${sig}: draining (running requests get up to ${drainTimeoutMs} ms), then shutting down`);
  stopAnnouncing();
  await gateway.close();
  await tracing.shutdown(); // flush the last requests' spans
  return 0;
}

function rateLimitOptions(rps: string | undefined, burst: string | undefined): RateLimit | undefined {
  if (rps === undefined) {
    if (burst !== undefined) throw new UsageError('--rate-burst needs --rate-limit RPS');
    return undefined;
  }
  const perSecond = Number(rps);
  if (!Number.isFinite(perSecond) || perSecond <= 0) throw new UsageError(`--rate-limit must be a positive number of requests per second, got '${rps}'`);
  return { rps: perSecond, burst: intOption(burst, 'rate-burst', Math.ceil(perSecond), 1) };
}

function parseModelArg(arg: string): { name: string; version: number | undefined } {
  const m = /^([^@]+)(?:@v?([1-9][0-9]*))?$/.exec(arg);
  if (!m) throw new UsageError(`--model '${arg}' should be NAME or NAME@vN`);
  return { name: m[1]!, version: m[2] === undefined ? undefined : Number(m[2]) };
}

/** `gateway deploy|promote|rollback|comparison`: one admin API call; prints what the gateway answers with. */
async function deployCommand(command: 'deploy' | 'promote' | 'rollback' | 'comparison', rest: string[], v: Record<string, unknown>, out: (line: string) => void): Promise<number> {
  const [name, ...extra] = rest;
  if (!name) throw new UsageError(`gateway ${command} needs a deployment NAME`);
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const url = v.url as string | undefined;
  const adminKey = (v['admin-key'] as string | undefined) ?? process.env.MESHTRAIN_GATEWAY_ADMIN_KEY;
  const reason = v.reason as string | undefined;
  if (!url) throw new UsageError('missing --url http://HOST:PORT of the gateway');
  if (!adminKey) throw new UsageError('missing --admin-key (or MESHTRAIN_GATEWAY_ADMIN_KEY)');
  if (!reason && command !== 'comparison') throw new UsageError('missing --reason TEXT: every change is audited with why');
  const base = `/admin/deployments/${encodeURIComponent(name)}`;
  if (command !== 'deploy' && (v.primary || v.arm || v.shadow || v.rollout)) throw new UsageError(`gateway ${command} takes no --primary, --arm, --shadow or --rollout (those are for deploy)`);
  if (command !== 'promote' && v.version) throw new UsageError('--version is for gateway promote');
  let request: { method: string; path: string; body?: Record<string, unknown> };
  if (command === 'deploy') {
    if (!v.primary) throw new UsageError('missing --primary MODEL@vN');
    const arms = ((v.arm as string[] | undefined) ?? []).map((a) => {
      const m = /^(.+):([0-9.]+)$/.exec(a);
      if (!m) throw new UsageError(`--arm '${a}' should be MODEL@vN:WEIGHT`);
      return { ...parseVersionArg(m[1]!, '--arm'), weight: Number(m[2]) };
    });
    const shadows = ((v.shadow as string[] | undefined) ?? []).map((a) => {
      const m = /^(.+?)(?::([0-9.]+))?$/.exec(a)!;
      return { ...parseVersionArg(m[1]!, '--shadow'), percent: m[2] === undefined ? 100 : Number(m[2]) };
    });
    let rollout: unknown;
    if (v.rollout !== undefined) {
      try {
        rollout = JSON.parse(v.rollout as string);
      } catch (err) {
        throw new UsageError(`--rollout must be JSON such as '{"autoPromote": true}': ${(err as Error).message}`);
      }
    }
    request = {
      method: 'PUT',
      path: base,
      body: { primary: parseVersionArg(v.primary as string, '--primary'), arms, shadows, reason, ...(rollout === undefined ? {} : { rollout }), ...(v['sticky-header'] ? { stickyHeader: v['sticky-header'] } : {}) },
    };
  } else if (command === 'promote') {
    if (!v.version) throw new UsageError('missing --version MODEL@vN: the shadow or arm to promote');
    parseVersionArg(v.version as string, '--version');
    request = { method: 'POST', path: `${base}/promote`, body: { version: v.version, reason } };
  } else if (command === 'rollback') request = { method: 'POST', path: `${base}/rollback`, body: { reason } };
  else request = { method: 'GET', path: `${base}/comparison` };
  let res: Response;
  try {
    res = await fetch(`${url.replace(/\/+$/, '')}${request.path}`, {
      method: request.method,
      headers: { authorization: `Bearer ${adminKey}`, ...(request.body ? { 'content-type': 'application/json' } : {}) },
      ...(request.body ? { body: JSON.stringify(request.body) } : {}),
    });
  } catch (err) {
    throw new GatewayError('GW_ERR_ADMIN_CALL', `cannot reach the gateway at ${url}: ${(err as Error).message}`, { cause: err });
  }
  const doc = (await res.json().catch(() => ({}))) as { deployment?: unknown; error?: { message?: string; code?: string | null } };
  if (!res.ok) {
    throw new GatewayError('GW_ERR_ADMIN_CALL', `${request.method} ${request.path}: ${res.status} ${doc.error?.message ?? res.statusText}`);
  }
  out(JSON.stringify(command === 'comparison' ? doc : doc.deployment));
  return 0;
}

function parseVersionArg(arg: string, option: string): { model: string; version: number } {
  const m = /^([^@]+)@v?([1-9][0-9]*)$/.exec(arg);
  if (!m) throw new UsageError(`${option} '${arg}' should be MODEL@vN`);
  return { model: m[1]!, version: Number(m[2]) };
}
