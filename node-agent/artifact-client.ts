/**
 * The agent's side of the coordinator's artifact store: fetch dataset shards, tokenizers and checkpoints by
 * sha256, upload checkpoints and model files. Every download is hashed and refused when it does not match its
 * address, so a truncated or corrupted transfer is retried rather than trained on. Downloads are cached on disk
 * by address (content-addressed files never change), so a resumed job does not fetch its shards again.
 *
 * Large files never sit in one buffer here: a download streams to a temporary file beside the cache entry, hashed
 * chunk by chunk as it arrives, and is renamed into the cache once it verifies; a job's copy is a hard link to
 * that entry (a copy where links fail). An upload streams the caller's chunks (a checkpoint's header and tensor
 * views) in 1 MiB pieces without joining them, or a file (a checkpoint the trainer wrote) read in 1 MiB pieces.
 * The event loop only ever hashes or writes one chunk at a time.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync } from 'node:fs';
import { copyFile, link, open, readFile, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
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

/**
 * Bytes per piece of an upload body: each is one socket write, which copies into the kernel on this thread (a
 * profile caught one 4 MiB write taking 220 ms on a machine short of free memory), so pieces stay at 1 MiB.
 */
const PIECE_BYTES = 1 << 20;
/** Bytes per read when re-hashing the cache (read on the thread pool, hashed here: ~3 ms a piece). */
const HASH_READ_BYTES = 4 << 20;

export class ArtifactClient {
  readonly #opts: Required<ArtifactClientOptions>;

  constructor(opts: ArtifactClientOptions) {
    this.#opts = { retries: 3, timeoutMs: 300_000, ...opts, fetch: opts.fetch ?? fetch };
    mkdirSync(opts.cacheDir, { recursive: true });
  }

