/**
 * The coordinator's configuration: defaults below (one comment each), overridden by CLI flags, validated once,
 * frozen. Unknown keys are rejected so a typo cannot silently fall back to a default.
 */
import { BACKENDS, isBackendChoice, type BackendChoice } from '../protocol/backends.ts';
import { tlsPairProblems } from '../common/tls.ts';
import { CoordinatorError } from './errors.ts';

export interface CoordinatorConfig {
  host: string; // interface the HTTP/WebSocket server binds
  port: number; // 0 picks a free port (tests)
  dataDir: string; // SQLite state (state.db) and the content-addressed artifact store (artifacts/)
  token: string | undefined; // cluster join token; undefined: reuse the stored one, or generate and print one
  heartbeatMs: number; // how often agents heartbeat
  heartbeatTimeoutMs: number; // an agent silent this long is marked dead
  helloTimeoutMs: number; // a connection that has not said hello by then is closed
  groupFormTimeoutMs: number; // agents must link their ring within this
  collectiveTimeoutMs: number; // a collective run must finish within this
  stepTimeoutMs: number; // a running job attempt that reports nothing for this long is stopped and resumed
  headersTimeoutMs: number; // an HTTP client must send its whole request head within this, or get 408 (slow-loris guard)
  maxConnections: number; // open sockets on the port (API, dashboard, agents) beyond which new ones are dropped at once
  maxPendingHellos: number; // agent WebSockets still owing their hello beyond which new ones are closed with 1013
  tlsCert: string | undefined; // PEM certificate chain: serve HTTPS and WSS instead of HTTP and WS (with tlsKey)
  tlsKey: string | undefined; // PEM private key of tlsCert
  backend: BackendChoice; // what the evaluation suites compute on (protocol/backends.ts), in their worker thread
}

export const DEFAULT_CONFIG: Readonly<CoordinatorConfig> = Object.freeze({
  host: '0.0.0.0',
  port: 7070,
  dataDir: '.data/coordinator',
  token: undefined,
  heartbeatMs: 1000,
  heartbeatTimeoutMs: 5000,
  helloTimeoutMs: 5000,
  groupFormTimeoutMs: 30_000,
  collectiveTimeoutMs: 300_000,
  stepTimeoutMs: 300_000,
  headersTimeoutMs: 10_000,
  maxConnections: 1024,
  backend: 'cpu',
  maxPendingHellos: 64,
  tlsCert: undefined,
  tlsKey: undefined,
});

export function resolveConfig(overrides: Partial<Record<string, unknown>>): Readonly<CoordinatorConfig> {
  const bad: string[] = [];
  for (const key of Object.keys(overrides)) if (!(key in DEFAULT_CONFIG)) bad.push(`unknown setting '${key}'`);
  const cfg = { ...DEFAULT_CONFIG, ...(Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)) as Partial<CoordinatorConfig>) };
  const positive = (key: keyof CoordinatorConfig) => {
    const v = cfg[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) bad.push(`${key} must be a positive integer${key.endsWith('Ms') ? ' (ms)' : ''}, got ${String(v)}`);
  };
  if (typeof cfg.port !== 'number' || !Number.isInteger(cfg.port) || cfg.port < 0 || cfg.port > 65535) bad.push(`port must be 0–65535, got ${cfg.port}`);
  if (typeof cfg.host !== 'string' || cfg.host === '') bad.push('host must be a non-empty string');
  if (typeof cfg.dataDir !== 'string' || cfg.dataDir === '') bad.push('dataDir must be a non-empty path');
  if (cfg.token !== undefined && (typeof cfg.token !== 'string' || cfg.token.length < 8 || cfg.token.length > 256)) {
    bad.push('token must be 8 to 256 characters');
  }
  (['heartbeatMs', 'heartbeatTimeoutMs', 'helloTimeoutMs', 'groupFormTimeoutMs', 'collectiveTimeoutMs', 'stepTimeoutMs', 'headersTimeoutMs', 'maxConnections', 'maxPendingHellos'] as const).forEach(positive);
  if (cfg.heartbeatTimeoutMs <= cfg.heartbeatMs) bad.push(`heartbeatTimeoutMs (${cfg.heartbeatTimeoutMs}) must exceed heartbeatMs (${cfg.heartbeatMs})`);
  bad.push(...tlsPairProblems(cfg.tlsCert, cfg.tlsKey));
  if (!isBackendChoice(cfg.backend)) bad.push(`backend must be one of ${BACKENDS.join(', ')}, got ${String(cfg.backend)}`);
  if (bad.length) throw new CoordinatorError('CRD_ERR_BAD_ARGS', `invalid coordinator configuration: ${bad.join('; ')}`, { details: bad });
  return Object.freeze(cfg);
}
