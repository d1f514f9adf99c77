/**
 * Content-addressed artifact store: checkpoints, datasets and model files live under
 * `<dir>/sha256/<first two hex>/<full hex>`. A write goes to a temporary file, is fsynced, then renamed into
 * place, so a crash never leaves a partial file under a valid name; a read re-hashes and refuses a mismatch.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants, createReadStream, createWriteStream, mkdirSync, rmSync, statSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { CoordinatorError } from '../errors.ts';

const HEX64 = /^[0-9a-f]{64}$/;

export class ArtifactStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(join(dir, 'sha256'), { recursive: true });
    mkdirSync(join(dir, 'tmp'), { recursive: true });
    // Temporary files left by a crash mid-write are garbage by construction.
    rmSync(join(dir, 'tmp'), { recursive: true, force: true });
    mkdirSync(join(dir, 'tmp'), { recursive: true });
  }

  pathOf(digest: string): string {
    if (!HEX64.test(digest)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `'${digest.slice(0, 80)}' is not a sha256 hex digest`);
    return join(this.dir, 'sha256', digest.slice(0, 2), digest);
  }

  has(digest: string): boolean {
    try {
      return statSync(this.pathOf(digest)).isFile();
    } catch {
      return false;
    }
  }

  /** Stores bytes; returns their sha256 (hex). Idempotent. */
  async put(bytes: Uint8Array): Promise<string> {
    const digest = createHash('sha256').update(bytes).digest('hex');
    if (this.has(digest)) return digest;
    const tmp = this.#tmpPath();
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await this.#commit(tmp, digest);
    return digest;
  }

  /** Size in bytes of a stored artifact, or undefined when it is not stored. */
  sizeOf(digest: string): number | undefined {
    const path = this.pathOf(digest); // a malformed digest is the caller's error, not a missing file
    try {
      const st = statSync(path);
      return st.isFile() ? st.size : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Streams into the store (for files larger than memory); returns the sha256 and size. With `expected`, bytes
   * whose sha256 differs are discarded and refused (an upload cut short or corrupted on the way).
   */
  async putStream(source: Readable, expected?: string): Promise<{ digest: string; bytes: number }> {
    const tmp = this.#tmpPath();
    const hash = createHash('sha256');
    let bytes = 0;
    source.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
    });
    try {
      await pipeline(source, createWriteStream(tmp));
      const fh = await open(tmp, 'r+');
      await fh.sync();
      await fh.close();
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
    const digest = hash.digest('hex');
    if (expected !== undefined && digest !== expected) {
      await rm(tmp, { force: true });
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `upload's sha256 is ${digest}, not ${expected}: it was cut short or corrupted; send it again`);
    }
    await this.#commit(tmp, digest);
    return { digest, bytes };
  }

  /** Reads and verifies; a corrupt file is refused with CRD_ERR_STORAGE naming it. */
  async get(digest: string): Promise<Buffer> {
    const path = this.pathOf(digest);
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (err) {
      throw new CoordinatorError('CRD_ERR_NOT_FOUND', `artifact ${digest} is not in ${this.dir}`, { cause: err });
    }
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== digest) {
      throw new CoordinatorError('CRD_ERR_STORAGE', `artifact ${path} is corrupt: its sha256 is ${actual}; delete it and re-upload`);
    }
    return bytes;
  }

  /**
   * Re-hashes a stored artifact as a stream (4 MiB reads, no whole-file buffer, the event loop free between reads)
   * and returns its size; refused like get(): CRD_ERR_NOT_FOUND when absent, CRD_ERR_STORAGE when corrupt.
   */
  async verify(digest: string): Promise<number> {
    const path = this.pathOf(digest);
    const hash = createHash('sha256');
    let bytes = 0;
    try {
      for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new CoordinatorError('CRD_ERR_NOT_FOUND', `artifact ${digest} is not in ${this.dir}`, { cause: err });
      throw new CoordinatorError('CRD_ERR_STORAGE', `artifact ${path} cannot be read: ${(err as Error).message}`, { cause: err });
    }
    const actual = hash.digest('hex');
    if (actual !== digest) throw new CoordinatorError('CRD_ERR_STORAGE', `artifact ${path} is corrupt: its sha256 is ${actual}; delete it and re-upload`);
    return bytes;
  }

  /** Removes an artifact (pruned checkpoints); a missing one is not an error. */
  async delete(digest: string): Promise<void> {
    await rm(this.pathOf(digest), { force: true });
  }

  /** A read stream of a stored artifact (not verified; use get() or verify() where integrity matters). */
  createReadStream(digest: string): Readable {
    return createReadStream(this.pathOf(digest));
  }

  /**
   * Copies a file into the store (on libuv's thread pool) and hashes the copy as a stream; returns its sha256.
   * With `expected`, a file already stored under it is not copied at all, and a copy that hashes otherwise is
   * refused with CRD_ERR_STORAGE (the source changed since its digest was recorded).
   */
  async putFile(path: string, expected?: string): Promise<string> {
    if (expected !== undefined && this.has(expected)) return expected;
    const tmp = this.#tmpPath();
    try {
      await copyFile(path, tmp, fsConstants.COPYFILE_FICLONE);
      const hash = createHash('sha256');
      for await (const chunk of createReadStream(tmp, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
      const digest = hash.digest('hex');
      if (expected !== undefined && digest !== expected) {
        throw new CoordinatorError('CRD_ERR_STORAGE', `${path} changed since its sha256 was recorded (it is ${digest}, expected ${expected})`);
      }
      await this.commitFile(tmp, digest);
      return digest;
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  }

  /**
   * A new empty folder inside the store's tmp folder, on the store's file system: files written there (by a worker
   * thread streaming a merge) enter the store with `commitFile`, a rename, without being copied or read again.
   * What a crash leaves there is deleted at the next start.
   */
  scratchDir(): Promise<string> {
    return mkdtemp(join(this.dir, 'tmp', `${process.pid}-`));
  }

  /**
   * Moves a file into the store under `sha256` after an fsync. The caller vouches for the digest because it hashed
   * the bytes as it wrote them (reads still re-hash). A file already stored under it makes this one redundant.
   */
  async commitFile(path: string, sha256: string): Promise<void> {
    // Asynchronous file-system calls only: under a merge's heavy writes a synchronous stat can block for long.
    const stored = await stat(this.pathOf(sha256)).then((st) => st.isFile(), () => false);
    if (stored) return void (await rm(path, { force: true }));
    const fh = await open(path, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await this.#commit(path, sha256);
  }

  #tmpPath(): string {
    return join(this.dir, 'tmp', `${process.pid}-${randomBytes(8).toString('hex')}`);
  }

  async #commit(tmp: string, digest: string): Promise<void> {
    const final = this.pathOf(digest);
    await mkdir(join(this.dir, 'sha256', digest.slice(0, 2)), { recursive: true });
    await rename(tmp, final);
  }
}

