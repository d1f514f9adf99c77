/**
 * The compute probe every agent runs at join, beside its matmul measurement (node-agent/compute/probe.ts): a
 * whole-model forward and backward of one micro-batch on each of these shapes, as its trainer runs them. It reports
 * the median milliseconds of each (Capabilities.probeMs, in this order) and the coordinator fits the agent's
 * non-matmul costs from them (coordinator/jobs/cost-model.ts fitProbe): its own backend's, not the development machine's.
 */
export interface ProbeModel {
  vocabSize: number;
  nCtx: number;
  nLayer: number;
  nHead: number;
  nEmbd: number;
}

export const PROBE_SHAPES: ReadonlyArray<{ model: ProbeModel; rows: number; seqLen: number }> = Object.freeze([
  { model: { vocabSize: 128, nCtx: 16, nLayer: 2, nHead: 2, nEmbd: 32 }, rows: 1, seqLen: 16 }, // per-operation costs
  { model: { vocabSize: 512, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 128 }, rows: 4, seqLen: 64 }, // per-element work
]);
