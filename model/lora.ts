/**
 * LoRA (Hu et al. 2021, "Low-Rank Adaptation of Large Language Models"): the base weights stay frozen and each
 * adapted linear layer W [in, out] learns a low-rank update, y = x·W + b + scale·(x·A)·B with A [in, r], B [r, out]
 * and scale = alpha / r. Only A and B are trained (and only they have AdamW moments), so an adapter is a few
 * percent of the model and is saved, registered and served on its own.
 *
 * Orientation: GPT-2's Conv1D [in, out], like the weights, so x·A·B needs no transposes here; model/lora-files.ts
 * transposes to PEFT's nn.Linear [out, in] on disk. Initialisation as PEFT: A ~ U(−1/√in, 1/√in) (PEFT's
 * kaiming_uniform_(a=√5) on its [r, in] weight gives exactly that bound), B = 0, so a fresh adapter leaves the
 * base's outputs unchanged. Values come from gpt.ts's per-name seeded streams, so they are reproducible.
 *
 * The adapter's parameters form a ParamLayout like the model's (`loraLayout`), so AdamW, flat buffers and
 * checkpoints work on it unchanged; `loraShardLayout` cuts it for pipeline × tensor-parallel runs.
 */
import * as tf from '@tensorflow/tfjs';
import type { CheckpointLayouts } from './checkpoint-reshard.ts';
import { type GPT } from './gpt.ts';
import { gptConfig, paramLayout, unflatten, type GPTConfig, type ParamLayout, type ParamSpec } from './params.ts';
import { ModelError } from './errors.ts';
import type { F32Tensor } from './optim.ts';
import { checkShard, sliceOf, type ShardLayout, type ShardParamSpec, type ShardSpec, type TpSplit } from './shard-layout.ts';

import { LORA_TARGETS } from '../protocol/job-spec.ts';

export { LORA_TARGETS };
export type LoraTarget = (typeof LORA_TARGETS)[number];

export interface LoraSpec {
  readonly rank: number; // r: the inner dimension of A·B (1 ≤ r ≤ min(in, out) of every target)
  readonly alpha: number; // the update is scaled by alpha / r, so changing r does not change the step size much
  readonly dropout: number; // dropout on the adapter's input x while training, in [0, 1); none at inference
  readonly targets: readonly LoraTarget[]; // which linear layers of every block get an adapter
}

const SPEC_KEYS = ['rank', 'alpha', 'dropout', 'targets'];

const badSpec = (why: string) => new ModelError('MDL_ERR_LORA_SPEC', `LoRA spec: ${why}`);

/** scale = alpha / rank. */
export function loraScale(spec: LoraSpec): number {
  return spec.alpha / spec.rank;
}

/** [in, out] of a target's weight (Conv1D layout), d = nEmbd. */
export function targetShape(config: GPTConfig, target: LoraTarget): [number, number] {
  const d = config.nEmbd;
  return { 'attn.c_attn': [d, 3 * d], 'attn.c_proj': [d, d], 'mlp.c_fc': [d, 4 * d], 'mlp.c_proj': [4 * d, d] }[target] as [number, number];
}

/**
 * Checks a spec (for `config` when given: the rank must fit every target) and returns a frozen copy with the
 * targets in canonical order. Throws MDL_ERR_LORA_SPEC naming the field.
 */
export function loraSpec(raw: unknown, config?: GPTConfig): LoraSpec {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw badSpec('must be an object {rank, alpha, dropout, targets}');
  const r = raw as Record<string, unknown>;
  for (const key of Object.keys(r)) if (!SPEC_KEYS.includes(key)) throw badSpec(`unknown field ${JSON.stringify(key)} (fields: ${SPEC_KEYS.join(', ')})`);
  const { rank, alpha, dropout, targets } = r;
  if (!Number.isSafeInteger(rank) || (rank as number) < 1) throw badSpec(`rank must be an integer ≥ 1, got ${JSON.stringify(rank)}`);
  if (typeof alpha !== 'number' || !Number.isFinite(alpha) || alpha <= 0) throw badSpec(`alpha must be a finite number > 0, got ${JSON.stringify(alpha)}`);
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1)) throw badSpec(`dropout must be a number in [0, 1), got ${JSON.stringify(dropout)}`);
  if (!Array.isArray(targets) || targets.length === 0) throw badSpec(`targets must be a non-empty array of ${LORA_TARGETS.join(', ')}`);
  for (const t of targets) {
    if (!(LORA_TARGETS as readonly unknown[]).includes(t)) throw badSpec(`target ${JSON.stringify(t)} is not one of ${LORA_TARGETS.join(', ')}`);
  }
  if (new Set(targets).size !== targets.length) throw badSpec(`targets must be unique, got ${JSON.stringify(targets)}`);
  const ordered = LORA_TARGETS.filter((t) => targets.includes(t));
  if (config) {
    for (const t of ordered) {
      const [i, o] = targetShape(config, t);
      if ((rank as number) > Math.min(i, o)) throw badSpec(`rank ${rank} exceeds min(in, out) = ${Math.min(i, o)} of ${t} [${i}, ${o}]`);
    }
  }
  return Object.freeze({ rank: rank as number, alpha, dropout, targets: Object.freeze(ordered) });
}

