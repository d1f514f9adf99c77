/**
 * What one rank did in one training step, as a timeline: node-agent/trainer/step.ts records it while the step runs and hands
 * it to the job's observers when the step is over. Metrics (node-agent/metrics.ts) and traces (common/tracing.ts)
 * are both built from it after the fact, so neither adds work, or a line of code, to the step itself; a span's
 * start and end are the times recorded here.
 *
 * Times are Unix epoch milliseconds with sub-millisecond precision (performance.timeOrigin + performance.now()).
 */

/** The kinds of work a step is made of. */
export type PhaseName =
  | 'begin' // the worker draws this replica's batch
  | 'fwd' // forward of one micro-batch on this stage (attrs.mb)
  | 'bwd' // backward of one micro-batch (attrs.mb)
  | 'recv' // waiting for a pipeline message (attrs.key: a.STEP.MB activations, g.… gradients, e.… evaluation)
  | 'send' // a pipeline message handed to the link until the peer's socket took it (attrs.key, attrs.bytes)
  | 'allreduce' // a ring collective (attrs.ring: data | tied | world | tensor, attrs.op, attrs.bytes: buffer size)
  | 'update' // gradient norm, clipping and the optimizer step
  | 'eval' // held-out evaluation
  | 'checkpoint'; // snapshot, and on data-parallel rank 0 the start of the background save

export interface Phase {
  name: PhaseName;
  startMs: number;
  endMs: number;
  attrs?: Record<string, string | number>;
}

/** W3C trace context ids (lower-case hex) of the span a step's spans hang under. */
export interface TraceParent {
  traceId: string; // 32 hex
  spanId: string; // 16 hex
  sampled: boolean;
}

export interface StepReport {
  jobId: string;
  attempt: number;
  rank: number;
  world: number;
  coords: { dp: number; pp: number; tp: number };
  step: number;
  startMs: number;
  endMs: number;
  stepMs: number;
  /** This rank's forward + backward + optimizer time. */
  computeMs: number;
  /** Ring collectives for gradients and the world sums, waiting for slower peers included. */
  allreduceMs: number;
  /** Idle time inside this rank's 1F1B section (0 without pipeline parallelism). */
  bubbleMs: number;
  /** The rest: receives outside the schedule, evaluation, checkpoint hand-off, messages to the worker. */
  waitMs: number;
  /**
   * The gradient all-reduce over the data-parallel ring: bytes this rank sent its successor (on the wire, so half of
   * float32's with training.gradientWire bf16 or f16; ZeRO-1's parameter all-gather stays float32), and how long. With
   * DiLoCo (training.diloco) only a round's last step has one: the pseudo-gradient's, bufferBytes as on the wire.
   */
  dataRing: { toRank: number; sentBytes: number; ms: number; bufferBytes: number; size: number } | null;
  /** DiLoCo, on a round's last step: outer steps taken in the job so far, and the pseudo-gradient all-reduce's ms. */
  outer?: { steps: number; ms: number };
  /** Global figures, on world rank 0 only (the all-reduced loss and token count). */
  global?: { loss: number; evalLoss?: number; tokensPerS: number; tokens: number; bubble: number; lr: number };
  phases: Phase[];
  /**
   * The step's trace context when the job is traced (job.start carried a traceparent): on rank 0 the ids of the
   * span to create for the step itself, the root of the step's own trace, linked to `attemptParent` (the
   * coordinator's attempt span); on other ranks the same context, so their step spans become children of rank 0's.
   */
  trace?: { step: TraceParent; attemptParent: TraceParent };
}

export interface CheckpointReport {
  jobId: string;
  attempt: number;
  rank: number;
  step: number;
  startMs: number;
  endMs: number;
  bytes: number;
  trace?: TraceParent;
}

/** Receives each finished step (and each uploaded checkpoint) of every job the agent runs. Must not throw. */
export interface StepObserver {
  onStep(report: StepReport): void;
  onCheckpoint?(report: CheckpointReport): void;
}

/** Epoch milliseconds now, with performance.now()'s precision. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

/**
 * Ring all-reduce bus bandwidth in GB/s (NCCL's definition): algbw · 2(n−1)/n, where algbw = buffer bytes / time.
 * It equals the bytes each rank sent its successor divided by the time, which is what one link carried.
 */
export function busbwGbps(bufferBytes: number, ranks: number, ms: number): number {
  if (ranks <= 1 || ms <= 0) return 0;
  return ((bufferBytes / (ms / 1000)) * (2 * (ranks - 1)) / ranks) / 1e9;
}

/**
 * Bytes each rank sends its successor in a ring all-reduce of `bufferBytes` over `ranks` (reduce-scatter + all-gather).
 * Pass the buffer's size on the wire: with a 16-bit gradientWire, 2 bytes per value (node-agent/collectives/wire.ts).
 */
export const ringAllReduceSentBytes = (bufferBytes: number, ranks: number): number =>
  ranks <= 1 ? 0 : Math.round((bufferBytes * 2 * (ranks - 1)) / ranks);
