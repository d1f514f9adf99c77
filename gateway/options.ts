/**
 * The options of `gateway serve` and of the admin commands (deploy, promote, rollback, comparison), declared once
 * (common/options.ts): gateway/cli.ts parses them, `gateway --help` lists them and README's option table is
 * checked against SERVE_OPTIONS (test/cli-options.test.ts).
 */
import { UsageError } from '../common/cli.ts';
import { DEFAULT_CONNECTION_LIMITS } from '../common/conn-limits.ts';
import { defineOptions, opt } from '../common/options.ts';
import { BACKENDS, type BackendChoice } from '../protocol/backends.ts';
import { DEFAULT_BATCH_SETTINGS, MAX_BATCH_SIZE, MAX_BATCH_WAIT_MS, MAX_QUEUE, MAX_PREFILL_CHUNK } from './batch-scheduler.ts';
import { MAX_TIMEOUT_MS } from './generation.ts';
import { DEFAULT_BODY_LIMIT, DEFAULT_DRAIN_TIMEOUT_MS } from './server.ts';
import { DEFAULT_SHADOW_SETTINGS } from './shadow.ts';

export const DEFAULT_PORT = 8080;
export const DEFAULT_HOST = '0.0.0.0';

export const SERVE_OPTIONS = defineOptions({
  registry: opt.string({
    arg: 'DIR|URL',
    doc: "where model versions come from: the coordinator's registry folder (its --data DIR/registry) or its API (http://HOST:7070); every file is checked against its sha256",
  }),
  waitForModels: opt.boolean({
    doc: 'start even when the registry does not have the models yet (a coordinator still starting, no job finished): listen at once, answer 503 on /readyz, and load them (and --deployments) once the registry has them, trying every 5 s; without it the gateway stops with an error',
  }),
  model: opt.list({ arg: 'NAME[@vN]', defaultText: 'every registered model', doc: 'serve this model (repeatable), at its latest version or the one given' }),
  port: opt.int({ default: DEFAULT_PORT, min: 0, max: 65535, arg: 'PORT', doc: 'HTTP port (0 = any free port)' }),
  host: opt.string({ default: DEFAULT_HOST, arg: 'HOST', doc: 'interface to bind' }),
  token: opt.string({
    arg: 'TOKEN', env: 'MESHTRAIN_TOKEN',
    doc: "cluster token for --registry URL; with an --admin-key too, the gateway announces itself to that coordinator every 10 s so its dashboard can manage the deployments (the admin key goes to the coordinator only)",
  }),
  name: opt.string({ arg: 'NAME', defaultText: 'HOSTNAME-PORT', doc: "how the gateway appears on the coordinator's dashboard" }),
  advertise: opt.string({
    arg: 'URL', defaultText: 'http://ADDRESS:PORT, ADDRESS being ours toward the coordinator (https:// with --tls-cert)', doc: 'where the coordinator reaches this gateway',
  }),
  ca: opt.string({ arg: 'PATH', doc: 'trust this PEM CA for an https:// --registry coordinator (or set NODE_EXTRA_CA_CERTS)' }),
  tlsCert: opt.string({ arg: 'PATH', doc: 'serve HTTPS with this PEM certificate (chain); needs --tls-key' }),
  tlsKey: opt.string({ arg: 'PATH', doc: 'the PEM private key of --tls-cert' }),
  apiKey: opt.list({
    arg: 'KEY', env: 'MESHTRAIN_GATEWAY_API_KEY',
    doc: "require 'Authorization: Bearer KEY' on /v1 routes; repeatable or comma-separated for several keys, each with its own rate limit",
  }),
  adminKey: opt.string({
    arg: 'KEY', env: 'MESHTRAIN_GATEWAY_ADMIN_KEY',
    doc: 'the key for /admin routes such as GET /admin/status; without one admin routes answer 403; API keys never open them',
  }),
  maxBodyBytes: opt.int({ default: DEFAULT_BODY_LIMIT, min: 1, arg: 'N', doc: 'larger request bodies get 413' }),
  maxPromptTokens: opt.int({ min: 1, arg: 'N', defaultText: "each model's context length", doc: 'longer prompts get 400' }),
  rateLimit: opt.number({
    arg: 'RPS', defaultText: 'no limit',
    doc: 'per client (API key, or IP when no keys are set): at most RPS requests a second on /v1 routes, token bucket; over it, 429 with Retry-After',
    parse: (raw) => {
      const perSecond = Number(raw);
      if (!Number.isFinite(perSecond) || perSecond <= 0) throw new UsageError(`--rate-limit must be a positive number of requests per second, got '${raw}'`);
      return perSecond;
    },
  }),
  rateBurst: opt.int({ min: 1, arg: 'N', defaultText: 'RPS rounded up', doc: 'requests a client may send at once after being idle' }),
  drainTimeoutMs: opt.int({
    default: DEFAULT_DRAIN_TIMEOUT_MS, min: 0, arg: 'MS',
    doc: 'on SIGTERM/SIGINT stop taking requests (503) and let running ones finish for up to MS, then cut them and exit',
  }),
  headersTimeoutMs: opt.int({
    default: DEFAULT_CONNECTION_LIMITS.headersTimeoutMs, min: 1, arg: 'MS',
    doc: 'answer 408 and cut a client that has not sent its request head by then (slow-loris guard)',
  }),
  maxConnections: opt.int({ default: DEFAULT_CONNECTION_LIMITS.maxConnections, min: 1, arg: 'N', doc: 'open sockets beyond which new ones are dropped at once' }),
  backend: opt.choice<BackendChoice>(BACKENDS, {
    default: 'auto', arg: 'B', env: 'MESHTRAIN_BACKEND',
    doc: 'compute backend for registry models: auto (a hardware GPU through WebGPU, then tfjs-node(-gpu), then wasm), webgpu, wasm, cpu, …',
  }),
  maxBatchSize: opt.int({
    default: DEFAULT_BATCH_SETTINGS.maxBatchSize, min: 1, max: MAX_BATCH_SIZE, arg: 'N',
    doc: 'dynamic batching: at most N sequences (request choices) share a forward pass per generation step (1 = no batching)',
  }),
  maxBatchWaitMs: opt.int({
    default: DEFAULT_BATCH_SETTINGS.maxWaitMs, min: 0, max: MAX_BATCH_WAIT_MS, arg: 'MS',
    doc: 'an idle model waits up to MS for more requests before starting a batch that is not full; running sequences never wait for company',
  }),
  maxQueue: opt.int({
    default: DEFAULT_BATCH_SETTINGS.maxQueue, min: 1, max: MAX_QUEUE, arg: 'N',
    doc: 'at most N sequences wait for a row per model; a request beyond that gets 503 with Retry-After at once instead of waiting',
  }),
  prefillChunk: opt.int({
    default: DEFAULT_BATCH_SETTINGS.prefillChunk, min: 1, max: MAX_PREFILL_CHUNK, arg: 'N',
    doc: 'run at most N prompt tokens per generation step: a longer prompt is run in chunks between the running batch\'s decode steps, so it delays their tokens by one chunk, not its whole prompt',
  }),
  requestTimeoutMs: opt.int({
    min: 1, max: MAX_TIMEOUT_MS, arg: 'MS', defaultText: 'none',
    doc: 'stop a generation request that has not finished MS after it arrived and answer 504; a request may ask for less with the x-meshtrain-timeout-ms header',
  }),
  fake: opt.boolean({
    doc: "TEST/DEVELOPMENT ONLY: serve FakeBackend, a deterministic character-level toy that outputs gibberish, instead of trained models (no --registry; names from --model, default 'fake-char')",
  }),
  deployments: opt.string({
    arg: 'FILE',
    doc: 'named deployments to install at start: a JSON array of {name, primary: {model, version}, arms?, shadows?, stickyHeader?, rollout?} (README: Deployments)',
  }),
  auditLog: opt.string({ arg: 'FILE', doc: 'append every deployment change (who, when, old → new, why) to FILE as JSON lines' }),
  shadowQueue: opt.int({
    default: DEFAULT_SHADOW_SETTINGS.queueCapacity, min: 0, max: 1_000_000, arg: 'N',
    doc: 'mirrored requests waiting per shadow version; beyond it mirrors are dropped and counted',
  }),
  shadowConcurrency: opt.int({
    default: DEFAULT_SHADOW_SETTINGS.concurrency, min: 1, max: 1024, arg: 'N',
    doc: 'mirrors of one shadow version generating at once; they run only while no client request waits or runs',
  }),
  shadowMaxAgeMs: opt.int({ default: DEFAULT_SHADOW_SETTINGS.maxAgeMs, min: 1, arg: 'MS', doc: 'a mirror that waited longer is dropped as stale' }),
});

