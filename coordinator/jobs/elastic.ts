/**
 * Whether a running job should change shape, decided each time one of its checkpoints lands: the only moment a
 * restart loses nothing, since the next attempt resumes from that checkpoint. A pure function of the job, its
 * agents and the free ones (STYLE.md habit 3); the job runner carries the decision out by stopping the attempt and
 * queueing the job, and the scheduler then starts it in the new shape.
 *
 * - Grow: an elastic job (parallel.minData < parallel.data) that runs short-handed takes free agents back up to
 *   its `data` replicas. The user asked for that many; it is not a question of predicted speed.
 * - Straggler: an agent named by the attempt's telemetry (coordinator/jobs/telemetry.ts) is slowed in the planner by what was
 *   measured, so the planner leaves it out for a free agent, or gives its pipeline stage fewer blocks.
 * - Re-plan: an 'auto' job moves to a layout the planner predicts clearly faster on its agents plus the free ones.
 * A reshape costs a restart (linking, loading the checkpoint, starting the workers: seconds), so a merely faster
 * prediction must beat the current one by RESHAPE_MARGIN.
 */
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import { layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { planRequest, planFor } from './scheduler.ts';
import { planJob, speedKey, type PlannerAgent, type PlannerCalibration } from './planner.ts';

/** Fraction by which a new shape's predicted step time must beat the current one's to be worth a restart. */
export const RESHAPE_MARGIN = 0.15;

export interface ReshapeInput {
  spec: ResolvedJobSpec;
  /** The running attempt's layout and stage bounds. */
  layout: ParallelLayout;
  stages: ReadonlyArray<readonly [number, number]>;
  /** Its agents in rank order, with the slowdowns observed so far. */
  members: PlannerAgent[];
  /** Agents no job is using. */
  free: PlannerAgent[];
  /** The node the attempt's telemetry names as its straggler, if any. */
  straggler: string | null;
  /** The step whose checkpoint just landed, and the job's last step. */
  step: number;
  steps: number;
  calibration?: Partial<PlannerCalibration>;
}

export type ReshapeDecision =
  | { action: 'keep'; reason: string }
  | { action: 'reshape'; reason: string; layout: ParallelLayout };

export function decideReshape(i: ReshapeInput): ReshapeDecision {
  if (i.step >= i.steps) return { action: 'keep', reason: 'the job is at its last step' };
  if (i.free.length === 0 && i.straggler === null) return { action: 'keep', reason: 'no free agent and no straggler' };
  const best = planFor(i.spec, [...i.members, ...i.free], i.calibration)?.chosen;
  if (!best) return { action: 'keep', reason: 'the planner finds no layout on these agents' };
  const was = layoutName(i.layout), next = layoutName(best.layout);
  if (i.spec.parallel !== 'auto' && best.layout.data > i.layout.data) {
    return { action: 'reshape', layout: best.layout, reason: `growing from ${i.layout.data} to ${best.layout.data} data-parallel replicas (${i.free.length} agent${i.free.length === 1 ? '' : 's'} free)` };
  }
  // The planner rates a host by its best agent's benchmark (planner.ts hostGflops), so the members are costed with
  // what their hosts measured across every agent seen here, as the candidate was: else a free agent's better
  // benchmark on the same host makes the very same shape look faster than itself.
  const hostBest = new Map<string, number>();
  for (const a of [...i.members, ...i.free]) hostBest.set(speedKey(a), Math.max(hostBest.get(speedKey(a)) ?? 0, a.matmulGflops));
  const members = i.members.map((m) => ({ ...m, matmulGflops: hostBest.get(speedKey(m))! }));
  const current = planJob(planRequest(i.spec, members, i.calibration, i.layout)).chosen;
  const currentMs = current?.predicted.stepMs ?? Infinity;
  const bestMs = best.predicted.stepMs;
  const gain = 1 - bestMs / currentMs;
  const straggler = i.straggler;
  const dropsStraggler = straggler !== null && i.members.some((m) => m.id === straggler) && !best.placement.includes(straggler);
  const ms = (x: number) => `${Math.round(x)} ms`;
  const samePlace = best.placement.length === i.members.length && best.placement.every((id, rank) => id === i.members[rank]!.id);
  const restaged = best.stages.some(([a, b], s) => a !== i.stages[s]?.[0] || b !== i.stages[s]?.[1]);
  if (next === was && samePlace && !restaged) return { action: 'keep', reason: `the best shape is the running one (${was} on the same agents)` };
  if (gain >= RESHAPE_MARGIN) {
    const what = dropsStraggler ? `leaving out straggler ${straggler}` : `re-planning ${was} → ${next}`;
    return { action: 'reshape', layout: best.layout, reason: `${what}: predicted ${ms(bestMs)} per step instead of ${ms(currentMs)}` };
  }
  // Same agents, same layout, but the straggler's stage would hold fewer blocks: less work for it.
  if (straggler !== null && samePlace && next === was && restaged) {
    const bounds = (st: ReadonlyArray<readonly [number, number]>) => st.map(([a, b]) => `[${a}, ${b})`).join(' ');
    return { action: 'reshape', layout: best.layout, reason: `giving straggler ${straggler} less work: stages ${bounds(i.stages)} → ${bounds(best.stages)}` };
  }
  return {
    action: 'keep',
    reason: Number.isFinite(gain)
      ? `the best shape (${next}) is predicted ${Math.round(gain * 100)}% faster, below the ${Math.round(RESHAPE_MARGIN * 100)}% a restart needs`
      : 'the current layout cannot be costed',
  };
}

/** Attempts of one job that ended in failure since its newest checkpoint was taken. */
export interface FailureRun {
  failures: number;
  checkpointStep: number; // the job's newest checkpoint when the run was counted
}

/**
 * After an attempt failed (a member died, a rank failed on a link or a timeout, no step came in time): try again
 * from the last checkpoint, or give up. Only failures in a row without a new checkpoint count, so a long job that
 * survives an occasional fault keeps going, while one that fails the same way every time stops after
 * `maxRestarts` tries (torchrun's --max-restarts, counted per checkpoint).
 */
export function decideRestart(previous: FailureRun | undefined, newestCheckpointStep: number, maxRestarts: number): { action: 'retry' | 'fail'; run: FailureRun } {
  const failures = previous && previous.checkpointStep === newestCheckpointStep ? previous.failures + 1 : 1;
  const run = { failures, checkpointStep: newestCheckpointStep };
  return { action: failures > maxRestarts ? 'fail' : 'retry', run };
}
