/**
 * A registered model version as the coordinator, the gateway and model/ name it, in lineage.json, in the registry
 * API and in a LoRA adapter's files. One definition here, so the side that writes one and the side that reads it
 * cannot drift apart.
 */

/** A registered model version: lineage.json's `parent` and `base`, a job's pinned `init.from` or teacher. */
export interface VersionRef {
  readonly name: string;
  readonly version: number;
}

/** Whether `x` (e.g. a field of a lineage.json) is a VersionRef. */
export function isVersionRef(x: unknown): x is VersionRef {
  return !!x && typeof x === 'object' && typeof (x as { name?: unknown }).name === 'string' && Number.isInteger((x as { version?: unknown }).version);
}

/**
 * The files of a LoRA adapter version, as Hugging Face PEFT names them (model/lora-files.ts writes and reads them;
 * the registry and the gateway tell an adapter version by its config file).
 */
export const ADAPTER_CONFIG_FILE = 'adapter_config.json';
export const ADAPTER_MODEL_FILE = 'adapter_model.safetensors';

/** An adapter's base as adapter_config.json's `base_model_name_or_path` names it: `name@vN`. */
export const adapterBaseName = (base: VersionRef): string => `${base.name}@v${base.version}`;

/** `name@vN` → the version it names; anything else (e.g. a Hub id) → undefined. */
export function parseAdapterBaseName(text: unknown): VersionRef | undefined {
  const m = typeof text === 'string' ? /^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})@v([1-9][0-9]*)$/.exec(text) : null;
  return m ? { name: m[1]!, version: Number(m[2]) } : undefined;
}
