/**
 * Serving LoRA adapter versions (coordinator/registry/adapters.ts): an adapter version holds only PEFT files
 * (adapter_model.safetensors, adapter_config.json), tokenizer.json and lineage naming its base. `withAdapterBases`
 * wraps a RegistrySource so that loading an adapter also loads its base version through the same source — the same
 * manifest and sha256 checks — and hands back one file set: the base's config.json, weights and tokenizer.json
 * plus the adapter's files and lineage, with `meta.base` describing the base. The BackendFactory
 * (gpt-backend.ts) then builds the base model and attaches the adapter: served unmerged, y = x·W + b +
 * (alpha/r)·(x·A)·B, so one base file serves any number of adapters and nothing is merged on disk.
 *
 * Versions that are not adapters pass through untouched. An adapter on an adapter is refused.
 */
import { GatewayError } from './errors.ts';
import type { LoadedVersion, RegistrySource } from './registry-source.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, isVersionRef, parseAdapterBaseName, type VersionRef } from '../protocol/model-version.ts';

/** Files of the adapter version that are the adapter's own; everything else comes from the base. */
const ADAPTER_OWN = [ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, 'lineage.json'];

/** The base an adapter version names: lineage.base, else adapter_config.json's base_model_name_or_path. */
export function adapterBaseRef(v: LoadedVersion): VersionRef {
  const where = `adapter ${v.meta.name} v${v.meta.version}`;
  const base = v.meta.lineage.base;
  if (isVersionRef(base)) return { name: base.name, version: base.version };
  let cfg: { base_model_name_or_path?: unknown };
  try {
    cfg = JSON.parse(Buffer.from(v.files.get(ADAPTER_CONFIG_FILE)!).toString('utf8')) as typeof cfg;
  } catch (err) {
    throw new GatewayError('GW_ERR_REGISTRY', `${where}: ${ADAPTER_CONFIG_FILE} is not valid JSON`, { cause: err });
  }
  const ref = parseAdapterBaseName(cfg.base_model_name_or_path);
  if (!ref) throw new GatewayError('GW_ERR_REGISTRY', `${where} names no registered base (lineage.base, or base_model_name_or_path "name@vN")`);
  return ref;
}

/** `source`, with adapter versions loaded together with their bases. */
export function withAdapterBases(source: RegistrySource): RegistrySource {
  return {
    models: () => source.models(),
    lineage: (name, version) => source.lineage(name, version),
    async load(name, version) {
      const v = await source.load(name, version);
      if (!v.files.has(ADAPTER_CONFIG_FILE)) return v;
      const ref = adapterBaseRef(v);
      const base = await source.load(ref.name, ref.version);
      if (base.files.has(ADAPTER_CONFIG_FILE)) {
        throw new GatewayError('GW_ERR_REGISTRY', `adapter ${name} v${v.meta.version}: its base ${ref.name} v${ref.version} is itself an adapter, which is not supported`);
      }
      const files = new Map([...base.files].filter(([f]) => !ADAPTER_OWN.includes(f)));
      for (const f of ADAPTER_OWN) if (v.files.has(f)) files.set(f, v.files.get(f)!);
      return { files, meta: { ...v.meta, base: base.meta } };
    },
  };
}
