/**
 * The model registry: each finished job registers a new version of its model as a Hugging Face-style folder,
 * `<dir>/<name>/v<N>/` with config.json, model.safetensors and tokenizer.json (loadable by transformers from
 * that path), lineage.json (job, spec, final metrics, parent) and manifest.json (every other file's size and
 * sha256, so a copied folder can be verified on its own, e.g. by `gateway serve --registry DIR`). A version is
 * written into a temporary folder, fsynced and renamed into place, and only then recorded in SQLite: a crash
 * before the record leaves an orphan folder, which the next start removes, never a listed version that is
 * incomplete.
 *
 * Large files need not be in memory: a file can be given as a path (the merged checkpoint's model.safetensors in the
 * artifact store, a quantize worker's output), which is copied in on libuv's thread pool; bytes given in memory are
 * hashed in 4 MiB pieces with the event loop free between them. Nothing about a 500 MB model file keeps the
 * coordinator's event loop busy for more than a piece.
 */
import type Database from 'better-sqlite3';
import { createHash, randomBytes } from 'node:crypto';
import { constants as fsConstants, createReadStream, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, rename, rm, stat, writeFile } from 'node:fs/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { join } from 'node:path';
import { CoordinatorError } from '../errors.ts';

export const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export interface Lineage {
  jobId?: string;
  spec?: unknown;
  metrics?: Record<string, number>;
  parent?: { name: string; version: number };
  [key: string]: unknown;
}

export interface ModelVersion {
  name: string;
  version: number;
  createdMs: number;
  files: Record<string, { bytes: number; sha256: string }>;
  lineage: Lineage;
  path: string; // the HF-style folder on the coordinator's disk
}

/**
 * A file of a new version: its bytes, or a file on disk that is copied in and hashed from the copy, streamed
 * (`sha256`: what the caller recorded for it, e.g. an artifact's address; a copy that hashes otherwise is refused).
 */
export type VersionFile = Uint8Array | { readonly path: string; readonly sha256?: string };

const HASH_PIECE_BYTES = 4 << 20;

interface Row {
  name: string;
  version: number;
  created_ms: number;
  files: string;
  lineage: string;
}

export class ModelRegistry {
  readonly dir: string;
  readonly #db: Database.Database;
  readonly #stmts;
  #queue: Promise<unknown> = Promise.resolve(); // registrations one at a time, so version numbers never race

