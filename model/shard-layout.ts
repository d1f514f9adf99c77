/**
 * Which parameters, and which slices of them, one agent holds when the model is cut into pipeline stages × tensor-
 * parallel (Megatron-style) shards. An agent trains on ONE local flat buffer, in the same spirit as gpt.ts's flat
 * buffer: the parameters its stage holds, in paramLayout order, each cut to its TP rank's slice.
 *
 * Pipeline: stage 0 holds wte and wpe, the last stage ln_f and, for the tied output head, wte again (two copies
 * when stages > 1, kept equal by all-reducing their gradients); blocks h.l for l in [firstLayer, endLayer).
 *
 * Tensor parallel over t ranks (Megatron-LM, Shoeybi et al. 2019), d = nEmbd, GPT-2 Conv1D layout W: [in, out]:
 *   attn.c_attn  column-parallel: rank r holds heads [r·nHead/t, (r+1)·nHead/t) of each of q, k and v,
 *                so its local [d, 3d/t] is [q_r | k_r | v_r] and attention runs on local heads alone
 *   attn.c_proj  row-parallel: rows [r·d/t, (r+1)·d/t) (its input is those heads); the outputs are summed
 *   mlp.c_fc     column-parallel: columns [r·4d/t, (r+1)·4d/t), GELU applies locally
 *   mlp.c_proj   row-parallel: the matching rows
 * Everything else (LayerNorms, embeddings, the biases of row-parallel layers, added once after the sum) is
 * replicated on every TP rank. Replicated copies must not be counted twice in the global gradient norm, hence
 * `countsForNorm`.
 *
 * Slices are described by a row range and column ranges of the full tensor viewed as 2-D, so extracting and
 * inserting is one loop for every kind of split, and checkpoints stay layout-free (model/checkpoint-reshard.ts).
 */
import { gptConfig, initParam, paramLayout, type GPTConfig, type ParamSpec } from './params.ts';

export interface ShardSpec {
  readonly stage: number; // pipeline stage index, 0-based
  readonly stages: number; // pipeline degree p (≥ 1)
  readonly firstLayer: number; // first transformer block this stage holds (inclusive)
  readonly endLayer: number; // one past its last block (a stage holds ≥ 1 block)
  readonly tpRank: number; // tensor-parallel rank, 0-based
  readonly tpSize: number; // tensor-parallel degree t; must divide nHead
}

/** One parameter's slice on one shard; structurally an optim.ts OptimSegment of the local buffer. */
export interface ShardParamSpec {
  readonly name: string; // GPT-2 state-dict name, e.g. 'h.3.attn.c_attn.weight'
  readonly shape: readonly number[]; // LOCAL shape on this shard
  readonly offset: number; // first element in the shard's LOCAL flat buffer
  readonly size: number; // local elements
  readonly decay: boolean; // as the full ParamSpec (2-D weights)
  readonly fullShape: readonly number[]; // shape in the full model
  readonly rows: readonly [number, number]; // row range of the full tensor viewed as 2-D (1-D of n is [1, n])
  readonly cols: ReadonlyArray<readonly [number, number]>; // column ranges, side by side in the local tensor, in order
  readonly tpReplicated: boolean; // every TP rank holds the same full copy
  readonly countsForNorm: boolean; // false for copies already counted elsewhere in the global gradient norm
}

export interface ShardLayout {
  readonly shard: ShardSpec;
  readonly specs: readonly ShardParamSpec[]; // in the full paramLayout order, filtered to this shard
  readonly totalSize: number;
  readonly byName: ReadonlyMap<string, ShardParamSpec>;
}

// ---------------------------------------------------------------------------------------------------- validation

function checkInt(field: string, v: number, min: number, max = Number.MAX_SAFE_INTEGER): void {
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    throw new RangeError(`ShardSpec.${field} must be an integer in [${min}, ${max}], got ${String(v)}`);
  }
}

