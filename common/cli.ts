/**
 * Small helpers shared by the command-line entry points. The services (coordinator start, node-agent join,
 * gateway serve) declare their options with common/options.ts instead; parseCli and intOption serve the scripts,
 * benchmarks and one-off commands.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

/** parseArgs with unknown options rejected and its error turned into a UsageError that names the option. */
export function parseCli<T extends ParseArgsConfig['options']>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

export function intOption(value: string | undefined, name: string, fallback: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in [${min}, ${max}], got '${value}'`);
  return n;
}

/** Normalises a coordinator URL: http(s) → ws(s), and adds `path` when the URL has none. */
export function wsUrl(input: string, path: string): string {
  let url: URL;
  try {
    url = new URL(input.includes('://') ? input : `ws://${input}`);
  } catch {
    throw new UsageError(`'${input}' is not a URL; expected e.g. ws://127.0.0.1:7070 or http://host:7070`);
  }
  if (url.protocol === 'http:') url.protocol = 'ws:';
  else if (url.protocol === 'https:') url.protocol = 'wss:';
  else if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new UsageError(`unsupported URL scheme '${url.protocol}' in ${input}`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = path;
  return url.toString();
}

/** Normalises a coordinator URL for HTTP API calls. */
export function httpUrl(input: string): string {
  const url = new URL(input.includes('://') ? input : `http://${input}`);
  if (url.protocol === 'ws:') url.protocol = 'http:';
  else if (url.protocol === 'wss:') url.protocol = 'https:';
  url.pathname = '/';
  return url.toString().replace(/\/$/, '');
}
