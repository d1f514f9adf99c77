/**
 * The 1F1B pipeline schedule (PipeDream-Flush, as Megatron-LM's non-interleaved schedule): stage s of p first runs
 * min(p − s − 1, m) warm-up forwards, then alternates one forward and one backward, then drains the remaining
 * backwards. At most p − s micro-batches are in flight on stage s, so activation memory is bounded by the pipeline
 * depth instead of m (GPipe's all-forwards-then-all-backwards keeps all m). The idle share of a step is the bubble,
 * (p − 1)/(m + p − 1) when every stage's forward and backward take equal time.
 *
 * Deadlock-freedom: sends never block the schedule (they are queued on the link), and every stage consumes its
 * receives in the order its neighbour produces them (forwards in micro-batch order, backwards in micro-batch order).
 */
import { outOfRange } from '../errors.ts';

export type PipeAction = { readonly op: 'F' | 'B'; readonly mb: number };

export function oneFOneB(stage: number, stages: number, microBatches: number): PipeAction[] {
  if (!Number.isInteger(stages) || stages < 1) throw outOfRange(`stages must be a positive integer, got ${stages}`);
  if (!Number.isInteger(stage) || stage < 0 || stage >= stages) throw outOfRange(`stage ${stage} is outside 0..${stages - 1}`);
  if (!Number.isInteger(microBatches) || microBatches < 1) throw outOfRange(`microBatches must be a positive integer, got ${microBatches}`);
  const warmup = Math.min(stages - stage - 1, microBatches);
  const actions: PipeAction[] = [];
  let f = 0, b = 0;
  for (; f < warmup; f++) actions.push({ op: 'F', mb: f });
  while (f < microBatches) {
    actions.push({ op: 'F', mb: f++ });
    actions.push({ op: 'B', mb: b++ });
  }
  while (b < microBatches) actions.push({ op: 'B', mb: b++ });
  return actions;
}

/** The bubble's share of a step if every forward and backward took the same time on every stage. */
export const bubbleTheory = (stages: number, microBatches: number): number => (stages - 1) / (microBatches + stages - 1);
