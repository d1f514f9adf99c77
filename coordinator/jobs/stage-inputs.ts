/**
 * What a fine-tuning stage takes from the model registry: the version it starts from (`init.from`, which is also
 * DPO's frozen reference), a distillation teacher, and their tokenizer. References are pinned when a job is
 * accepted ("chat" → "chat@4"), so a version registered while the job waits or resumes never changes what it
 * trains from, and they are checked then: a missing version or a config that does not fit is a 400, not a failed
 * job an hour later.
 *
 * Starting from a version is a checkpoint at step 0 (the version's weights, zero AdamW moments, the data cursor
 * at the start): the job then runs exactly like a resumed one, so every layout, reshard and fault path that
 * checkpoints have applies to it unchanged.
 */
import { createHash } from 'node:crypto';
import { encodeCheckpoint } from '../../model/checkpoint.ts';
import { modelLayouts, type CheckpointLayouts } from '../../model/checkpoint-reshard.ts';
import { flatFromStateDict, initParams, paramLayout, stateDict, type GPTConfig } from '../../model/params.ts';
import { configFromHf, importHf } from '../../model/hf-format.ts';
import { loraLayout, loraLayouts, loraSpec, mergeLora } from '../../model/lora.ts';
import type { F32Tensor } from '../../model/optim.ts';
import { tokenizerJsonIdCount } from '../../model/tokenizer-files.ts';
import type { TensorMap } from '../../model/safetensors.ts';
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { VersionRef } from '../../protocol/model-version.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import { CheckpointSharder, type FileSet } from './checkpoint-shards.ts';
import type { ReusedTokenizer } from './datasets.ts';
import { CoordinatorError } from '../errors.ts';
import type { ModelRegistry } from '../registry/registry.ts';

const WEIGHT_FILES = ['model.safetensors', 'model.int8.safetensors'] as const;

export function parseVersionRef(ref: string): { name: string; version?: number } {
  const at = ref.lastIndexOf('@');
  return at < 0 ? { name: ref } : { name: ref.slice(0, at), version: Number(ref.slice(at + 1)) };
}

export const formatRef = (r: VersionRef) => `${r.name}@${r.version}`;

/** The spec with init.from and distill.teacher pinned to existing versions that fit it; every problem in one 400. */
export function pinVersionRefs(spec: ResolvedJobSpec, registry: ModelRegistry): ResolvedJobSpec {
  const errors: string[] = [];
  const pin = (field: string, ref: string): { ref: VersionRef; config: GPTConfig } | null => {
    const found = resolveRef(registry, field, ref, errors);
    if (!found) return null;
    const { name, version: v } = found.ref;
    if (!WEIGHT_FILES.some((f) => found.files.includes(f))) return errors.push(`${field}: ${name}@${v} holds no full model weights (an adapter? merge it first)`), null;
    return { ref: found.ref, config: configFromHf(JSON.parse(registry.readFile(name, v, 'config.json').toString('utf8'))) };
  };
  const out: ResolvedJobSpec = structuredClone(spec);
  if (spec.data.tokenizer !== undefined) {
    if (spec.init || spec.distill) {
      errors.push(`/data/tokenizer: a job that starts from a version (init.from) or distils from a teacher uses that version's tokenizer; leave data.tokenizer out`);
    } else {
      const ref = pinTokenizer(registry, spec.data.tokenizer, spec.model.vocabSize, errors);
      if (ref) out.data = { ...spec.data, tokenizer: formatRef(ref) };
    }
  }
  if (spec.init) {
    const init = pin('/init/from', spec.init.from);
    if (init) {
      out.init = { from: formatRef(init.ref) };
      const m = spec.model, c = init.config;
      const differs = (['vocabSize', 'nCtx', 'nLayer', 'nHead', 'nEmbd'] as const).filter((k) => m[k] !== c[k]);
      if (differs.length) errors.push(`/model must equal ${formatRef(init.ref)}'s config to start from it: ${differs.map((k) => `${k} ${m[k]} ≠ ${c[k]}`).join(', ')}`);
    }
  }
  if (spec.distill) {
    const teacher = pin('/distill/teacher', spec.distill.teacher);
    if (teacher) {
      out.distill = { ...spec.distill, teacher: formatRef(teacher.ref) };
      if (teacher.config.vocabSize !== spec.model.vocabSize) errors.push(`/model/vocabSize ${spec.model.vocabSize} must equal the teacher's ${teacher.config.vocabSize}: the student learns the teacher's distribution over the same ids`);
      if (teacher.config.nCtx < spec.training.seqLen) errors.push(`/training/seqLen ${spec.training.seqLen} exceeds the teacher's context ${teacher.config.nCtx}`);
      if (spec.distill.initFromTeacher) {
        const c = teacher.config, m = spec.model;
        if (c.nEmbd !== m.nEmbd || c.nHead !== m.nHead || m.nLayer > c.nLayer || m.nCtx > c.nCtx) {
          errors.push(`/distill/initFromTeacher needs the student's nEmbd and nHead equal to the teacher's (${c.nEmbd}, ${c.nHead}) and its nLayer and nCtx at most the teacher's (${c.nLayer}, ${c.nCtx})`);
        }
      }
    }
  }
  if (errors.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `invalid job spec: ${errors.join('; ')}`, { details: errors });
  return out;
}

