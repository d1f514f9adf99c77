/**
 * The worker thread behind coordinator/registry/quantize.ts: reads a registered version's files from their paths, checks each
 * against the sha256 the registry recorded, quantizes the weights to INT8 (model/quantize.ts) and writes
 * model.int8.safetensors into a scratch folder of the registry, hashed as it is written. Parsing, quantizing and
 * hashing GPT-2-small is seconds of CPU the coordinator's event loop must not spend. Started through
 * common/worker-boot.mjs; answers {type: 'done', …} or {type: 'error', message, code}.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { writeSafetensorsFile } from '../../model/checkpoint-files.ts';
import { paramLayout, unflatten } from '../../model/params.ts';
import { importHf, INT8_QUANTIZATION_CONFIG } from '../../model/hf-format.ts';
import { ModelError } from '../../model/errors.ts';
import { INT8_METHOD, INT8_WEIGHTS_FILE, quantizeInt8, type Int8Sizes } from '../../model/quantize.ts';

export interface QuantizeTask {
  /** The parent version's config.json, model.safetensors and tokenizer.json: where they are and their recorded sha256. */
  inputs: Record<string, { path: string; sha256: string }>;
  /** An existing empty folder for the output. */
  outDir: string;
}

export type QuantizeReply =
  | { type: 'done'; config: Uint8Array; weights: { path: string; bytes: number; sha256: string }; sizes: Int8Sizes }
  | { type: 'error'; message: string; code?: string };

async function run({ inputs, outDir }: QuantizeTask): Promise<QuantizeReply> {
  const files: Record<string, Uint8Array | undefined> = {};
  for (const [file, { path, sha256 }] of Object.entries(inputs)) {
    const bytes = readFileSync(path);
    const actual = createHash('sha256').update(bytes).digest('hex');
    if (actual !== sha256) return { type: 'error', code: 'CRD_ERR_STORAGE', message: `${path} changed since it was registered (sha256 ${actual}, expected ${sha256})` };
    files[file] = bytes;
  }
  const loaded = importHf(files);
  if (loaded.quantization) throw new ModelError('MDL_ERR_MODEL_FILES', `these files are already quantized (${loaded.quantization})`);
  files['model.safetensors'] = undefined; // the weights live on in loaded.params; the file's buffer can go
  const layout = paramLayout(loaded.config);
  const views = unflatten(loaded.params, layout); // views, not copies
  const { tensors, bytes: sizes } = quantizeInt8(Object.fromEntries(layout.specs.map((s) => [s.name, { dtype: 'F32', shape: s.shape, data: views.get(s.name)! }])));
  const path = join(outDir, INT8_WEIGHTS_FILE);
  const written = await writeSafetensorsFile(path, Object.entries(tensors).map(([name, t]) => [name, { dtype: t.dtype, shape: t.shape }] as const), { format: 'pt', quantization: INT8_METHOD }, async (name) => tensors[name]!.data);
  const config = { ...(JSON.parse(Buffer.from(files['config.json']!).toString('utf8')) as object), quantization_config: INT8_QUANTIZATION_CONFIG };
  return { type: 'done', config: Buffer.from(JSON.stringify(config, null, 2)), weights: { path, ...written }, sizes };
}

try {
  parentPort!.postMessage(await run(workerData as QuantizeTask));
} catch (err) {
  parentPort!.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code } satisfies QuantizeReply);
}
