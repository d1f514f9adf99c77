/**
 * Importing a published model (POST /api/models/:name/import, `coordinator models import DIR --name NAME`): a Hugging
 * Face GPT-2-family folder whose files the client has uploaded to the artifact store (PUT /api/artifacts/:sha256)
 * becomes a new version of NAME.
 *
 * The files are checked as a whole (model/hf-format.ts importHf: config.json against the weights tensor by tensor,
 * the tokenizer against the vocabulary) and registered in the registry's canonical form, so that every reader of a
 * version (jobs' init.from, quantize, merge, the gateway) sees what it sees for a trained one: config.json (theirs,
 * with our architecture fields written over it), model.safetensors as unprefixed float32 (F16/BF16 widened exactly,
 * mask buffers and the tied head dropped) and tokenizer.json (GPT-2's vocab.json + merges.txt converted when there is
 * no tokenizer.json; the originals are kept beside it). generation_config.json, tokenizer_config.json (with its
 * chat_template) and special_tokens_map.json are kept as they are, checked to be JSON objects. lineage.json says where
 * it came from: `imported: {source, files: {name: {sha256, bytes}}}` — the files as uploaded, before conversion.
 *
 * Checking and converting run in a worker thread (convertImport), so the coordinator keeps answering heartbeats
 * while a GPT-2-small file is widened and hashed; the registry trusts the worker's sha256 of each file it writes.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { ModelError } from '../../model/errors.ts';
import { exportHf, hfConfig, importHf } from '../../model/hf-format.ts';
import { paramLayout } from '../../model/params.ts';
import { readSafetensorsHeader } from '../../model/safetensors.ts';
import { Tokenizer } from '../../model/tokenizer.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import { CoordinatorError } from '../errors.ts';
import { MODEL_NAME, type ModelRegistry, type ModelVersion } from './registry.ts';

/** The files an import takes, and what each is for. Any other name is refused, so nothing arrives unexamined. */
export const IMPORT_FILES: Readonly<Record<string, string>> = Object.freeze({
  'config.json': 'GPT2Config (required)',
  'model.safetensors': 'the weights: F32, F16 or BF16, with or without the transformer. prefix (required)',
  'tokenizer.json': 'the tokenizer (required, unless vocab.json and merges.txt are there)',
  'vocab.json': "GPT-2's own tokenizer files: the vocabulary (with merges.txt, when there is no tokenizer.json)",
  'merges.txt': "GPT-2's own tokenizer files: the merges, in rank order (with vocab.json)",
  'generation_config.json': 'generation defaults, kept as given',
  'tokenizer_config.json': 'tokenizer settings and chat_template, kept as given',
  'special_tokens_map.json': 'special tokens, kept as given',
});
const KEPT = ['generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'];
const KEPT_TEXT = ['vocab.json', 'merges.txt']; // GPT-2 tooling loads these; already validated by the tokenizer
const SHA256 = /^[0-9a-f]{64}$/;

export interface ImportRequest {
  /** File name → sha256 of the bytes already in the artifact store. */
  files: Record<string, string>;
  /** Where the files came from, as the client says (a folder path or a hub id); recorded in lineage. */
  source?: string;
}

