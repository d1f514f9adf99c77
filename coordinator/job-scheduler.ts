/**
 * Which queued job starts where, and in what layout: a pure decision from the jobs waiting and the agents free
 * (STYLE.md habit 3). The layout (data × pipeline × tensor, stage boundaries, placement) comes from the planner
 * (planner.ts) run on the free agents; the job runner carries the decisions out. Strict first-in-first-out: a job
 * that does not fit yet holds the ones behind it, so a large job is never starved by a stream of small ones.
 */
import type { ResolvedJobSpec } from '../protocol/job-spec.ts';
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

/** The planner's request for a job on `agents`. */
export function planRequest(spec: ResolvedJobSpec, agents: PlannerAgent[], calibration?: Partial<PlannerCalibration>) {
  const t = spec.training;
  return {
    model: spec.model,
    training: { batchSize: t.batchSize, microBatches: t.microBatches, seqLen: t.seqLen, zero: t.zero },
    parallel: spec.parallel,
    agents,
    ...(calibration ? { calibration } : {}),
  };
}

/** How many agents a pinned layout needs (1 for 'auto': it fits itself to what there is). */
export function agentsWanted(spec: ResolvedJobSpec): number {
  return spec.parallel === 'auto' ? 1 : spec.parallel.data * spec.parallel.pipeline * spec.parallel.tensor;
}

export function decideJobs(queued: QueuedJob[], free: FreeAgent[], calibration?: Partial<PlannerCalibration>): SchedulerDecision[] {
  const decisions: SchedulerDecision[] = [];
  let pool = [...free].sort((a, b) => b.matmulGflops - a.matmulGflops || a.firstSeenMs - b.firstSeenMs || (a.id < b.id ? -1 : 1));
  const ordered = [...queued].sort((a, b) => a.createdMs - b.createdMs || (a.id < b.id ? -1 : 1));
  for (let i = 0; i < ordered.length; i++) {
    const job = ordered[i]!;
    const wanted = agentsWanted(job.spec);
    const plan = pool.length >= wanted ? planJob(planRequest(job.spec, pool, calibration)) : null;
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
