/**
 * The messages between a job's main-thread runner (job-runner.ts, through worker-client.ts) and its compute worker
 * (trainer-worker.ts), and how an error crosses between the two threads with its code (failureOf, errorOf).
 *
 * The worker owns TensorFlow.js, this agent's StageModel (its pipeline stage and tensor-parallel shard), AdamW
 * (over the whole shard, or with ZeRO-1 over this data-parallel rank's range of it) and the data readers; the main
 * thread owns the network (rings, pipeline mailboxes, the coordinator, the artifact store) and drives the schedule.
 * At init the worker allocates on SharedArrayBuffers: the shard's parameters and gradients (main all-reduces,
 * reduce-scatters and all-gathers them in place) and a tensor-parallel scratch buffer with a flag word.
 *
 * One request at a time, each answered once (or with `failed`):
 *
 *   main → worker            worker → main
 *   init {resume?}           ready {params, grads, tpData, tpFlag, …}   resume: a checkpoint folder, read and
 *                                                       verified here, not on main
 *   begin {step}             begun {lr}                 reads this step's batch, zeroes the gradient
 *   fwd {mb, acts?}          fwdDone {out?, busyMs}     not on the last stage (which has nothing to send)
 *   bwd {mb, gradOut?}       bwdDone {gradIn?, loss?, busyMs}
 *   norm                     normed {sumsq}             after main reduced the gradient: averages it over the
 *                                                       data-parallel ranks and sums the squares this rank counts
 *   update {gradNorm}        updated {updateMs}         clip + AdamW (+ upload, unless ZeRO-1: then main
 *   upload                   uploaded                   all-gathers the parameters first and asks for `upload`)
 *   pseudoGrad               pseudoGradDone {ms}        DiLoCo, at the end of a round: Δ = outer weights − own
 *                                                       weights into the gradient buffer, which main all-reduces
 *   outerStep {replicas}     outerStepped {ms, outerSteps}  Δ / replicas, the outer momentum step, and the new
 *                                                       outer weights become this replica's (and are uploaded)
 *   evalBegin                evalBegun {microBatches}
 *   evalFwd {mb, acts?}      evalDone {out?, loss?}
 *   export                   exported {…}               copies of the parameters and full-length moments (own
 *                                                       range filled), transferred: main hands them to the
 *                                                       checkpoint encoder and uploads views of them
 *
 * And one request from the worker in the middle of fwd/bwd: `tp {elems}` asks main to all-reduce the first
 * `elems` floats of tpData over the tensor-parallel ring. The worker then blocks in Atomics.wait on tpFlag[0]
 * until main stores 1 (done) or 2 (failed) and notifies: tfjs runs gradient functions synchronously, so the
 * collective has to look synchronous to it (model/stage-model.ts).
 *
 * Hand-off of shared memory: main touches params/grads only between the worker's reply to one request and the
 * next request (and tpData only between `tp` and the flag); postMessage and Atomics order the writes.
 */
