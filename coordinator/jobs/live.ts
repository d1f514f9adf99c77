/**
 * A running job as the outside sees it: the metric rows each progress report becomes (the job's history, and the
 * live stream), what GET /api/jobs/:id/live answers, and each busy node's part in its job (GET /api/nodes, the
 * dashboard). Read-only views of the runner's attempts (attempt.ts), so they are plain functions.
 */
import type { JobProgress } from '../../protocol/control.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { JobRecord, JobState, StepMetric } from '../store/job-store.ts';
import type { Attempt } from './attempt.ts';
import type { Breakdown, LinkLive, PlacementCell, RankLive, Straggler } from './telemetry.ts';

/** A node's part in a running job, as the dashboard and GET /api/nodes show it. */
export interface NodeRole {
  jobId: string;
  attempt: number;
  rank: number;
  dp: number;
  pp: number;
  tp: number;
  layers: [number, number];
}

/** What GET /api/jobs/:id/live answers: the job as it runs now (or as its last attempt left it). */
export interface JobLive {
  jobId: string;
  state: JobState;
  step: number;
  attempt: number | null;
  layout: ParallelLayout | null;
  stages: Array<[number, number]> | null;
  microBatches: number | null;
  placement: PlacementCell[];
  ranks: RankLive[];
  breakdown: Breakdown | null;
  links: LinkLive[];
  straggler: Straggler | null;
  tokensPerS: number | null;
  loss: number | null;
  evalLoss: number | null;
}

/**
 * The rows a progress report records at its step: 'train' (the step split four ways, adding up to stepMs) and,
 * when it carries a held-out loss, 'eval'.
 */
export function progressRows(msg: JobProgress, layout: ParallelLayout, nowMs: number): StepMetric[] {
  const train: Record<string, number> = { loss: msg.loss, lr: msg.lr, tokensPerS: msg.tokensPerS, stepMs: msg.stepMs, computeMs: msg.computeMs, allreduceMs: msg.allreduceMs };
  if (msg.pipelineMs !== undefined) train.pipelineMs = msg.pipelineMs;
  if (msg.bubble !== undefined) train.bubble = msg.bubble;
  if (msg.optimizerBytes !== undefined) train.optimizerBytes = msg.optimizerBytes;
  if (msg.paramCount !== undefined) train.paramCount = msg.paramCount;
  // DiLoCo, on the steps that end a round: outer steps so far, and the pseudo-gradient all-reduce's time and bytes
  if (msg.outerSteps !== undefined) train.outerSteps = msg.outerSteps;
  if (msg.outerSyncMs !== undefined) train.outerSyncMs = msg.outerSyncMs;
  if (msg.outerSyncBytes !== undefined) train.outerSyncBytes = msg.outerSyncBytes;
  msg.stageBusyMs?.forEach((ms, stage) => (train[`stage${stage}BusyMs`] = ms));
  // With one stage the "pipeline section" is only the messages to the worker, which is waiting, not a bubble.
  train.bubbleMs = layout.pipeline > 1 ? (msg.bubble ?? 0) * (msg.pipelineMs ?? 0) : 0;
  train.waitMs = Math.max(0, msg.stepMs - msg.computeMs - msg.allreduceMs - train.bubbleMs);
  const rows: StepMetric[] = [{ kind: 'train', atMs: nowMs, values: train }];
  if (msg.evalLoss !== undefined) rows.push({ kind: 'eval', atMs: nowMs, values: { loss: msg.evalLoss, perplexity: Math.exp(msg.evalLoss) } });
  return rows;
}

/** The job as `a` (its running attempt, or the last one it ran; undefined if none) shows it. */
export function liveView(job: JobRecord, a: Attempt | undefined): JobLive {
  const t = a?.telemetry ?? null;
  const p = a?.lastProgress ?? null;
  return {
    jobId: job.id, state: job.state, step: job.step, attempt: a?.attempt ?? null,
    layout: a ? { ...a.layout } : null,
    stages: t ? t.stages.map(([x, y]) => [x, y] as [number, number]) : null,
    microBatches: a?.microBatches ?? null,
    placement: t?.placement() ?? [],
    ranks: t?.ranks() ?? [],
    breakdown: t?.breakdown() ?? null,
    links: t?.links() ?? [],
    straggler: t?.straggler() ?? null,
    tokensPerS: p?.tokensPerS ?? null,
    loss: p?.loss ?? null,
    evalLoss: a?.lastEvalLoss ?? null,
  };
}

/** Each busy node's part in its job (rank, coordinates, layers), from the running attempts. */
export function nodeRoles(running: Iterable<Attempt>): Map<string, NodeRole> {
  const out = new Map<string, NodeRole>();
  for (const a of running) {
    for (const cell of a.telemetry?.placement() ?? []) {
      out.set(cell.nodeId, { jobId: a.jobId, attempt: a.attempt, rank: cell.rank, dp: cell.dp, pp: cell.pp, tp: cell.tp, layers: cell.layers });
    }
  }
  return out;
}

/** The nodes the running attempts name as their stragglers. */
export function stragglersOf(running: Iterable<Attempt>): Set<string> {
  return new Set([...running].flatMap((a) => a.telemetry?.straggler()?.nodeId ?? []));
}
