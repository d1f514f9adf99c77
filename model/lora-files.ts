/**
 * A LoRA adapter as Hugging Face PEFT files, so `PeftModel.from_pretrained(GPT2LMHeadModel…, folder)` loads it:
 *
 *   adapter_config.json        {peft_type: "LORA", task_type: "CAUSAL_LM", r, lora_alpha, lora_dropout,
 *                               target_modules: ["attn.c_attn", …], fan_in_fan_out: true, bias: "none",
 *                               base_model_name_or_path: "<name>@v<version>"}
 *   adapter_model.safetensors  base_model.model.transformer.h.<l>.<target>.lora_A.weight [r, in]
 *                              base_model.model.transformer.h.<l>.<target>.lora_B.weight [out, r]   (F32)
 *
 * PEFT stores its factors as torch nn.Linear weights, [out, in], whatever the base layer: so ours (Conv1D
 * orientation, A [in, r], B [r, out]) are transposed on the way out and back. `fan_in_fan_out: true` tells PEFT
 * that the BASE layers are Conv1D ([in, out]), which matters when it merges. PEFT matches a target_modules entry
 * against the end of a module's dotted name, so "attn.c_proj" and "mlp.c_proj" stay distinct.
 */
import { ModelError } from './errors.ts';
import type { GPTConfig } from './params.ts';
import { loraLayout, loraSpec, LORA_TARGETS, type LoraSpec } from './lora.ts';
import { readSafetensors, writeSafetensors, type TensorMap } from './safetensors.ts';
import { ADAPTER_CONFIG_FILE, ADAPTER_MODEL_FILE, adapterBaseName, parseAdapterBaseName, type VersionRef } from '../protocol/model-version.ts';

const PEFT_PREFIX = 'base_model.model.transformer.';

export type AdapterFiles = { 'adapter_model.safetensors': Uint8Array; 'adapter_config.json': Uint8Array };

const bad = (why: string) => new ModelError('MDL_ERR_ADAPTER_FILES', why);

/** [rows, cols] → [cols, rows], row-major. */
function transpose(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = data[i * cols + j]!;
  return out;
}

/** The PEFT files of an adapter (flat in loraLayout order) trained on `base`. */
export function adapterFiles(config: GPTConfig, spec: LoraSpec, flat: Float32Array, base: VersionRef): AdapterFiles {
  const layout = loraLayout(config, spec);
  if (flat.length !== layout.totalSize) throw bad(`the adapter has ${flat.length} values, its layout needs ${layout.totalSize}`);
  const tensors: TensorMap = {};
  for (const p of layout.specs) {
    const [rows, cols] = p.shape as [number, number];
    tensors[`${PEFT_PREFIX}${p.name}.weight`] = { dtype: 'F32', shape: [cols, rows], data: transpose(flat.subarray(p.offset, p.offset + p.size), rows, cols) };
  }
  const cfg = {
    peft_type: 'LORA',
    task_type: 'CAUSAL_LM',
    r: spec.rank,
    lora_alpha: spec.alpha,
    lora_dropout: spec.dropout,
    target_modules: [...spec.targets],
    fan_in_fan_out: true,
    bias: 'none',
    base_model_name_or_path: adapterBaseName(base),
  };
  return {
    [ADAPTER_MODEL_FILE]: writeSafetensors(tensors, { format: 'pt' }),
    [ADAPTER_CONFIG_FILE]: Buffer.from(JSON.stringify(cfg, null, 2)),
  } as AdapterFiles;
}

export interface LoadedAdapter {
  spec: LoraSpec;
  flat: Float32Array; // loraLayout order, Conv1D orientation
  base: VersionRef | undefined; // from base_model_name_or_path when it reads `name@vN`
}

/** The adapter's spec, read from adapter_config.json alone (no base config needed). */
export function readAdapterConfig(bytes: Uint8Array | undefined): { spec: LoraSpec; base: LoadedAdapter['base'] } {
  if (!bytes) throw bad(`adapter files lack ${ADAPTER_CONFIG_FILE}`);
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(Buffer.from(bytes).toString('utf8')) as Record<string, unknown>;
  } catch (err) {
    throw bad(`${ADAPTER_CONFIG_FILE} is not valid JSON: ${(err as Error).message}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw bad(`${ADAPTER_CONFIG_FILE} is not an object`);
  const expect = (key: string, want: unknown) => {
    if (raw[key] !== want) throw bad(`${ADAPTER_CONFIG_FILE}: ${key} is ${JSON.stringify(raw[key])}, expected ${JSON.stringify(want)}`);
  };
  expect('peft_type', 'LORA');
  expect('fan_in_fan_out', true); // GPT-2's Conv1D; false would mean the factors were trained on nn.Linear layers
  if (raw.bias !== undefined) expect('bias', 'none');
  if (raw.task_type !== undefined) expect('task_type', 'CAUSAL_LM');
  let spec: LoraSpec;
  try {
    spec = loraSpec({ rank: raw.r, alpha: raw.lora_alpha, dropout: raw.lora_dropout ?? 0, targets: raw.target_modules });
  } catch (err) {
    throw bad(`${ADAPTER_CONFIG_FILE}: ${(err as Error).message} (r, lora_alpha, lora_dropout, target_modules ⊆ ${LORA_TARGETS.join(', ')})`);
  }
  return { spec, base: parseAdapterBaseName(raw.base_model_name_or_path) };
}

/**
 * Reads and checks PEFT adapter files against the base model's config: every tensor named, shaped and typed as
 * loraLayout says, nothing missing, nothing extra. Throws MDL_ERR_ADAPTER_FILES naming what is wrong.
 */
export function readAdapter(files: Partial<Record<string, Uint8Array>>, config: GPTConfig): LoadedAdapter {
  const { spec, base } = readAdapterConfig(files[ADAPTER_CONFIG_FILE]);
  const model = files[ADAPTER_MODEL_FILE];
  if (!model) throw bad(`adapter files lack ${ADAPTER_MODEL_FILE}`);
  let layout;
  try {
    layout = loraLayout(config, spec);
  } catch (err) {
    throw bad(`${ADAPTER_CONFIG_FILE} does not fit the base model: ${(err as Error).message}`);
  }
  const { tensors } = readSafetensors(model);
  const expected = new Set(layout.specs.map((p) => `${PEFT_PREFIX}${p.name}.weight`));
  for (const name of Object.keys(tensors)) {
    if (!expected.has(name)) throw bad(`${ADAPTER_MODEL_FILE}: unexpected tensor ${name} (rank ${spec.rank} on ${spec.targets.join(', ')}, ${config.nLayer} layers)`);
  }
  const flat = new Float32Array(layout.totalSize);
  for (const p of layout.specs) {
    const name = `${PEFT_PREFIX}${p.name}.weight`;
    const t = tensors[name];
    const [rows, cols] = p.shape as [number, number];
    if (!t) throw bad(`${ADAPTER_MODEL_FILE} lacks ${name}`);
    if (t.dtype !== 'F32') throw bad(`${ADAPTER_MODEL_FILE}: ${name} is ${t.dtype}, expected F32`);
    if (t.shape.join() !== `${cols},${rows}`) throw bad(`${ADAPTER_MODEL_FILE}: ${name} has shape [${t.shape}], expected [${cols}, ${rows}]`);
    flat.set(transpose(t.data, cols, rows), p.offset);
  }
  return { spec, flat, base };
}
