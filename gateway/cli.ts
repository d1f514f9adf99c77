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
import { UsageError } from '../common/cli.ts';
import { parseCommandLine, type RawValues } from '../common/options.ts';
import { readFileSync } from 'node:fs';
import { DeploymentManager, loadDeploymentsFile, type VersionResolver } from './deployments.ts';
import { GatewayError } from './errors.ts';
import { FakeBackend } from './fake-backend.ts';
import type { InferenceBackend } from './inference-backend.ts';
import type { RateLimit } from './rate-limit.ts';
import { openRegistry, type BackendFactory } from './registry-source.ts';
import { withAdapterBases } from './adapter-source.ts';
import { withTrainingLineage } from './training-lineage.ts';
import { apiKeyList, createGateway } from './server.ts';
import { ADMIN_OPTIONS, SERVE_OPTIONS } from './options.ts';
import { initTracing } from '../common/tracing.ts';
import { hostname } from 'node:os';
import { localAddressToward, startAnnouncing } from './announce.ts';
import { fetchTrusting, loadServerTls, loadTrust, tlsPairProblems, type ServerTls } from '../common/tls.ts';

export { DEFAULT_HOST, DEFAULT_PORT } from './options.ts';

const HELP = `Usage: gateway serve [options]
       gateway deploy --url URL --admin-key K NAME --primary MODEL@vN [--arm MODEL@vN:WEIGHT]...
                      [--shadow MODEL@vN[:PERCENT]]... [--rollout JSON] --reason TEXT
       gateway promote --url URL --admin-key K NAME --version MODEL@vN --reason TEXT
       gateway rollback --url URL --admin-key K NAME --reason TEXT
       gateway comparison --url URL --admin-key K NAME

The meshtrain inference gateway: serves trained model versions from the coordinator's registry over an
OpenAI-compatible HTTP API (POST /v1/completions and /v1/chat/completions with SSE streaming, GET /v1/models,
/healthz, /readyz, /metrics).

Options (gateway/options.ts):
${SERVE_OPTIONS.help()}  -h, --help                show this help

Deployments (deploy, promote, rollback, comparison: the admin API of a running gateway):
${ADMIN_OPTIONS.help()}
Examples:
  gateway serve --registry ./cluster/registry --api-key secret
  gateway serve --registry ./cluster/registry --api-key team-a,team-b --admin-key ops --rate-limit 5 --rate-burst 20
  gateway serve --registry http://127.0.0.1:7070 --token <cluster token> --model tiny@v2
  gateway serve --registry http://coordinator:7070 --wait-for-models   (in a container: ready once a model exists)
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
  const { values: v, positionals } = parseCommandLine('gateway', argv, [SERVE_OPTIONS, ADMIN_OPTIONS]);
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
  const o = { ...SERVE_OPTIONS.defaults, ...SERVE_OPTIONS.fromArgs(v) }; // flags and their env vars, checked
  const { port, host } = o;
  let https: ServerTls | undefined, trustingFetch: typeof fetch;
  try {
    const problems = tlsPairProblems(o.tlsCert, o.tlsKey);
    if (problems.length) throw new Error(problems.join('; '));
    if (o.tlsCert !== undefined && o.tlsKey !== undefined) https = loadServerTls(o.tlsCert, o.tlsKey);
    trustingFetch = fetchTrusting(o.ca === undefined ? undefined : loadTrust(o.ca));
  } catch (err) {
    throw new GatewayError('GW_ERR_BAD_ARGS', (err as Error).message, { cause: err });
  }
  const apiKeys = apiKeyList(o.apiKey);
  const adminKey = o.adminKey || undefined;
  if (adminKey !== undefined && apiKeys.includes(adminKey)) throw new UsageError('--admin-key must differ from every --api-key');
  const bodyLimit = o.maxBodyBytes;
  const maxPromptTokens = o.maxPromptTokens;
  const drainTimeoutMs = o.drainTimeoutMs;
  const limits = { headersTimeoutMs: o.headersTimeoutMs, maxConnections: o.maxConnections };
  const rateLimit = rateLimitOptions(o.rateLimit, o.rateBurst);
  const log = deps.log ?? createLogger('gateway');
  const wanted = (o.model ?? []).map(parseModelArg);
  const batching = { maxBatchSize: o.maxBatchSize, maxWaitMs: o.maxBatchWaitMs, maxQueue: o.maxQueue, prefillChunk: o.prefillChunk };
  const requestTimeoutMs = o.requestTimeoutMs;

  const backends = new Map<string, InferenceBackend>();
  let resolve: VersionResolver;
  let models: RegistryModels | undefined; // the registry's side (undefined with --fake)
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
    const registry = withTrainingLineage(withAdapterBases(openRegistry(o.registry!, { token: o.token, fetch: trustingFetch })));
    const factory = deps.backendFactory;
    const noBackend = (what: string) => new GatewayError(
      'GW_ERR_NO_BACKEND',
      `cannot serve ${what}: this gateway has no model backend to run registry models (model/ does not provide a BackendFactory yet). Use --fake to run the gateway with its test backend.`,
    );
    if (o.waitForModels && !factory) throw noBackend(`the models of ${o.registry}`); // waiting would never end
    const computeBackend = o.backend; // --backend, else MESHTRAIN_BACKEND, else auto
    resolve = async (model, version) => {
      if (!factory) throw new GatewayError('GW_ERR_NO_BACKEND', 'this gateway has no model backend to run registry models');
      const { files, meta } = await registry.load(model, version);
      return factory(files, meta, { backend: computeBackend });
    };
    models = {
      /** The models to serve, when the registry has every one of them; else why not. */
      async find() {
        const available = await registry.models();
        const chosen = wanted.length ? wanted : available.map((name) => ({ name, version: undefined }));
        if (chosen.length === 0) return { why: `no models registered in ${o.registry}` };
        const absent = chosen.find(({ name }) => !available.includes(name));
        if (absent) return { why: `no model '${absent.name}' in ${o.registry}; registered: ${available.join(', ') || 'none'}` };
        if (!factory) throw noBackend(chosen.map((c) => c.name).join(', '));
        return { chosen };
      },
      async load(chosen, add) {
        for (const { name, version } of chosen) {
          if (backends.has(name)) continue; // loaded by an earlier attempt
          const { files, meta } = await registry.load(name, version);
          if (!meta.verified) log.warn(`model ${name} v${meta.version}: ${meta.source} has no manifest (manifest.json or the coordinator's state.db); its files are NOT checksum-verified`);
          const backend = await factory!(files, meta, { backend: computeBackend });
          add(name, backend);
          log.info(`model ${name} v${meta.version} loaded from ${meta.source} (context ${backend.info.contextLength}, vocabulary ${backend.info.vocabSize})`);
        }
      },
    };
  }

  const shadow = { queueCapacity: o.shadowQueue, concurrency: o.shadowConcurrency, maxAgeMs: o.shadowMaxAgeMs };
  const deployments = new DeploymentManager({ resolve, shadow, reserved: (name) => backends.has(name), ...(o.auditLog ? { auditLogPath: o.auditLog } : {}) });
  let deploymentsText: string | undefined;
  if (o.deployments) {
    try {
      deploymentsText = readFileSync(o.deployments, 'utf8');
      JSON.parse(deploymentsText); // a malformed file stops the start at once, waiting for models or not
    } catch (err) {
      throw new GatewayError('GW_ERR_BAD_ARGS', `cannot read --deployments ${o.deployments}: ${(err as Error).message}`, { cause: err });
    }
  }
  const installDeployments = async () => {
    if (deploymentsText === undefined) return;
    await loadDeploymentsFile(deployments, deploymentsText, o.deployments!);
    log.info(`deployments from ${o.deployments}: ${deployments.list().map((d) => d.name).join(', ') || 'none'}`);
  };
  // Without --wait-for-models the registry must have the models now; with it, the gateway listens first (live, not
  // ready) and loads them once the registry has them: a coordinator still starting, or no job finished yet.
  let ready = !(models && o.waitForModels);
  if (models && !o.waitForModels) {
    const found = await models.find();
    if ('why' in found) throw new GatewayError('GW_ERR_REGISTRY', found.why);
    await models.load(found.chosen, (name, backend) => backends.set(name, backend));
  }
  if (ready) await installDeployments();
  const tracing = await initTracing('gateway'); // off unless OTEL_* asks for traces (common/tracing.ts)
  const gateway = createGateway({ backends, apiKey: apiKeys, adminKey, rateLimit, maxPromptTokens, ...(requestTimeoutMs !== undefined ? { requestTimeoutMs } : {}), bodyLimit, drainTimeoutMs, limits, log, batching, deployments, ready: () => ready, ...(https ? { https } : {}) });
  const { port: bound } = await gateway.listen({ port, host });
  let stopWaiting = () => {};
  if (models && !ready) {
    stopWaiting = waitForModels(models, {
      add: (name, backend) => gateway.addBackend(name, backend),
      installDeployments,
      log,
      onReady: () => (ready = true),
    });
  }
  // Machine-readable first line: tests and scripts wait for it.
  out(`gateway listening on ${https ? 'https' : 'http'}://${host === '0.0.0.0' ? '127.0.0.1' : host}:${bound}`);
  // Reading models from a coordinator's API: tell it where we are, so its dashboard can manage our deployments.
  let stopAnnouncing = () => {};
  if (o.registry && /^https?:\/\//.test(o.registry)) {
    const token = o.token;
    if (!adminKey) log.info('no --admin-key: not announcing this gateway to the coordinator (its dashboard could not manage deployments without one)');
    else if (token) {
      const shownHost = host === '0.0.0.0' || host === '::' ? ((await localAddressToward(o.registry)) ?? '127.0.0.1') : host;
      const url = o.advertise ?? `${https ? 'https' : 'http'}://${shownHost.includes(':') ? `[${shownHost}]` : shownHost}:${bound}`;
      stopAnnouncing = startAnnouncing({ fetch: trustingFetch, coordinatorUrl: o.registry, token, name: o.name ?? `${hostname()}-${bound}`, url, adminKey, log });
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
  stopWaiting();
  stopAnnouncing();
  await gateway.close();
  await tracing.shutdown(); // flush the last requests' spans
  return 0;
}

type Wanted = Array<{ name: string; version: number | undefined }>;

/** What `serve` loads from the registry: `find` the models (or why they cannot be served yet), `load` them. */
interface RegistryModels {
  find(): Promise<{ chosen: Wanted } | { why: string }>;
  load(chosen: Wanted, add: (name: string, backend: InferenceBackend) => void): Promise<void>;
}

/** How often --wait-for-models asks the registry, and at most how often it repeats the same line in the log. */
export const MODEL_POLL_MS = 5_000;
const WAIT_LOG_EVERY_MS = 60_000;

/**
 * --wait-for-models: asks the registry every MODEL_POLL_MS until it has the models (an unreachable registry or a
 * failed load counts as not yet, and says why in the log), then loads them and the --deployments file, and reports
 * ready (`onReady`: /readyz answers 200 from then on). Returns the function that stops it.
 */
function waitForModels(
  models: RegistryModels,
  hooks: { add(name: string, backend: InferenceBackend): void; installDeployments(): Promise<void>; log: Logger; onReady(): void },
): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let said = { why: '', at: -Infinity };
  const attempt = async (): Promise<void> => {
    timer = undefined;
    let why: string;
    try {
      const found = await models.find();
      if ('chosen' in found) {
        await models.load(found.chosen, (name, backend) => {
          if (stopped) void backend.close?.();
          else hooks.add(name, backend);
        });
        if (stopped) return;
        await hooks.installDeployments();
        hooks.onReady();
        hooks.log.info('models loaded: ready (GET /readyz answers 200)');
        return;
      }
      why = found.why;
    } catch (err) {
      why = (err as Error).message;
    }
    if (stopped) return;
    if (why !== said.why || performance.now() - said.at >= WAIT_LOG_EVERY_MS) {
      hooks.log.warn(`waiting for models (--wait-for-models): ${why}; trying again every ${MODEL_POLL_MS / 1000} s; /readyz answers 503 meanwhile`);
      said = { why, at: performance.now() };
    }
    timer = setTimeout(() => void attempt(), MODEL_POLL_MS);
  };
  void attempt();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** --rate-limit RPS (checked by its declaration) and --rate-burst N, which defaults to RPS rounded up. */
function rateLimitOptions(rps: number | undefined, burst: number | undefined): RateLimit | undefined {
  if (rps === undefined) {
    if (burst !== undefined) throw new UsageError('--rate-burst needs --rate-limit RPS');
    return undefined;
  }
  return { rps, burst: burst ?? Math.ceil(rps) };
}

function parseModelArg(arg: string): { name: string; version: number | undefined } {
  const m = /^([^@]+)(?:@v?([1-9][0-9]*))?$/.exec(arg);
  if (!m) throw new UsageError(`--model '${arg}' should be NAME or NAME@vN`);
  return { name: m[1]!, version: m[2] === undefined ? undefined : Number(m[2]) };
}

/** `gateway deploy|promote|rollback|comparison`: one admin API call; prints what the gateway answers with. */
async function deployCommand(command: 'deploy' | 'promote' | 'rollback' | 'comparison', rest: string[], raw: RawValues, out: (line: string) => void): Promise<number> {
  const [name, ...extra] = rest;
  if (!name) throw new UsageError(`gateway ${command} needs a deployment NAME`);
  if (extra.length) throw new UsageError(`unexpected argument '${extra[0]}'`);
  const v = ADMIN_OPTIONS.fromArgs(raw); // --admin-key falls back to MESHTRAIN_GATEWAY_ADMIN_KEY
  const { url, adminKey, reason } = v;
  if (!url) throw new UsageError('missing --url http://HOST:PORT of the gateway');
  if (!adminKey) throw new UsageError('missing --admin-key (or MESHTRAIN_GATEWAY_ADMIN_KEY)');
  if (!reason && command !== 'comparison') throw new UsageError('missing --reason TEXT: every change is audited with why');
  const base = `/admin/deployments/${encodeURIComponent(name)}`;
  if (command !== 'deploy' && (v.primary || v.arm || v.shadow || v.rollout)) throw new UsageError(`gateway ${command} takes no --primary, --arm, --shadow or --rollout (those are for deploy)`);
  if (command !== 'promote' && v.version) throw new UsageError('--version is for gateway promote');
  let request: { method: string; path: string; body?: Record<string, unknown> };
  if (command === 'deploy') {
    if (!v.primary) throw new UsageError('missing --primary MODEL@vN');
    const arms = (v.arm ?? []).map((a) => {
      const m = /^(.+):([0-9.]+)$/.exec(a);
      if (!m) throw new UsageError(`--arm '${a}' should be MODEL@vN:WEIGHT`);
      return { ...parseVersionArg(m[1]!, '--arm'), weight: Number(m[2]) };
    });
    const shadows = (v.shadow ?? []).map((a) => {
      const m = /^(.+?)(?::([0-9.]+))?$/.exec(a)!;
      return { ...parseVersionArg(m[1]!, '--shadow'), percent: m[2] === undefined ? 100 : Number(m[2]) };
    });
    let rollout: unknown;
    if (v.rollout !== undefined) {
      try {
        rollout = JSON.parse(v.rollout);
      } catch (err) {
        throw new UsageError(`--rollout must be JSON such as '{"autoPromote": true}': ${(err as Error).message}`);
      }
    }
    request = {
      method: 'PUT',
      path: base,
      body: { primary: parseVersionArg(v.primary, '--primary'), arms, shadows, reason, ...(rollout === undefined ? {} : { rollout }), ...(v.stickyHeader ? { stickyHeader: v.stickyHeader } : {}) },
    };
  } else if (command === 'promote') {
    if (!v.version) throw new UsageError('missing --version MODEL@vN: the shadow or arm to promote');
    parseVersionArg(v.version, '--version');
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
