/**
 * How a job's ranks are arranged in data × pipeline × tensor parallelism, shared by the coordinator (which forms
 * the rings) and the agents (which find theirs by name). Tensor is the innermost dimension, as in Megatron-LM, so
 * that a tensor-parallel group (the chattiest: four all-reduces per block per micro-batch) is a run of adjacent
 * ranks, which the planner places on one host:
 *
 *   rank = dp·(p·t) + pp·t + tp
 *
 * The rings of a job, each named so that both sides derive the same names:
 *   world               every rank, in order: scalars (global gradient norm, loss, tokens)
 *   dp.<pp>.<tp>        the d replicas of one stage shard: gradient all-reduce (or ZeRO-1 reduce-scatter/gather)
 *   tp.<dp>.<pp>        the t shards of one stage of one replica: the tensor-parallel all-reduces
 *   pp.<dp>.<tp>.<s>    stage s and s+1 of one replica (a ring of two = one link each way): activations forward,
 *                       their gradients backward
 *   tied.<dp>.<tp>      first and last stage (when p > 1): the output head is tied to the token embedding, so the
 *                       two copies of wte sum their gradients here (Megatron's "embedding group")
 */

export interface ParallelLayout {
  readonly data: number; // d: replicas
  readonly pipeline: number; // p: stages
  readonly tensor: number; // t: shards per stage
}

export interface Coords {
  readonly dp: number;
  readonly pp: number;
  readonly tp: number;
}

export interface RingSpec {
  readonly id: string;
  readonly members: number[]; // world ranks, in ring order
}

export const worldSize = (l: ParallelLayout): number => l.data * l.pipeline * l.tensor;

export function coordsOf(rank: number, l: ParallelLayout): Coords {
  if (!Number.isInteger(rank) || rank < 0 || rank >= worldSize(l)) throw new RangeError(`rank ${rank} is outside a world of ${worldSize(l)}`);
  return { dp: Math.floor(rank / (l.pipeline * l.tensor)), pp: Math.floor(rank / l.tensor) % l.pipeline, tp: rank % l.tensor };
}

export function rankOf(c: Coords, l: ParallelLayout): number {
  return c.dp * l.pipeline * l.tensor + c.pp * l.tensor + c.tp;
}

export const ringIds = {
  world: 'world',
  data: (pp: number, tp: number) => `dp.${pp}.${tp}`,
  tensor: (dp: number, pp: number) => `tp.${dp}.${pp}`,
  pipe: (dp: number, tp: number, stage: number) => `pp.${dp}.${tp}.${stage}`,
  tied: (dp: number, tp: number) => `tied.${dp}.${tp}`,
} as const;

/** Every ring of a layout (rings of one member included: they need no links but keep the code uniform). */
export function jobRings(l: ParallelLayout): RingSpec[] {
  const { data: d, pipeline: p, tensor: t } = l;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const rings: RingSpec[] = [{ id: ringIds.world, members: range(worldSize(l)) }];
  for (const pp of range(p)) for (const tp of range(t)) rings.push({ id: ringIds.data(pp, tp), members: range(d).map((dp) => rankOf({ dp, pp, tp }, l)) });
  for (const dp of range(d)) for (const pp of range(p)) rings.push({ id: ringIds.tensor(dp, pp), members: range(t).map((tp) => rankOf({ dp, pp, tp }, l)) });
  for (const dp of range(d)) {
    for (const tp of range(t)) {
      for (let s = 0; s + 1 < p; s++) rings.push({ id: ringIds.pipe(dp, tp, s), members: [rankOf({ dp, pp: s, tp }, l), rankOf({ dp, pp: s + 1, tp }, l)] });
      if (p > 1) rings.push({ id: ringIds.tied(dp, tp), members: [rankOf({ dp, pp: 0, tp }, l), rankOf({ dp, pp: p - 1, tp }, l)] });
    }
  }
  return rings;
}

/** "2×2×1" (data × pipeline × tensor), as logs, the API and the planner write a layout. */
export const layoutName = (l: ParallelLayout): string => `${l.data}×${l.pipeline}×${l.tensor}`;
