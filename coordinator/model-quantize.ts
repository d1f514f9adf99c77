/**
 * Quantized variants of registered model versions (POST /api/models/:name/versions/:v/quantize, `coordinator models
 * quantize`): the parent version's files are read back (sha256-checked), turned into config.json with
 * `quantization_config` + model.int8.safetensors + tokenizer.json (model/hf-format.ts quantizeHf), and registered as
 * a NEW version of the same model, so the gateway, deployments and A/B compare it with its parent like any other
 * version. lineage.json says where it came from: `parent: {name, version}` and `quantization: {scheme, …, sizes}`.
 *
 * Quantizing runs on the coordinator's thread: about a second per 100 M parameters, once per request.
 */
import { ModelError } from '../model/errors.ts';
import { quantizeHf } from '../model/hf-format.ts';
import { INT8_METHOD, INT8_WEIGHTS_FILE } from '../model/quantize.ts';
import { CoordinatorError } from './errors.ts';
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

/** Registers the quantized variant of `name` v`version`; CRD_ERR_CONFLICT when that version cannot be quantized. */
export async function quantizeVersion(registry: ModelRegistry, name: string, version: number, scheme: QuantScheme): Promise<ModelVersion> {
  const parent = registry.get(name, version);
  if (!parent.files['model.safetensors']) {
    const already = parent.files[INT8_WEIGHTS_FILE] ? ' (it is already quantized)' : '';
    throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} has no float32 model.safetensors to quantize${already}`);
  }
  const files: Record<string, Uint8Array> = {};
  for (const file of ['config.json', 'model.safetensors', 'tokenizer.json']) {
    if (!parent.files[file]) throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} has no ${file}`);
    files[file] = registry.readFile(name, version, file);
  }
  let quantized: ReturnType<typeof quantizeHf>;
  try {
    quantized = quantizeHf(files);
  } catch (err) {
    if (!(err instanceof ModelError)) throw err;
    throw new CoordinatorError('CRD_ERR_CONFLICT', `model ${name} v${version} cannot be quantized: ${err.code}: ${err.message}`, { cause: err });
  }
  const { f32Bytes, int8Bytes } = quantized.sizes;
  return registry.register(name, quantized.files, {
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
      fileBytes: { parent: parent.files['model.safetensors'].bytes, quantized: quantized.files[INT8_WEIGHTS_FILE]!.byteLength },
    },
  });
}
