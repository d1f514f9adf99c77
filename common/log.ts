/**
 * A small leveled logger writing one line per event to stderr, so stdout stays free for what a command prints
 * (benchmarks print their JSON there). LOG_LEVEL=debug|info|warn|error|silent picks the threshold.
 * Callers never pass secrets: tokens are logged only as `redact(token)`.
 */
const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 } as const;
export type LogLevel = keyof typeof LEVELS;

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  child(scope: string): Logger;
}

function threshold(): number {
  const env = (process.env.LOG_LEVEL ?? 'info').toLowerCase();
  return env in LEVELS ? LEVELS[env as LogLevel] : LEVELS.info;
}

export function createLogger(scope: string, level: number = threshold()): Logger {
  const write = (name: LogLevel, msg: string) => {
    if (LEVELS[name] < level) return;
    process.stderr.write(`${new Date().toISOString()} ${name.toUpperCase().padEnd(5)} [${scope}] ${msg}\n`);
  };
  return {
    debug: (m) => write('debug', m),
    info: (m) => write('info', m),
    warn: (m) => write('warn', m),
    error: (m) => write('error', m),
    child: (sub) => createLogger(`${scope}:${sub}`, level),
  };
}

/** A logger that drops everything (unit tests). */
export const silentLogger: Logger = createLogger('silent', LEVELS.silent);

/** Shows enough of a secret to tell two apart, never enough to use it. */
export function redact(secret: string): string {
  return secret.length <= 8 ? '****' : `${secret.slice(0, 4)}…(${secret.length} chars)`;
}
