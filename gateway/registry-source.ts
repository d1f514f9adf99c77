/**
 * Where the gateway gets model versions to serve: the coordinator's registry, read either as a folder
 * (`--registry DIR`: DIR/NAME/vN/{config.json, model.safetensors, tokenizer.json, lineage.json}, DIR/NAME/LATEST
 * holding "vN") or through the coordinator's API (`--registry http://HOST:PORT`, Bearer cluster token). Either
 * way every file is checked against the sha256 and size of the version's manifest before anything uses it.
 *
 * It hands back raw files. Turning them into an InferenceBackend is the model's job: a `BackendFactory`.
 *
 * Manifests: the API serves each version's `files` {name: {bytes, sha256}}. A folder has none of its own (the
 * coordinator keeps them in SQLite), so for DIR the manifest is, in order: DIR/NAME/vN/manifest.json
 * (`{"files": {...}}`, the API's shape), else the coordinator's state.db beside DIR (DIR = <data>/registry), read
 * only. A folder version with neither is loaded unverified, and says so (`verified: false`).
 */
import type { BackendChoice } from '../protocol/backends.ts';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { GatewayError } from './errors.ts';
import type { InferenceBackend } from './inference-backend.ts';

/** Model names as the coordinator's registry allows them (coordinator/registry/registry.ts). */
const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

export type FileManifest = Record<string, { bytes: number; sha256: string }>;

export interface ModelVersionMeta {
  name: string;
  version: number;
  /** Unix ms the version was registered (0 when unknown). */
  createdMs: number;
  /** Where it was read from: a folder path or an API URL. */
  source: string;
  /** The manifest the files were checked against; empty when unverified. */
  manifest: FileManifest;
  /** False only for a folder version that has no manifest anywhere. */
  verified: boolean;
  /** lineage.json, parsed (job, spec, metrics, parent), or {} when absent. */
  lineage: Record<string, unknown>;
  /** For a LoRA adapter version loaded with its base (adapter-source.ts): the base version the files also hold. */
  base?: ModelVersionMeta;
  /**
   * For a version no job trained (quantized, or an adapter merged into its base): the lineage of the nearest
   * ancestor a job did train, which says how the weights were trained (training-lineage.ts). Absent otherwise.
   */
  training?: Record<string, unknown>;
}

/** A version's files by name (config.json, model.safetensors, tokenizer.json, lineage.json, …), verified. */
export type ModelFiles = ReadonlyMap<string, Uint8Array>;

/** Builds a backend from a verified version. The model package provides the real one; tests and --fake bring their own. */
/** `options.backend`: the compute backend the gateway was asked for (`--backend`; protocol/backends.ts). */
export type BackendFactory = (files: ModelFiles, meta: ModelVersionMeta, options?: { backend?: BackendChoice }) => Promise<InferenceBackend>;

export interface LoadedVersion {
  files: ModelFiles;
  meta: ModelVersionMeta;
}

export interface RegistrySource {
  /** Names of the registered models. */
  models(): Promise<string[]>;
  /** A version of `name` (default: the latest), its files checked against the manifest. */
  load(name: string, version?: number): Promise<LoadedVersion>;
  /** Only the lineage.json of a version (checked against the manifest where there is one); {} when it has none. */
  lineage(name: string, version: number): Promise<Record<string, unknown>>;
}

/** `--registry DIR|URL`: an http(s) URL means the coordinator API, anything else a folder. */
export function openRegistry(location: string, opts: { token?: string; fetch?: typeof fetch } = {}): RegistrySource {
  return /^https?:\/\//i.test(location) ? new HttpRegistrySource(location, opts.token, opts.fetch ?? fetch) : new DirRegistrySource(location);
}

const sha256Hex = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** Throws GW_ERR_CHECKSUM unless every manifest file is present with its size and sha256. */
export function verifyFiles(files: ModelFiles, manifest: FileManifest, where: string): void {
  for (const [file, want] of Object.entries(manifest)) {
    const bytes = files.get(file);
    if (!bytes) throw new GatewayError('GW_ERR_CHECKSUM', `${where}: ${file} is listed in the manifest but missing`);
    if (bytes.byteLength !== want.bytes) throw new GatewayError('GW_ERR_CHECKSUM', `${where}: ${file} is ${bytes.byteLength} bytes, the manifest says ${want.bytes}`);
    const got = sha256Hex(bytes);
    if (got !== want.sha256) throw new GatewayError('GW_ERR_CHECKSUM', `${where}: ${file} has sha256 ${got}, the manifest says ${want.sha256}; refusing to serve it`);
  }
}