// ---------------------------------------------------------------------------------------------------- layout

/**
 * The adapter's parameters: for every block l and target, `h.<l>.<target>.lora_A` [in, r] then `.lora_B` [r, out],
 * blocks in order, targets in LORA_TARGETS order. No weight decay (PEFT trains LoRA with the optimizer's decay,
 * but decaying toward 0 fights the B = 0 start for little gain; the trainer may choose otherwise).
 */
export function loraLayout(config: GPTConfig, spec: LoraSpec): ParamLayout {
  const c = gptConfig(config);
  const s = loraSpec(spec, c);
  const raw: Array<[string, number[], ParamSpec['init']]> = [];
  for (let l = 0; l < c.nLayer; l++) {
    for (const t of s.targets) {
      const [i, o] = targetShape(c, t);
      raw.push([`h.${l}.${t}.lora_A`, [i, s.rank], { kind: 'uniform', bound: 1 / Math.sqrt(i) }], [`h.${l}.${t}.lora_B`, [s.rank, o], { kind: 'zeros' }]);
    }
  }
  let offset = 0;
  const specs = raw.map(([name, shape, init]) => {
    const size = shape[0]! * shape[1]!;
    const p: ParamSpec = Object.freeze({ name, shape: Object.freeze(shape), offset, size, decay: false, init });
    offset += size;
    return p;
  });
  return Object.freeze({ specs: Object.freeze(specs), totalSize: offset });
}

/** Adapter parameters / base parameters. */
export function trainableFraction(config: GPTConfig, spec: LoraSpec): number {
  return loraLayout(config, spec).totalSize / paramLayout(gptConfig(config)).totalSize;
}

// ---------------------------------------------------------------------------------------------------- sharding

/**
 * How tensor parallelism (Megatron, see shard-layout.ts) cuts each target's factors. The cut factor follows the
 * weight it adapts; the other is replicated:
 *
 *   column-parallel W (attn.c_attn, mlp.c_fc; rank k holds output columns W[:, cols_k]):
 *     B's columns are cut like W's (c_attn's [q|k|v] head groups too), A replicated. Rank k computes
 *     y_k += s·(x·A)·B_k from its replicated x: exactly its columns of the full update.
 *     Gradients: dB_k = s·(x·A)ᵀ·dy_k is complete locally. dA = s·xᵀ·Σ_k dy_k·B_kᵀ: each rank holds one term of
 *     the sum over its columns, so A's gradient must be SUMMED over the TP group (all-reduce) before the step,
 *     just as Megatron sums the gradient of a column-parallel layer's input.
 *   row-parallel W (attn.c_proj, mlp.c_proj; rank k holds input rows W[rows_k, :], outputs summed by all-reduce):
 *     A's rows are cut like W's, B replicated. Rank k adds s·(x_k·A_k)·B to its partial output before the
 *     existing all-reduce: Σ_k s·(x_k·A_k)·B = s·(x·A)·B, so no extra communication in the forward pass.
 *     Gradients: dA_k = s·x_kᵀ·dy·Bᵀ (dy is replicated after the sum) is complete locally. dB = s·Σ_k (x_k·A_k)ᵀ·dy:
 *     each rank holds one term, so B's gradient must be SUMMED over the TP group.
 *
 * So unlike the base's replicated parameters (LayerNorms, whose gradients come out equal on every rank), a
 * replicated LoRA factor's local gradient is a partial sum: `gradReduce: 'sum'`. After the sum every rank applies
 * the same AdamW step to equal values, so the replicas stay bit-identical (checkpoint merges check that), and only
 * TP rank 0's copy counts in the global gradient norm (`countsForNorm`).
 */
export const LORA_TP_RULES: Readonly<Record<LoraTarget, { readonly A: TpSplit | null; readonly B: TpSplit | null; readonly partialSumGrad: 'A' | 'B' }>> = {
  'attn.c_attn': { A: null, B: { cut: 'cols', groups: 3 }, partialSumGrad: 'A' },
  'mlp.c_fc': { A: null, B: { cut: 'cols', groups: 1 }, partialSumGrad: 'A' },
  'attn.c_proj': { A: { cut: 'rows' }, B: null, partialSumGrad: 'B' },
  'mlp.c_proj': { A: { cut: 'rows' }, B: null, partialSumGrad: 'B' },
};

