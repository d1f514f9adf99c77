/**
 * Which queued job starts where: a pure decision from the jobs waiting, the agents free, and the clock
 * (STYLE.md habit 3). The job runner carries the decisions out. Strict first-in-first-out: a job that does not
 * fit yet holds the ones behind it, so a large job is never starved by a stream of small ones.
 */
import type { ResolvedJobSpec } from '../protocol/job-spec.ts';

export interface QueuedJob {
  id: string;
  spec: ResolvedJobSpec;
  createdMs: number;
}

export interface FreeAgent {
  id: string;
  matmulGflops: number;
  firstSeenMs: number;
}

export type SchedulerDecision =
  | { action: 'start'; jobId: string; nodeIds: string[]; reason: string }
  | { action: 'wait'; jobId: string; reason: string };

/** Data-parallel degree for a spec given `free` agents; 0 when it cannot run on them. */
export function dataParallelDegree(spec: ResolvedJobSpec, free: number): number {
  const { batchSize, microBatches } = spec.training;
  if (spec.parallel !== 'auto') return spec.parallel.data <= free ? spec.parallel.data : 0;
  // auto: the most ranks that the global batch splits over evenly, micro-batches included.
  for (let d = Math.min(free, batchSize); d >= 1; d--) {
    if (batchSize % d === 0 && (batchSize / d) % microBatches === 0) return d;
  }
  return 0;
}

export function decideJobs(queued: QueuedJob[], free: FreeAgent[]): SchedulerDecision[] {
  const decisions: SchedulerDecision[] = [];
  // Fastest agents first: in a data-parallel ring the slowest rank sets the pace.
  let pool = [...free].sort((a, b) => b.matmulGflops - a.matmulGflops || a.firstSeenMs - b.firstSeenMs || (a.id < b.id ? -1 : 1));
  const ordered = [...queued].sort((a, b) => a.createdMs - b.createdMs || (a.id < b.id ? -1 : 1));
  for (let i = 0; i < ordered.length; i++) {
    const job = ordered[i]!;
    const degree = dataParallelDegree(job.spec, pool.length);
    if (degree === 0) {
      const wanted = job.spec.parallel === 'auto' ? 1 : job.spec.parallel.data;
      decisions.push({ action: 'wait', jobId: job.id, reason: `waiting for ${wanted} free agent${wanted === 1 ? '' : 's'} (${pool.length} free)` });
      for (const later of ordered.slice(i + 1)) decisions.push({ action: 'wait', jobId: later.id, reason: `queued behind ${job.id}` });
      break;
    }
    const nodeIds = pool.slice(0, degree).map((a) => a.id);
    pool = pool.slice(degree);
    decisions.push({ action: 'start', jobId: job.id, nodeIds, reason: `data-parallel on ${degree} agent${degree === 1 ? '' : 's'}` });
  }
  return decisions;
}