function checkName(name: string): void {
  if (!MODEL_NAME.test(name)) throw new GatewayError('GW_ERR_REGISTRY', `'${name.slice(0, 80)}' is not a valid model name (${MODEL_NAME})`);
}

export class DirRegistrySource implements RegistrySource {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
  }

  async models(): Promise<string[]> {
    let entries: string[];
    try {
      entries = readdirSync(this.dir);
    } catch (err) {
      throw new GatewayError('GW_ERR_REGISTRY', `cannot read registry folder ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    return entries.filter((e) => MODEL_NAME.test(e) && existsSync(join(this.dir, e, 'LATEST'))).sort();
  }

  async load(name: string, version?: number): Promise<LoadedVersion> {
    checkName(name);
    const v = version ?? this.#latest(name);
    const path = join(this.dir, name, `v${v}`);
    let names: string[];
    try {
      names = readdirSync(path).filter((f) => FILE_NAME.test(f) && statSync(join(path, f)).isFile());
    } catch (err) {
      throw new GatewayError('GW_ERR_REGISTRY', `model ${name} v${v}: cannot read ${path}: ${(err as Error).message}`, { cause: err });
    }
    const files = new Map(names.filter((f) => f !== 'manifest.json').map((f) => [f, new Uint8Array(readFileSync(join(path, f)))]));
    const found = this.#manifest(name, v, path);
    if (found) {
      // A manifest covers the version exactly: a file it does not list is not part of the version.
      for (const f of [...files.keys()]) if (!(f in found.files)) files.delete(f);
      verifyFiles(files, found.files, `model ${name} v${v} (${path})`);
    }
    return { files, meta: { name, version: v, createdMs: found?.createdMs ?? 0, source: path, manifest: found?.files ?? {}, verified: !!found, lineage: parseLineage(files) } };
  }

  async lineage(name: string, version: number): Promise<Record<string, unknown>> {
    checkName(name);
    const path = join(this.dir, name, `v${version}`);
    if (!existsSync(path)) throw new GatewayError('GW_ERR_REGISTRY', `no version ${version} of model ${name} in ${this.dir}`);
    const file = join(path, 'lineage.json');
    if (!existsSync(file)) return {};
    const files = new Map([['lineage.json', new Uint8Array(readFileSync(file))]]);
    const listed = this.#manifest(name, version, path)?.files['lineage.json'];
    if (listed) verifyFiles(files, { 'lineage.json': listed }, `model ${name} v${version} (${path})`);
    return parseLineage(files);
  }

  #latest(name: string): number {
    const file = join(this.dir, name, 'LATEST');
    let text: string;
    try {
      text = readFileSync(file, 'utf8').trim();
    } catch (err) {
      throw new GatewayError('GW_ERR_REGISTRY', `no model ${name} in ${this.dir} (cannot read ${file}: ${(err as Error).message})`, { cause: err });
    }
    const m = /^v([1-9][0-9]*)$/.exec(text);
    if (!m) throw new GatewayError('GW_ERR_REGISTRY', `${file} should hold a version like 'v3', not '${text.slice(0, 40)}'`);
    return Number(m[1]);
  }

  #manifest(name: string, v: number, path: string): { files: FileManifest; createdMs: number } | undefined {
    const own = join(path, 'manifest.json');
    if (existsSync(own)) {
      try {
        const doc = JSON.parse(readFileSync(own, 'utf8')) as { files?: FileManifest; createdMs?: number };
        if (!doc.files || typeof doc.files !== 'object') throw new Error('no "files" object');
        return { files: doc.files, createdMs: doc.createdMs ?? 0 };
      } catch (err) {
        throw new GatewayError('GW_ERR_REGISTRY', `${own} is not a valid manifest: ${(err as Error).message}`, { cause: err });
      }
    }
    const stateDb = join(dirname(this.dir), 'state.db');
    if (!existsSync(stateDb)) return undefined;
    let db: Database.Database | undefined;
    try {
      db = new Database(stateDb, { readonly: true, fileMustExist: true });
      const row = db.prepare<[string, number], { files: string; created_ms: number }>('SELECT files, created_ms FROM model_versions WHERE name = ? AND version = ?').get(name, v);
      if (!row) throw new GatewayError('GW_ERR_REGISTRY', `model ${name} v${v} is in ${this.dir} but not recorded in ${stateDb}`);
      return { files: JSON.parse(row.files) as FileManifest, createdMs: row.created_ms };
    } catch (err) {
      if (err instanceof GatewayError) throw err;
      throw new GatewayError('GW_ERR_REGISTRY', `cannot read the manifest of ${name} v${v} from ${stateDb}: ${(err as Error).message}`, { cause: err });
    } finally {
      db?.close();
    }
  }
}

export class HttpRegistrySource implements RegistrySource {
  readonly base: string;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(url: string, token: string | undefined, fetchFn: typeof fetch = fetch) {
    this.base = url.replace(/\/+$/, '');
    this.#token = token;
    this.#fetch = fetchFn;
  }

  async models(): Promise<string[]> {
    const { models } = (await (await this.#get('/api/models')).json()) as { models: Array<{ name: string }> };
    return models.map((m) => m.name).sort();
  }

  async load(name: string, version?: number): Promise<LoadedVersion> {
    checkName(name);
    const doc = (await (await this.#get(`/api/models/${name}/versions/${version ?? 'latest'}`)).json()) as {
      name: string;
      version: number;
      createdMs?: number;
      files?: FileManifest;
      lineage?: Record<string, unknown>;
    };
    if (!Number.isInteger(doc.version) || !doc.files || typeof doc.files !== 'object') {
      throw new GatewayError('GW_ERR_REGISTRY', `${this.base}: the version document of ${name} has no version number or files manifest`);
    }
    const files = new Map<string, Uint8Array>();
    for (const file of Object.keys(doc.files)) {
      if (!FILE_NAME.test(file)) throw new GatewayError('GW_ERR_REGISTRY', `${this.base}: model ${name} v${doc.version} lists a bad file name '${file.slice(0, 80)}'`);
      const res = await this.#get(`/api/models/${name}/versions/${doc.version}/files/${file}`);
      files.set(file, new Uint8Array(await res.arrayBuffer()));
    }
    verifyFiles(files, doc.files, `model ${name} v${doc.version} from ${this.base}`);
    return {
      files,
      meta: { name, version: doc.version, createdMs: doc.createdMs ?? 0, source: `${this.base}/api/models/${name}/versions/${doc.version}`, manifest: doc.files, verified: true, lineage: doc.lineage ?? parseLineage(files) },
    };
  }

  async lineage(name: string, version: number): Promise<Record<string, unknown>> {
    checkName(name);
    const doc = (await (await this.#get(`/api/models/${name}/versions/${version}`)).json()) as { lineage?: Record<string, unknown> };
    return doc.lineage ?? {};
  }

  async #get(path: string): Promise<Response> {
    let res: Response;
    try {
      res = await this.#fetch(`${this.base}${path}`, { headers: this.#token ? { authorization: `Bearer ${this.#token}` } : {} });
    } catch (err) {
      const why = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new GatewayError('GW_ERR_REGISTRY', `cannot reach the registry at ${this.base} (${why})`, { cause: err });
    }
    if (!res.ok) {
      const body = (await res.json().catch(() => ({}))) as { error?: { code?: string; message?: string } };
      const hint = res.status === 401 ? ' (pass the cluster token with --token)' : '';
      throw new GatewayError('GW_ERR_REGISTRY', `GET ${this.base}${path}: ${res.status} ${body.error?.code ?? ''} ${body.error?.message ?? res.statusText}${hint}`.replace(/\s+/g, ' ').trim());
    }
    return res;
  }
}

function parseLineage(files: ModelFiles): Record<string, unknown> {
  const bytes = files.get('lineage.json');
  if (!bytes) return {};
  try {
    return JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch {
    return {};
  }
}
