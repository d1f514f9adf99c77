/**
 * What `GET /api/jobs/:id/plan` answers: the planner's choice for the job's current (or last) attempt, every
 * candidate it weighed with its predicted step time, and, once steps have run under that plan, the measured step
 * time beside the prediction, so the cost model's honesty can be checked on every job.
 */
import type { Plan } from './planner.ts';
import type { JobRecord, MetricRow } from '../store/job-store.ts';

export interface StoredPlan extends Plan {
  plannedAtMs: number; // when the job runner adopted it (steps recorded after this ran under it)
}

export interface PlanReport {
  jobId: string;
  plan: StoredPlan | null;
  predictedStepMs: number | null;
  /** Median step time recorded under this plan, leaving out the first step (it pays for warm-up). */
  measuredStepMs: number | null;
  measuredSteps: number;
  /** (measured − predicted) / predicted. */
  relativeError: number | null;
}

export function median(values: readonly number[]): number | null {
  if (values.length === 0) return null;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function planReport(job: JobRecord, metrics: readonly MetricRow[]): PlanReport {
  const plan = (job.plan as StoredPlan | null) ?? null;
  const predicted = plan?.chosen?.predicted.stepMs ?? null;
  const under = plan ? metrics.filter((m) => m.kind === 'train' && m.atMs >= plan.plannedAtMs && Number.isFinite(m.values.stepMs)) : [];
  const steady = under.slice(1).map((m) => m.values.stepMs!);
  const measured = median(steady);
  return {
    jobId: job.id,
    plan,
    predictedStepMs: predicted,
    measuredStepMs: measured,
    measuredSteps: steady.length,
    relativeError: predicted !== null && measured !== null && predicted > 0 ? (measured - predicted) / predicted : null,
  };
}