export function checkShard(c: GPTConfig, s: ShardSpec): void {
  checkInt('stages', s.stages, 1);
  checkInt('stage', s.stage, 0, s.stages - 1);
  checkInt('tpSize', s.tpSize, 1);
  checkInt('tpRank', s.tpRank, 0, s.tpSize - 1);
  if (c.nHead % s.tpSize !== 0) throw new RangeError(`ShardSpec.tpSize (${s.tpSize}) must divide nHead (${c.nHead})`);
  checkInt('firstLayer', s.firstLayer, 0, c.nLayer - 1);
  checkInt('endLayer', s.endLayer, s.firstLayer + 1, c.nLayer);
  if (s.stage === 0 && s.firstLayer !== 0) throw new RangeError(`ShardSpec.firstLayer of stage 0 must be 0, got ${s.firstLayer}`);
  if (s.stage === s.stages - 1 && s.endLayer !== c.nLayer) {
    throw new RangeError(`ShardSpec.endLayer of the last stage must be nLayer (${c.nLayer}), got ${s.endLayer}`);
  }
}

// ---------------------------------------------------------------------------------------------------- the layout

/** A tensor-parallel cut of a tensor viewed as 2-D: its columns in `groups` equal groups, each cut t ways, or its rows. */
export type TpSplit = { readonly cut: 'cols'; readonly groups: number } | { readonly cut: 'rows' };

/** How tensor parallelism cuts a block parameter (by its name after `h.<l>.`); anything not listed is replicated. */
const TP_SPLITS: Readonly<Record<string, TpSplit>> = {
  'attn.c_attn.weight': { cut: 'cols', groups: 3 }, // [q | k | v], each cut into its heads
  'attn.c_attn.bias': { cut: 'cols', groups: 3 },
  'attn.c_proj.weight': { cut: 'rows' }, // row-parallel: the input is this rank's heads
  'mlp.c_fc.weight': { cut: 'cols', groups: 1 },
  'mlp.c_fc.bias': { cut: 'cols', groups: 1 },
  'mlp.c_proj.weight': { cut: 'rows' },
};

const BLOCK_PARAM = /^h\.(\d+)\.(.+)$/;

/** [rows, cols] of a shape viewed as 2-D: the last dimension is the columns, the rest the rows. */
function view2d(shape: readonly number[]): [number, number] {
  const cols = shape[shape.length - 1] ?? 1;
  return [shape.slice(0, -1).reduce((a, b) => a * b, 1), cols];
}

/** Whether a stage holds a parameter at all (before any TP cut). */
function stageHolds(name: string, s: ShardSpec): boolean {
  const last = s.stage === s.stages - 1;
  if (name === 'wte.weight') return s.stage === 0 || last; // the output head is tied to wte
  if (name === 'wpe.weight') return s.stage === 0;
  if (name.startsWith('ln_f.')) return last;
  const m = BLOCK_PARAM.exec(name);
  if (!m) throw new RangeError(`shardLayout: ${name} is no GPT-2 parameter`);
  const l = Number(m[1]);
  return l >= s.firstLayer && l < s.endLayer;
}

/**
 * This shard's slice of one full parameter, cut by `rule` (omitted: the GPT-2 rule for its name; null:
 * replicated). model/lora.ts cuts adapter factors with its own rules through this.
 */
export function sliceOf(spec: ParamSpec, s: ShardSpec, offset: number, rule?: TpSplit | null): ShardParamSpec {
  const [R, C] = view2d(spec.shape);
  const split = rule === undefined ? TP_SPLITS[BLOCK_PARAM.exec(spec.name)?.[2] ?? ''] : (rule ?? undefined);
  const t = s.tpSize, r = s.tpRank;
  let rows: [number, number] = [0, R];
  let cols: Array<[number, number]> = [[0, C]];
  if (split?.cut === 'rows') {
    rows = [(r * R) / t, ((r + 1) * R) / t];
  } else if (split?.cut === 'cols') {
    const group = C / split.groups, w = group / t;
    cols = Array.from({ length: split.groups }, (_, k): [number, number] => [k * group + r * w, k * group + (r + 1) * w]);
  }
  const width = cols.reduce((n, [a, b]) => n + b - a, 0);
  const shape = spec.shape.length === 1 ? [width] : [rows[1] - rows[0], width];
  const tpReplicated = split === undefined;
  const tiedCopy = spec.name === 'wte.weight' && s.stages > 1 && s.stage === s.stages - 1;
  return {
    name: spec.name,
    shape: Object.freeze(shape),
    offset,
    size: (rows[1] - rows[0]) * width,
    decay: spec.decay,
    fullShape: spec.shape,
    rows: Object.freeze(rows),
    cols: Object.freeze(cols.map((c) => Object.freeze(c))),
    tpReplicated,
    countsForNorm: !(tpReplicated && r > 0) && !tiedCopy,
  };
}

