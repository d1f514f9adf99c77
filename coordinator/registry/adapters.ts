/**
 * LoRA adapters in the model registry. An adapter version is a version of its own (usually named after its job)
 * whose folder holds PEFT files (model/lora-files.ts: adapter_model.safetensors, adapter_config.json), a copy of
 * its base's tokenizer.json and lineage.json with `adapter: true`, `base: {name, version}` and `lora` (the spec);
 * no model.safetensors — it is a few percent of the base's size. The gateway serves it on its base, unmerged.
 *
 * `mergeAdapter` folds an adapter into its base (W' = W + (alpha/r)·A·B) and registers the result as a new full
 * version of the adapter's name (config.json, model.safetensors, tokenizer.json): servable anywhere a plain model
 * is, with lineage `parents: [adapter, base]`.
 */
import { configFromHf, exportHf, importHf } from '../../model/hf-format.ts';
import { flatFromStateDict, paramLayout, stateDict } from '../../model/params.ts';
import { ModelError } from '../../model/errors.ts';
import { adapterFiles, readAdapter } from '../../model/lora-files.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, isVersionRef, parseAdapterBaseName, type VersionRef } from '../../protocol/model-version.ts';
import { loraSpec, mergeLora, type LoraSpec } from '../../model/lora.ts';
import { CoordinatorError } from '../errors.ts';
import type { Lineage, ModelRegistry, ModelVersion } from './registry.ts';

/** What the job runner hands over when a LoRA job ends. */
export interface AdapterRegistration {
  readonly name: string; // the adapter's model name (the job's)
  readonly base: VersionRef; // the registered version it was trained on
  readonly spec: LoraSpec;
  readonly flat: Float32Array; // the adapter's values in loraLayout order (the merged checkpoint's model tensors)
  readonly lineage: Lineage; // job, spec, metrics…; adapter, base and lora are added
}

/** Wraps a model-package error about bad files or specs as a 400 naming the version. */
function asBadRequest<T>(what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ModelError) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `${what}: ${err.code}: ${err.message}`, { cause: err });
    throw err;
  }
}

const json = (bytes: Uint8Array): unknown => JSON.parse(Buffer.from(bytes).toString('utf8'));

/** Registers an adapter trained on `base` as a new version of `reg.name`. */
export async function registerAdapter(registry: ModelRegistry, reg: AdapterRegistration, nowMs = Date.now()): Promise<ModelVersion> {
  const base = registry.get(reg.base.name, reg.base.version);
  if (isAdapter(base)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `${base.name} v${base.version} is itself an adapter; an adapter's base must be a full model`);
  const config = asBadRequest(`base ${base.name} v${base.version}`, () => configFromHf(json(registry.readFile(base.name, base.version, 'config.json'))));
  const spec = asBadRequest('LoRA spec', () => loraSpec(reg.spec, config));
  const files = asBadRequest(`adapter for ${base.name} v${base.version}`, () => adapterFiles(config, spec, reg.flat, { name: base.name, version: base.version }));
  const lineage: Lineage = { ...reg.lineage, adapter: true, base: { name: base.name, version: base.version }, lora: { ...spec } };
  return registry.register(reg.name, { ...files, 'tokenizer.json': registry.readFile(base.name, base.version, 'tokenizer.json') }, lineage, nowMs);
}

/** Whether a registered version is a LoRA adapter (PEFT files, no weights of its own). */
export function isAdapter(v: ModelVersion): boolean {
  return ADAPTER_CONFIG_FILE in v.files;
}

/** The base an adapter version was trained on: lineage.base, else adapter_config.json's `name@vN`. */
export function adapterBase(registry: ModelRegistry, v: ModelVersion): VersionRef {
  const fromLineage = v.lineage.base;
  if (isVersionRef(fromLineage)) return { name: fromLineage.name, version: fromLineage.version };
  const raw = json(registry.readFile(v.name, v.version, ADAPTER_CONFIG_FILE)) as { base_model_name_or_path?: unknown };
  const ref = parseAdapterBaseName(raw.base_model_name_or_path);
  if (!ref) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `${v.name} v${v.version} names no registered base (lineage.base or base_model_name_or_path "name@vN")`);
  return ref;
}

/** Merges adapter version `name` v`version` into its base; registers and returns the merged full version. */
export async function mergeAdapter(registry: ModelRegistry, name: string, version: number, nowMs = Date.now()): Promise<ModelVersion> {
  const v = registry.get(name, version);
  if (!isAdapter(v)) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `${name} v${version} is not a LoRA adapter (it has no ${ADAPTER_CONFIG_FILE}); only adapters can be merged`);
  const baseRef = adapterBase(registry, v);
  const base = registry.get(baseRef.name, baseRef.version);
  if (!base.files['model.safetensors']) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `base ${base.name} v${base.version} has no float32 model.safetensors to merge into`);
  const read = (ref: VersionRef, file: string) => registry.readFile(ref.name, ref.version, file);
  const loaded = asBadRequest(`base ${base.name} v${base.version}`, () =>
    importHf({ 'config.json': read(base, 'config.json'), 'model.safetensors': read(base, 'model.safetensors'), 'tokenizer.json': read(base, 'tokenizer.json') }),
  );
  const adapter = asBadRequest(`adapter ${name} v${version}`, () =>
    readAdapter({ [ADAPTER_CONFIG_FILE]: read(v, ADAPTER_CONFIG_FILE), [ADAPTER_MODEL_FILE]: read(v, ADAPTER_MODEL_FILE) }, loaded.config),
  );
  const layout = paramLayout(loaded.config);
  const merged = flatFromStateDict(mergeLora(stateDict(loaded.params, layout), adapter.flat, loaded.config, adapter.spec), layout);
  const files = exportHf({ config: loaded.config, layout }, loaded.tokenizer, merged);
  const adapterRef = { name, version };
  const lineage: Lineage = {
    ...(v.lineage.jobId !== undefined ? { jobId: v.lineage.jobId } : {}),
    ...(v.lineage.metrics !== undefined ? { metrics: v.lineage.metrics } : {}),
    merged: true,
    parent: adapterRef,
    parents: [adapterRef, { name: base.name, version: base.version }],
    lora: { ...adapter.spec },
  };
  return registry.register(name, { ...files }, lineage, nowMs);
}
