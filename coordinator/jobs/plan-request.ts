/**
 * What the planner (planner.ts planJob) is asked and what it answers: the request (the model, the training shape,
 * pinned degrees or 'auto', the agents with their measurements), each candidate layout with its predicted cost, and
 * the plan. Also what every step of planning shares (PlanContext) and the request's checks: calibration defaults
 * and ranges, positive integer shapes. Plain data, so plans are stored as JSON (plan-report.ts).
 */
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { GradientWire } from '../../protocol/job-spec.ts';
import { DEFAULT_CALIBRATION, type ComputeProbe, type Model, type PlannerCalibration } from './cost-model.ts';

export interface PlannerAgent {
  id: string;
  host: string; // agents with the same host share its cores and talk over loopback
  cores: number;
  memoryBytes: number;
  matmulGflops: number; // measured on join: best of five 512³ float32 matmuls (model/compute/backend.ts)
  /** Its compute backend (wasm, webgpu, cpu, tensorflow, …); a wasm agent's stage must fit wasm32's 4 GB heap. */
  backend?: string;
  /** On webgpu: the largest buffer one kernel may bind (maxStorageBufferBindingSize); no tensor of its shard may be larger. */
  maxBindingBytes?: number;
  /**
   * Its non-matmul costs, fitted from the probe it ran at join on its own backend (cost-model.ts agentProbe); the
   * calibration's constants where absent. Agents sharing a speedKey are rated at the lowest of each figure.
   */
  probe?: ComputeProbe;
  /**
   * Measured step time ÷ predicted, refitted by the coordinator from the jobs its speedKey's agents ran
   * (coordinator/jobs/planner-feedback.ts): every compute figure of the agent is scaled by it. Absent: 1.
   */
  refit?: number;
  /**
   * How many times slower than its peers this agent was seen computing the same work in a running job (a
   * straggler: coordinator/jobs/telemetry.ts); its speed is divided by it. Absent or 1: as fast as its host's best.
   */
  slowdown?: number;
}

export interface PlanRequest {
  model: { vocabSize: number; nCtx: number; nLayer: number; nHead: number; nEmbd: number };
  /**
   * wholeLogits: the objective needs the whole logits (dpo, distill), not the causal-LM head's chunks. gradientWire:
   * the data-parallel all-reduce's number format (default f32; bf16 and f16 send 2 bytes a value). diloco: the job
   * all-reduces a pseudo-gradient once per innerSteps steps instead of the gradient every step (pipeline = tensor = 1).
   */
  training: { batchSize: number; microBatches: number; seqLen: number; zero: 0 | 1; wholeLogits?: boolean; gradientWire?: GradientWire; diloco?: { innerSteps: number } };
  parallel: 'auto' | ParallelLayout;
  agents: PlannerAgent[];
  calibration?: Partial<PlannerCalibration>;
}

export interface PredictedCost {
  stepMs: number; // computeMs + bubbleMs + sharingMs + dataAllreduceMs + overheadMs + optimizerMs
  computeMs: number; // m × slowest stage's per-micro-batch time with a core to itself (incl. its TP all-reduces)
  bubbleMs: number; // pipeline fill and drain, sends included ((p − 1) × the per-micro-batch time if stages are equal)
  sharingMs: number; // what sharing their hosts' cores adds to the pipeline section (see slowdown)
  tensorCommMs: number; // TP all-reduce share of computeMs + bubbleMs
  pipelineCommMs: number; // p2p activation/gradient share of computeMs + bubbleMs
  dataAllreduceMs: number; // gradient all-reduce over d (slowest stage shard), at the wire's bytes; DiLoCo: one per round, ÷ innerSteps
  overheadMs: number; // fixed per step: worker round trips, the world all-reduce of the loss and norm scalars
  optimizerMs: number;
  memoryBytesPerAgent: number; // the largest of any agent
  wasmHeapBytesPerAgent: number; // the largest backend peak of any wasm agent (0: none is wasm)
}

