/**
 * Checkpoints stay layout-free: full tensors under GPT-2 names, exactly as model/checkpoint.ts writes them for a
 * single-process run. Agents of a pipeline × tensor-parallel run hold shards (model/shard-layout.ts), so a save
 * merges every shard's local tensors into full ones and a load cuts full tensors into one shard's. A run can thus
 * resume with a different number of stages or TP degree, and a checkpoint always loads in GPT2LMHeadModel.
 *
 * Both directions work for weights and for AdamW's moments alike (`expAvg` / `expAvgSq` are keyed by parameter
 * name too). Merging is also a consistency check: every element of every parameter must be covered, and copies
 * that should be equal — TP replicas of LayerNorms, embeddings and row-parallel biases, and the tied wte on the
 * first and last stage — must be bit-identical; a difference means replicas drifted apart in training.
 */
import { ModelError } from './errors.ts';
import { gptConfig, paramLayout, type GPTConfig, type ParamLayout } from './gpt.ts';
import type { F32Tensor } from './optim.ts';
import { extractParam, forEachRun, shardLayout, type ShardLayout, type ShardParamSpec, type ShardSpec } from './shard-layout.ts';

/**
 * What a checkpoint holds and how it is cut: the full parameters (`full`) and one shard's slices of them
 * (`shard`). The whole model by default (`modelLayouts`); a LoRA adapter's factors (model/lora.ts's `loraLayouts`)
 * are cut, merged and checked by the same code.
 */
export interface CheckpointLayouts {
  readonly full: ParamLayout;
  shard(s: ShardSpec): ShardLayout;
}

/** The whole GPT-2 model: paramLayout and shardLayout. */
export function modelLayouts(config: GPTConfig): CheckpointLayouts {
  const c = gptConfig(config);
  return { full: paramLayout(c), shard: (s) => shardLayout(c, s) };
}

/** What is accepted as input: an F32Tensor, or any model/safetensors.ts TensorMap entry (checked to be F32). */
export interface TensorLike {
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly data: unknown;
}

const reshardError = (message: string) => new ModelError('MDL_ERR_RESHARD', message);

/** `stage 1 tp 0`: how messages name a shard. */
function shardName(s: ShardSpec): string {
  return `stage ${s.stage} tp ${s.tpRank}`;
}

/** The data of `tensors[name]`, which must be F32 with `shape`. */
function f32Data(tensors: Readonly<Record<string, TensorLike>>, name: string, shape: readonly number[], where: string): Float32Array {
  const t = Object.hasOwn(tensors, name) ? tensors[name] : undefined;
  if (t === undefined) throw reshardError(`${where} lacks ${name}`);
  if (t.dtype !== 'F32' || !(t.data instanceof Float32Array)) throw reshardError(`${where}: ${name} is ${t.dtype}, expected F32`);
  const size = shape.reduce((a, b) => a * b, 1);
  if (t.shape.join() !== shape.join() || t.data.length !== size) {
    throw reshardError(`${where}: ${name} has shape [${t.shape}] (${t.data.length} elements), expected [${shape}]`);
  }
  return t.data;
}

/** The local tensors (same names, local shapes) of one shard from full tensors; extra full tensors are ignored. */
export function shardTensors(full: Readonly<Record<string, TensorLike>>, layout: ShardLayout): Record<string, F32Tensor> {
  const out: Record<string, F32Tensor> = {};
  for (const spec of layout.specs) {
    const data = f32Data(full, spec.name, spec.fullShape, 'full tensors');
    out[spec.name] = { dtype: 'F32', shape: spec.shape, data: extractParam(data, spec) };
  }
  return out;
}

/** One full parameter being merged: its bits, which elements some shard has written, and which parts wrote it. */
interface Merging {
  readonly shape: readonly number[]; // in the full model
  readonly data: Float32Array;
  readonly bits: Uint32Array; // the same memory: copies and comparisons are bit-exact, NaN payloads included
  readonly covered: Uint8Array;
  readonly writers: Array<{ readonly shard: ShardSpec; readonly spec: ShardParamSpec }>;
}

