/**
 * The coordinator CLI's one API client: every command but `start` and `data` talks to a running coordinator
 * through it. Its options (--url, --token, --ca and the commands' own switches) are declared once in
 * CLIENT_OPTIONS; `coordinator --help` lists them from there. It resolves the base URL, the token and the TLS
 * trust on the first call, sends JSON with the bearer token, and turns an error body or an unreachable
 * coordinator into one message that says what to check.
 */
import { httpUrl, UsageError } from '../../common/cli.ts';
import { defineOptions, opt, type RawValues } from '../../common/options.ts';
import { fetchTrusting, loadTrust } from '../../common/tls.ts';
import { DEFAULT_CONFIG } from '../config.ts';

export const CLIENT_OPTIONS = defineOptions({
  url: opt.string({ arg: 'URL', defaultText: `http://127.0.0.1:${DEFAULT_CONFIG.port}`, doc: 'coordinator address (https://… for TLS)' }),
  token: opt.string({ arg: 'TOKEN', env: 'MESHTRAIN_TOKEN', doc: 'cluster token' }),
  ca: opt.string({ arg: 'PATH', doc: 'trust this PEM CA for an https:// coordinator (or set NODE_EXTRA_CA_CERTS)' }),
  json: opt.boolean({ doc: 'print JSON instead of a table' }),
  agents: opt.int({ min: 1, arg: 'N', defaultText: 'every connected agent', doc: 'selfcheck: ring size' }),
  name: opt.string({ arg: 'N', doc: 'runs list: only runs named N (N* for a prefix); models import: the model name' }),
  state: opt.string({ arg: 'S', doc: 'runs list: only runs in state S' }),
  format: opt.string({ arg: 'json|csv', defaultText: 'json', doc: 'runs export: the whole run as JSON, or its metrics as CSV' }),
  out: opt.string({ arg: 'FILE', doc: 'runs export: write to FILE instead of stdout' }),
  scheme: opt.string({ arg: 'SCHEME', defaultText: 'int8, the only one', doc: 'models quantize: the quantization scheme' }),
  watch: opt.boolean({ doc: 'job: follow the job live until it ends (exit 0 if it succeeded, 1 if not); with --json, one JSON object per new step and state change' }),
});

/** The parsed command line, keyed by flag (common/options.ts parseCommandLine). */
export type Values = RawValues;
export const str = (v: Values, k: string) => v[k] as string | undefined;

interface Connection {
  base: string;
  token: string;
  fetch: typeof fetch;
}

export class ApiClient {
  #values: Values;
  #connection: Connection | undefined;

  constructor(values: Values) {
    this.#values = values;
  }

  /** The coordinator's address, the token and a fetch that trusts --ca, from the command line (once). */
  get connection(): Connection {
    if (this.#connection) return this.#connection;
    const v = this.#values;
    const token = str(v, 'token') ?? process.env.MESHTRAIN_TOKEN;
    if (!token) throw new UsageError('missing --token (or MESHTRAIN_TOKEN)');
    const base = httpUrl(str(v, 'url') ?? `http://127.0.0.1:${DEFAULT_CONFIG.port}`);
    try {
      this.#connection = { base, token, fetch: fetchTrusting(str(v, 'ca') === undefined ? undefined : loadTrust(str(v, 'ca')!)) };
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    return this.#connection;
  }

  /** fetch with the bearer token added, with an unreachable coordinator said as such (and what to check). */
  async send(path: string, init: RequestInit): Promise<Response> {
    const c = this.connection;
    try {
      return await c.fetch(`${c.base}${path}`, { ...init, headers: { authorization: `Bearer ${c.token}`, ...(init.headers as Record<string, string> | undefined) } });
    } catch (err) {
      const code = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      const hint = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO/.test(code) ? 'pass --ca with the CA that signed its certificate, or set NODE_EXTRA_CA_CERTS' : "is 'coordinator start' running?";
      throw new Error(`cannot reach the coordinator at ${c.base} (${code}); ${hint}`);
    }
  }

  /** A JSON call; a refusal becomes an Error with the coordinator's code, message and details. */
  async api<T>(method: string, path: string, body?: unknown, as: 'json' | 'text' = 'json'): Promise<T> {
    const res = await this.send(path, {
      method,
      headers: body !== undefined ? { 'content-type': 'application/json' } : {},
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text().catch(() => '');
    let json: { error?: { code: string; message: string; details?: string[] } } = {};
    try {
      json = JSON.parse(text);
    } catch {
      // not JSON (a CSV export, or a proxy's error page): the status says what happened
    }
    if (res.ok && as === 'text') return text as T;
    if (!res.ok) {
      const details = json.error?.details?.length ? `\n  - ${json.error.details.join('\n  - ')}` : '';
      throw new Error(`${json.error?.code ?? res.status}: ${details ? (json.error?.message ?? '').split(':')[0] : (json.error?.message ?? res.statusText)}${details}`);
    }
    return json as T;
  }
}

/** What a command module gets: the API, the parsed options, and where its output goes. */
export interface CliIo {
  /** GET/POST JSON from the coordinator with the CLI's token and TLS options. */
  api<T>(method: string, path: string, body?: unknown): Promise<T>;
  /** GET a body as text (a CSV export). */
  text(path: string): Promise<string>;
  print(s: string): void;
  table(header: string[], rows: string[][]): void;
  client: ApiClient;
}

export function cliIo(values: Values): CliIo {
  const client = new ApiClient(values);
  return {
    api: (method, path, body) => client.api(method, path, body),
    text: (path) => client.api<string>('GET', path, undefined, 'text'),
    print: (s) => void process.stdout.write(s),
    table: (header, rows) => void process.stdout.write(formatTable(header, rows)),
    client,
  };
}

export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}