/** The parameters (and slices) one shard holds, laid out in one local flat buffer in paramLayout order. */
/**
 * The shard a checkpoint's state.json says it holds (`shard`, written by agents); a checkpoint without one — a
 * canonical, merged checkpoint — holds the whole model.
 */
export function shardOfCheckpoint(state: Readonly<Record<string, unknown>>, nLayer: number): ShardSpec {
  return (state.shard as ShardSpec | undefined) ?? { stage: 0, stages: 1, firstLayer: 0, endLayer: nLayer, tpRank: 0, tpSize: 1 };
}

export function shardLayout(config: GPTConfig, shard: ShardSpec): ShardLayout {
  const c = gptConfig(config);
  checkShard(c, shard);
  let offset = 0;
  const specs = paramLayout(c).specs.filter((p) => stageHolds(p.name, shard)).map((p) => {
    const spec = Object.freeze(sliceOf(p, shard, offset));
    offset += spec.size;
    return spec;
  });
  return Object.freeze({
    shard: Object.freeze({ ...shard }),
    specs: Object.freeze(specs),
    totalSize: offset,
    byName: new Map(specs.map((s) => [s.name, s])),
  });
}

// ---------------------------------------------------------------------------------------------------- moving data

/**
 * Calls `visit` for each contiguous run of a slice, in local order: `fullOffset` into the full tensor (row-major,
 * fullShape), `localOffset` into the local tensor, `length` elements. Whole rows come as one run.
 */
export function forEachRun(spec: ShardParamSpec, visit: (fullOffset: number, localOffset: number, length: number) => void): void {
  const C = view2d(spec.fullShape)[1];
  const [r0, r1] = spec.rows;
  const only = spec.cols.length === 1 ? spec.cols[0] : undefined;
  if (only !== undefined && only[0] === 0 && only[1] === C) return visit(r0 * C, 0, (r1 - r0) * C);
  let at = 0;
  for (let row = r0; row < r1; row++) {
    for (const [c0, c1] of spec.cols) {
      visit(row * C + c0, at, c1 - c0);
      at += c1 - c0;
    }
  }
}

function fullSize(spec: ShardParamSpec): number {
  return spec.fullShape.reduce((a, b) => a * b, 1);
}

/** One parameter's local slice, copied out of its full tensor into `into` (a fresh array when omitted). */
export function extractParam(full: Float32Array, spec: ShardParamSpec, into: Float32Array = new Float32Array(spec.size)): Float32Array {
  if (full.length !== fullSize(spec)) throw new RangeError(`${spec.name}: full tensor has ${full.length} elements, expected ${fullSize(spec)} ([${spec.fullShape}])`);
  if (into.length !== spec.size) throw new RangeError(`${spec.name}: local tensor has ${into.length} elements, expected ${spec.size}`);
  forEachRun(spec, (f, l, n) => into.set(full.subarray(f, f + n), l));
  return into;
}

/** Copies one parameter's local slice back into its full tensor. */
export function insertParam(local: Float32Array, spec: ShardParamSpec, full: Float32Array): void {
  if (full.length !== fullSize(spec)) throw new RangeError(`${spec.name}: full tensor has ${full.length} elements, expected ${fullSize(spec)} ([${spec.fullShape}])`);
  if (local.length !== spec.size) throw new RangeError(`${spec.name}: local tensor has ${local.length} elements, expected ${spec.size}`);
  forEachRun(spec, (f, l, n) => full.set(local.subarray(l, l + n), f));
}