/** `ref` resolved to a registered version ("name" → its newest) and that version's files; else an error is pushed. */
function resolveRef(registry: ModelRegistry, field: string, ref: string, errors: string[]): { ref: VersionRef; files: string[] } | null {
  const { name, version } = parseVersionRef(ref);
  const latest = registry.models().find((m) => m.name === name)?.latest;
  if (latest === undefined) return errors.push(`${field} names model ${name}, which has no registered version`), null;
  const v = version ?? latest;
  try {
    return { ref: { name, version: v }, files: Object.keys(registry.get(name, v).files) };
  } catch {
    return errors.push(`${field}: model ${name} has no version ${v} (newest: ${latest})`), null;
  }
}

/**
 * `data.tokenizer`'s version, pinned, when it has a tokenizer.json whose ids fit `vocabSize`; else an error is pushed.
 * The ids are counted, not loaded into a Tokenizer: this runs on the request thread (tokenizer-files.ts).
 */
function pinTokenizer(registry: ModelRegistry, ref: string, vocabSize: number, errors: string[]): VersionRef | null {
  const found = resolveRef(registry, '/data/tokenizer', ref, errors);
  if (!found) return null;
  const { name, version: v } = found.ref;
  if (!found.files.includes('tokenizer.json')) return errors.push(`/data/tokenizer: ${name}@${v} has no tokenizer.json (an adapter? name its base)`), null;
  let ids: number;
  try {
    ids = tokenizerJsonIdCount(JSON.parse(registry.readFile(name, v, 'tokenizer.json').toString('utf8')));
  } catch (err) {
    return errors.push(`/data/tokenizer: ${name}@${v}'s tokenizer.json does not load: ${(err as Error).message}`), null;
  }
  if (ids > vocabSize) return errors.push(`/model/vocabSize ${vocabSize} is smaller than ${name}@${v}'s tokenizer (${ids} ids): use at least ${ids}`), null;
  return found.ref;
}

/** A pinned reference's version; a reference to a version that has since vanished fails clearly. */
export function refOf(ref: string): VersionRef {
  const { name, version } = parseVersionRef(ref);
  if (version === undefined) throw new Error(`version reference ${ref} was not pinned when the job was accepted`);
  return { name, version };
}

/** The version whose tokenizer the job's data must use (data.tokenizer, else the one it starts from, else its teacher), if any. */
export function tokenizerSource(spec: ResolvedJobSpec): VersionRef | null {
  if (spec.data.tokenizer !== undefined) return refOf(spec.data.tokenizer);
  if (spec.init) return refOf(spec.init.from);
  if (spec.distill) return refOf(spec.distill.teacher);
  return null;
}

export function versionTokenizer(registry: ModelRegistry, ref: VersionRef): ReusedTokenizer {
  const bytes = registry.readFile(ref.name, ref.version, 'tokenizer.json');
  return { json: bytes.toString('utf8'), sha256: createHash('sha256').update(bytes).digest('hex') };
}

/** The names of the files a model is loaded from (config.json, tokenizer.json, its weights) that the version has. */
function modelFileNames(registry: ModelRegistry, ref: VersionRef): string[] {
  const present = Object.keys(registry.get(ref.name, ref.version).files);
  return ['config.json', 'tokenizer.json', ...WEIGHT_FILES].filter((file) => present.includes(file));
}

/** A version's files by the paths they are stored at (for a worker thread to read). */
export function versionPaths(registry: ModelRegistry, ref: VersionRef): Record<string, string> {
  return Object.fromEntries(modelFileNames(registry, ref).map((file) => [file, registry.fileOf(ref.name, ref.version, file).path]));
}

