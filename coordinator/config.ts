/**
 * The coordinator's configuration, declared once (common/options.ts): each setting's default, doc, flag of
 * `coordinator start` and check live in COORDINATOR_OPTIONS below, from which `coordinator start --help`, the CLI
 * parser and resolveConfig come. Overridden by CLI flags, validated once, frozen. Unknown keys are rejected so a
 * typo cannot silently fall back to a default.
 */
import { BACKENDS, type BackendChoice } from '../protocol/backends.ts';
import { tlsPairProblems } from '../common/tls.ts';
import { defineOptions, opt, type ValuesOf } from '../common/options.ts';
import { CoordinatorError } from './errors.ts';

const nonEmpty = (what: string) => (v: unknown, key: string) => (typeof v === 'string' && v !== '' ? undefined : `${key} must be a non-empty ${what}`);

export const COORDINATOR_OPTIONS = defineOptions({
  port: opt.int({ default: 7070, min: 0, max: 65535, arg: 'PORT', doc: 'HTTP and WebSocket port (0 = any free port)' }),
  host: opt.string({ default: '0.0.0.0', arg: 'HOST', doc: 'interface the HTTP/WebSocket server binds', check: nonEmpty('string') }),
  dataDir: opt.string({
    default: '.data/coordinator', flag: 'data', arg: 'DIR', check: nonEmpty('path'),
    doc: 'SQLite state (state.db, WAL mode) and the content-addressed artifact store (artifacts/)',
  }),
  token: opt.string({
    arg: 'TOKEN', env: 'MESHTRAIN_TOKEN', defaultText: 'the one stored in DIR, or a new one, printed once',
    doc: 'cluster join token',
    check: (v) => (typeof v === 'string' && v.length >= 8 && v.length <= 256 ? undefined : 'token must be 8 to 256 characters'),
  }),
  heartbeatMs: opt.int({ default: 1000, min: 1, arg: 'MS', doc: 'how often agents heartbeat' }),
  heartbeatTimeoutMs: opt.int({ default: 5000, min: 1, arg: 'MS', aliases: ['heartbeat-timeout'], doc: 'an agent silent this long is marked dead' }),
  helloTimeoutMs: opt.int({ default: 5000, min: 1, flag: false, doc: 'a connection that has not said hello by then is closed' }),
  groupFormTimeoutMs: opt.int({ default: 30_000, min: 1, flag: false, doc: 'agents must link their ring within this' }),
  collectiveTimeoutMs: opt.int({ default: 300_000, min: 1, flag: false, doc: 'a collective run must finish within this' }),
  stepTimeoutMs: opt.int({
    default: 300_000, min: 1, arg: 'MS', aliases: ['step-timeout'],
    doc: 'a running job attempt that reports no step for this long is stopped and resumed',
  }),
  headersTimeoutMs: opt.int({
    default: 10_000, min: 1, arg: 'MS', aliases: ['headers-timeout'],
    doc: 'an HTTP client must send its whole request head within this, or get 408 (slow-loris guard)',
  }),
  maxConnections: opt.int({ default: 1024, min: 1, arg: 'N', doc: 'open sockets on the port (API, dashboard, agents) beyond which new ones are dropped at once' }),
  maxPendingHellos: opt.int({ default: 64, min: 1, arg: 'N', doc: 'agent WebSockets still owing their hello beyond which new ones are closed with 1013' }),
  tlsCert: opt.string({ arg: 'PATH', doc: 'serve HTTPS and WSS with this PEM certificate (chain); needs --tls-key' }),
  tlsKey: opt.string({ arg: 'PATH', doc: 'the PEM private key of --tls-cert' }),
  relay: opt.choice(['agent', 'coordinator'] as const, {
    default: 'agent', arg: 'WHO',
    doc: "who relays links to agents nobody can dial: 'agent' (the group's reachable member with the best measured link, else a reachable idle agent, else the coordinator) or 'coordinator' (always)",
  }),
  backend: opt.choice<BackendChoice>(BACKENDS, {
    default: 'cpu', arg: 'B', doc: 'what the evaluation suites (SFT exact match, DPO, distillation) compute on, in their worker thread',
  }),
});

export type CoordinatorConfig = ValuesOf<typeof COORDINATOR_OPTIONS.specs>;

export const DEFAULT_CONFIG: Readonly<CoordinatorConfig> = COORDINATOR_OPTIONS.defaults;

export function resolveConfig(overrides: Partial<Record<string, unknown>>): Readonly<CoordinatorConfig> {
  const { value: cfg, problems: bad } = COORDINATOR_OPTIONS.resolve(overrides);
  if (cfg.heartbeatTimeoutMs <= cfg.heartbeatMs) bad.push(`heartbeatTimeoutMs (${cfg.heartbeatTimeoutMs}) must exceed heartbeatMs (${cfg.heartbeatMs})`);
  bad.push(...tlsPairProblems(cfg.tlsCert, cfg.tlsKey));
  if (bad.length) throw new CoordinatorError('CRD_ERR_BAD_ARGS', `invalid coordinator configuration: ${bad.join('; ')}`, { details: bad });
  return Object.freeze(cfg);
}
