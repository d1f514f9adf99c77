/**
 * The training planner: which data × pipeline × tensor layout a job runs with, on which agents, with which pipeline
 * stages, and why. `planJob(request) → plan` is a pure function (STYLE.md habit 3): no clock, no I/O, the same
 * request gives the same plan. The job runner carries a plan out; test/coordinator/planner.test.ts tables it.
 *
 * The planner, by concern: plan-request.ts (what it is asked and answers), placement.ts (which agents, where),
 * candidate-cost.ts (the cost model applied to one candidate; cost-model.ts holds its formulas), plan-candidates.ts
 * (the layouts weighed and the order they win in), plan-explain.ts (the plan in words), plan-offer.ts (bf16 and DiLoCo
 * offered, never applied, when data parallelism would be communication-bound). This file is planJob and its refusal:
 * when nothing fits, why, and what would make the job fit. A DiLoCo job (training.diloco) is planned over layouts of
 * one stage and one tensor shard only: its replicas are whole models.
 */
import { layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { stageWork } from './candidate-cost.ts';
import { backendPeakBytes, memoryBytes, stageParams } from './cost-model.ts';
import { compareFeasible, enumerate, microBatchOptions, weigh } from './plan-candidates.ts';
import { explain, fmtBytes } from './plan-explain.ts';
import { communicationOffer, explainOffer } from './plan-offer.ts';
import { plannerCalibration, validatePlanRequest, type Candidate, type Plan, type PlanContext, type PlanRequest } from './plan-request.ts';
import { agentOrder, compareIds, hostGflops, hostProbes } from './placement.ts';

export * from './cost-model.ts';
export type { Candidate, Plan, PlannerAgent, PlanRequest, PredictedCost } from './plan-request.ts';
export { speedKey } from './placement.ts';
export { stageBoundaries } from './candidate-cost.ts';

const MAX_HYPOTHETICAL_AGENTS = 4096; // how far a refusal looks for a layout that would fit

export function planJob(req: PlanRequest): Plan {
  const cal = plannerCalibration(req.calibration);
  validatePlanRequest(req);
  const usable = req.agents.filter((a) => a.matmulGflops > 0 && a.cores >= 1 && a.memoryBytes > 0).sort((a, b) => compareIds(a.id, b.id));
  const best = hostGflops(usable), probes = hostProbes(usable);
  const ctx: PlanContext = { model: req.model, training: req.training, cal, agents: agentOrder(usable, { cal, hostGflops: best, hostProbes: probes }), hostGflops: best, hostProbes: probes };
  const pinned = req.parallel !== 'auto';
  const layouts: ParallelLayout[] = req.parallel === 'auto'
    ? enumerate(usable.length).filter((l) => !req.training.diloco || (l.pipeline === 1 && l.tensor === 1))
    : [req.parallel];
  const weighed = layouts.map((l) => weigh(ctx, l, pinned));
  const feasible = weighed.map((w) => w.candidate).filter((c) => c.feasible).sort(compareFeasible);
  const infeasible = weighed.map((w) => w.candidate).filter((c) => !c.feasible);
  const candidates = [...feasible, ...infeasible];
  const chosen = feasible[0] ?? null;
  const offer = communicationOffer(ctx, feasible);
  if (chosen) {
    const explanation = explain(ctx, chosen, feasible[1], pinned) + (offer ? ` ${explainOffer(offer, chosen.layout)}` : '');
    return { chosen, candidates, explanation, ...(offer ? { offer } : {}) };
  }

  let refused: string;
  if (usable.length === 0) {
    refused = req.agents.length === 0 ? 'no agents are connected: start at least one node-agent'
      : `none of the ${req.agents.length} agents can compute (0 GFLOP/s, cores or memory): start a working node-agent`;
  } else if (pinned) {
    const w = weighed[0]!;
    refused = `layout ${layoutName(req.parallel as ParallelLayout)} is infeasible: ${w.candidate.reason}; ` +
      (w.problem ? w.problem.advice : heapBound(w.candidate) ? WASM_HEAP_ADVICE : memoryAdvice(ctx));
  } else if (weighed.every((w) => w.problem)) {
    const w = weighed[0]!; // 1×1×1 fails only on the spec itself
    refused = `no layout is possible: ${w.candidate.reason}; ${w.problem!.advice}`;
  } else {
    const leanest = infeasible.filter((c) => !Number.isNaN(c.predicted.memoryBytesPerAgent))
      .reduce((a, b) => (b.predicted.memoryBytesPerAgent < a.predicted.memoryBytesPerAgent ? b : a));
    refused = `no layout fits in memory on ${usable.length} agent(s): the leanest, ${layoutName(leanest.layout)} with m = ${leanest.microBatches}, ` +
      `${leanest.reason}; ${heapBound(leanest) ? WASM_HEAP_ADVICE : memoryAdvice(ctx)}`;
  }
  return { chosen: null, candidates, refused, explanation: `Refused: ${refused}.` };
}

const heapBound = (c: Candidate) => /of wasm heap/.test(c.reason ?? '');
const WASM_HEAP_ADVICE = 'split the model over more pipeline stages or tensor shards (start more agents), put fewer tokens in a ' +
  'micro-batch (raise microBatches, lower seqLen), or run agents on a backend without that limit (--backend tensorflow, a GPU)';

/**
 * What would make the job fit: the fewest agents like the roomiest one that some layout fits on (an estimate, with
 * blocks split evenly rather than by speed), or else a smaller batch or model.
 */
function memoryAdvice(ctx: PlanContext): string {
  const { model, training, cal } = ctx;
  const roomiest = ctx.agents.reduce((a, b) => (b.memoryBytes > a.memoryBytes || (b.memoryBytes === a.memoryBytes && b.id < a.id) ? b : a));
  const allow = roomiest.memoryBytes * cal.memoryFraction;
  const size = (l: ParallelLayout) => l.data * l.pipeline * l.tensor;
  const layouts = enumerate(MAX_HYPOTHETICAL_AGENTS)
    .filter((l) => model.nHead % l.tensor === 0 && l.pipeline <= model.nLayer && training.batchSize % l.data === 0 && (training.batchSize / l.data) % training.microBatches === 0)
    .sort((a, b) => size(a) - size(b));
  let fit: { agents: number; need: number; l: ParallelLayout; m: number } | undefined;
  for (const l of layouts) {
    const n = size(l);
    if (fit && n > fit.agents) break;
    for (const m of microBatchOptions(training, l, false)) {
      const need = evenSplitMemory(ctx, l, m);
      if (need <= allow && (!fit || n < fit.agents || (n === fit.agents && need < fit.need))) fit = { agents: n, need, l, m };
    }
  }
  const hint = 'or lower batchSize or seqLen (activations shrink with them), or raise microBatches';
  if (!fit) return `no layout of up to ${MAX_HYPOTHETICAL_AGENTS} agents like ${roomiest.id} would fit: lower batchSize or seqLen, raise microBatches, or train a smaller model`;
  const example = `${layoutName(fit.l)} with m = ${fit.m} needs ${fmtBytes(fit.need)} per agent`;
  if (fit.agents > ctx.agents.length) {
    return `start ${fit.agents - ctx.agents.length} more agent(s) with at least ${fmtBytes(fit.need / cal.memoryFraction)} of memory like ${roomiest.id} (${example}), ${hint}`;
  }
  return `give every agent at least ${fmtBytes(fit.need / cal.memoryFraction)} of memory (${example}), ${hint}`;
}

/** Peak memory per agent of a layout with blocks split evenly (later stages take the remainder). */
function evenSplitMemory(ctx: PlanContext, l: ParallelLayout, m: number): number {
  const { model, training } = ctx;
  const rows = training.batchSize / (l.data * m);
  let peak = 0;
  for (let i = 0; i < l.pipeline; i++) {
    const blocks = Math.floor(model.nLayer / l.pipeline) + (i >= l.pipeline - (model.nLayer % l.pipeline) ? 1 : 0);
    const work = stageWork(l, i, blocks);
    const backendBytes = backendPeakBytes(model, rows, training.seqLen, work, work.recompute ? Math.min(m, l.pipeline - i) : 0, training.wholeLogits);
    peak = Math.max(peak, memoryBytes(stageParams(model, work), backendBytes, l.data, training.zero));
  }
  return peak;
}