  /** The bytes stored under `digest`, from the local cache or the coordinator (for small artifacts: it is one buffer). */
  async get(digest: string): Promise<Buffer> {
    return readFile(await this.#cached(digest));
  }

  /**
   * Puts the artifact `digest` at `path` (a new file: a hard link to the verified cache entry, or a copy) and
   * resolves with the sha256 of its bytes, which is `digest`: anything else was refused and retried.
   */
  async download(digest: string, path: string): Promise<string> {
    const cached = await this.#cached(digest);
    await rm(path, { force: true });
    await link(cached, path).catch(() => copyFile(cached, path));
    return digest;
  }

  /** Uploads bytes and returns their sha256 (the coordinator checks it too); `digest` when the caller hashed them already. */
  async put(bytes: Uint8Array, digest = sha256Hex(bytes)): Promise<string> {
    await this.upload([bytes], digest);
    return digest;
  }

  /**
   * Uploads one file given as its chunks in order, whose sha256 the caller computed (the coordinator refuses the
   * upload if the bytes do not hash to it). The chunks are streamed, never joined; they must not change meanwhile.
   */
  async upload(chunks: readonly Uint8Array[], sha256: string): Promise<void> {
    const bytes = chunks.reduce((n, c) => n + c.byteLength, 0);
    await this.#put(sha256, async () => ({ body: piecesOf(chunks), bytes, done: async () => {} }));
  }

  /**
   * Uploads the file at `path`, whose sha256 the caller computed, read in 1 MiB pieces (each attempt reads it
   * again). The file must not change meanwhile; the coordinator refuses bytes that do not hash to `sha256`.
   */
  async uploadFile(path: string, sha256: string): Promise<void> {
    await this.#put(sha256, async () => {
      const fh = await open(path, 'r');
      const { size } = await fh.stat();
      return { body: filePieces(fh, size), bytes: size, done: () => fh.close() };
    });
  }

  /** One PUT per attempt, of a body (and its length) `openBody` makes afresh; `done` releases what it opened. */
  async #put(sha256: string, openBody: () => Promise<{ body: ReadableStream<Uint8Array>; bytes: number; done(): Promise<void> }>): Promise<void> {
    await this.#retry(`upload ${sha256.slice(0, 12)}`, async () => {
      const { body, bytes, done } = await openBody();
      try {
        const res = await this.#opts.fetch(`${this.#opts.baseUrl}/api/artifacts/${sha256}`, {
          method: 'PUT',
          headers: { ...this.#auth(), 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
          body,
          duplex: 'half', // a stream body (Node's fetch requires saying so)
          // Following redirects makes fetch clone the request, which tees the body stream: the unread branch then
          // kept every piece sent (1.5 GB resident for a GPT-2-small checkpoint). An upload is never redirected.
          redirect: 'error',
          signal: AbortSignal.timeout(this.#opts.timeoutMs),
        } as RequestInit);
        if (!res.ok) throw await httpError(res, `upload of ${sha256}`);
        await res.body?.cancel();
      } finally {
        await done().catch(() => {});
      }
    });
  }

  /** The path of the verified cache entry of `digest`, downloading it first when it is missing or damaged. */
  async #cached(digest: string): Promise<string> {
    const cached = join(this.#opts.cacheDir, digest);
    if (existsSync(cached) && (await hashFile(cached).catch(() => '')) === digest) return cached;
    await this.#retry(`download ${digest.slice(0, 12)}`, async () => {
      const res = await this.#opts.fetch(`${this.#opts.baseUrl}/api/artifacts/${digest}`, { headers: this.#auth(), signal: AbortSignal.timeout(this.#opts.timeoutMs) });
      if (!res.ok) throw await httpError(res, `download of ${digest}`);
      const tmp = `${cached}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      try {
        const hash = createHash('sha256');
        let bytes = 0;
        const body = res.body ? Readable.fromWeb(res.body as WebReadableStream<Uint8Array>) : Readable.from([]);
        body.on('data', (chunk: Buffer) => {
          hash.update(chunk);
          bytes += chunk.length;
        });
        await pipeline(body, createWriteStream(tmp));
        const actual = hash.digest('hex');
        if (actual !== digest) throw new AgentError('AGT_ERR_ARTIFACT', `download of ${digest} hashed to ${actual} (${bytes} bytes): corrupted or cut short`);
        await rename(tmp, cached);
      } catch (err) {
        await rm(tmp, { force: true });
        throw err;
      }
    });
    return cached;
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

/** A request body of the chunks' bytes in order, as views of at most PIECE_BYTES (nothing is copied). */
function piecesOf(chunks: readonly Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0, at = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      while (i < chunks.length && at >= chunks[i]!.byteLength) {
        i++;
        at = 0;
      }
      if (i >= chunks.length) return controller.close();
      const c = chunks[i]!;
      const end = Math.min(c.byteLength, at + PIECE_BYTES);
      controller.enqueue(c.subarray(at, end));
      at = end;
    },
  }, { highWaterMark: 0 });
}

/** The first `size` bytes of an open file as a stream of PIECE_BYTES reads (a file cut short fails the stream). */
function filePieces(fh: FileHandle, size: number): ReadableStream<Uint8Array> {
  let at = 0;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (at >= size) return controller.close();
      const piece = new Uint8Array(Math.min(PIECE_BYTES, size - at));
      const { bytesRead } = await fh.read(piece, 0, piece.byteLength, at);
      if (bytesRead === 0) return controller.error(new AgentError('AGT_ERR_ARTIFACT', `the file ended at byte ${at} of ${size}`));
      at += bytesRead;
      controller.enqueue(piece.subarray(0, bytesRead));
    },
  }, { highWaterMark: 0 });
}

/** The sha256 of a file, read in HASH_READ_BYTES reads. */
async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: HASH_READ_BYTES })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function httpError(res: Response, what: string): Promise<AgentError> {
  const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
  const err = new AgentError('AGT_ERR_ARTIFACT', `${what}: HTTP ${res.status} ${body.error?.message ?? res.statusText}`);
  // 4xx other than 408/429 will not get better by retrying.
  (err as { permanent?: boolean }).permanent = res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429;
  return err;
}