const LORA_PARAM = /^h\.(\d+)\.(.+)\.lora_([AB])$/;

/**
 * The adapter factors one shard holds (its stage's blocks only), cut by LORA_TP_RULES, in one local flat buffer in
 * loraLayout order. The same ShardLayout type as the model's, so checkpoint-reshard.ts cuts and merges adapters.
 */
export function loraShardLayout(config: GPTConfig, spec: LoraSpec, shard: ShardSpec): ShardLayout {
  const c = gptConfig(config);
  checkShard(c, shard);
  let offset = 0;
  const specs: ShardParamSpec[] = [];
  for (const p of loraLayout(c, spec).specs) {
    const [, layer, target, factor] = LORA_PARAM.exec(p.name)!;
    if (Number(layer) < shard.firstLayer || Number(layer) >= shard.endLayer) continue;
    const s = Object.freeze(sliceOf(p, shard, offset, LORA_TP_RULES[target as LoraTarget][factor as 'A' | 'B']));
    specs.push(s);
    offset += s.size;
  }
  return Object.freeze({ shard: Object.freeze({ ...shard }), specs: Object.freeze(specs), totalSize: offset, byName: new Map(specs.map((s) => [s.name, s])) });
}

/** Names of the local factors whose gradient is a partial sum over the TP group (see LORA_TP_RULES); none at t = 1. */
export function partialSumGrads(layout: ShardLayout): string[] {
  if (layout.shard.tpSize === 1) return [];
  return layout.specs.filter((s) => {
    const [, , target, factor] = LORA_PARAM.exec(s.name)!;
    return LORA_TP_RULES[target as LoraTarget].partialSumGrad === factor;
  }).map((s) => s.name);
}

/** What an adapter checkpoint holds and how it is cut, for coordinator/jobs/checkpoint-shards.ts. */
export function loraLayouts(config: GPTConfig, spec: LoraSpec): CheckpointLayouts {
  return { full: loraLayout(config, spec), shard: (s) => loraShardLayout(config, spec, s) };
}

// ---------------------------------------------------------------------------------------------------- use

/** Serves the adapter unmerged on `model` (GPT.attachAdapter): every forward adds scale·(x·A)·B. */
export function attachLora(model: GPT, spec: LoraSpec, flat: Float32Array): void {
  const layout = loraLayout(model.config, spec);
  if (flat.length !== layout.totalSize) throw badSpec(`the adapter has ${flat.length} values, rank ${spec.rank} on ${spec.targets.join(', ')} needs ${layout.totalSize}`);
  model.attachAdapter(layout, flat, loraScale(spec));
}

/** W' = W + scale·A·B for every adapted layer; every other tensor is copied. `base` is a state dict (gpt.ts names). */
export function mergeLora(base: Readonly<Record<string, F32Tensor>>, adapter: Float32Array, config: GPTConfig, spec: LoraSpec): Record<string, F32Tensor> {
  const layout = loraLayout(config, spec);
  const views = unflatten(adapter, layout);
  const scale = loraScale(spec);
  const out: Record<string, F32Tensor> = {};
  for (const [name, t] of Object.entries(base)) out[name] = { dtype: 'F32', shape: t.shape, data: t.data.slice() };
  for (let l = 0; l < config.nLayer; l++) {
    for (const target of spec.targets) {
      const prefix = `h.${l}.${target}`;
      const W = out[`${prefix}.weight`];
      const [i, o] = targetShape(config, target);
      if (!W || W.shape.join() !== `${i},${o}`) throw badSpec(`the base has no ${prefix}.weight of shape [${i}, ${o}]`);
      // In float64 on the CPU: exact enough, and it does not depend on the tf backend.
      const A = views.get(`${prefix}.lora_A`)!, B = views.get(`${prefix}.lora_B`)!, r = spec.rank;
      const w = W.data, row = new Float64Array(o);
      for (let a = 0; a < i; a++) {
        row.fill(0);
        for (let k = 0; k < r; k++) {
          const ak = A[a * r + k]! * scale;
          if (ak === 0) continue;
          for (let b = 0; b < o; b++) row[b] = row[b]! + ak * B[k * o + b]!;
        }
        for (let b = 0; b < o; b++) w[a * o + b] = w[a * o + b]! + row[b]!;
      }
    }
  }
  return out;
}

/** Applies dropout (training only) to an adapter's input: inverted dropout, as torch.nn.Dropout. */
export function loraDropout(x: tf.Tensor2D, rate: number, seed?: number): tf.Tensor2D {
  return rate > 0 ? (tf.dropout(x, rate, undefined, seed) as tf.Tensor2D) : x;
}