export interface Candidate {
  layout: ParallelLayout;
  microBatches: number; // m used
  stages: Array<[number, number]>; // [firstLayer, endLayer) per stage
  placement: string[]; // agent id per world rank
  predicted: PredictedCost; // every field NaN when the layout cannot even be laid out (reason says why)
  feasible: boolean;
  reason?: string;
}

export interface Plan {
  chosen: Candidate | null;
  candidates: Candidate[]; // feasible first, by predicted step time; then the infeasible in enumeration order
  refused?: string; // when chosen is null: why, and what to do
  explanation: string;
  /** When plain data parallelism would be communication-bound: what bf16 and DiLoCo would give (plan-offer.ts). Never applied. */
  offer?: CommunicationOffer;
}

/** One way of running the data-parallel layout of an offer, as the cost model predicts it. */
export interface OfferOption {
  gradientWire: GradientWire;
  innerSteps: number; // 1: plain data parallelism (an all-reduce every step)
  allreduceMs: number; // per step: a round's all-reduce ÷ innerSteps
  stepMs: number;
}

export interface CommunicationOffer {
  layout: ParallelLayout; // the fastest data-parallel layout (pipeline = tensor = 1, data > 1) the agents allow
  computeMs: number; // its compute per step
  plain: OfferOption; // as the job asks now: the gradient all-reduced every step, in its wire format
  bf16: OfferOption; // gradientWire bf16
  diloco: OfferOption; // training.diloco with the paper's innerSteps, f32
  dilocoBf16: OfferOption; // both
  /** The fewest inner steps that keep DiLoCo's bf16 all-reduce under a tenth of the compute per step. */
  innerStepsForTenth: number;
}

export type Training = PlanRequest['training'];

/** What every step of one planJob call shares. */
export interface PlanContext {
  model: Model;
  training: Training;
  cal: PlannerCalibration;
  agents: PlannerAgent[]; // usable, in agentOrder
  hostGflops: Map<string, number>; // best matmulGflops of each host's usable agents
  hostProbes: Map<string, ComputeProbe>; // lowest probe figures of each speedKey's usable agents
}

/** The calibration with DEFAULT_CALIBRATION for what is absent, checked and frozen. */
export function plannerCalibration(partial: Partial<PlannerCalibration> | undefined): PlannerCalibration {
  const cal = { ...DEFAULT_CALIBRATION, ...partial };
  for (const [key, v] of Object.entries(cal)) {
    // the overheads may be zero (an idealised machine); speeds, bandwidths and fractions must be positive
    const min = ['efficiency', 'linkBytesPerS', 'loopbackBytesPerS', 'memoryFraction', 'agentCores'].includes(key) ? Number.MIN_VALUE : 0;
    if (!Number.isFinite(v) || v < min) throw new RangeError(`calibration.${key} must be a ${min === 0 ? 'non-negative' : 'positive'} number, got ${v}`);
  }
  if (cal.efficiency > 1 || cal.memoryFraction > 1) throw new RangeError('calibration.efficiency and memoryFraction must be at most 1');
  return Object.freeze(cal);
}

/** Refuses a request whose model or training shape is not positive integers (or whose heads do not divide nEmbd). */
export function validatePlanRequest(req: PlanRequest): void {
  const ints: Array<[string, number]> = [
    ...Object.entries(req.model).map(([k, v]) => [`model.${k}`, v] as [string, number]),
    ['training.batchSize', req.training.batchSize], ['training.microBatches', req.training.microBatches], ['training.seqLen', req.training.seqLen],
  ];
  for (const [name, v] of ints) if (!Number.isSafeInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  if (req.model.nEmbd % req.model.nHead !== 0) throw new RangeError(`model.nEmbd ${req.model.nEmbd} must be a multiple of nHead ${req.model.nHead}`);
}
