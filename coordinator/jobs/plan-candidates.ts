/**
 * The candidates a plan weighs: every layout (data × pipeline × tensor) the agents allow, or the one pinned; for
 * each, what makes it impossible before any costing (structuralProblem), else the best of its micro-batch counts
 * and placements (weigh), and the order in which feasible candidates win (compareFeasible).
 */
import { layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { evaluate } from './candidate-cost.ts';
import type { Candidate, PlanContext, PredictedCost, Training } from './plan-request.ts';
import { agentSets, grids, slotsFor, tensorGroups } from './placement.ts';

const M_PER_STAGE = 4; // auto raises m to at most 4p: the bubble is then < 20%, and smaller micro-batches lose matmul
// efficiency that this model does not see

interface Problem {
  reason: string;
  advice: string;
}

/** Why a layout cannot be laid out at all, before any costing. */
function structuralProblem(ctx: PlanContext, l: ParallelLayout, m: number): Problem | undefined {
  const { model, training } = ctx;
  const n = l.data * l.pipeline * l.tensor;
  if (![l.data, l.pipeline, l.tensor].every((x) => Number.isSafeInteger(x) && x >= 1)) {
    return { reason: `degrees ${layoutName(l)} must be positive integers`, advice: 'give data, pipeline and tensor as positive integers' };
  }
  if (n > ctx.agents.length) {
    return { reason: `${layoutName(l)} needs ${n} agents, ${ctx.agents.length} usable`, advice: `start ${n - ctx.agents.length} more agent(s), or use parallel: auto` };
  }
  if (model.nHead % l.tensor !== 0) {
    return { reason: `tensor ${l.tensor} does not divide nHead ${model.nHead}`, advice: `use a tensor degree among ${divisors(model.nHead).join(', ')}` };
  }
  if (l.pipeline > model.nLayer) {
    return { reason: `pipeline ${l.pipeline} exceeds nLayer ${model.nLayer} (each stage needs a block)`, advice: `use at most ${model.nLayer} stages` };
  }
  if (training.batchSize % l.data !== 0) {
    return { reason: `batchSize ${training.batchSize} does not divide over data ${l.data}`, advice: 'make batchSize a multiple of the data degree' };
  }
  if ((training.batchSize / l.data) % m !== 0) {
    return { reason: `batchSize per data rank ${training.batchSize / l.data} does not divide into ${m} micro-batches`, advice: 'make batchSize / data a multiple of microBatches' };
  }
  if (training.seqLen > model.nCtx) {
    return { reason: `seqLen ${training.seqLen} exceeds nCtx ${model.nCtx}`, advice: 'lower seqLen or raise nCtx' };
  }
  return undefined;
}

/** Micro-batch counts to try: the spec's, and larger divisors of batchSize/d, up to 4p for p > 1 (same model: the
 * global batch and its mean-loss gradient do not change, only how it is cut into micro-batches). With one stage
 * more micro-batches only cost time, so they win only where the spec's count does not fit in memory. */
export function microBatchOptions(training: Training, l: ParallelLayout, pinned: boolean): number[] {
  const m = training.microBatches;
  if (pinned) return [m];
  const cap = l.pipeline === 1 ? Infinity : Math.max(m, M_PER_STAGE * l.pipeline);
  return divisors(training.batchSize / l.data).filter((x) => x >= m && x <= cap);
}

const unpredicted = (): PredictedCost => ({
  stepMs: NaN, computeMs: NaN, bubbleMs: NaN, sharingMs: NaN, tensorCommMs: NaN, pipelineCommMs: NaN, dataAllreduceMs: NaN, overheadMs: NaN, optimizerMs: NaN,
  memoryBytesPerAgent: NaN,
  wasmHeapBytesPerAgent: NaN,
});

/** The best (feasible first, then fastest; else leanest) of a layout's micro-batch counts and placements. */
export function weigh(ctx: PlanContext, l: ParallelLayout, pinned: boolean): { candidate: Candidate; problem?: Problem } {
  const problem = structuralProblem(ctx, l, ctx.training.microBatches);
  if (problem) return { candidate: { layout: { ...l }, microBatches: ctx.training.microBatches, stages: [], placement: [], predicted: unpredicted(), feasible: false, reason: problem.reason }, problem };
  const layoutGrids = agentSets(ctx.agents, l).flatMap((set) => grids(tensorGroups([...slotsFor(set, ctx).values()], l.tensor), l));
  let best: Candidate | undefined;
  for (const m of microBatchOptions(ctx.training, l, pinned)) {
    for (const grid of layoutGrids) {
      const c = evaluate(ctx, l, m, grid);
      const better = !best || (c.feasible !== best.feasible ? c.feasible
        : c.feasible ? c.predicted.stepMs < best.predicted.stepMs : c.predicted.memoryBytesPerAgent < best.predicted.memoryBytesPerAgent);
      if (better) best = c;
    }
  }
  return { candidate: best! };
}

/** Faster first; equal (to 1e-9) → fewer agents, then smaller p·t, then the layout and m themselves. */
export function compareFeasible(a: Candidate, b: Candidate): number {
  const x = a.predicted.stepMs, y = b.predicted.stepMs;
  if (Math.abs(x - y) > 1e-9 * Math.max(x, y)) return x - y;
  const agents = (c: Candidate) => c.layout.data * c.layout.pipeline * c.layout.tensor;
  const split = (c: Candidate) => c.layout.pipeline * c.layout.tensor;
  return agents(a) - agents(b) || split(a) - split(b) || a.layout.data - b.layout.data || a.layout.pipeline - b.layout.pipeline || a.microBatches - b.microBatches;
}

/** Every (d, p, t) with d·p·t ≤ n, in order of d, then p, then t. */
export function enumerate(n: number): ParallelLayout[] {
  const out: ParallelLayout[] = [];
  for (let data = 1; data <= n; data++) {
    for (let pipeline = 1; data * pipeline <= n; pipeline++) {
      for (let tensor = 1; data * pipeline * tensor <= n; tensor++) out.push({ data, pipeline, tensor });
    }
  }
  return out;
}

function divisors(n: number): number[] {
  const low: number[] = [], high: number[] = [];
  for (let i = 1; i * i <= n; i++) {
    if (n % i !== 0) continue;
    low.push(i);
    if (i * i !== n) high.unshift(n / i);
  }
  return [...low, ...high];
}
