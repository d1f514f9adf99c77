/**
 * Quantized variants of registered model versions (POST /api/models/:name/versions/:v/quantize, `coordinator models
 * quantize`): the parent version's files are read back (sha256-checked), turned into config.json with
 * `quantization_config` + model.int8.safetensors + tokenizer.json (model/hf-format.ts quantizeHf), and registered as
 * a NEW version of the same model, so the gateway, deployments and A/B compare it with its parent like any other
 * version. lineage.json says where it came from: `parent: {name, version}` and `quantization: {scheme, …, sizes}`.
 *
 * Quantizing runs in a worker thread (quantize-worker.ts), which reads the parent's files from the registry's folder
 * and checks them, and writes model.int8.safetensors into the registry's scratch folder: the event loop only copies
 * files in (registry.ts). For GPT-2-small that is seconds of CPU and ~1 GB of buffers off the main thread.
 */
import { rm } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { ModelError } from '../../model/errors.ts';
import { INT8_METHOD, INT8_WEIGHTS_FILE } from '../../model/quantize.ts';
import { CoordinatorError } from '../errors.ts';
import type { QuantizeReply, QuantizeTask } from './quantize-worker.ts';
import type { ModelRegistry, ModelVersion } from './registry.ts';

/** The schemes a version can be quantized with. */
export const QUANT_SCHEMES = ['int8'] as const;
export type QuantScheme = (typeof QUANT_SCHEMES)[number];

/** `{"scheme": "int8"}` (scheme optional, default int8); anything else is CRD_ERR_BAD_REQUEST. */
export function parseQuantizeBody(raw: unknown): { scheme: QuantScheme } {
  const body = raw ?? {};
  if (typeof body !== 'object' || Array.isArray(body)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', 'send {"scheme": "int8"}');
  const unknown = Object.keys(body).filter((k) => k !== 'scheme');
  if (unknown.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k.slice(0, 40)}'`).join(', ')}; send {"scheme": "int8"}`);
  const scheme = (body as { scheme?: unknown }).scheme ?? 'int8';
  if (!(QUANT_SCHEMES as readonly unknown[]).includes(scheme)) {
    throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `scheme ${JSON.stringify(scheme).slice(0, 40)} is not supported; supported: ${QUANT_SCHEMES.join(', ')}`);
  }
  return { scheme: scheme as QuantScheme };
}

/** Files of the parent a quantized version carries over unchanged, where the parent has them. */
const KEPT_FILES = ['tokenizer_config.json', 'generation_config.json'] as const;

/** Registers the quantized variant of `name` v`version`; CRD_ERR_CONFLICT when that version cannot be quantized. */
export async function quantizeVersion(registry: ModelRegistry, name: string, version: number, scheme: QuantScheme): Promise<ModelVersion> {
  const parent = registry.get(name, version);
  if (!parent.files['model.safetensors']) {
    const already = parent.files[INT8_WEIGHTS_FILE] ? ' (it is already quantized)' : '';
    throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} has no float32 model.safetensors to quantize${already}`);
  }
  const inputs: QuantizeTask['inputs'] = {};
  for (const file of ['config.json', 'model.safetensors', 'tokenizer.json']) {
    if (!parent.files[file]) throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} has no ${file}`);
    inputs[file] = registry.fileOf(name, version, file);
  }
  const outDir = await registry.scratchDir();
  try {
    let quantized: Extract<QuantizeReply, { type: 'done' }>;
    try {
      quantized = await quantizeInWorker({ inputs, outDir });
    } catch (err) {
      if (!(err instanceof ModelError)) throw err;
      throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} cannot be quantized: ${err.code}: ${err.message}`, { cause: err });
    }
    // Kept as they are: an imported model's chat template and generation defaults travel with its INT8 variant.
    const kept = Object.fromEntries(KEPT_FILES.filter((f) => parent.files[f]).map((f) => [f, registry.fileOf(name, version, f)]));
    return await registerQuantized(registry, name, version, scheme, parent, quantized, { 'tokenizer.json': inputs['tokenizer.json']!, ...kept });
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
}

function registerQuantized(
  registry: ModelRegistry, name: string, version: number, scheme: QuantScheme, parent: ModelVersion,
  quantized: Extract<QuantizeReply, { type: 'done' }>, copied: Record<string, { path: string; sha256: string }>,
): Promise<ModelVersion> {
  const { f32Bytes, int8Bytes } = quantized.sizes;
  const files = { ...copied, 'config.json': quantized.config, [INT8_WEIGHTS_FILE]: quantized.weights };
  return registry.register(name, files, {
    parent: { name, version },
    quantization: {
      scheme,
      method: INT8_METHOD,
      bits: 8,
      granularity: 'per-channel',
      // tensor data bytes: F32 state dict vs I8 weights + F32 scales + F32 tensors kept (biases, LayerNorms)
      f32Bytes,
      int8Bytes,
      sizeRatio: int8Bytes / f32Bytes,
      fileBytes: { parent: parent.files['model.safetensors']!.bytes, quantized: quantized.weights.bytes },
    },
  });
}

function quantizeInWorker(task: QuantizeTask): Promise<Extract<QuantizeReply, { type: 'done' }>> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./quantize-worker.ts', import.meta.url).href, ...task },
    });
    let settled = false;
    worker.on('message', (m: QuantizeReply) => {
      settled = true;
      if (m.type === 'done') return resolve(m);
      if (ModelError.isCode(m.code)) return reject(new ModelError(m.code, m.message));
      reject(m.code === 'CRD_ERR_STORAGE' ? new CoordinatorError('CRD_ERR_STORAGE', m.message) : new Error(m.message));
    });
    worker.once('error', (err) => !settled && ((settled = true), reject(err)));
    worker.once('exit', (code) => !settled && reject(new Error(`the quantize worker exited with ${code} before answering`)));
  });
}