function checkLocal(flat: Float32Array, layout: ShardLayout): void {
  if (flat.length !== layout.totalSize) throw new RangeError(`local buffer has ${flat.length} elements, shard layout needs ${layout.totalSize}`);
}

/** The local flat buffer from full tensors (`full(name)` returns the full parameter's data, row-major, fullShape). */
export function extractShard(full: (name: string) => Float32Array, layout: ShardLayout, into?: Float32Array): Float32Array {
  const flat = into ?? new Float32Array(layout.totalSize);
  checkLocal(flat, layout);
  for (const s of layout.specs) extractParam(full(s.name), s, flat.subarray(s.offset, s.offset + s.size));
  return flat;
}

/** Writes a local flat buffer's pieces back into full tensors. */
export function insertShard(local: Float32Array, layout: ShardLayout, full: (name: string) => Float32Array): void {
  checkLocal(local, layout);
  for (const s of layout.specs) insertParam(local.subarray(s.offset, s.offset + s.size), s, full(s.name));
}

/**
 * Exactly extractShard of the full model's initParams(paramLayout(config), seed): each held parameter is drawn in
 * full from its own stream (gpt.ts's initParam) and cut; parameters this shard does not hold are never made.
 */
export function initShardParams(config: GPTConfig, layout: ShardLayout, seed: number): Float32Array {
  const specs = new Map(paramLayout(gptConfig(config)).specs.map((s) => [s.name, s]));
  return extractShard((name) => {
    const spec = specs.get(name);
    if (spec === undefined) throw new RangeError(`initShardParams: ${name} is no parameter of this config`);
    return initParam(spec, seed);
  }, layout);
}

// ---------------------------------------------------------------------------------------------------- planning

/**
 * Splits nLayer blocks into weights.length contiguous stages (each ≥ 1 block), block counts as close as possible to
 * proportional to the weights (e.g. relative stage speeds): starting from one block each, every further block goes
 * to the stage whose time (blocks/weight) would grow least, which minimises the slowest stage's time. Ties go to the
 * earlier stage. Returns [firstLayer, endLayer) per stage.
 */
export function splitLayers(nLayer: number, weights: readonly number[]): Array<[number, number]> {
  const p = weights.length;
  if (!Number.isSafeInteger(nLayer) || nLayer < 1) throw new RangeError(`splitLayers: nLayer must be a positive integer, got ${nLayer}`);
  if (p === 0) throw new RangeError('splitLayers: weights must name at least one stage');
  if (nLayer < p) throw new RangeError(`splitLayers: nLayer (${nLayer}) must be at least the number of stages (${p}): every stage needs a block`);
  weights.forEach((w, i) => {
    if (!(Number.isFinite(w) && w > 0)) throw new RangeError(`splitLayers: weight ${i} must be a positive finite number, got ${w}`);
  });
  const counts = weights.map(() => 1);
  for (let placed = p; placed < nLayer; placed++) {
    let best = 0;
    for (let i = 1; i < p; i++) if ((counts[i]! + 1) / weights[i]! < (counts[best]! + 1) / weights[best]!) best = i;
    counts[best] = counts[best]! + 1;
  }
  let first = 0;
  return counts.map((n): [number, number] => [first, (first += n)]);
}

/** Every ShardSpec of a layout: for each stage bound and each tp rank (stage-major, tp-minor). */
export function allShards(bounds: ReadonlyArray<readonly [number, number]>, tpSize: number): ShardSpec[] {
  return bounds.flatMap(([firstLayer, endLayer], stage) =>
    Array.from({ length: tpSize }, (_, tpRank) => Object.freeze({ stage, stages: bounds.length, firstLayer, endLayer, tpRank, tpSize })),
  );
}