/** `{"files": {"config.json": "<sha256>", …}, "source"?: "…"}`; anything else is CRD_ERR_BAD_REQUEST naming each problem. */
export function parseImportBody(raw: unknown): ImportRequest {
  const problems: string[] = [];
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'send {"files": {"config.json": "<sha256>", …}, "source"?: "…"}', { details: ['/ must be an object'] });
  }
  const body = raw as Record<string, unknown>;
  for (const k of Object.keys(body)) if (k !== 'files' && k !== 'source') problems.push(`/${k.slice(0, 40)} is not a field of an import`);
  if (body.source !== undefined && (typeof body.source !== 'string' || body.source.length > 1024)) problems.push('/source must be a string of at most 1024 characters');
  const files = body.files;
  if (files === null || typeof files !== 'object' || Array.isArray(files)) problems.push('/files must be an object of file name → sha256');
  else {
    for (const [name, digest] of Object.entries(files)) {
      if (!Object.prototype.hasOwnProperty.call(IMPORT_FILES, name)) problems.push(`/files/${name.slice(0, 60)} is not a file an import takes (${Object.keys(IMPORT_FILES).join(', ')})`);
      else if (typeof digest !== 'string' || !SHA256.test(digest)) problems.push(`/files/${name} must be a lowercase hex sha256`);
    }
    const has = (name: string) => Object.prototype.hasOwnProperty.call(files, name);
    for (const name of ['config.json', 'model.safetensors']) if (!has(name)) problems.push(`/files/${name} is required`);
    if (!has('tokenizer.json') && !(has('vocab.json') && has('merges.txt'))) problems.push('/files/tokenizer.json is required (or GPT-2\'s vocab.json and merges.txt)');
  }
  if (problems.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid import: ${problems.join('; ')}`, { details: problems });
  return { files: files as Record<string, string>, ...(body.source !== undefined ? { source: body.source as string } : {}) };
}

/** What a conversion gives: the version's files, each file's sha256, and facts for the lineage. */
export interface ConvertedImport {
  files: Record<string, Uint8Array>;
  sha256: Record<string, string>;
  params: number;
  weightDtypes: string[];
}

/**
 * The checks and the conversion, pure: uploaded files (name → bytes) → the version's canonical files. Throws a
 * ModelError naming what is wrong. Runs in a worker thread (import-worker.ts): for a GPT-2-small file it parses,
 * widens, re-encodes and hashes about a gigabyte, seconds the coordinator's event loop must not wait for.
 */
export function convertImport(given: Readonly<Record<string, Uint8Array>>): ConvertedImport {
  const text = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  // GPT-2's vocab.json + merges.txt become the tokenizer.json every reader of a version takes; tokenizer.json wins.
  const tokenizerJson = given['tokenizer.json'] ?? Buffer.from(JSON.stringify(Tokenizer.fromGpt2Files(given['vocab.json']!, given['merges.txt']!).toJSON()));
  const loaded = importHf({ 'config.json': given['config.json'], 'model.safetensors': given['model.safetensors'], 'tokenizer.json': tokenizerJson });
  const weightDtypes = [...new Set([...readSafetensorsHeader(given['model.safetensors']!).tensors.values()].map((t) => t.dtype))].sort();
  const kept: Record<string, Uint8Array> = {};
  for (const file of KEPT) {
    const bytes = given[file];
    if (!bytes) continue;
    try {
      const json = JSON.parse(text(bytes)) as unknown;
      if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error('not a JSON object');
    } catch (err) {
      throw new ModelError('MDL_ERR_MODEL_FILES', `${file} is not a JSON object: ${(err as Error).message}`);
    }
    kept[file] = bytes;
  }
  for (const file of KEPT_TEXT) if (given[file]) kept[file] = given[file];
  const canonical = exportHf({ config: loaded.config, layout: paramLayout(loaded.config) }, loaded.tokenizer, loaded.params);
  // Their config.json with our architecture fields written over it: their extra keys (task_specific_params, …) stay.
  const theirs = JSON.parse(text(given['config.json']!)) as Record<string, unknown>;
  const config = { ...theirs, ...hfConfig(loaded.config, loaded.tokenizer) };
  const files: Record<string, Uint8Array> = { ...kept, ...canonical, 'config.json': Buffer.from(JSON.stringify(config, null, 2)) };
  const sha256 = Object.fromEntries(Object.entries(files).map(([f, b]) => [f, createHash('sha256').update(b).digest('hex')]));
  return { files, sha256, params: loaded.params.length, weightDtypes };
}

/** convertImport in a worker thread, reading the uploaded files from the artifact store itself. */
function convertInWorker(paths: Record<string, string>): Promise<ConvertedImport> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./import-worker.ts', import.meta.url).href, paths },
    });
    let settled = false;
    worker.on('message', (m: { type: 'done'; result: ConvertedImport } | { type: 'error'; message: string; code?: string }) => {
      settled = true;
      if (m.type === 'done') resolve({ ...m.result, files: Object.fromEntries(Object.entries(m.result.files).map(([f, b]) => [f, Buffer.from(b.buffer, b.byteOffset, b.byteLength)])) });
      else reject(ModelError.isCode(m.code) ? new ModelError(m.code, m.message) : new Error(m.message));
    });
    worker.once('error', (err) => !settled && reject(err));
    worker.once('exit', (code) => !settled && reject(new Error(`the import worker exited with ${code} before answering`)));
  });
}

/** Checks and registers the uploaded files as a new version of `name`; the heavy part runs off the event loop. */
export async function importVersion(registry: ModelRegistry, artifacts: ArtifactStore, name: string, req: ImportRequest): Promise<ModelVersion> {
  // Refused before the worker spends seconds converting, rather than by register() afterwards.
  if (!MODEL_NAME.test(name)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `model name '${name.slice(0, 80)}' must match ${MODEL_NAME}`);
  const paths: Record<string, string> = {};
  for (const [file, digest] of Object.entries(req.files)) {
    if (!artifacts.has(digest)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `${file}: no artifact ${digest}; upload it first (PUT /api/artifacts/${digest})`, { details: [`/files/${file} is not uploaded`] });
    paths[file] = artifacts.pathOf(digest);
  }
  let converted: ConvertedImport;
  try {
    converted = await convertInWorker(paths);
  } catch (err) {
    if (!(err instanceof ModelError)) throw err;
    throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `cannot import ${name}: ${err.code}: ${err.message}`, { cause: err, details: [`${err.code}: ${err.message}`] });
  }
  return registry.register(name, converted.files, {
    imported: {
      ...(req.source !== undefined ? { source: req.source } : {}),
      files: Object.fromEntries(Object.entries(req.files).map(([file, sha256]) => [file, { sha256, bytes: artifacts.sizeOf(sha256)! }])),
      weightDtypes: converted.weightDtypes,
    },
    metrics: { params: converted.params },
  }, Date.now(), converted.sha256);
}
