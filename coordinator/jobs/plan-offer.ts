/**
 * The planner's offer for slow links: when plain data parallelism over the measured links would be
 * communication-bound (its gradient all-reduce takes at least its compute), what a compressed wire
 * (training.gradientWire bf16) and DiLoCo (training.diloco: a pseudo-gradient all-reduce once per round of inner
 * steps) would make of its step, each costed by the same model (candidate-cost.ts) on the same agents. It is only
 * offered, in the plan's explanation and `plan.offer`: both change what is sent, and DiLoCo changes the optimisation
 * itself (replicas train alone between synchronisations), so neither is the planner's to switch on.
 */
import { DILOCO_DEFAULTS, type GradientWire } from '../../protocol/job-spec.ts';
import { layoutName, type ParallelLayout } from '../../protocol/layout.ts';
import { weigh } from './plan-candidates.ts';
import { fmtMs } from './plan-explain.ts';
import type { Candidate, CommunicationOffer, OfferOption, PlanContext } from './plan-request.ts';

/**
 * The offer for a job that does not use DiLoCo, judged on the fastest feasible data-parallel candidate (data > 1,
 * pipeline = tensor = 1) of `candidates`; undefined when there is none or it is not communication-bound.
 */
export function communicationOffer(ctx: PlanContext, candidates: readonly Candidate[]): CommunicationOffer | undefined {
  if (ctx.training.diloco) return undefined;
  const c = candidates
    .filter((x) => x.feasible && x.layout.data > 1 && x.layout.pipeline === 1 && x.layout.tensor === 1)
    .reduce<Candidate | undefined>((best, x) => (!best || x.predicted.stepMs < best.predicted.stepMs ? x : best), undefined);
  if (!c || !(c.predicted.dataAllreduceMs >= c.predicted.computeMs)) return undefined;
  const wire = ctx.training.gradientWire ?? 'f32';
  const H = DILOCO_DEFAULTS.innerSteps;
  const plain = option(wire, 1, c.predicted.dataAllreduceMs, c.predicted.stepMs);
  const bf16 = costed(ctx, c, 'bf16', 1) ?? plain;
  const diloco = costed(ctx, c, 'f32', H);
  const dilocoBf16 = costed(ctx, c, 'bf16', H);
  if (!diloco || !dilocoBf16) return undefined; // the extra outer copies do not fit: nothing to offer
  // One bf16 round's all-reduce (what one step would pay at H = 1) over a tenth of the compute.
  const roundMs = (dilocoBf16.allreduceMs * H);
  return {
    layout: { ...c.layout }, computeMs: c.predicted.computeMs, plain, bf16, diloco, dilocoBf16,
    innerStepsForTenth: Math.max(1, Math.ceil(roundMs / (0.1 * c.predicted.computeMs))),
  };
}

const option = (gradientWire: GradientWire, innerSteps: number, allreduceMs: number, stepMs: number): OfferOption => ({ gradientWire, innerSteps, allreduceMs, stepMs });

/** `c`'s layout costed again with another wire and inner steps (1: plain data parallelism); undefined if it does not fit. */
function costed(ctx: PlanContext, c: Candidate, gradientWire: GradientWire, innerSteps: number): OfferOption | undefined {
  const training = { ...ctx.training, gradientWire, ...(innerSteps > 1 ? { diloco: { innerSteps } } : {}) };
  const { candidate } = weigh({ ...ctx, training }, c.layout, true);
  return candidate.feasible ? option(gradientWire, innerSteps, candidate.predicted.dataAllreduceMs, candidate.predicted.stepMs) : undefined;
}

/** The offer in words, for the plan's explanation. */
export function explainOffer(o: CommunicationOffer, chosen: ParallelLayout | null): string {
  const name = layoutName(o.layout);
  const ways = (x: OfferOption) => `all-reduce ${fmtMs(x.allreduceMs)} per step, ${fmtMs(x.stepMs)} a step`;
  return `Communication-bound: plain data parallelism as ${name} would spend ${fmtMs(o.plain.allreduceMs)} per step all-reducing ` +
    `the gradient (${o.plain.gradientWire}) against ${fmtMs(o.computeMs)} of compute` +
    `${chosen && layoutName(chosen) !== name ? `, which is why ${layoutName(chosen)} was chosen` : ''}. ` +
    `Offered, not applied: training.gradientWire "bf16" halves the bytes (${ways(o.bf16)}); ` +
    `training.diloco {innerSteps: ${o.diloco.innerSteps}} all-reduces a pseudo-gradient once per ${o.diloco.innerSteps} steps ` +
    `(${ways(o.diloco)}), with bf16 too ${ways(o.dilocoBf16)}; innerSteps ≥ ${o.innerStepsForTenth} ` +
    'keeps that under a tenth of the compute. DiLoCo changes the optimisation (each replica trains alone between synchronisations, ' +
    'then an outer momentum step), so it is yours to choose.';
}
