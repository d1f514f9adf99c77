/**
 * A small leveled logger writing one line per event to stderr, so stdout stays free for what a command prints
 * (benchmarks print their JSON there). LOG_LEVEL=debug|info|warn|error|silent picks the threshold.
 * Callers never pass secrets: tokens are logged only as `redact(token)`.
 *
 * Behind it is pino, the logger fastify is built for: the coordinator's and the gateway's servers take the same
 * instance (`pinoOf(log)`), so a request line and an application line share one threshold, one format and one
 * redaction list. Each record is turned back into a line for people (time, level, [scope], message, key=value
 * fields) rather than JSON: these logs are read in a terminal or a journal, not shipped to a log store.
 */
import { pino, type Logger as PinoLogger, type LoggerOptions } from 'pino';

const LEVELS = { debug: 20, info: 30, warn: 40, error: 50, silent: Infinity } as const; // pino's numbers
export type LogLevel = keyof typeof LEVELS;

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  child(scope: string): Logger;
}

export interface LoggerSettings {
  /** Lowest level written (default: LOG_LEVEL, else info). */
  level?: LogLevel;
  /** Where each finished line goes (default: process.stderr, looked up at each write). */
  write?: (line: string) => void;
}

/**
 * Fields that must never reach a log line, whoever logs the object: credentials in headers, and `token`/`key`
 * fields of a query or body, at the top or one level down. Request lines carry none of these to begin with
 * (common/request-log.ts logs the matched route, never the URL or headers); this is the second lock.
 */
const REDACTED_PATHS = [
  'authorization', 'cookie', 'token', 'key', 'apiKey', 'adminKey', 'secret', 'password',
  'headers.authorization', 'headers.cookie', 'headers["set-cookie"]',
  'req.headers.authorization', 'req.headers.cookie', 'req.query.token', 'req.query.key', 'req.body.token', 'req.body.key',
  '*.authorization', '*.cookie', '*.token', '*.key', '*.apiKey', '*.adminKey', '*.secret', '*.password',
];

function threshold(): LogLevel {
  const env = (process.env.LOG_LEVEL ?? 'info').toLowerCase();
  return env in LEVELS ? (env as LogLevel) : 'info';
}

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const OWN_KEYS = new Set(['level', 'time', 'msg', 'scope']);

/** One pino record (parsed JSON) → `2026-01-01T00:00:00.000Z INFO  [scope] message key=value …`. */
export function formatRecord(rec: Record<string, unknown>): string {
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString() : new Date().toISOString();
  const level = (LEVEL_NAMES[rec.level as number] ?? String(rec.level)).padEnd(5);
  return `${time} ${level} [${String(rec.scope ?? '-')}] ${bodyOf(rec)}\n`;
}

/** The message and its fields, without time, level and scope. */
function bodyOf(rec: Record<string, unknown>): string {
  const fields = Object.entries(rec)
    .filter(([k, v]) => !OWN_KEYS.has(k) && v !== undefined)
    .sort(([a], [b]) => Number(a === 'reqId') - Number(b === 'reqId')) // fastify's request id after what happened
    .map(([k, v]) => `${k}=${fieldText(v)}`);
  return [rec.msg === undefined ? '' : String(rec.msg), ...fields].filter(Boolean).join(' ');
}

function fieldText(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  if (typeof v === 'object' && v !== null && 'stack' in v && typeof (v as { stack: unknown }).stack === 'string') return JSON.stringify((v as { stack: string }).stack);
  return typeof v === 'object' ? JSON.stringify(v) : String(v);
}

/** A pino destination that turns each JSON record into a readable line. */
function lineDestination(write: (line: string) => void): { write(chunk: string): void } {
  return {
    write(chunk: string) {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(chunk) as Record<string, unknown>;
      } catch {
        return write(chunk.endsWith('\n') ? chunk : `${chunk}\n`);
      }
      write(formatRecord(rec));
    },
  };
}

const baseOptions = (level: LogLevel): LoggerOptions => ({
  level,
  base: undefined, // no pid and hostname on every line
  redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
  // fastify's request serializer logs the raw URL (query tokens included); ours logs the matched route only.
  serializers: {
    req: (req: { method?: string; routeOptions?: { url?: string } }) => ({ method: req.method, route: req.routeOptions?.url }),
    res: (reply: { statusCode?: number }) => ({ status: reply.statusCode }),
    err: pino.stdSerializers.err,
  },
});

/** The pino instance behind each Logger made here. */
const PINO = new WeakMap<Logger, PinoLogger>();

function wrap(p: PinoLogger, root: PinoLogger, scope: string): Logger {
  const log: Logger = {
    debug: (m) => p.debug(m),
    info: (m) => p.info(m),
    warn: (m) => p.warn(m),
    error: (m) => p.error(m),
    child: (sub) => {
      const full = `${scope}:${sub}`;
      return wrap(root.child({ scope: full }), root, full);
    },
  };
  PINO.set(log, p);
  return log;
}

export function createLogger(scope: string, settings: LoggerSettings = {}): Logger {
  const write = settings.write ?? ((line: string) => void process.stderr.write(line));
  const root = pino(baseOptions(settings.level ?? threshold()), lineDestination(write));
  return wrap(root.child({ scope }), root, scope);
}

/**
 * The pino logger behind `log`, for fastify's `loggerInstance`. A Logger not made by createLogger (a test's
 * recorder) gets a pino whose lines go to its own methods, by level, without time and scope.
 */
export function pinoOf(log: Logger): PinoLogger {
  const known = PINO.get(log);
  if (known) return known;
  const forward = {
    write(chunk: string) {
      let rec: Record<string, unknown>;
      try {
        rec = JSON.parse(chunk) as Record<string, unknown>;
      } catch {
        return log.info(chunk.trimEnd());
      }
      const level = rec.level as number;
      const body = bodyOf(rec);
      if (level >= 50) log.error(body);
      else if (level >= 40) log.warn(body);
      else if (level >= 30) log.info(body);
      else log.debug(body);
    },
  };
  const p = pino(baseOptions('debug'), forward);
  PINO.set(log, p);
  return p;
}

/** A logger that drops everything (unit tests). */
export const silentLogger: Logger = createLogger('silent', { level: 'silent' });

/** Shows enough of a secret to tell two apart, never enough to use it. */
export function redact(secret: string): string {
  return secret.length <= 8 ? '****' : `${secret.slice(0, 4)}…(${secret.length} chars)`;
}