import type { ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { ShardCursor } from '../../model/token-shard-reader.ts';
import type { CheckpointFiles, WrittenFile } from '../../model/checkpoint-files.ts';
import type { JsonValue } from '../../model/checkpoint.ts';
import { errorOfThread, type ThreadFailure } from '../../protocol/define-errors.ts';
import { AgentError } from '../errors.ts';
import { ModelError } from '../../model/errors.ts';

/** Where this agent sits in the job: what job.start's plan and rank say. */
export interface Placement {
  layout: ParallelLayout;
  /** [firstLayer, endLayer) of every pipeline stage. */
  stages: Array<[number, number]>;
  /** Micro-batches per data-parallel rank per step. */
  microBatches: number;
  /** 1: ZeRO-1 (optimizer state sharded over the data-parallel ranks). */
  zero: 0 | 1;
  rank: number;
}

/** The checkpoint to resume from, as main downloaded it: the worker reads and verifies it (resume-checkpoint.ts). */
export interface ResumeFiles {
  /** The folder of the shard checkpoint's files (`…/step-NNNNNN`). */
  dir: string;
  /** Optimizer steps it holds: the next step run is step + 1. */
  step: number;
}

/** A resume checkpoint as the worker opened it: verified, its tensors still on disk. */
export interface ResumeState {
  /** A shard checkpoint's files: this shard's weights and its AdamW moments (whole shard, even with ZeRO-1). */
  files: CheckpointFiles;
  /** Optimizer steps done: the next step run is step + 1. */
  step: number;
  /** Where the next global training batch starts. */
  cursor: ShardCursor;
}

export type ToWorker =
  | { type: 'init'; spec: ResolvedJobSpec; placement: Placement; dataDir: string; resume?: ResumeFiles; frozenDir?: string; baseDir?: string }
  | { type: 'begin'; step: number }
  | { type: 'fwd'; mb: number; acts?: Float32Array }
  | { type: 'bwd'; mb: number; gradOut?: Float32Array }
  | { type: 'norm' }
  | { type: 'update'; gradNorm: number }
  | { type: 'upload' }
  | { type: 'pseudoGrad' }
  | { type: 'outerStep'; replicas: number }
  | { type: 'evalBegin' }
  | { type: 'evalFwd'; mb: number; acts?: Float32Array }
  | { type: 'export' }
  // Write the shard's checkpoint (weights + AdamW moments) into the empty folder `dir`, tensor by tensor; `state`
  // is state.json less the step and data cursor, which the worker adds. Not with ZeRO-1 over replicas (export).
  | { type: 'spill'; dir: string; state: Record<string, JsonValue> };

export interface Ready {
  type: 'ready';
  params: SharedArrayBuffer; // the shard's parameters, float32, shard layout order
  grads: SharedArrayBuffer; // its gradient, same layout
  tpData: SharedArrayBuffer; // tensor-parallel scratch: one micro-batch of activations
  tpFlag: SharedArrayBuffer; // Int32Array(1): 0 waiting, 1 reduced, 2 failed
  paramCount: number; // elements in this shard
  optimizerRange: [number, number]; // the [start, end) of the shard AdamW updates on this rank
  tiedRange: [number, number] | null; // wte.weight's [offset, end) when both first and last stage hold a copy
  backend: string;
  step: number;
  cursor: ShardCursor;
}

export type FromWorker =
  | Ready
  | { type: 'begun'; lr: number }
  | { type: 'fwdDone'; out?: Float32Array; busyMs: number }
  | { type: 'bwdDone'; gradIn?: Float32Array; loss?: number; tokens: number; busyMs: number }
  | { type: 'normed'; sumsq: number }
  | { type: 'updated'; updateMs: number }
  | { type: 'uploaded' }
  | { type: 'pseudoGradDone'; ms: number }
  | { type: 'outerStepped'; ms: number; outerSteps: number; checksum: number } // outerSteps: in the whole job so far; checksum: of the new weights (model/diloco.ts)
  | { type: 'evalBegun'; microBatches: number; skipped?: string } // skipped: why there is no held-out evaluation
  | { type: 'evalDone'; out?: Float32Array; loss?: number }
  | { type: 'exported'; step: number; cursor: ShardCursor; params: Float32Array; expAvg: Float32Array; expAvgSq: Float32Array; optimizerStep: number }
  | { type: 'spilled'; step: number; files: Record<string, WrittenFile> }
  | { type: 'tp'; elems: number }
  | ({ type: 'failed' } & ThreadFailure);

export { threadFailure as failureOf, type ThreadFailure } from '../../protocol/define-errors.ts';

/**
 * The error a failure (protocol/define-errors.ts threadFailure) re-creates on the receiving thread: an agent or
 * model error keeps its class and code; any other becomes AGT_ERR_TRAINER with the original code (if any) kept on
 * its cause.
 */
export function errorOf(failure: ThreadFailure): AgentError | ModelError {
  return errorOfThread<AgentError | ModelError>(failure, [AgentError, ModelError], ({ error, code }) => new AgentError('AGT_ERR_TRAINER', error, code !== undefined ? { cause: { code } } : undefined));
}
