/**
 * Which queued job starts where, and in what layout: a pure decision from the jobs waiting and the agents free
 * (STYLE.md habit 3). The layout (data × pipeline × tensor, stage boundaries, placement) comes from the planner
 * (planner.ts) run on the free agents; the job runner carries the decisions out. Strict first-in-first-out: a job
 * that does not fit yet holds the ones behind it, so a large job is never starved by a stream of small ones.
 */
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import { planJob, type Candidate, type Plan, type PlannerAgent, type PlannerCalibration } from './planner.ts';

export interface QueuedJob {
  id: string;
  spec: ResolvedJobSpec;
  createdMs: number;
}

export interface FreeAgent extends PlannerAgent {
  firstSeenMs: number;
}

export type SchedulerDecision =
  | { action: 'start'; jobId: string; chosen: Candidate; plan: Plan; reason: string }
  | { action: 'wait'; jobId: string; reason: string; plan?: Plan };

/** The planner's request for a job on `agents`, pinned to `layout` when given (an elastic job's current degree). */
export function planRequest(spec: ResolvedJobSpec, agents: PlannerAgent[], calibration?: Partial<PlannerCalibration>, layout?: ParallelLayout) {
  const t = spec.training;
  const p = layout ?? spec.parallel;
  return {
    model: spec.model,
    training: {
      batchSize: t.batchSize, microBatches: t.microBatches, seqLen: t.seqLen, zero: t.zero, wholeLogits: spec.kind === 'dpo' || spec.kind === 'distill',
      ...(t.gradientWire !== 'f32' ? { gradientWire: t.gradientWire } : {}), ...(t.diloco ? { diloco: { innerSteps: t.diloco.innerSteps } } : {}),
    },
    parallel: p === 'auto' ? ('auto' as const) : { data: p.data, pipeline: p.pipeline, tensor: p.tensor },
    agents,
    ...(calibration ? { calibration } : {}),
  };
}

/**
 * The data-parallel degrees a pinned spec may run with, most first: from `data` down to `minData`, each one the
 * global batch divides over (per-rank rows split into the micro-batches). One degree unless the job is elastic.
 */
export function dataDegrees(spec: ResolvedJobSpec): number[] {
  if (spec.parallel === 'auto') return [];
  const { batchSize, microBatches } = spec.training;
  const out: number[] = [];
  for (let d = spec.parallel.data; d >= spec.parallel.minData; d--) if (batchSize % (d * microBatches) === 0) out.push(d);
  return out;
}

/** The fewest agents a spec can start on (1 for 'auto': it fits itself to what there is). */
export function agentsWanted(spec: ResolvedJobSpec): number {
  if (spec.parallel === 'auto') return 1;
  const fewest = dataDegrees(spec).at(-1) ?? spec.parallel.data;
  return fewest * spec.parallel.pipeline * spec.parallel.tensor;
}

/**
 * The plan for a job on `agents`: 'auto' as the planner picks; a pinned layout at the most data-parallel replicas
 * the agents allow (an elastic job runs short-handed rather than wait). Null when there are too few agents even for
 * the fewest replicas; otherwise a plan, whose `chosen` is null when none of the degrees fits (the last refusal).
 */
export function planFor(spec: ResolvedJobSpec, agents: PlannerAgent[], calibration?: Partial<PlannerCalibration>): Plan | null {
  if (spec.parallel === 'auto') return agents.length > 0 ? planJob(planRequest(spec, agents, calibration)) : null;
  const { pipeline, tensor } = spec.parallel;
  let last: Plan | null = null;
  for (const data of dataDegrees(spec)) {
    if (data * pipeline * tensor > agents.length) continue;
    last = planJob(planRequest(spec, agents, calibration, { data, pipeline, tensor }));
    if (last.chosen) return last;
  }
  return last;
}

export function decideJobs(queued: QueuedJob[], free: FreeAgent[], calibration?: Partial<PlannerCalibration>): SchedulerDecision[] {
  const decisions: SchedulerDecision[] = [];
  let pool = [...free].sort((a, b) => b.matmulGflops - a.matmulGflops || a.firstSeenMs - b.firstSeenMs || (a.id < b.id ? -1 : 1));
  const ordered = [...queued].sort((a, b) => a.createdMs - b.createdMs || (a.id < b.id ? -1 : 1));
  for (let i = 0; i < ordered.length; i++) {
    const job = ordered[i]!;
    const wanted = agentsWanted(job.spec);
    const plan = pool.length >= wanted ? planFor(job.spec, pool, calibration) : null;
    if (!plan?.chosen) {
      const reason = plan?.refused ?? `waiting for ${wanted} free agent${wanted === 1 ? '' : 's'} (${pool.length} free)`;
      decisions.push({ action: 'wait', jobId: job.id, reason, ...(plan ? { plan } : {}) });
      for (const later of ordered.slice(i + 1)) decisions.push({ action: 'wait', jobId: later.id, reason: `queued behind ${job.id}` });
      break;
    }
    const chosen = plan.chosen;
    const used = new Set(chosen.placement);
    pool = pool.filter((a) => !used.has(a.id));
    const { data, pipeline, tensor } = chosen.layout;
    decisions.push({ action: 'start', jobId: job.id, chosen, plan, reason: `${data}×${pipeline}×${tensor} (data × pipeline × tensor) on ${used.size} agent${used.size === 1 ? '' : 's'}` });
  }
  return decisions;
}