  constructor(dir: string, db: Database.Database) {
    this.dir = dir;
    this.#db = db;
    mkdirSync(join(dir, '.tmp'), { recursive: true });
    rmSync(join(dir, '.tmp'), { recursive: true, force: true }); // half-written versions from a crash
    mkdirSync(join(dir, '.tmp'), { recursive: true });
    this.#stmts = {
      next: db.prepare<[string], { v: number | null }>('SELECT MAX(version) AS v FROM model_versions WHERE name = ?'),
      insert: db.prepare('INSERT INTO model_versions(name, version, created_ms, files, lineage) VALUES (?, ?, ?, ?, ?)'),
      get: db.prepare<[string, number], Row>('SELECT * FROM model_versions WHERE name = ? AND version = ?'),
      versions: db.prepare<[string], Row>('SELECT * FROM model_versions WHERE name = ? ORDER BY version'),
      models: db.prepare<[], { name: string; versions: number; latest: number; updated_ms: number }>(
        'SELECT name, COUNT(*) AS versions, MAX(version) AS latest, MAX(created_ms) AS updated_ms FROM model_versions GROUP BY name ORDER BY name',
      ),
    };
    this.#removeOrphans();
  }

  /** Version folders with no database record were being registered when the coordinator stopped. */
  #removeOrphans(): void {
    for (const name of readdirSync(this.dir)) {
      if (!MODEL_NAME.test(name)) continue;
      for (const entry of readdirSync(join(this.dir, name))) {
        const m = /^v(\d+)$/.exec(entry);
        if (m && !this.#stmts.get.get(name, Number(m[1]))) rmSync(join(this.dir, name, entry), { recursive: true, force: true });
      }
    }
  }

  /**
   * Writes a new version of `name` and returns it. Must include config.json and model.safetensors or
   * model.int8.safetensors, or be a LoRA adapter: adapter_model.safetensors and adapter_config.json. `sha256` gives
   * files' digests already computed off the event loop (a worker's), so large files are not hashed here again.
   */
  register(name: string, files: Record<string, VersionFile>, lineage: Lineage, nowMs = Date.now(), sha256?: Readonly<Record<string, string>>): Promise<ModelVersion> {
    const run = this.#queue.then(() => this.#register(name, files, lineage, nowMs, sha256));
    this.#queue = run.catch(() => {});
    return run;
  }

  async #register(name: string, files: Record<string, VersionFile>, lineage: Lineage, nowMs: number, known: Readonly<Record<string, string>> = {}): Promise<ModelVersion> {
    if (!MODEL_NAME.test(name)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `model name '${name.slice(0, 80)}' must match ${MODEL_NAME}`);
    // A LoRA adapter version (coordinator/registry/adapters.ts) holds PEFT files and names its base in lineage; a model
    // version holds config.json and float32 weights, or INT8 ones (model/quantize.ts, coordinator/registry/quantize.ts).
    const adapter = files['adapter_model.safetensors'] || files['adapter_config.json'];
    if (adapter) {
      for (const f of ['adapter_model.safetensors', 'adapter_config.json']) {
        if (!files[f]) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `an adapter version needs adapter_model.safetensors and adapter_config.json; ${f} is missing`);
      }
    } else {
      if (!files['config.json']) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'a model version needs config.json (or is an adapter: adapter_model.safetensors + adapter_config.json)');
      if (!files['model.safetensors'] && !files['model.int8.safetensors']) {
        throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'a model version needs model.safetensors or model.int8.safetensors (or is an adapter: adapter_model.safetensors + adapter_config.json)');
      }
    }
    const all: Record<string, VersionFile> = { ...files, 'lineage.json': Buffer.from(JSON.stringify(lineage, null, 2)) };
    for (const file of Object.keys(all)) {
      if (!FILE_NAME.test(file) || file === 'manifest.json') throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `file name '${file.slice(0, 80)}' is not allowed`);
    }
    const version = (this.#stmts.next.get(name)?.v ?? 0) + 1;
    const tmp = join(this.dir, '.tmp', randomBytes(8).toString('hex'));
    await mkdir(tmp, { recursive: true });
    const manifest: ModelVersion['files'] = {};
    try {
      // A file on disk is copied and hashed from the copy: the manifest describes the folder's bytes.
      for (const [file, source] of Object.entries(all)) {
        const path = join(tmp, file);
        if (source instanceof Uint8Array) {
          await writeSynced(path, source);
          manifest[file] = { bytes: source.byteLength, sha256: known[file] ?? (await hashPieces(source)) };
        } else {
          await copyFile(source.path, path, fsConstants.COPYFILE_FICLONE); // a reflink where the file system can
          await syncFile(path);
          const sha256 = known[file] ?? (await hashStreamed(path));
          if (source.sha256 !== undefined && source.sha256 !== sha256) throw new Error(`${source.path} changed since its sha256 was recorded (it is ${sha256}, expected ${source.sha256})`);
          manifest[file] = { bytes: (await stat(path)).size, sha256 };
        }
      }
      await writeSynced(join(tmp, 'manifest.json'), Buffer.from(JSON.stringify({ format: 'meshtrain-model-version/1', name, version, createdMs: nowMs, files: manifest }, null, 2)));
      await mkdir(join(this.dir, name), { recursive: true });
      const final = this.#pathOf(name, version);
      if (existsSync(final)) await rm(final, { recursive: true, force: true }); // an orphan of a crash
      await rename(tmp, final);
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw new CoordinatorError('CRD_ERR_STORAGE', `could not write ${name} v${version}: ${(err as Error).message}`, { cause: err });
    }
    this.#stmts.insert.run(name, version, nowMs, JSON.stringify(manifest), JSON.stringify(lineage));
    await writeFile(join(this.dir, name, 'LATEST'), `v${version}\n`);
    return this.get(name, version);
  }

  models(): Array<{ name: string; versions: number; latest: number; updatedMs: number }> {
    return this.#stmts.models.all().map((m) => ({ name: m.name, versions: m.versions, latest: m.latest, updatedMs: m.updated_ms }));
  }

  versions(name: string): ModelVersion[] {
    return this.#stmts.versions.all(name).map((r) => this.#fromRow(r));
  }

  get(name: string, version: number): ModelVersion {
    const row = this.#stmts.get.get(name, version);
    if (!row) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no model ${name} version ${version}`);
    return this.#fromRow(row);
  }

  /** A file of a version, checked against the sha256 recorded when it was registered. */
  readFile(name: string, version: number, file: string): Buffer {
    const v = this.get(name, version);
    const entry = v.files[file];
    if (!entry) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `model ${name} v${version} has no file ${file}`);
    const bytes = readFileSync(join(v.path, file));
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== entry.sha256) {
      throw new CoordinatorError('CRD_ERR_STORAGE', `${join(v.path, file)} changed since it was registered (sha256 ${actual}, expected ${entry.sha256})`);
    }
    return bytes;
  }

  /**
   * A new empty folder inside the registry's tmp folder (cleared at start): where a worker writes a version's large
   * files before `register` copies them in.
   */
  scratchDir(): Promise<string> {
    return mkdtemp(join(this.dir, '.tmp', 'scratch-'));
  }

  /** Where a version's file is on disk, with its recorded size and sha256 (for a reader that verifies as it streams). */
  fileOf(name: string, version: number, file: string): { path: string; bytes: number; sha256: string } {
    const v = this.get(name, version);
    const entry = v.files[file];
    if (!entry) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `model ${name} v${version} has no file ${file}`);
    return { path: join(v.path, file), ...entry };
  }

  #pathOf(name: string, version: number): string {
    return join(this.dir, name, `v${version}`);
  }

  #fromRow(r: Row): ModelVersion {
    const path = this.#pathOf(r.name, r.version);
    try {
      statSync(path);
    } catch (err) {
      // A version whose folder vanished is a storage error, not a silent empty answer.
      throw new CoordinatorError('CRD_ERR_STORAGE', `model ${r.name} v${r.version} is registered but ${path} is missing`, { cause: err });
    }
    return { name: r.name, version: r.version, createdMs: r.created_ms, files: JSON.parse(r.files), lineage: JSON.parse(r.lineage), path };
  }
}

async function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncFile(path: string): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** sha256 of bytes in memory, 4 MiB per turn of the event loop. */
async function hashPieces(bytes: Uint8Array): Promise<string> {
  const hash = createHash('sha256');
  for (let at = 0; at < bytes.byteLength; at += HASH_PIECE_BYTES) {
    hash.update(bytes.subarray(at, at + HASH_PIECE_BYTES));
    if (at + HASH_PIECE_BYTES < bytes.byteLength) await nextTurn();
  }
  return hash.digest('hex');
}

/** sha256 of a file, streamed in 4 MiB reads. */
async function hashStreamed(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: HASH_PIECE_BYTES })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