/** deploy, promote, rollback, comparison: one call to a running gateway's admin API. */
export const ADMIN_OPTIONS = defineOptions({
  url: opt.string({ arg: 'URL', doc: 'the gateway (http://HOST:PORT)' }),
  adminKey: opt.string({ arg: 'KEY', env: 'MESHTRAIN_GATEWAY_ADMIN_KEY', doc: "the gateway's admin key" }),
  primary: opt.string({ arg: 'MODEL@vN', doc: 'the version serving the traffic the arms leave (1 − Σ arm weights)' }),
  arm: opt.list({ arg: 'MODEL@vN:W', doc: 'an A/B arm with weight W in [0, 1] (repeatable; weights sum to ≤ 1)' }),
  shadow: opt.list({
    arg: 'MODEL@vN[:PCT]', doc: "a shadow version getting copies of PCT% (default 100) of the primary's requests, compared and never returned (repeatable)",
  }),
  rollout: opt.string({ arg: 'JSON', doc: 'the rollout policy: {success?, sprt?, autoPromote?, guard?} (README: Rollouts)' }),
  version: opt.string({ arg: 'MODEL@vN', doc: 'promote: the shadow or arm that becomes the primary' }),
  stickyHeader: opt.string({ arg: 'H', defaultText: "x-meshtrain-key; else the request's user field", doc: 'header holding the sticky key' }),
  reason: opt.string({ arg: 'TEXT', doc: 'why: recorded in the audit log (required for deploy, promote, rollback)' }),
});
