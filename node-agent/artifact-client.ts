/**
 * The agent's side of the coordinator's artifact store: fetch dataset shards, tokenizers and checkpoints by
 * sha256, upload checkpoints and model files. Every download is hashed and refused when it does not match its
 * address, so a truncated or corrupted transfer is retried rather than trained on. Downloads are cached on disk
 * by address (content-addressed files never change), so a resumed job does not fetch its shards again.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentError } from './errors.ts';

export interface ArtifactClientOptions {
  baseUrl: string; // http(s)://coordinator:port
  token: string;
  cacheDir: string;
  retries?: number; // per transfer, for transient failures (default 3)
  timeoutMs?: number; // one request, start to last byte (default 5 min): a coordinator that stops answering is retried
  fetch?: typeof fetch; // e.g. one trusting --ca for an https:// coordinator (common/tls.ts fetchTrusting)
}

export const sha256Hex = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export class ArtifactClient {
  readonly #opts: Required<ArtifactClientOptions>;

  constructor(opts: ArtifactClientOptions) {
    this.#opts = { retries: 3, timeoutMs: 300_000, ...opts, fetch: opts.fetch ?? fetch };
    mkdirSync(opts.cacheDir, { recursive: true });
  }

  /** The bytes stored under `digest`, from the local cache or the coordinator. */
  async get(digest: string): Promise<Buffer> {
    const cached = join(this.#opts.cacheDir, digest);
    if (existsSync(cached)) {
      const bytes = readFileSync(cached);
      if (sha256Hex(bytes) === digest) return bytes;
    }
    const bytes = await this.#retry(`download ${digest.slice(0, 12)}`, async () => {
      const res = await this.#opts.fetch(`${this.#opts.baseUrl}/api/artifacts/${digest}`, { headers: this.#auth(), signal: AbortSignal.timeout(this.#opts.timeoutMs) });
      if (!res.ok) throw await httpError(res, `download of ${digest}`);
      const body = Buffer.from(await res.arrayBuffer());
      const actual = sha256Hex(body);
      if (actual !== digest) throw new Error(`download of ${digest} hashed to ${actual} (${body.length} bytes): corrupted or cut short`);
      return body;
    });
    const tmp = `${cached}.${process.pid}.tmp`;
    await writeFile(tmp, bytes);
    await rename(tmp, cached);
    return bytes;
  }

  /** Uploads bytes and returns their sha256 (the coordinator checks it too); `digest` when the caller hashed them already. */
  async put(bytes: Uint8Array, digest = sha256Hex(bytes)): Promise<string> {
    await this.#retry(`upload ${digest.slice(0, 12)}`, async () => {
      const res = await this.#opts.fetch(`${this.#opts.baseUrl}/api/artifacts/${digest}`, {
        method: 'PUT',
        headers: { ...this.#auth(), 'content-type': 'application/octet-stream' },
        body: bytes,
        signal: AbortSignal.timeout(this.#opts.timeoutMs),
      });
      if (!res.ok) throw await httpError(res, `upload of ${digest}`);
    });
    return digest;
  }

  /** Uploads every file at once (the store's fsyncs overlap) and returns name → sha256. */
  async putAll(files: Record<string, Uint8Array>, digests: Record<string, string> = {}): Promise<Record<string, string>> {
    const names = Object.keys(files);
    const done = await Promise.all(names.map((name) => this.put(files[name]!, digests[name])));
    return Object.fromEntries(names.map((name, i) => [name, done[i]!]));
  }

  #auth(): Record<string, string> {
    return { authorization: `Bearer ${this.#opts.token}` };
  }

  async #retry<T>(what: string, fn: () => Promise<T>): Promise<T> {
    let last: Error | undefined;
    for (let attempt = 0; attempt <= this.#opts.retries; attempt++) {
      try {
        return await fn();
      } catch (err) {
        last = err as Error;
        if ((err as { permanent?: boolean }).permanent) break;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
    throw new AgentError('AGT_ERR_ARTIFACT', `${what} failed: ${last?.message}`, { cause: last });
  }
}

async function httpError(res: Response, what: string): Promise<Error> {
  const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
  const err = new Error(`${what}: HTTP ${res.status} ${body.error?.message ?? res.statusText}`);
  // 4xx other than 408/429 will not get better by retrying.
  (err as { permanent?: boolean }).permanent = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
  return err;
}
