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
import { gptConfig, paramLayout, type GPTConfig, type ParamLayout } from './params.ts';
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
export function shardName(s: ShardSpec): string {
  return `stage ${s.stage} tp ${s.tpRank}`;
}

/** The data of `tensors[name]`, which must be F32 with `shape`. */
export function f32Data(tensors: Readonly<Record<string, TensorLike>>, name: string, shape: readonly number[], where: string): Float32Array {
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

/** Whether a slice holds element `at` (row-major index into the full tensor). */
function holds(spec: ShardParamSpec, at: number): boolean {
  const C = spec.fullShape[spec.fullShape.length - 1] ?? 1;
  const row = Math.floor(at / C), col = at % C;
  return row >= spec.rows[0] && row < spec.rows[1] && spec.cols.some(([a, b]) => col >= a && col < b);
}

/**
 * One full parameter merged from the shards' slices of it, one slice at a time (so a streamed merge holds the full
 * tensor and one slice, never every shard at once): `add` each slice, then `finish`. Copies are compared bit for
 * bit (NaN payloads included) wherever an earlier slice already wrote.
 */
export class ParamMerger {
  readonly name: string;
  readonly shape: readonly number[]; // in the full model
  readonly data: Float32Array;
  readonly #bits: Uint32Array; // the same memory as data
  readonly #covered: Uint8Array;
  readonly #writers: Array<{ readonly shard: ShardSpec; readonly spec: ShardParamSpec }> = [];

  constructor(name: string, shape: readonly number[]) {
    this.name = name;
    this.shape = shape;
    const size = shape.reduce((a, b) => a * b, 1);
    this.data = new Float32Array(size);
    this.#bits = new Uint32Array(this.data.buffer);
    this.#covered = new Uint8Array(size);
  }

  /** Checks that `spec` is a slice of this parameter (before its data is read). */
  accepts(spec: ShardParamSpec, shard: ShardSpec): void {
    if (spec.fullShape.join() !== this.shape.join()) {
      throw reshardError(`${shardName(shard)}: ${spec.name} is a slice of [${spec.fullShape}], but the model's is [${this.shape}]`);
    }
  }

  /** Copies one shard's slice in, comparing bit for bit wherever an earlier shard already wrote. */
  add(spec: ShardParamSpec, shard: ShardSpec, local: Float32Array): void {
    this.accepts(spec, shard);
    const src = new Uint32Array(local.buffer, local.byteOffset, local.length);
    const bits = this.#bits, covered = this.#covered;
    forEachRun(spec, (f, l, n) => {
      if (covered.subarray(f, f + n).indexOf(1) < 0) { // the usual case: nobody wrote here yet
        bits.set(src.subarray(l, l + n), f);
        covered.fill(1, f, f + n);
        return;
      }
      for (let i = 0; i < n; i++) {
        const at = f + i;
        if (!covered[at]) {
          bits[at] = src[l + i]!;
          covered[at] = 1;
        } else if (bits[at] !== src[l + i]) {
          const earlier = this.#writers.find((w) => holds(w.spec, at))!;
          throw reshardError(
            `${spec.name} differs between ${shardName(earlier.shard)} and ${shardName(shard)} at element ${at} ` +
              `(${this.data[at]} vs ${local[l + i]}): replicated copies must be bit-identical`,
          );
        }
      }
    });
    this.#writers.push({ shard, spec });
  }

  /** The merged parameter; throws unless every element was written by some shard. */
  finish(): Float32Array {
    const name = this.name, covered = this.#covered;
    if (this.#writers.length === 0) throw reshardError(`no shard holds ${name}`);
    const missing = covered.indexOf(0);
    if (missing < 0) return this.data;
    const C = this.shape[this.shape.length - 1] ?? 1;
    const count = covered.reduce((n, c) => n + (c ? 0 : 1), 0);
    throw reshardError(
      `${name}: ${count} of ${covered.length} elements are held by no shard (first at row ${Math.floor(missing / C)}, ` +
        `col ${missing % C}; held by ${this.#writers.map((w) => shardName(w.shard)).join(', ')})`,
    );
  }
}

/**
 * Full tensors from every shard's local tensors, in paramLayout order (or `full`'s, e.g. an adapter's). Every
 * parameter must be covered exactly; replicated copies must be bit-identical, else a ModelError (MDL_ERR_RESHARD)
 * names the parameter and the shards. (model/checkpoint-merge.ts does the same tensor by tensor from files.)
 */
export function mergeShardTensors(
  config: GPTConfig,
  parts: ReadonlyArray<{ readonly layout: ShardLayout; readonly tensors: Readonly<Record<string, TensorLike>> }>,
  full: ParamLayout = paramLayout(gptConfig(config)),
): Record<string, F32Tensor> {
  const merging = new Map(full.specs.map((s) => [s.name, new ParamMerger(s.name, s.shape)]));
  for (const { layout, tensors } of parts) {
    for (const spec of layout.specs) {
      const m = merging.get(spec.name);
      if (m === undefined) throw reshardError(`${shardName(layout.shard)} holds ${spec.name}, which is no parameter of this model`);
      m.accepts(spec, layout.shard);
      m.add(spec, layout.shard, f32Data(tensors, spec.name, spec.shape, shardName(layout.shard)));
    }
  }
  const out: Record<string, F32Tensor> = {};
  for (const s of full.specs) out[s.name] = { dtype: 'F32', shape: s.shape, data: merging.get(s.name)!.finish() };
  return out;
}