/** The files a model is loaded from, each read whole and verified against the manifest (small models). */
export function versionBytes(registry: ModelRegistry, ref: VersionRef): Record<string, Uint8Array> {
  return Object.fromEntries(modelFileNames(registry, ref).map((file) => [file, registry.readFile(ref.name, ref.version, file)]));
}

/**
 * A version's files in the artifact store: what agents fetch to load it. Each is copied in on the thread pool and
 * hashed as a stream (or found there already by its recorded sha256): no model file passes through one buffer.
 */
export async function versionFiles(registry: ModelRegistry, artifacts: ArtifactStore, ref: VersionRef): Promise<FileSet> {
  const out: FileSet = {};
  for (const file of modelFileNames(registry, ref)) {
    const { path, sha256 } = registry.fileOf(ref.name, ref.version, file);
    out[file] = await artifacts.putFile(path, sha256);
  }
  return out;
}

/** Whether the job starts from weights of a registry version (a step-0 checkpoint) rather than a random init. */
export const startsFromVersion = (spec: ResolvedJobSpec): boolean => Boolean(spec.init || spec.distill?.initFromTeacher);

/**
 * The version's weights as a step-0 canonical checkpoint of the job (zero moments, cursor at the start). A LoRA
 * job trains only its adapter on the frozen version, so its step 0 is a fresh adapter (B = 0: the base's outputs).
 * A student with distill.initFromTeacher starts from the teacher's layers (model/student-init.ts).
 */
export async function initCheckpoint(registry: ModelRegistry, artifacts: ArtifactStore, spec: ResolvedJobSpec, jobId: string): Promise<FileSet> {
  const ref = refOf(spec.init?.from ?? spec.distill!.teacher);
  const state = { step: 0, cursor: { shard: 0, offset: 0 }, spec: spec as never, layout: { data: 1, pipeline: 1, tensor: 1 }, world: 1, jobId, attempt: 0, init: formatRef(ref) };
  if (!spec.lora) {
    // A whole model (GPT-2-small: a 500 MB file, a 1.5 GB checkpoint) is read, checked and written tensor by tensor
    // in the checkpoint worker, never on the event loop.
    const version = Object.fromEntries(modelFileNames(registry, ref).map((file) => [file, registry.fileOf(ref.name, ref.version, file)]));
    return new CheckpointSharder(artifacts).initFromVersion(version, spec.init ? undefined : spec.model, state);
  }
  // A fresh adapter: a few percent of the model, made here.
  const layout = loraLayout(spec.model, loraSpec(spec.lora, spec.model));
  const model = stateDict(initParams(layout, spec.training.seed), layout) as TensorMap;
  const zeros = stateDict(new Float32Array(layout.totalSize), layout) as TensorMap;
  const encoded = encodeCheckpoint(0, { model, optimizer: { step: 0, expAvg: zeros, expAvgSq: structuredClone(zeros) }, state });
  const out: FileSet = {};
  for (const [name, bytes] of Object.entries(encoded.files)) out[name] = await artifacts.put(bytes);
  return out;
}

/** What the job's checkpoints hold and how they are cut: the whole model, or with LoRA only its adapter. */
export function checkpointLayouts(spec: ResolvedJobSpec): CheckpointLayouts {
  return spec.lora ? loraLayouts(spec.model, loraSpec(spec.lora, spec.model)) : modelLayouts(spec.model);
}

/**
 * The full weights a canonical checkpoint's model tensors stand for (paramLayout order): themselves, or with LoRA
 * the frozen base (the init version) with the adapter merged in, which gives exactly the outputs of the two served
 * unmerged: what the evaluation suites judge.
 */
export function trainedWeights(registry: ModelRegistry, spec: ResolvedJobSpec, model: TensorMap): Float32Array {
  if (!spec.lora) return flatFromStateDict(model, paramLayout(spec.model));
  const lora = loraSpec(spec.lora, spec.model);
  const adapter = flatFromStateDict(model, loraLayout(spec.model, lora));
  const base = importHf(versionBytes(registry, refOf(spec.init!.from)));
  const merged: Record<string, F32Tensor> = mergeLora(stateDict(base.params, paramLayout(base.config)), adapter, spec.model, lora);
  return flatFromStateDict(merged, paramLayout(spec.model));
}