/** Whether a slice holds element `at` (row-major index into the full tensor). */
function holds(spec: ShardParamSpec, at: number): boolean {
  const C = spec.fullShape[spec.fullShape.length - 1] ?? 1;
  const row = Math.floor(at / C), col = at % C;
  return row >= spec.rows[0] && row < spec.rows[1] && spec.cols.some(([a, b]) => col >= a && col < b);
}

/** Copies one shard's slice into `m`, comparing bit for bit wherever an earlier shard already wrote. */
function mergeSlice(m: Merging, spec: ShardParamSpec, shard: ShardSpec, local: Float32Array): void {
  const src = new Uint32Array(local.buffer, local.byteOffset, local.length);
  forEachRun(spec, (f, l, n) => {
    for (let i = 0; i < n; i++) {
      const at = f + i;
      if (!m.covered[at]) {
        m.bits[at] = src[l + i]!;
        m.covered[at] = 1;
      } else if (m.bits[at] !== src[l + i]) {
        const earlier = m.writers.find((w) => holds(w.spec, at))!;
        throw reshardError(
          `${spec.name} differs between ${shardName(earlier.shard)} and ${shardName(shard)} at element ${at} ` +
            `(${m.data[at]} vs ${local[l + i]}): replicated copies must be bit-identical`,
        );
      }
    }
  });
  m.writers.push({ shard, spec });
}

/** Throws unless every element of the parameter was written by some shard. */
function checkCovered(name: string, m: Merging): void {
  if (m.writers.length === 0) throw reshardError(`no shard holds ${name}`);
  const missing = m.covered.indexOf(0);
  if (missing < 0) return;
  const C = m.shape[m.shape.length - 1] ?? 1;
  const count = m.covered.reduce((n, c) => n + (c ? 0 : 1), 0);
  throw reshardError(
    `${name}: ${count} of ${m.covered.length} elements are held by no shard (first at row ${Math.floor(missing / C)}, ` +
      `col ${missing % C}; held by ${m.writers.map((w) => shardName(w.shard)).join(', ')})`,
  );
}

/**
 * Full tensors from every shard's local tensors, in paramLayout order (or `full`'s, e.g. an adapter's). Every
 * parameter must be covered exactly; replicated copies must be bit-identical, else a ModelError (MDL_ERR_RESHARD)
 * names the parameter and the shards.
 */
export function mergeShardTensors(
  config: GPTConfig,
  parts: ReadonlyArray<{ readonly layout: ShardLayout; readonly tensors: Readonly<Record<string, TensorLike>> }>,
  full: ParamLayout = paramLayout(gptConfig(config)),
): Record<string, F32Tensor> {
  const merging = new Map<string, Merging>(full.specs.map((s) => {
    const data = new Float32Array(s.size);
    return [s.name, { shape: s.shape, data, bits: new Uint32Array(data.buffer), covered: new Uint8Array(s.size), writers: [] }];
  }));
  for (const { layout, tensors } of parts) {
    for (const spec of layout.specs) {
      const m = merging.get(spec.name);
      if (m === undefined) throw reshardError(`${shardName(layout.shard)} holds ${spec.name}, which is no parameter of this model`);
      if (spec.fullShape.join() !== m.shape.join()) {
        throw reshardError(`${shardName(layout.shard)}: ${spec.name} is a slice of [${spec.fullShape}], but the model's is [${m.shape}]`);
      }
      mergeSlice(m, spec, layout.shard, f32Data(tensors, spec.name, spec.shape, shardName(layout.shard)));
    }
  }
  const out: Record<string, F32Tensor> = {};
  for (const s of full.specs) {
    const m = merging.get(s.name)!;
    checkCovered(s.name, m);
    out[s.name] = { dtype: 'F32', shape: s.shape, data: m.data };
  }
  return out;
}
