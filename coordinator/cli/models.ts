/**
 * The model-registry commands of the coordinator CLI (coordinator/cli/index.ts routes to them):
 *   coordinator models                                 registered models
 *   coordinator models quantize NAME VERSION [--scheme int8]   register a version's INT8 variant
 *   coordinator models merge NAME VERSION              fold a LoRA adapter version into its base
 *   coordinator models import DIR --name NAME          upload a Hugging Face GPT-2 folder as a new version
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { UsageError } from '../../common/cli.ts';
import { IMPORT_FILES } from '../registry/import.ts';
import { str, type CliIo, type Values } from './client.ts';

const IMPORT_FILE_NAMES = Object.keys(IMPORT_FILES);

export async function listModels(io: CliIo, v: Values): Promise<number> {
  const { models } = await io.api<{ models: Array<{ name: string; versions: number; latest: number; updatedMs: number }> }>('GET', '/api/models');
  if (v.json) io.print(JSON.stringify(models, null, 2) + '\n');
  else io.table(['NAME', 'VERSIONS', 'LATEST', 'UPDATED'], models.map((m) => [m.name, String(m.versions), `v${m.latest}`, new Date(m.updatedMs).toISOString()]));
  return 0;
}

/** `models quantize NAME VERSION`: the coordinator registers the variant; this prints its version and sizes. */
export async function quantizeModel(io: CliIo, v: Values, name: string, version: string): Promise<number> {
  type Created = { name: string; version: number; lineage: { quantization?: { scheme: string; f32Bytes: number; int8Bytes: number; sizeRatio: number } } };
  const path = `/api/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/quantize`;
  const created = await io.api<Created>('POST', path, { scheme: str(v, 'scheme') ?? 'int8' });
  if (v.json) io.print(JSON.stringify(created, null, 2) + '\n');
  else {
    const q = created.lineage.quantization!;
    const ratio = `${(q.sizeRatio * 100).toFixed(1)} %, ${(1 / q.sizeRatio).toFixed(2)}× smaller`;
    io.print(`registered ${created.name} v${created.version}: ${q.scheme} variant of v${version.replace(/^v/, '')}; weights ${q.int8Bytes} bytes vs ${q.f32Bytes} in float32 (${ratio})\n`);
  }
  return 0;
}

/**
 * `models import DIR --name NAME`: uploads each importable file of DIR to the artifact store (streamed, skipped
 * when the coordinator already has those bytes), then asks the coordinator to check and register them.
 */
export async function importModel(io: CliIo, v: Values, dir: string): Promise<number> {
  const name = str(v, 'name');
  if (!name) throw new UsageError('models import needs --name NAME: the model the folder becomes a version of');
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`${dir} is not a folder`);
  const present = IMPORT_FILE_NAMES.filter((f) => existsSync(join(dir, f)));
  const gpt2Tokenizer = present.includes('vocab.json') && present.includes('merges.txt');
  const missing = ['config.json', 'model.safetensors', ...(gpt2Tokenizer ? [] : ['tokenizer.json'])].filter((f) => !present.includes(f));
  if (missing.length) throw new UsageError(`${dir} lacks ${missing.join(', ')}: a GPT-2 folder needs config.json, model.safetensors and tokenizer.json (or vocab.json + merges.txt)`);
  const { client } = io;
  void client.connection; // a missing --token or a bad --ca is a usage error before any hashing
  const files: Record<string, string> = {};
  for (const file of present) {
    const path = join(dir, file);
    const hash = createHash('sha256');
    for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
    const digest = hash.digest('hex');
    const bytes = statSync(path).size;
    const head = await client.send(`/api/artifacts/${digest}`, { method: 'HEAD' }); // send adds the bearer token
    if (head.status === 404) {
      process.stderr.write(`uploading ${file} (${(bytes / 1e6).toFixed(1)} MB)\n`);
      const put = await client.send(`/api/artifacts/${digest}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
        body: Readable.toWeb(createReadStream(path)) as ReadableStream,
        duplex: 'half',
        redirect: 'error', // following redirects makes fetch tee the body and keep all of it (a whole model file)
      } as RequestInit);
      if (!put.ok) throw new Error(`uploading ${file} failed: ${put.status} ${await put.text().catch(() => '')}`);
    } else if (!head.ok) throw new Error(`checking ${file} on the coordinator failed: ${head.status}`);
    files[file] = digest;
  }
  type Created = { name: string; version: number; files: Record<string, { bytes: number }>; lineage: { metrics?: { params?: number }; imported?: { weightDtypes?: string[] } } };
  const created = await io.api<Created>('POST', `/api/models/${encodeURIComponent(name)}/import`, { files, source: resolve(dir) });
  if (v.json) io.print(JSON.stringify(created, null, 2) + '\n');
  else {
    const params = created.lineage.metrics?.params;
    io.print(`registered ${created.name} v${created.version}: imported from ${resolve(dir)} (${params === undefined ? '?' : (params / 1e6).toFixed(2)} M parameters, weights ${created.lineage.imported?.weightDtypes?.join('/') ?? '?'} stored as F32)\n`);
  }
  return 0;
}

/** `models merge NAME VERSION`: the coordinator merges the adapter into its base and registers the result. */
export async function mergeModel(io: CliIo, v: Values, name: string, version: string): Promise<number> {
  type Created = { name: string; version: number; lineage: { parents?: Array<{ name: string; version: number }> } };
  const created = await io.api<Created>('POST', `/api/models/${encodeURIComponent(name)}/versions/${encodeURIComponent(version)}/merge`);
  if (v.json) io.print(JSON.stringify(created, null, 2) + '\n');
  else {
    const [adapter, base] = created.lineage.parents ?? [];
    io.print(`registered ${created.name} v${created.version}: adapter ${adapter?.name} v${adapter?.version} merged into ${base?.name} v${base?.version}\n`);
  }
  return 0;
}

